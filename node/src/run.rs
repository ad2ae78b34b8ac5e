//! Start-up and shutdown of a node.

use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use anyhow::Context as _;
use meerkat_actors::admission::{Admission, ConnectionLimits};
use meerkat_actors::auth::{Accounts, HashingPool};
use meerkat_actors::c2s::{self, C2sListener};
use meerkat_actors::ext::{ServiceCtx, ServiceEnv, ServiceSet, TlsFiles};
use meerkat_actors::negotiation::{HostNegotiation, NegotiationConfig, TlsMode};
use meerkat_actors::server::ServerWorkers;
use meerkat_actors::services::{Services, SessionSettings};
use meerkat_cluster::node::{ClusterNode, ClusterSettings};
use meerkat_cluster::peer_auth::SharedSecret;
use meerkat_cluster::{NodeId, SessionRegistry, SessionTable, StandaloneRegistry};
use meerkat_routing::cluster::ClusterInbox;
use meerkat_routing::global::{GlobalConfig, GlobalDistrib};
use meerkat_routing::KickReason;
use meerkat_routing::Router;
use meerkat_storage::{DbTls, SecretRepo as _, Storage, StorageConfig};
use meerkat_xmpp::parser::Limits;
use meerkat_xmpp::sasl::SaltSecret;
use tokio::sync::watch;

use crate::config::{mechanism, Config, LogFormat};

/// Name of the key unknown users' fake SCRAM salts are derived from, in the database.
const SCRAM_SALT_SECRET: &str = "scram_fake_salt";

fn init_logging(cfg: &crate::config::Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs a node until SIGTERM or SIGINT.
pub fn start(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg.log);
    // Before anything registers a handle with it.
    crate::metrics::install(cfg.instrumentation.prometheus.enabled);
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&cfg.general.data_dir)
        .with_context(|| format!("creating {}", cfg.general.data_dir.display()))?;
    let system = actix_rt::System::new();
    system.block_on(serve(cfg))
}

