//! XEP-0049: private XML storage, readable and writable by the owner only.

use std::sync::Arc;

use meerkat_routing::Routed;
use meerkat_storage::PrivateRepo;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::error::StanzaErrorCondition;
use meerkat_xmpp::ns;

use crate::ext::registry::ModuleSpec;
use crate::ext::util::{account_of, parse_stored};
use crate::ext::{storage_error, HookSet, IqAnswer, Module, ModuleCtx, Target};

pub struct PrivateStorage {
    max_bytes: u64,
}

/// `[modules.mod_private]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivateConfig {
    /// Clients may store private XML (XEP-0049).
    pub enabled: bool,
    /// Bytes one account may store, namespaces and documents together; a
    /// write past it is refused with `policy-violation` and changes nothing.
    pub max_bytes: u64,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        PrivateConfig { enabled: true, max_bytes: 1024 * 1024 }
    }
}

impl ModuleSpec for PrivateStorage {
    const NAME: &'static str = "mod_private";
    type Config = PrivateConfig;
    fn enabled(cfg: &PrivateConfig) -> bool {
        cfg.enabled
    }
    fn validate(cfg: &PrivateConfig) -> Result<(), (&'static str, String)> {
        if cfg.max_bytes < 65536 {
            return Err(("max_bytes", "must be at least 65536".into()));
        }
        Ok(())
    }
    fn build(cfg: &PrivateConfig) -> Arc<dyn Module> {
        Arc::new(PrivateStorage { max_bytes: cfg.max_bytes })
    }
}

#[async_trait::async_trait]
impl Module for PrivateStorage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn hot_hooks(&self) -> HookSet {
        HookSet::NONE
    }
    fn disco_features(&self, t: Target) -> &'static [&'static str] {
        if t == Target::Server {
            &[ns::PRIVATE]
        } else {
            &[]
        }
    }
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[ns::PRIVATE]
    }
    async fn iq(&self, ctx: &ModuleCtx, t: Target, iq: &Routed, payload: &Element) -> Option<IqAnswer> {
        if !payload.is("query", ns::PRIVATE) {
            return None;
        }
        if t != Target::OwnAccount {
            return Some(Err(StanzaErrorCondition::Forbidden));
        }
        let (user, host) = account_of(&iq.from);
        let children: Vec<&Element> = payload.elements().collect();
        // Exactly one child, and never one in the jabber:* namespaces (XEP-0049 §3).
        let [child] = children.as_slice() else {
            return Some(Err(StanzaErrorCondition::NotAcceptable));
        };
        if child.ns.starts_with("jabber:") || child.ns.is_empty() {
            return Some(Err(StanzaErrorCondition::NotAcceptable));
        }
        Some(match iq.stanza.attr("type") {
            Some("get") => match ctx.storage.get_private(&host, &user, &child.ns).await {
                Ok(Some(xml)) => {
                    let stored = parse_stored(&xml).unwrap_or_else(|| (*child).clone());
                    Ok(Some(Element::new("query", ns::PRIVATE).with_child(stored)))
                }
                Ok(None) => Ok(Some(Element::new("query", ns::PRIVATE).with_child((*child).clone()))),
                Err(e) => Err(storage_error("private storage read")(e)),
            },
            _ => {
                let xml = child.to_xml(ns::CLIENT);
                // Writes of one account run one at a time (on its shard), so
                // the size read here is still the size when the write lands.
                match ctx.storage.private_size(&host, &user, &child.ns).await {
                    Err(e) => Err(storage_error("private storage size")(e)),
                    Ok(others) if others + (child.ns.len() + xml.len()) as u64 > self.max_bytes => {
                        return Some(Err(StanzaErrorCondition::PolicyViolation));
                    }
                    Ok(_) => ctx
                        .storage
                        .set_private(&host, &user, &child.ns, &xml)
                        .await
                        .map(|()| None)
                        .map_err(storage_error("private storage write")),
                }
            }
        })
    }
}
