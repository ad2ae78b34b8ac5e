//! The admin HTTP API (JSON), described by `/api/openapi.json`.
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer <token>`
//! or Basic credentials from `[admin]`. Every error, including an unknown
//! path (404), a method the path does not have (405, with `Allow`) and a
//! body or path that does not parse (400), is JSON `{"error": kind,
//! "detail": text}`, with the status chosen in one place, [`ApiError::status`].
//! Which methods a path has comes from the OpenAPI document, which a test
//! checks against the routes.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::Engine as _;
use meerkat_actors::auth::AccountError;
use meerkat_actors::services::Services;
use meerkat_routing::KickReason;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq as _;

/// How the API checks callers.
#[derive(Clone)]
pub enum AdminAuth {
    Token(String),
    Basic { username: String, password: String },
}

impl AdminAuth {
    fn check(&self, req: &HttpRequest) -> bool {
        let Some(h) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        match self {
            AdminAuth::Token(t) => {
                h.strip_prefix("Bearer ").is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(t.as_bytes())))
            }
            AdminAuth::Basic { username, password } => {
                let Some(b64) = h.strip_prefix("Basic ") else { return false };
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
                let expected = format!("{username}:{password}");
                bool::from(raw.as_slice().ct_eq(expected.as_bytes()))
            }
        }
    }
}

/// What the handlers share.
pub struct AdminState {
    pub svc: Arc<Services>,
    pub auth: AdminAuth,
    /// This node's cluster membership, when `[cluster]` is configured.
    pub cluster: Option<Arc<meerkat_cluster::node::ClusterNode>>,
    /// Global distribution, when `[global_distribution]` is configured.
    pub global: Option<Arc<meerkat_routing::global::GlobalDistrib>>,
    /// The node's services (`GET /api/s2s` asks the `s2s` one).
    pub services: Arc<meerkat_actors::ext::ServiceSet>,
}

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong credentials")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// The path exists without this method; the methods it has.
    #[error("this path answers {}", .0.join(", "))]
    MethodNotAllowed(Vec<String>),
}

impl ApiError {
    /// The one place API errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The `error` field: what kind of failure, for programs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status());
        match self {
            ApiError::Unauthorized => {
                r.insert_header(("WWW-Authenticate", "Bearer"));
            }
            ApiError::MethodNotAllowed(methods) => {
                r.insert_header(("Allow", methods.join(", ")));
            }
            _ => {}
        }
        r.json(json!({ "error": self.kind(), "detail": self.to_string() }))
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Exists => ApiError::Conflict(e.to_string()),
            AccountError::NotFound => ApiError::NotFound(e.to_string()),
            AccountError::InvalidUsername(_) | AccountError::EmptyPassword | AccountError::InvalidPassword => {
                ApiError::BadRequest(e.to_string())
            }
            AccountError::UnknownHost(_) => ApiError::NotFound(e.to_string()),
            AccountError::Storage(_) | AccountError::Hashing(_) => ApiError::Internal(e.to_string()),
        }
    }
}

fn authorize(state: &AdminState, req: &HttpRequest) -> Result<(), ApiError> {
    if state.auth.check(req) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The OpenAPI document, kept next to the code and checked by a test against the routes.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Bodies, paths and queries that do not parse are JSON errors too.
    cfg.app_data(web::JsonConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()))
        .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()))
        .default_service(web::to(unrouted));
    cfg.route("/api/openapi.json", web::get().to(openapi))
        .route("/api/status", web::get().to(status))
        .route("/api/users/{host}", web::get().to(list_users))
        .route("/api/users/{host}", web::post().to(add_user))
        .route("/api/users/{host}/{user}", web::delete().to(remove_user))
        .route("/api/users/{host}/{user}/password", web::put().to(set_password))
        .route("/api/users/{host}/{user}/sessions", web::delete().to(kick_user_sessions))
        .route("/api/users/{host}/{user}/roster", web::get().to(get_roster))
        .route("/api/users/{host}/{user}/roster/{contact}", web::put().to(set_roster_item))
        .route("/api/users/{host}/{user}/roster/{contact}", web::delete().to(remove_roster_item))
        .route("/api/stats", web::get().to(stats))
        .route("/api/stanzas", web::post().to(send_stanza))
        .route("/api/messages", web::post().to(send_message))
        .route("/api/sessions", web::get().to(list_sessions))
        .route("/api/sessions/{jid}", web::delete().to(kick_session))
        .route("/api/cluster", web::get().to(cluster_status))
        .route("/api/cluster/join", web::post().to(cluster_join))
        .route("/api/cluster/leave", web::post().to(cluster_leave))
        .route("/api/cluster/nodes/{id}", web::delete().to(cluster_remove))
        .route("/api/global", web::get().to(global_status))
        .route("/api/global/refresh", web::post().to(global_refresh))
        .route("/api/s2s", web::get().to(s2s_status))
        .route("/metrics", web::get().to(prometheus))
        .route("/dashboard", web::get().to(dashboard));
}