fn admin_auth(cfg: &Config) -> anyhow::Result<crate::admin::AdminAuth> {
    use crate::admin::AdminAuth;
    if let Some(t) = &cfg.admin.token {
        return Ok(AdminAuth::Token(t.clone()));
    }
    if let (Some(u), Some(p)) = (&cfg.admin.username, &cfg.admin.password) {
        return Ok(AdminAuth::Basic { username: u.clone(), password: p.clone() });
    }
    let path = cfg.general.data_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(AdminAuth::Token(t.trim().to_string()));
        }
    }
    let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    crate::tls::write_private(&path, token.as_bytes())?;
    tracing::info!(path = %path.display(), "generated an admin API token");
    Ok(AdminAuth::Token(token))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let pool = cfg.outgoing_pools.rdbms.default.as_ref();
    let tls = match pool.map(|p| &p.connection.tls) {
        Some(t) if t.required => DbTls::Required { ca_file: t.cacertfile.clone() },
        Some(t) if t.preferred => DbTls::Preferred,
        _ => DbTls::Disabled,
    };
    let storage_cfg = StorageConfig {
        url: cfg.database_url(),
        pool_size: pool.map(|p| p.workers).unwrap_or(10),
        connect_timeout: Duration::from_secs(10),
        tls,
    };
    let storage = Arc::new(
        Storage::connect(&storage_cfg)
            .await
            .with_context(|| format!("connecting to the database ({})", redact(&storage_cfg.url)))?,
    );
    tracing::info!(backend = storage.backend_name(), "database ready");
    // Unknown users' fake SCRAM salts come from this key: kept in the database,
    // it is the same after a restart and on every node sharing the database.
    let salt_secret = SaltSecret::new(
        &storage
            .shared_secret(SCRAM_SALT_SECRET, &rand::random::<[u8; 32]>())
            .await
            .context("reading the server's SCRAM salt secret from the database")?,
    );

    let hosts = cfg.general.hosts.clone();
    let sessions = Arc::new(SessionTable::new());
    let cluster = match &cfg.cluster {
        Some(c) => Some(start_cluster(&cfg, c, sessions.clone()).await?),
        None => None,
    };
    let registry: Arc<dyn SessionRegistry> = match &cluster {
        Some(node) => node.clone(),
        None => Arc::new(StandaloneRegistry::new(NodeId(1), sessions.clone())),
    };
    let router = match &cluster {
        // Service and component domains are registered through the Raft log.
        Some(node) => Router::with_domains(registry.node(), hosts.clone(), sessions, node.clone()),
        None => Router::new(registry.node(), hosts.clone(), sessions),
    };
    if let Some(node) = &cluster {
        router.set_transport(node.transport().clone());
        node.transport().set_inbox(ClusterInbox::new(router.clone()));
    }
    {
        let router = router.clone();
        registry.set_kicker(Arc::new(move |sid| {
            if let Some(sink) = router.sink(sid) {
                sink.kick(KickReason::Conflict);
            }
        }));
    }
    let workers = ServerWorkers::new(cfg.session.server_workers, cfg.session.server_queue);
    let hashing = HashingPool::new(cfg.auth.password.hashing_threads.unwrap_or_else(HashingPool::default_threads));
    tracing::info!(threads = hashing.threads(), "password hashing pool ready");
    let accounts = Accounts::new(
        storage.clone(),
        hosts.clone(),
        cfg.auth.password.format,
        cfg.auth.password.scram_iterations,
        hashing,
    );
    let settings = SessionSettings {
        mailbox_capacity: cfg.session.mailbox_capacity,
        mailbox_overflow: cfg.session.mailbox_overflow,
        max_outgoing_bytes: cfg.session.max_outgoing_bytes,
        idle_timeout: Duration::from_secs(cfg.session.idle_timeout),
        keepalive_interval: Duration::from_secs(cfg.session.keepalive_interval),
        negotiation_timeout: Duration::from_secs(cfg.session.negotiation_timeout),
    };
    // The modules of every host; their sections decide the pings, stream
    // management and in-band registration.
    let modules = Arc::new(cfg.modules.build_hosts(&cfg.host_modules()));
    tracing::info!(modules = ?modules, "modules enabled");
    let svc = Services::new(
        router.clone(),
        registry.clone(),
        storage.clone(),
        accounts,
        settings,
        workers.clone(),
        modules,
        Arc::new(cfg.outgoing_pools.for_modules()),
    );
    router.set_server_handler(workers.clone());
    actix_rt::spawn(crate::metrics::metrics().upkeep(svc.shutdown_signal()));

    let n_arbiters = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let arbiters: Vec<Arbiter> = (0..n_arbiters).map(|_| Arbiter::new()).collect();
    let mut next = 0usize;
    let worker_done = workers.start(&svc, |fut| {
        arbiters[next % arbiters.len()].spawn(fut);
        next += 1;
    });

    // The modules start once the router and the server workers exist (a
    // module may register a service domain), before any client is accepted.
    svc.ctx
        .hooks
        .start(&svc.ctx)
        .await
        .map_err(|(module, e)| anyhow::anyhow!("[modules.{module}] did not start: {e}"))?;

    // After the router, the cluster and the server workers exist (stanzas from
    // other data centers may arrive at once) and before any client is accepted.
    let global = match &cfg.global_distribution {
        Some(g) => {
            let node_id = cluster.as_ref().map(|n| n.id()).unwrap_or(1);
            Some(start_global(&cfg, g, node_id, &router).await?)
        }
        None => None,
    };

    // Once per node, after the modules and global distribution (a service
    // may register domains) and before clients are accepted.
    let services =
        Arc::new(ServiceSet::new(meerkat_actors::node_services::build(&cfg.services()).map_err(anyhow::Error::msg)?));
    {
        let (data_dir, tls_hosts) = (cfg.general.data_dir.clone(), hosts.clone());
        let shapers =
            cfg.shaper.iter().map(|(k, v)| (k.clone(), v.max_rate)).collect::<std::collections::HashMap<_, _>>();
        let env = ServiceEnv {
            hosts: hosts.clone(),
            tls: Arc::new(move |files: &TlsFiles| {
                let (cert, key) = match (&files.certfile, &files.keyfile) {
                    (Some(c), Some(k)) => (c.clone(), k.clone()),
                    (None, None) => crate::tls::self_signed(&data_dir, &tls_hosts).map_err(|e| format!("{e:#}"))?,
                    _ => return Err("certfile and keyfile go together".to_owned()),
                };
                crate::tls::listener_tls(&cert, &key, files).map_err(|e| format!("{e:#}"))
            }),
            shaper: Arc::new(move |name: &str| match name {
                "none" => Ok(None),
                _ => shapers.get(name).map(|r| Some(*r)).ok_or_else(|| format!("no [shaper.{name}] section")),
            }),
        };
        services
            .start(&ServiceCtx { module: svc.ctx.clone(), env })
            .await
            .map_err(|(name, e)| anyhow::anyhow!("[{name}] did not start: {e}"))?;
        if !services.names().is_empty() {
            tracing::info!(services = ?services.names(), "services started");
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut mechanisms = cfg.offered_mechanisms();
    // Mechanisms modules offer (SASL hooks) come after the configured ones.
    let hooks = &svc.ctx.hooks;
    let chains = std::iter::once(hooks.shared()).chain(hooks.overrides().map(|(_, m)| m));
    for m in chains.flat_map(|c| c.features.sasl_mechanisms.iter()).filter_map(|m| mechanism(m)) {
        if !mechanisms.contains(&m) {
            mechanisms.push(m);
        }
    }
    let shared = hooks.shared();
    let mut accept_tasks = Vec::new();
    let negotiation = NegotiationConfig {
        hosts: hosts.clone(),
        tls_mode: TlsMode::None,
        mechanisms: mechanisms.clone(),
        allow_plain_without_tls: cfg.auth.allow_plain_without_tls,
        registration: shared.tuning.in_band_registration,
        max_auth_failures: cfg.auth.max_failures,
        scram_iterations: cfg.auth.password.scram_iterations,
        salt_secret: salt_secret.clone(),
        external_checks: cfg.external_checks(),
        modules: shared.tuning.negotiation.clone(),
        features: shared.features.clone(),
        host_overrides: Arc::new(
            hooks
                .overrides()
                .map(|(host, m)| {
                    let n = HostNegotiation {
                        registration: m.tuning.in_band_registration,
                        modules: m.tuning.negotiation.clone(),
                        features: m.features.clone(),
                    };
                    (host.to_owned(), n)
                })
                .collect(),
        ),
    };
    for l in &cfg.listen.c2s {
        let client_certs = match l.tls.mode {
            TlsMode::None => None,
            _ => crate::tls::client_certs(l.tls.verify_mode, l.tls.cacertfile.as_deref())
                .with_context(|| format!("listen.c2s on port {}: tls", l.port))?,
        };
        let acceptor = if l.tls.mode == TlsMode::None {
            None
        } else {
            let (cert, key) = match (&l.tls.certfile, &l.tls.keyfile) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                _ => crate::tls::self_signed(&cfg.general.data_dir, &hosts)?,
            };
            let mut config = crate::tls::server_config_with(&cert, &key, client_certs.as_ref())?;
            if l.tls.early_data {
                // 0-RTT needs stateful resumption, rustls's default session cache.
                let mut with_early = (*config).clone();
                with_early.max_early_data_size = crate::tls::MAX_EARLY_DATA;
                config = Arc::new(with_early);
            }
            Some(tokio_rustls::TlsAcceptor::from(config))
        };
        let listener = Arc::new(C2sListener {
            negotiation: NegotiationConfig { tls_mode: l.tls.mode, ..negotiation.clone() },
            limits: Limits { max_stanza_size: l.max_stanza_size, max_depth: l.max_depth },
            tls: acceptor,
            allow_login: l.access == "all",
            admission: Admission::new(ConnectionLimits {
                max_connections: l.max_connections.0,
                max_connections_per_ip: l.max_connections_per_ip.0,
            }),
            max_rate: cfg.shaper_rate(&l.shaper).map_err(anyhow::Error::msg)?,
            client_certs,
        });
        let addr = std::net::SocketAddr::new(l.ip_address, l.port);
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening for c2s on {addr}"))?;
        tracing::info!(%addr, tls = ?l.tls.mode, "c2s listener ready");
        let svc = svc.clone();
        let handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
        let mut stop = stop_rx.clone();
        accept_tasks.push(actix_rt::spawn(async move {
            let mut i = 0usize;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    r = tcp.accept() => match r {
                        Ok((sock, peer)) => {
                            // The socket moves to the arbiter's own reactor: left on this
                            // thread's, every readiness event would wake the connection
                            // from another thread.
                            let sock = match sock.into_std() {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::warn!(error = %e, %peer, "could not hand over an accepted connection");
                                    continue;
                                }
                            };
                            let (svc, listener) = (svc.clone(), listener.clone());
                            handles[i % handles.len()].spawn(async move {
                                match tokio::net::TcpStream::from_std(sock) {
                                    Ok(sock) => c2s::serve(svc, listener, sock, peer).await,
                                    Err(e) => tracing::warn!(error = %e, %peer, "could not register an accepted connection"),
                                }
                            });
                            i += 1;
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }

    // [[listen.http]]: XMPP over WebSocket, on the same arbiters and with the
    // same negotiation as c2s, minus STARTTLS (RFC 7395 §3.9).
    let ws_listener = |limits: Limits, admission: Arc<Admission>, max_rate: Option<u64>| C2sListener {
        negotiation: negotiation.clone(),
        limits,
        tls: None,
        allow_login: true,
        admission,
        max_rate,
        // The HTTP listener reads the client certificate of each connection.
        client_certs: None,
    };
    let arbiter_handles: Vec<_> = arbiters.iter().map(|a| a.handle()).collect();
    let http_ctx = crate::websocket::HttpContext {
        svc: &svc,
        arbiters: &arbiter_handles,
        data_dir: &cfg.general.data_dir,
        hosts: &hosts,
        listener: &ws_listener,
        workers: n_arbiters,
        shutdown_timeout: 2,
    };
    let mut http_servers = Vec::new();
    for (i, l) in cfg.listen.http.iter().enumerate() {
        let max_rate = cfg.shaper_rate(&l.shaper).map_err(anyhow::Error::msg)?;
        let server = crate::websocket::listen(&format!("listen.http[{i}]"), l, max_rate, &http_ctx)?;
        http_servers.push((server.handle(), actix_rt::spawn(server)));
    }

    let admin_state = actix_web::web::Data::new(crate::admin::AdminState {
        svc: svc.clone(),
        auth: admin_auth(&cfg)?,
        cluster: cluster.clone(),
        global: global.clone(),
        services: services.clone(),
    });
    let admin_addr = std::net::SocketAddr::new(cfg.admin.ip_address, cfg.admin.port);
    let admin = actix_web::HttpServer::new(move || {
        actix_web::App::new().app_data(admin_state.clone()).configure(crate::admin::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(admin_addr)
    .with_context(|| format!("listening for the admin API on {admin_addr}"))?
    .run();
    let admin_handle = admin.handle();
    let admin_task = actix_rt::spawn(admin);
    tracing::info!(%admin_addr, hosts = ?hosts, "meerkat is running");

    wait_for_signal().await;
    let grace = Duration::from_secs(cfg.general.shutdown_grace_period);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(?grace, "shutting down");
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    for (h, _) in &http_servers {
        // No new connections; upgraded ones close with their sessions below.
        h.pause().await;
    }
    svc.begin_shutdown();
    // Sessions leave the table at once; their connections close once the
    // stream error and everything queued before it are written.
    while (svc.connections() > 0 || svc.local_sessions() > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With the sessions gone, take this node's entries out of the routing
    // table and close the links, while the server workers still run for
    // what the links delivered last (offline storage).
    services.stop(deadline).await;
    if let Some(g) = &global {
        g.stop().await;
    }
    svc.ctx.hooks.stop(&svc.ctx).await;
    workers.close();
    for done in worker_done {
        let _ = tokio::time::timeout_at(deadline, done).await;
    }
    if let Some(node) = &cluster {
        node.stop(deadline).await;
    }
    for (h, task) in http_servers {
        h.stop(true).await;
        let _ = task.await;
    }
    admin_handle.stop(true).await;
    let _ = admin_task.await;
    storage.close().await;
    for a in &arbiters {
        a.stop();
    }
    for a in arbiters {
        let _ = a.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens this node's cluster membership: its id, transport, Raft state and tasks.
async fn start_cluster(
    cfg: &Config,
    c: &crate::config::Cluster,
    sessions: Arc<SessionTable>,
) -> anyhow::Result<Arc<ClusterNode>> {
    let dir = cfg.general.data_dir.join("cluster");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let node_id = match c.node_id {
        Some(id) => id,
        None => {
            let path = dir.join("node_id");
            match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().parse().with_context(|| format!("{} does not hold a node id", path.display()))?,
                Err(_) => {
                    let id = (rand::random::<u64>() >> 12).max(1);
                    std::fs::write(&path, format!("{id}\n")).with_context(|| format!("writing {}", path.display()))?;
                    id
                }
            }
        }
    };
    let tls = match &c.tls {
        Some(t) => Some(crate::tls::cluster_tls(&t.cacertfile, &t.certfile, &t.keyfile, &t.server_name)?),
        None => None,
    };
    let settings = ClusterSettings {
        name: c.name.clone(),
        node_id,
        listen: c.listen,
        advertise: c.advertise.clone().unwrap_or_else(|| c.listen.to_string()),
        dir,
        bootstrap: c.bootstrap,
        sync_log: c.sync_log,
        heartbeat: Duration::from_millis(c.heartbeat_interval_ms),
        election_timeout_min: Duration::from_millis(c.election_timeout_min_ms),
        election_timeout_max: Duration::from_millis(c.election_timeout_max_ms),
        down_after: Duration::from_secs(c.down_after),
        commit_timeout: Duration::from_secs(c.commit_timeout),
        tls,
        secret: c.shared_secret.as_ref().map(|s| SharedSecret::new(&s.0)).transpose().map_err(anyhow::Error::msg)?,
    };
    let node = ClusterNode::start(settings, sessions)
        .await
        .with_context(|| format!("starting the cluster member (transport on {})", c.listen))?;
    tracing::info!(node = node_id, listen = %c.listen, cluster = %c.name, "cluster member started");
    Ok(node)
}

/// Maps `[global_distribution]` to the routing crate's settings.
fn global_config(cfg: &Config, g: &crate::config::GlobalDistribution, node_id: u64) -> anyhow::Result<GlobalConfig> {
    let redis = cfg
        .global_redis()
        .with_context(|| format!("global_distribution.redis.pool: no Redis pool {:?}", g.redis.pool))?;
    let c = &g.connections;
    let endpoints = c
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            ep.listen_addr().map_err(|e| anyhow::anyhow!("global_distribution.connections.endpoints[{i}]: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = match &c.tls {
        Some(t) => Some(
            crate::tls::cluster_tls(&t.cacertfile, &t.certfile, &t.keyfile, &t.server_name)
                .context("global_distribution.connections.tls")?,
        ),
        None => None,
    };
    let mut gc = GlobalConfig::new(&g.global_host, &g.local_host);
    gc.node_id = node_id;
    gc.redis_url = redis.url();
    if let Some(t) = &redis.tls {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        gc.redis_tls = Some(meerkat_routing::global::table::RedisTls {
            ca: t.cacertfile.as_deref().map(read).transpose()?,
            client: match (&t.certfile, &t.keyfile) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        });
    }
    gc.expire_after = Duration::from_secs(g.redis.expire_after);
    gc.refresh_after = Duration::from_secs(g.redis.refresh_after);
    gc.endpoints = endpoints;
    gc.advertised_endpoints = c.advertised_endpoints.iter().map(|e| e.advertised()).collect();
    gc.connections_per_endpoint = c.connections_per_endpoint;
    gc.hosts_refresh_interval = Duration::from_millis(c.hosts_refresh_interval);
    gc.disabled_gc_interval = Duration::from_secs(c.disabled_gc_interval);
    gc.tls = tls;
    gc.secret = c.shared_secret.as_ref().map(|s| SharedSecret::new(&s.0)).transpose().map_err(anyhow::Error::msg)?;
    gc.message_ttl = g.message_ttl;
    gc.cache_jid_lifetime = Duration::from_secs(g.cache.jid_lifetime_seconds);
    gc.cache_max_jids = g.cache.max_jids;
    gc.bounce_enabled = g.bounce.enabled;
    gc.bounce_resend_after = Duration::from_millis(g.bounce.resend_after_ms);
    gc.bounce_max_retries = g.bounce.max_retries;
    Ok(gc)
}

/// Connects to the routing table, opens the links' listeners and registers
/// global distribution on the router.
async fn start_global(
    cfg: &Config,
    g: &crate::config::GlobalDistribution,
    node_id: u64,
    router: &Arc<Router>,
) -> anyhow::Result<Arc<GlobalDistrib>> {
    let gc = global_config(cfg, g, node_id)?;
    let url = redact(&gc.redis_url);
    let endpoints = gc.endpoints.clone();
    let gd = GlobalDistrib::start(gc, router).await.with_context(|| {
        format!(
            "starting global distribution (data center {}, routing table at {url}, links on {endpoints:?})",
            g.local_host
        )
    })?;
    tracing::info!(node = node_id, local_host = %g.local_host, global_host = %g.global_host, "global distribution ready");
    Ok(gd)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
