//! Services: parts of the node that run once per node, whatever its hosts
//! (MongooseIM's `service_*`, and the listeners that are not c2s): a
//! component listener, s2s, outgoing pools.
//!
//! A service is built from its configuration by [`crate::node_services`]
//! (the one list that names them), started once the modules have started
//! and before clients are accepted, and stopped once the client sessions
//! have ended and before the modules stop. It sees the node through a
//! [`ServiceCtx`]: the modules' context (router, storage, accounts, hooks)
//! plus what a listener needs from the composition root (hosts, TLS,
//! shapers). Like a module, it imports neither the session actor nor the
//! server workers, and no core file names it.

use std::path::PathBuf;
use std::sync::Arc;

use super::ModuleCtx;
use crate::client_cert::{ClientCerts, VerifyMode};

/// What a listener's `tls` section names: the certificate chain and key,
/// both PEM (with neither, the node's self-signed certificate for its
/// hosts), and how certificates of the other side are asked for and checked.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) the other side's certificate must chain to.
    pub cacertfile: Option<PathBuf>,
    /// `peer` (the default: a certificate is asked for when `cacertfile` is
    /// set, and must chain to it), `selfsigned_peer` or `none`.
    #[serde(default)]
    pub verify_mode: VerifyMode,
}

/// A listener's TLS, as the composition root builds it from [`TlsFiles`].
#[derive(Clone)]
pub struct ListenerTls {
    /// The server configuration, asking for the other side's certificate
    /// when `client_certs` is set.
    pub server: Arc<rustls::ServerConfig>,
    /// How the other side's certificate is judged after the handshake.
    pub client_certs: Option<Arc<ClientCerts>>,
    /// The certificate and key, for connections this side opens.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

/// Builds a listener's TLS.
pub type TlsBuilder = dyn Fn(&TlsFiles) -> Result<ListenerTls, String> + Send + Sync;
/// Resolves a `[shaper.NAME]` to its rate in bytes per second (`None`: unlimited).
pub type ShaperLookup = dyn Fn(&str) -> Result<Option<u64>, String> + Send + Sync;

/// What the composition root gives services besides the modules' context.
#[derive(Clone)]
pub struct ServiceEnv {
    /// The configured hosts.
    pub hosts: Vec<String>,
    pub tls: Arc<TlsBuilder>,
    pub shaper: Arc<ShaperLookup>,
}

/// A service's view of the node.
#[derive(Clone)]
pub struct ServiceCtx {
    pub module: ModuleCtx,
    pub env: ServiceEnv,
}

/// A part of the node that runs once per node.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    /// Its name in logs and errors (`listen.component[0]`).
    fn name(&self) -> String;

    /// Starts it (binds its sockets, starts its tasks). An error stops the
    /// node's start, naming the service.
    async fn start(&self, ctx: &ServiceCtx) -> Result<(), String>;

    /// Stops it: accepts nothing more, ends what it runs, and returns once
    /// its tasks ended or `deadline` passed.
    async fn stop(&self, deadline: tokio::time::Instant);

    /// Answers another node's request addressed to `target`
    /// ([`ModuleCtx::ask_node`] with that name) when `target` is one this
    /// service answers; `None` otherwise.
    async fn node_request(&self, _target: &str, _from_node: u64, _body: &[u8]) -> Option<Result<Vec<u8>, String>> {
        None
    }

    /// What the admin API shows of it (`GET /api/s2s` for `s2s`), if anything.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The services of a node, started in order and stopped in reverse.
#[derive(Default)]
pub struct ServiceSet {
    services: Vec<Arc<dyn Service>>,
}

impl ServiceSet {
    pub fn new(services: Vec<Arc<dyn Service>>) -> Self {
        ServiceSet { services }
    }

    pub fn names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name()).collect()
    }

    /// The status of the service named `name`, when it runs and has one.
    pub fn status(&self, name: &str) -> Option<serde_json::Value> {
        self.services.iter().find(|s| s.name() == name).and_then(|s| s.status())
    }

    /// Starts every service; the first error names its service (the ones
    /// started before it are stopped again).
    pub async fn start(&self, ctx: &ServiceCtx) -> Result<(), (String, String)> {
        // Other nodes' requests reach the services through the module registry.
        ctx.module.hooks.set_services(self.services.clone());
        for (i, s) in self.services.iter().enumerate() {
            if let Err(e) = s.start(ctx).await {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                for started in self.services[..i].iter().rev() {
                    started.stop(deadline).await;
                }
                return Err((s.name(), e));
            }
        }
        Ok(())
    }

    /// Stops every service, in reverse order.
    pub async fn stop(&self, deadline: tokio::time::Instant) {
        for s in self.services.iter().rev() {
            s.stop(deadline).await;
        }
    }
}