/// The live dashboard: a static page that asks for the admin credentials and
/// reads the API with them; it holds no data itself.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("dashboard.html"))
}

/// The paths of the OpenAPI document, split into segments (`{x}` matches
/// any one), with their methods in upper case.
fn documented_paths() -> &'static [(Vec<String>, Vec<String>)] {
    static PATHS: std::sync::OnceLock<Vec<(Vec<String>, Vec<String>)>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap_or_default();
        doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(path, ops)| {
                        let segments = path.split('/').map(str::to_owned).collect();
                        let mut methods: Vec<String> = ops
                            .as_object()
                            .map(|o| {
                                // A path item also holds `parameters` and the like.
                                const METHODS: [&str; 8] =
                                    ["get", "put", "post", "delete", "patch", "head", "options", "trace"];
                                o.keys()
                                    .filter(|k| METHODS.contains(&k.as_str()))
                                    .map(|m| m.to_ascii_uppercase())
                                    .collect()
                            })
                            .unwrap_or_default();
                        methods.sort();
                        (segments, methods)
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// A request no route took: 405 with the methods of its path, or 404.
async fn unrouted(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let given: Vec<&str> = req.path().split('/').collect();
    let matches = |segments: &Vec<String>| {
        segments.len() == given.len()
            && segments.iter().zip(&given).all(|(s, g)| (s.starts_with('{') && !g.is_empty()) || s == g)
    };
    match documented_paths().iter().find(|(segments, _)| matches(segments)) {
        Some((_, methods)) => Err(ApiError::MethodNotAllowed(methods.clone())),
        None => Err(ApiError::NotFound(format!("no such path: {}", req.path()))),
    }
}

fn cluster(state: &AdminState) -> Result<&Arc<meerkat_cluster::node::ClusterNode>, ApiError> {
    state.cluster.as_ref().ok_or_else(|| {
        ApiError::Conflict("this node is not configured for a cluster (add a [cluster] section to its config)".into())
    })
}

impl From<meerkat_cluster::node::ClusterError> for ApiError {
    fn from(e: meerkat_cluster::node::ClusterError) -> Self {
        use meerkat_cluster::node::ClusterError as E;
        match e {
            E::Refused(m) => ApiError::Conflict(m),
            E::Transport(t) => ApiError::Unavailable(t.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

async fn cluster_status(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(cluster(&state)?.status()))
}

#[derive(Deserialize)]
struct JoinRequest {
    /// The cluster address of any member.
    address: String,
}

async fn cluster_join(
    state: web::Data<AdminState>,
    req: HttpRequest,
    body: web::Json<JoinRequest>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let node = cluster(&state)?;
    if body.address.trim().is_empty() {
        return Err(ApiError::BadRequest("address is required".into()));
    }
    node.join(body.address.trim()).await?;
    // Logins resume once the node has registered with the cluster.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !node.is_ready() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(HttpResponse::Ok().json(node.status()))
}

async fn cluster_leave(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let node = cluster(&state)?;
    let svc = &state.svc;
    // New logins stop; this node's clients get <system-shutdown/> and reconnect to another node.
    svc.drain_sessions();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while svc.local_sessions() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.leave().await?;
    Ok(HttpResponse::Ok().json(json!({ "left": node.id() })))
}

async fn cluster_remove(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let node = cluster(&state)?;
    let id: u64 = path.parse().map_err(|_| ApiError::BadRequest(format!("{:?} is not a node id", path.as_str())))?;
    node.remove(id).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn global(state: &AdminState) -> Result<&Arc<meerkat_routing::global::GlobalDistrib>, ApiError> {
    state.global.as_ref().ok_or_else(|| {
        ApiError::NotFound(
            "global distribution is not configured on this node (add a [global_distribution] section to its config)"
                .into(),
        )
    })
}

impl From<meerkat_routing::global::GlobalError> for ApiError {
    fn from(e: meerkat_routing::global::GlobalError) -> Self {
        use meerkat_routing::global::GlobalError as E;
        match e {
            E::Redis(_) => ApiError::Unavailable(format!("the global routing table is unreachable: {e}")),
            E::Listen(..) => ApiError::Internal(e.to_string()),
        }
    }
}

async fn global_status(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    Ok(HttpResponse::Ok().json(global(&state)?.status()))
}

/// Federation's streams in and out on this node.
async fn s2s_status(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let status = state.services.status("s2s").ok_or_else(|| {
        ApiError::NotFound(
            "federation is not configured on this node (add a [[listen.s2s]] section to its config)".into(),
        )
    })?;
    Ok(HttpResponse::Ok().json(status))
}

/// Writes all of this node's routing entries again now, rather than at the next `refresh_after`.
async fn global_refresh(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let refreshed = global(&state)?.refresh_now().await?;
    Ok(HttpResponse::Ok().json(json!({ "refreshed": refreshed })))
}

/// Prometheus text exposition.
async fn prometheus(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let body = crate::metrics::metrics().render(&state);
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

async fn status(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let svc = &state.svc;
    let db = match svc.storage.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    Ok(HttpResponse::Ok().json(json!({
        "status": if svc.is_shutting_down() { "stopping" } else { "running" },
        "version": env!("CARGO_PKG_VERSION"),
        "node": svc.router.node().0,
        "hosts": svc.router.hosts(),
        "uptime_seconds": svc.uptime().as_secs(),
        "sessions": svc.router.sessions().len(),
        "database": { "backend": svc.storage.backend_name(), "status": db },
        "server_queue": svc.workers.queued(),
        "stanzas": {
            "routed": svc.router.stats.routed.load(std::sync::atomic::Ordering::Relaxed),
            "bounced": svc.router.stats.bounced.load(std::sync::atomic::Ordering::Relaxed),
            "dropped": svc.router.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        },
    })))
}

async fn list_users(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let users = state.svc.accounts.list(&path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    password: String,
}

async fn add_user(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let host = path.into_inner();
    state.svc.accounts.register(&host, &body.username, &body.password).await?;
    Ok(HttpResponse::Created().json(json!({ "jid": format!("{}@{}", body.username, host) })))
}

async fn remove_user(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (host, user) = path.into_inner();
    state.svc.accounts.remove(&host, &user).await?;
    // Its sessions end on every node of the cluster.
    kick_account(&state, &host, &user, KickReason::AccountRemoved).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn set_password(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<NewPassword>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (host, user) = path.into_inner();
    state.svc.accounts.set_password(&host, &user, &body.password).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Server figures as MongooseIM's `stats` command gives them: accounts and
/// sessions per host, sessions per node, uptime and stanza counters.
async fn stats(state: web::Data<AdminState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let svc = &state.svc;
    let sessions = svc.router.sessions().all();
    let mut hosts = serde_json::Map::new();
    for host in svc.router.hosts() {
        let registered = svc.ctx.accounts.list(host).await?.len();
        let online: Vec<_> = sessions.iter().filter(|s| s.jid.domain().as_str() == host.as_str()).collect();
        let mut users: Vec<String> = online.iter().map(|s| s.jid.to_bare().to_string()).collect();
        users.sort();
        users.dedup();
        hosts.insert(
            host.clone(),
            json!({ "registered_users": registered, "online_users": users.len(), "sessions": online.len() }),
        );
    }
    let mut per_node: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for s in &sessions {
        *per_node.entry(s.node.0.to_string()).or_default() += 1;
    }
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(HttpResponse::Ok().json(json!({
        "node": svc.router.node().0,
        "uptime_seconds": svc.uptime().as_secs(),
        "hosts": hosts,
        "sessions": sessions.len(),
        "sessions_per_node": per_node,
        "local_sessions": svc.local_sessions(),
        "stanzas": {
            "routed": counter(&svc.router.stats.routed),
            "bounced": counter(&svc.router.stats.bounced),
            "dropped": counter(&svc.router.stats.dropped),
        },
    })))
}

/// An account's roster, as stored.
async fn get_roster(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (host, user) = path.into_inner();
    if !state.svc.ctx.accounts.exists(&host, &user).await? {
        return Err(ApiError::NotFound(format!("no account {user}@{host}")));
    }
    use meerkat_storage::RosterRepo as _;
    let items = state.svc.storage.get_roster(&host, &user).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let items: Vec<_> = items
        .into_iter()
        .map(|i| {
            json!({
                "jid": i.contact,
                "name": i.name,
                "subscription": i.subscription.as_str(),
                "ask": i.ask_out,
                "pending_in": i.pending_in,
                "groups": i.groups,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `PUT /api/users/{host}/{user}/roster/{contact}`: the item's name and groups.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterItemBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

/// Changes a roster as the account itself would, with a roster set (RFC
/// 6121 §2.3, §2.5): the roster module checks it, stores it, pushes it to
/// the account's resources and, on removal, ends the subscriptions.
async fn roster_set(state: &AdminState, host: &str, user: &str, item: Element) -> Result<(), ApiError> {
    if !state.svc.ctx.accounts.exists(host, user).await? {
        return Err(ApiError::NotFound(format!("no account {user}@{host}")));
    }
    let owner = meerkat_xmpp::jid::parse_jid(&format!("{user}@{host}"))
        .map_err(|e| ApiError::BadRequest(format!("{user}@{host}: {e}")))?;
    let query = Element::new("query", ns::ROSTER).with_child(item);
    let iq = Element::new("iq", ns::CLIENT).with_attr("type", "set").with_attr("id", "admin").with_child(query.clone());
    let routed = meerkat_routing::Routed { from: owner.clone(), to: owner, stanza: iq };
    let ctx = &state.svc.ctx;
    match ctx.hooks.of(host).iq(ctx, meerkat_actors::ext::Target::OwnAccount, &routed, &query).await {
        Some(Ok(_)) => Ok(()),
        Some(Err(meerkat_xmpp::error::StanzaErrorCondition::ItemNotFound)) => {
            Err(ApiError::NotFound(format!("that contact is not in the roster of {user}@{host}")))
        }
        Some(Err(meerkat_xmpp::error::StanzaErrorCondition::InternalServerError)) => {
            Err(ApiError::Internal("the roster could not be stored".into()))
        }
        Some(Err(cond)) => Err(ApiError::BadRequest(format!("the roster refused it: {}", cond.as_str()))),
        None => Err(ApiError::Unavailable("no module manages rosters ([modules.mod_roster] is off)".into())),
    }
}

/// Adds `contact` to the roster, or changes its name and groups; the
/// subscription stays as it is.
async fn set_roster_item(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Json<RosterItemBody>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (host, user, contact) = path.into_inner();
    let contact = meerkat_xmpp::jid::parse_bare(&contact)
        .map_err(|e| ApiError::BadRequest(format!("{contact} is not a bare JID: {e}")))?
        .to_string();
    let mut item = Element::new("item", ns::ROSTER).with_attr("jid", contact.clone());
    if let Some(name) = &body.name {
        item.set_attr("name", name.clone());
    }
    for g in &body.groups {
        item.push_child(Element::new("group", ns::ROSTER).with_text(g.clone()));
    }
    roster_set(&state, &host, &user, item).await?;
    Ok(HttpResponse::Ok().json(json!({ "jid": contact, "name": body.name, "groups": body.groups })))
}

/// Removes `contact` from the roster, ending the subscriptions both ways.
async fn remove_roster_item(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (host, user, contact) = path.into_inner();
    let item = Element::new("item", ns::ROSTER).with_attr("jid", contact.clone()).with_attr("subscription", "remove");
    roster_set(&state, &host, &user, item).await?;
    Ok(HttpResponse::Ok().json(json!({ "removed": contact })))
}

#[derive(Deserialize)]
struct SessionFilter {
    host: Option<String>,
    node: Option<u64>,
}

async fn list_sessions(
    state: web::Data<AdminState>,
    req: HttpRequest,
    filter: web::Query<SessionFilter>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let all = state.svc.router.sessions().all();
    let mut per_host: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut per_node: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for s in &all {
        *per_host.entry(s.jid.domain().to_string()).or_default() += 1;
        *per_node.entry(s.node.0.to_string()).or_default() += 1;
    }
    let mut sessions: Vec<_> = all
        .into_iter()
        .filter(|s| filter.host.as_deref().is_none_or(|h| s.jid.domain().as_str() == h))
        .filter(|s| filter.node.is_none_or(|n| s.node.0 == n))
        .map(|s| {
            json!({
                "jid": s.jid.to_string(),
                "node": s.node.0,
                "session": s.sid.to_string(),
                "priority": s.priority,
                "available": s.priority.is_some(),
                "created_micros": s.created_micros,
            })
        })
        .collect();
    sessions.sort_by(|a, b| a["jid"].as_str().cmp(&b["jid"].as_str()));
    Ok(HttpResponse::Ok().json(json!({
        "count": sessions.len(),
        "sessions": sessions,
        "per_host": per_host,
        "per_node": per_node,
    })))
}

#[derive(Deserialize)]
struct StanzaRequest {
    /// One `<message/>`, `<presence/>` or `<iq/>` in `jabber:client`, whose
    /// `from` is a local account (bare or full JID) and `to` its recipient.
    stanza: String,
}

#[derive(Deserialize)]
struct MessageRequest {
    from: String,
    to: String,
    body: String,
}

/// Largest stanza the API sends, as a client's default `max_stanza_size`.
const MAX_API_STANZA: usize = 65536;

/// Routes `stanza` as its `from`, a local account, would send it; its id.
async fn route_as_user(state: &AdminState, mut stanza: meerkat_xmpp::element::Element) -> Result<String, ApiError> {
    use meerkat_xmpp::jid::parse_jid;
    if stanza.ns != meerkat_xmpp::ns::CLIENT || !matches!(stanza.name.as_str(), "message" | "presence" | "iq") {
        return Err(ApiError::BadRequest("the stanza must be a message, presence or iq in jabber:client".into()));
    }
    let attr = |name: &str| stanza.attr(name).map(str::to_owned);
    let from =
        attr("from").ok_or_else(|| ApiError::BadRequest("the stanza needs a 'from' (a local account)".into()))?;
    let from = parse_jid(&from).map_err(|e| ApiError::BadRequest(format!("'from' is not a JID: {e}")))?;
    let to = attr("to").ok_or_else(|| ApiError::BadRequest("the stanza needs a 'to'".into()))?;
    let to = parse_jid(&to).map_err(|e| ApiError::BadRequest(format!("'to' is not a JID: {e}")))?;
    let (Some(user), host) = (from.node(), from.domain()) else {
        return Err(ApiError::BadRequest("'from' must be an account (user@host)".into()));
    };
    if !state.svc.router.is_local_host(host.as_str()) {
        return Err(ApiError::NotFound(format!("{host} is not a host of this server")));
    }
    if !state.svc.ctx.accounts.exists(host.as_str(), user.as_str()).await? {
        return Err(ApiError::NotFound(format!("no account {}", from.to_bare())));
    }
    let id = match attr("id") {
        Some(id) => id,
        None => {
            let id = format!("admin-{:016x}", rand::random::<u64>());
            stanza.set_attr("id", id.clone());
            id
        }
    };
    stanza.set_attr("from", from.to_string());
    stanza.set_attr("to", to.to_string());
    state.svc.router.route(meerkat_routing::Routed { from, to, stanza });
    Ok(id)
}

async fn send_stanza(
    state: web::Data<AdminState>,
    req: HttpRequest,
    body: web::Json<StanzaRequest>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    if body.stanza.len() > MAX_API_STANZA {
        return Err(ApiError::BadRequest(format!("the stanza is larger than {MAX_API_STANZA} bytes")));
    }
    let limits = meerkat_xmpp::parser::Limits { max_stanza_size: MAX_API_STANZA, max_depth: 64 };
    let stanza = meerkat_xmpp::parser::parse_element(&body.stanza, limits)
        .map_err(|e| ApiError::BadRequest(format!("the stanza does not parse: {e}")))?;
    let id = route_as_user(&state, stanza).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id })))
}

async fn send_message(
    state: web::Data<AdminState>,
    req: HttpRequest,
    body: web::Json<MessageRequest>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let stanza = Element::new("message", ns::CLIENT)
        .with_attr("type", "chat")
        .with_attr("from", body.from.clone())
        .with_attr("to", body.to.clone())
        .with_child(Element::new("body", ns::CLIENT).with_text(body.body.clone()));
    let id = route_as_user(&state, stanza).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id })))
}

async fn kick_session(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let jid = meerkat_xmpp::jid::parse_full(&path.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("not a full JID: {e}")))?;
    let info =
        state.svc.router.sessions().get(&jid).ok_or_else(|| ApiError::NotFound(format!("no session for {jid}")))?;
    // On whichever node of the cluster it is.
    match state.svc.router.kick(&info, KickReason::Admin).await {
        Ok(true) => Ok(HttpResponse::NoContent().finish()),
        Ok(false) => Err(ApiError::NotFound(format!("no session for {jid}"))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Ends every session of `user@host`, on every node; how many were ended.
async fn kick_account(state: &AdminState, host: &str, user: &str, reason: KickReason) -> Result<usize, ApiError> {
    let bare = meerkat_xmpp::jid::parse_bare(&format!("{user}@{host}"))
        .map_err(|e| ApiError::BadRequest(format!("not an account: {e}")))?;
    let mut kicked = 0;
    let mut unreachable = Vec::new();
    for info in state.svc.router.sessions().resources(&bare) {
        match state.svc.router.kick(&info, reason).await {
            Ok(true) => kicked += 1,
            Ok(false) => {}
            Err(e) => unreachable.push(e.to_string()),
        }
    }
    if !unreachable.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "{kicked} session(s) ended; not reached: {}",
            unreachable.join("; ")
        )));
    }
    Ok(kicked)
}

async fn kick_user_sessions(
    state: web::Data<AdminState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (host, user) = path.into_inner();
    let kicked = kick_account(&state, &host, &user, KickReason::Admin).await?;
    Ok(HttpResponse::Ok().json(json!({ "kicked": kicked })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let src = include_str!("admin.rs");
        let mut count = 0;
        for line in src.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(".route(\"").or_else(|| line.strip_prefix("cfg.route(\"")) {
                let path = rest.split('"').next().unwrap();
                let method = rest.split("web::").nth(1).unwrap().split('(').next().unwrap();
                let entry = paths.get(path).unwrap_or_else(|| panic!("{path} missing from openapi.json"));
                assert!(entry.get(method).is_some(), "{method} {path} missing from openapi.json");
                count += 1;
            }
        }
        assert_eq!(count, 24);
        assert_eq!(paths.len(), 22);
    }

    /// Every object in `value` has exactly the properties its schema lists.
    fn check_schema(doc: &serde_json::Value, schema: &serde_json::Value, value: &serde_json::Value, at: &str) {
        let schema = match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                &doc["components"]["schemas"][name]
            }
            None => schema,
        };
        match value {
            serde_json::Value::Object(map) => {
                let props = schema["properties"].as_object().unwrap_or_else(|| panic!("{at}: no properties"));
                let mut want: Vec<&String> = props.keys().collect();
                let mut have: Vec<&String> = map.keys().collect();
                want.sort();
                have.sort();
                assert_eq!(have, want, "{at}");
                for (k, v) in map {
                    check_schema(doc, &props[k], v, &format!("{at}.{k}"));
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    check_schema(doc, &schema["items"], v, &format!("{at}[{i}]"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn openapi_global_status_matches_the_serde_fields() {
        use meerkat_routing::global::*;
        let status = GlobalStatus {
            global_host: "example.com".into(),
            local_host: "dc1.example.com".into(),
            advertised_endpoints: vec!["127.0.0.1:5555".into()],
            redis: RedisStatus { reachable: true, last_error: Some("x".into()), errors: 1, full_refreshes: 2 },
            data_centers: vec![DcStatus {
                local_host: "dc2.example.com".into(),
                endpoints: vec!["127.0.0.1:5565".into()],
                links: vec![LinkStatus {
                    endpoint: "127.0.0.1:5565".into(),
                    connected: true,
                    disabled: false,
                    queued: 0,
                    unacked: 0,
                    sent: 1,
                    acked: 1,
                    resent: 0,
                    connects: 1,
                    failures: 0,
                    handed_back: 0,
                }],
            }],
            queues: QueueStatus { pairs: 0, pending: 0, in_flight: 0, parked_pairs: 0 },
            counters: Counters {
                forwarded: 0,
                received: 0,
                duplicates: 0,
                links_refused: 0,
                link_bad_frames: 0,
                delivered_here: 0,
                bounces: 0,
                bounce_expired: 0,
                resends: 0,
                ttl_zero: 0,
                cache_hits: 0,
                cache_misses: 0,
                lookups: 0,
                learned: 0,
                link_full: 0,
                refused: 0,
                requeued: 0,
            },
            local_sessions: 0,
        };
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let value = serde_json::to_value(&status).unwrap();
        let schema = serde_json::json!({ "$ref": "#/components/schemas/GlobalStatus" });
        check_schema(&doc, &schema, &value, "GlobalStatus");
    }
}
