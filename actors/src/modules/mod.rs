//! The XMPP modules, and the one list that registers them.
//!
//! Each module is one file (or folder) here: it implements the hooks of
//! [`crate::ext::Module`] it needs and [`ModuleSpec`] for its
//! `[modules.mod_*]` section, and imports nothing but [`crate::ext`], the
//! protocol crate and storage. [`modules!`] below is the only place that
//! names them all: one line per module gives its config section, its place
//! in hook order, and how it is built.

pub mod blocking;
pub mod carbons;
pub mod csi;
pub mod disco;
pub mod event_pusher;
pub mod fast_auth_token;
pub mod inbox;
pub mod mam;
pub mod misc;
pub mod offline;
pub mod ping;
pub mod presence;
pub mod private;
pub mod pubsub;
pub mod push_service_mongoosepush;
pub mod register;
pub mod roster;
pub mod sasl2;
pub mod stream_management;
pub mod vcard;

use std::sync::Arc;

use crate::ext::registry::ModuleSpec;
use crate::ext::{CoreTuning, Module};

/// Declares `ModulesConfig` (one field per module, named as its section) and
/// builds the enabled modules in the order listed, which is hook order.
macro_rules! modules {
    ($( $(#[$doc:meta])* $field:ident => $ty:ty, )*) => {
        /// `[modules]`: one section per module, named as in MongooseIM. A module
        /// without a section runs with its defaults; `enabled = false` turns it
        /// off. An unknown section or key is refused at start.
        #[derive(Clone, Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ModulesConfig {
            $( $(#[$doc])* pub $field: <$ty as ModuleSpec>::Config, )*
        }

        impl ModulesConfig {
            /// Every module's name, in hook order.
            pub const KNOWN: &'static [&'static str] = &[$( <$ty as ModuleSpec>::NAME, )*];

            /// Checks every section; the error names the key and why.
            pub fn validate(&self) -> Result<(), (String, String)> {
                $(
                    <$ty as ModuleSpec>::validate(&self.$field)
                        .map_err(|(k, r)| (format!("modules.{}.{}", stringify!($field), k), r))?;
                )*
                Ok(())
            }

            /// The core settings the sections decide.
            pub fn tuning(&self) -> CoreTuning {
                let mut t = CoreTuning::default();
                $( <$ty as ModuleSpec>::tune(&self.$field, &mut t); )*
                t
            }

            /// The enabled modules, in hook order.
            pub fn build(&self) -> Vec<Arc<dyn Module>> {
                self.build_shared().into_iter().flatten().collect()
            }

            /// Each module's instance for every host, `None` when it is off.
            fn build_shared(&self) -> Vec<Option<Arc<dyn Module>>> {
                vec![$(
                    <$ty as ModuleSpec>::enabled(&self.$field).then(|| <$ty as ModuleSpec>::build(&self.$field)),
                )*]
            }

            /// These sections with those `host` overrides in place.
            pub fn with_host(&self, host: &HostModulesConfig) -> ModulesConfig {
                let mut c = self.clone();
                $( if let Some(section) = &host.$field { c.$field = section.clone(); } )*
                c
            }

            /// The modules of every host, in hook order: the chain hosts
            /// share, and a chain for each host of `hosts` (MongooseIM's
            /// `host_config`). A host runs its own instance of a module whose
            /// section it overrides, and shares the others' instances.
            pub fn build_hosts(&self, hosts: &[(String, HostModulesConfig)]) -> crate::ext::Hooks {
                use crate::ext::HostModules;
                let shared = self.build_shared();
                let mut chains = Vec::new();
                for (name, over) in hosts {
                    let mut m: Vec<Arc<dyn Module>> = Vec::new();
                    let mut i = 0usize;
                    $(
                        match &over.$field {
                            Some(section) if <$ty as ModuleSpec>::enabled(section) => {
                                m.push(<$ty as ModuleSpec>::build(section));
                            }
                            Some(_) => {}
                            None => m.extend(shared[i].clone()),
                        }
                        i += 1;
                    )*
                    let _ = i;
                    chains.push((name.clone(), HostModules::new(m, self.with_host(over).tuning())));
                }
                let shared = HostModules::new(shared.into_iter().flatten().collect(), self.tuning());
                crate::ext::Hooks::new(shared, chains)
            }

            /// Every module, enabled or not, in hook order (for tests of the boundary).
            #[cfg(test)]
            fn build_all(&self) -> Vec<Arc<dyn Module>> {
                vec![$( <$ty as ModuleSpec>::build(&self.$field), )*]
            }

            /// Field names and module names agree (checked by a test).
            #[cfg(test)]
            fn fields() -> Vec<&'static str> {
                vec![$( stringify!($field), )*]
            }
        }

        /// `[[host_config]]`'s `modules`: the sections of one host that
        /// replace those of `[modules]` there; a module without a section
        /// here runs as `[modules]` says. An unknown section or key is refused.
        #[derive(Clone, Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct HostModulesConfig {
            $( $(#[$doc])* pub $field: Option<<$ty as ModuleSpec>::Config>, )*
        }

        impl HostModulesConfig {
            /// Checks the sections given; the error names the key (under
            /// `prefix`) and why. A module that runs once per node has no
            /// per-host section.
            pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
                $(
                    if let Some(section) = &self.$field {
                        if <$ty as ModuleSpec>::NODE_WIDE {
                            return Err((
                                format!("{prefix}.{}", stringify!($field)),
                                "this module runs once per node: configure it under [modules]".to_owned(),
                            ));
                        }
                        <$ty as ModuleSpec>::validate(section)
                            .map_err(|(k, r)| (format!("{prefix}.{}.{}", stringify!($field), k), r))?;
                    }
                )*
                Ok(())
            }
        }
    };
}

modules! {
    /// RFC 6121 §2 roster management and roster pushes.
    mod_roster => roster::Roster,
    /// XEP-0030 service discovery and XEP-0115 server capabilities.
    mod_disco => disco::Disco,
    /// XEP-0199 ping: answers, and pings to silent clients.
    mod_ping => ping::Ping,
    /// XEP-0092 software version.
    mod_version => misc::Version,
    /// XEP-0202 entity time.
    mod_time => misc::Time,
    /// XEP-0054 vCards.
    mod_vcard => vcard::Vcard,
    /// XEP-0049 private XML storage.
    mod_private => private::PrivateStorage,
    /// XEP-0160 offline messages.
    mod_offline => offline::Offline,
    /// XEP-0191 blocking command. Before the modules that act on a message
    /// (archiving, carbons), so that a refused or dropped stanza leaves no trace.
    mod_blocking => blocking::Blocking,
    /// XEP-0313 message archives.
    mod_mam => mam::MamModule,
    /// MongooseIM's Inbox: conversations with unread counts (off by default).
    mod_inbox => inbox::Inbox,
    mod_pubsub => pubsub::Pubsub,
    /// MongooseIM's event pusher: push notifications, HTTP, RabbitMQ (off by default).
    mod_event_pusher => event_pusher::EventPusher,
    /// Push notifications through MongoosePush for virtual pubsub hosts (off by default).
    mod_push_service_mongoosepush => push_service_mongoosepush::MongoosePush,
    /// XEP-0280 message carbons.
    mod_carbons => carbons::Carbons,
    /// XEP-0352 client state indication.
    mod_csi => csi::Csi,
    /// XEP-0198 stream management.
    mod_stream_management => stream_management::StreamManagement,
    /// RFC 6121 §3-§4 presence: subscriptions, broadcast, probes, directed presence.
    mod_presence => presence::Presence,
    /// XEP-0077 in-band registration, password change and account removal.
    mod_register => register::Register,
    /// XEP-0388 SASL2 in stream negotiation.
    mod_sasl2 => sasl2::Sasl2,
    /// XEP-0386 Bind2 inside SASL2.
    mod_bind2 => sasl2::Bind2,
    /// XEP-0484 FAST tokens inside SASL2.
    mod_fast_auth_token => fast_auth_token::FastAuthToken,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The modules MongooseIM also leaves off unless configured.
    const OFF_BY_DEFAULT: &[&str] = &["mod_inbox", "mod_pubsub", "mod_event_pusher", "mod_push_service_mongoosepush"];

    #[test]
    fn section_names_are_module_names() {
        assert_eq!(ModulesConfig::fields(), ModulesConfig::KNOWN);
        let built: Vec<&str> = ModulesConfig::default().build().iter().map(|m| m.name()).collect();
        let on: Vec<&str> = ModulesConfig::KNOWN.iter().copied().filter(|m| !OFF_BY_DEFAULT.contains(m)).collect();
        assert_eq!(built, on, "every module but {OFF_BY_DEFAULT:?} is on by default, in this order");
    }

    #[test]
    fn an_unknown_module_or_key_is_refused_with_the_known_names() {
        let e = toml::from_str::<ModulesConfig>("[mod_mamm]\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `mod_mamm`"), "{e}");
        for known in ModulesConfig::KNOWN {
            assert!(e.contains(known), "{known} missing from: {e}");
        }
        let e = toml::from_str::<ModulesConfig>("[mod_carbons]\nenable = true\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `enable`"), "{e}");
    }

    #[test]
    fn a_disabled_module_is_not_built() {
        let cfg: ModulesConfig = toml::from_str("[mod_mam]\nenabled = false\n[mod_csi]\nenabled = false\n").unwrap();
        let built: Vec<&str> = cfg.build().iter().map(|m| m.name()).collect();
        assert!(!built.contains(&"mod_mam") && !built.contains(&"mod_csi"));
        assert!(built.contains(&"mod_carbons"));
    }
}

