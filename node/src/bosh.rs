//! `[[listen.http.handlers.mod_bosh]]`: XMPP over BOSH (XEP-0124, XEP-0206).
//!
//! Only HTTP is here: a POST's body goes to [`BoshEndpoint::handle`], which
//! holds it as long as BOSH says and gives back the `<body/>` to answer
//! with. Browsers on other origins may call the endpoint (CORS, with an
//! OPTIONS preflight). A body over the endpoint's `max_stanza_size` is
//! refused with 413 before it is read; GET and other methods get 405.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use meerkat_actors::bosh::{BoshEndpoint, BoshSettings};

use crate::config::BoshHandler;
use crate::websocket::HttpContext;

/// One endpoint's state, from its configuration.
pub fn endpoint(
    h: &BoshHandler,
    ctx: &HttpContext<'_>,
    listener: meerkat_actors::c2s::C2sListener,
    secure: bool,
) -> web::Data<BoshEndpoint> {
    let settings = BoshSettings {
        max_wait: Duration::from_secs(h.max_wait),
        max_hold: h.max_hold,
        inactivity: Duration::from_secs(h.inactivity),
        max_pause: Duration::from_secs(h.max_pause),
        ..BoshSettings::default()
    };
    web::Data::new(BoshEndpoint::new(ctx.svc.clone(), Arc::new(listener), ctx.arbiters.to_vec(), secure, settings))
}

/// The routes of one endpoint's resource.
pub fn resource(resource: actix_web::Resource, ep: web::Data<BoshEndpoint>) -> actix_web::Resource {
    // Room for the `<body/>` wrapper around stanzas of the largest size.
    let limit = ep.listener.limits.max_stanza_size + 1024;
    resource
        .app_data(ep)
        .app_data(web::PayloadConfig::new(limit))
        .route(web::post().to(post))
        .route(web::method(actix_web::http::Method::OPTIONS).to(preflight))
        .default_service(web::to(not_allowed))
}

fn cors(mut res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "86400"));
    res
}

async fn post(req: HttpRequest, body: web::Bytes, ep: web::Data<BoshEndpoint>) -> HttpResponse {
    let client_cert = req.conn_data::<crate::websocket::TlsInfo>().and_then(|t| t.client_cert.clone());
    let reply = ep.handle(&body, req.peer_addr(), client_cert).await;
    let status = actix_web::http::StatusCode::from_u16(reply.status).unwrap_or(actix_web::http::StatusCode::OK);
    cors(HttpResponse::build(status))
        .content_type("text/xml; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(reply.body)
}

async fn preflight() -> HttpResponse {
    cors(HttpResponse::Ok()).finish()
}

async fn not_allowed() -> HttpResponse {
    cors(HttpResponse::MethodNotAllowed())
        .insert_header((header::ALLOW, "POST, OPTIONS"))
        .content_type("text/plain; charset=utf-8")
        .body("XMPP over BOSH (XEP-0124, XEP-0206): POST a <body xmlns='http://jabber.org/protocol/httpbind'/>\n")
}