/// The boundary, checked on the sources: module files import no core file
/// and no other module; core files name no module.
#[cfg(test)]
mod boundary {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    /// The file's code outside its unit tests.
    fn code(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_owned(),
            None => text,
        }
    }

    /// Every file of every module, with the module's file or folder name: a
    /// module is one file here, or a folder whose files all belong to it.
    fn module_files() -> Vec<(String, std::path::PathBuf)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/modules");
        let rs = |p: &Path| p.extension().is_some_and(|e| e == "rs");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).unwrap() {
                    let inner = inner.unwrap().path();
                    if rs(&inner) {
                        files.push((stem.clone(), inner));
                    }
                }
            } else if rs(&path) && !path.ends_with("mod.rs") {
                files.push((stem, path));
            }
        }
        files.sort();
        assert!(files.len() >= 10, "module files found: {files:?}");
        files
    }

    #[test]
    fn no_module_imports_the_core_or_another_module() {
        let forbidden =
            ["crate::session", "crate::server", "crate::services", "crate::modules", "crate::c2s", "crate::bosh"];
        for (_, file) in module_files() {
            let code = code(&file);
            for f in forbidden {
                assert!(!code.contains(f), "{} uses {f}", file.display());
            }
            // A file of a folder module may reach its siblings (`super::` is
            // the module itself); nothing reaches the registry above it.
            let in_folder = file.parent().is_some_and(|p| !p.ends_with("modules"));
            let above = if in_folder { "super::super" } else { "super::" };
            assert!(!code.contains(above), "{} uses {above}", file.display());
        }
    }

    /// A module that implements a per-stanza or per-login hook declares it,
    /// or the registry would never call it.
    #[test]
    fn every_implemented_per_stanza_hook_is_declared() {
        use crate::ext::HookSet;
        let hooks = [
            ("client_stanza", HookSet::CLIENT_STANZA),
            ("user_send_check", HookSet::USER_SEND_CHECK),
            ("user_send_message", HookSet::USER_SEND_MESSAGE),
            ("user_receive", HookSet::USER_RECEIVE),
            ("client_output", HookSet::CLIENT_OUTPUT),
            ("client_wrote", HookSet::CLIENT_WROTE),
            ("blocks", HookSet::BLOCKS),
            ("filter_local", HookSet::FILTER_LOCAL),
            ("session_opening", HookSet::SESSION_OPENING),
            ("user_available", HookSet::USER_AVAILABLE),
            ("user_unavailable", HookSet::USER_UNAVAILABLE),
            ("presence_in", HookSet::PRESENCE_IN),
            ("undelivered_message", HookSet::UNDELIVERED_MESSAGE),
            ("roster_changed", HookSet::ROSTER_CHANGED),
        ];
        let built = super::ModulesConfig::default().build_all();
        let mut stems: Vec<String> = module_files().into_iter().map(|(stem, _)| stem).collect();
        stems.dedup();
        for stem in stems {
            let code: String =
                module_files().iter().filter(|(s, _)| *s == stem).map(|(_, f)| code(f)).collect::<Vec<_>>().join("\n");
            let implemented: Vec<_> = hooks.iter().filter(|(name, _)| code.contains(&format!("fn {name}("))).collect();
            if stem == "misc" {
                assert!(implemented.is_empty(), "misc.rs holds several modules: give a hooked one its own file");
                continue;
            }
            let name = format!("mod_{stem}");
            let module = built.iter().find(|m| m.name() == name).unwrap_or_else(|| panic!("no module {name}"));
            for (hook, flag) in implemented {
                assert!(module.hot_hooks().has(*flag), "{name} implements {hook} but does not declare it");
            }
        }
    }

    /// Services (`node_services/`) keep the modules' boundary too, and no
    /// core file names one: the composition root only calls the list.
    #[test]
    fn services_keep_the_boundary() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("src/node_services");
        let services: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("mod.rs"))
            .collect();
        assert!(!services.is_empty());
        for file in &services {
            let text = code(file);
            for f in
                ["crate::session", "crate::server", "crate::services", "crate::modules", "crate::c2s", "crate::bosh"]
            {
                assert!(!text.contains(f), "{} uses {f}", file.display());
            }
            let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
            for core in ["src/session.rs", "src/server.rs", "src/c2s.rs", "src/negotiation.rs", "../node/src/run.rs"] {
                assert!(!code(&root.join(core)).contains(&format!("{stem}::")), "{core} names the service {stem}");
            }
        }
    }

    #[test]
    fn no_core_file_names_a_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let core = [
            "src/session.rs",
            "src/server.rs",
            "src/c2s.rs",
            "src/negotiation.rs",
            "src/bosh.rs",
            "src/websocket.rs",
            "src/services.rs",
            "../node/src/run.rs",
        ];
        let stems: Vec<String> = module_files().into_iter().map(|(stem, _)| stem).collect();
        for file in core {
            let code = code(&root.join(file));
            assert!(!code.contains("modules::"), "{file} reaches into the modules");
            for name in super::ModulesConfig::KNOWN {
                assert!(!code.contains(name), "{file} names {name}");
            }
            for stem in &stems {
                assert!(!code.contains(&format!("{stem}::")), "{file} names the module {stem}");
            }
        }
    }
}
