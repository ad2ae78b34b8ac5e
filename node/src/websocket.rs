//! `[[listen.http]]`: HTTP(S) listeners serving XMPP over WebSocket (RFC 7395)
//! and over BOSH (XEP-0124/0206, [`crate::bosh`]).
//!
//! This is the only code that speaks HTTP and WebSocket to clients. A
//! `mod_websockets` endpoint upgrades a request that offers the `xmpp`
//! subprotocol and answers with it (a request without it gets a 400). Then
//! two small tasks on the HTTP worker pump the connection through bounded
//! channels: messages in (continuations joined, pings answered, frames over
//! the size limit refused before they are buffered) and messages out (one
//! element each, pings, and a close frame at the end). The XMPP side,
//! [`meerkat_actors::c2s::serve_websocket`], runs on the session arbiters
//! like a TCP connection: same negotiation, same session actor.
//!
//! Over HTTPS the RFC 9266 exporter of the TLS connection is read when it is
//! accepted, so SCRAM-*-PLUS works on `wss://` as on direct TLS.

use std::any::Any;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use actix_web::dev::{Extensions, Server};
use actix_web::http::header;
use actix_web::{guard, web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{CloseCode, Item, Message, MessageStream, ProtocolError, Session};
use anyhow::Context as _;
use meerkat_actors::admission::{Admission, ConnectionLimits};
use meerkat_actors::c2s::{self, C2sListener};
use meerkat_actors::client_cert::ClientCerts;
use meerkat_actors::services::Services;
use meerkat_actors::websocket::{WsConnection, WsIn, WsOut};
use tokio::sync::mpsc;

use crate::config::HttpListen;

/// The WebSocket subprotocol of RFC 7395 §3.1.
const SUBPROTOCOL: &str = "xmpp";
/// Messages waiting between a pump and the XMPP side, each way.
const CHANNEL: usize = 16;
/// A message the client does not take for this long means it is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One `mod_websockets` endpoint: where its connections go.
pub struct Endpoint {
    pub svc: Arc<Services>,
    /// Negotiation and limits of this endpoint (no STARTTLS).
    pub listener: Arc<C2sListener>,
    /// The session arbiters, shared with the c2s listeners.
    pub arbiters: Vec<ArbiterHandle>,
    pub next: AtomicUsize,
    /// Whether the HTTP listener runs TLS.
    pub secure: bool,
}

/// What an HTTPS connection carries for the requests on it.
#[derive(Clone)]
pub(crate) struct TlsInfo {
    exporter: Option<Vec<u8>>,
    /// What its verified client certificate names (SASL EXTERNAL).
    pub(crate) client_cert: Option<meerkat_xmpp::sasl::external::CertIdentity>,
}

/// Reads the TLS exporter and the client certificate of each accepted HTTPS connection.
fn on_connect(conn: &dyn Any, ext: &mut Extensions, certs: Option<&ClientCerts>) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>() {
        let tls = tls.get_ref().1;
        ext.insert(TlsInfo {
            exporter: meerkat_actors::transport::tls_exporter_of(tls),
            client_cert: certs.and_then(|c| c.identity(tls)),
        });
    }
}

/// Whether the request offers the `xmpp` subprotocol (in any of its headers).
fn offers_xmpp(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

async fn upgrade(req: HttpRequest, body: web::Payload, ep: web::Data<Endpoint>) -> HttpResponse {
    if !offers_xmpp(&req) {
        return HttpResponse::BadRequest().content_type("text/plain; charset=utf-8").body(
            "XMPP over WebSocket (RFC 7395): the request must offer the subprotocol \"xmpp\" \
             (Sec-WebSocket-Protocol: xmpp)\n",
        );
    }
    // The listener's `max_connections` and `max_connections_per_ip`, before upgrading.
    let admitted = match ep.listener.admission.admit(req.peer_addr().map(|p| p.ip())) {
        Ok(a) => a,
        Err(why) => {
            tracing::debug!(peer = ?req.peer_addr(), reason = %why, "websocket refused");
            return HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "10"))
                .content_type("text/plain; charset=utf-8")
                .body(format!("{why}\n"));
        }
    };
    let (response, session, stream) = match actix_ws::handle_with_protocols(&req, body, &[SUBPROTOCOL]) {
        Ok(r) => r,
        Err(e) => return HttpResponse::from_error(e),
    };
    let max = ep.listener.limits.max_stanza_size;
    let (in_tx, in_rx) = mpsc::channel(CHANNEL);
    let (out_tx, out_rx) = mpsc::channel(CHANNEL);
    let ws = WsConnection {
        incoming: in_rx,
        outgoing: out_tx,
        secure: ep.secure,
        tls_exporter: req.conn_data::<TlsInfo>().and_then(|t| t.exporter.clone()),
        client_cert: req.conn_data::<TlsInfo>().and_then(|t| t.client_cert.clone()),
    };
    let i = ep.next.fetch_add(1, Ordering::Relaxed) % ep.arbiters.len().max(1);
    let serve = c2s::serve_websocket(ep.svc.clone(), ep.listener.clone(), ws, req.peer_addr(), admitted);
    match ep.arbiters.get(i) {
        Some(arbiter) => {
            arbiter.spawn(serve);
        }
        None => {
            actix_web::rt::spawn(serve);
        }
    }
    actix_web::rt::spawn(pump_in(stream.max_frame_size(max), session.clone(), in_tx, max));
    actix_web::rt::spawn(pump_out(session, out_rx));
    response
}

/// Client messages to the XMPP side, until the client or the XMPP side is gone.
async fn pump_in(mut stream: MessageStream, mut session: Session, tx: mpsc::Sender<WsIn>, max: usize) {
    // A text message arriving in continuation frames, until its last one.
    let mut partial: Option<Vec<u8>> = None;
    let mut binary = false;
    loop {
        let msg = match stream.recv().await {
            None => return,
            Some(Ok(m)) => m,
            Some(Err(ProtocolError::Overflow)) => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                return;
            }
        };
        let item = match msg {
            Message::Text(text) => WsIn::Text(String::from(text)),
            Message::Binary(_) => WsIn::Binary,
            Message::Ping(data) => {
                if session.pong(&data).await.is_err() {
                    return;
                }
                WsIn::Activity
            }
            Message::Pong(_) | Message::Nop => WsIn::Activity,
            Message::Continuation(Item::FirstText(data)) => {
                if data.len() > max {
                    break;
                }
                partial = Some(data.to_vec());
                continue;
            }
            Message::Continuation(Item::FirstBinary(_)) => {
                binary = true;
                continue;
            }
            Message::Continuation(Item::Continue(data)) => {
                if let Some(p) = partial.as_mut() {
                    p.extend_from_slice(&data);
                    if p.len() > max {
                        break;
                    }
                }
                continue;
            }
            Message::Continuation(Item::Last(data)) => {
                if std::mem::take(&mut binary) {
                    WsIn::Binary
                } else {
                    let Some(mut p) = partial.take() else { continue };
                    p.extend_from_slice(&data);
                    if p.len() > max {
                        break;
                    }
                    // Text that is not UTF-8 is no text message.
                    String::from_utf8(p).map_or(WsIn::Binary, WsIn::Text)
                }
            }
            Message::Close(_) => return,
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
    // Too large: the XMPP side answers with a stream error. The connection
    // stays open for it until the XMPP side is done.
    if tx.send(WsIn::TooLarge).await.is_ok() {
        tx.closed().await;
    }
}

/// The XMPP side's messages to the client; a close frame once it is done.
async fn pump_out(mut session: Session, mut rx: mpsc::Receiver<WsOut>) {
    while let Some(out) = rx.recv().await {
        let sent = match out {
            WsOut::Text(text) => tokio::time::timeout(WRITE_TIMEOUT, session.text(text)).await,
            WsOut::Ping => tokio::time::timeout(WRITE_TIMEOUT, session.ping(b"")).await,
        };
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), session.close(Some(CloseCode::Normal.into()))).await;
}

/// Everything a `[[listen.http]]` listener needs from the node.
pub struct HttpContext<'a> {
    pub svc: &'a Arc<Services>,
    pub arbiters: &'a [ArbiterHandle],
    pub data_dir: &'a Path,
    pub hosts: &'a [String],
    /// The c2s negotiation and module features, with STARTTLS off.
    pub listener: &'a dyn Fn(meerkat_xmpp::parser::Limits, Arc<Admission>, Option<u64>) -> C2sListener,
    pub workers: usize,
    pub shutdown_timeout: u64,
}

/// Binds one `[[listen.http]]` listener and returns its server, not yet running.
pub fn listen(key: &str, l: &HttpListen, max_rate: Option<u64>, ctx: &HttpContext<'_>) -> anyhow::Result<Server> {
    let secure = l.tls.is_some();
    let client_certs = match &l.tls {
        Some(tls) => crate::tls::client_certs(tls.verify_mode, tls.cacertfile.as_deref())
            .with_context(|| format!("{key}.tls"))?,
        None => None,
    };
    // One count for the whole listener: its WebSocket and BOSH sessions together.
    let admission = Admission::new(ConnectionLimits {
        max_connections: l.max_connections.0,
        max_connections_per_ip: l.max_connections_per_ip.0,
    });
    let endpoints: Vec<(String, String, web::Data<Endpoint>)> = l
        .handlers
        .mod_websockets
        .iter()
        .map(|h| {
            let limits = meerkat_xmpp::parser::Limits { max_stanza_size: h.max_stanza_size, max_depth: h.max_depth };
            let ep = Endpoint {
                svc: ctx.svc.clone(),
                listener: Arc::new((ctx.listener)(limits, admission.clone(), max_rate)),
                arbiters: ctx.arbiters.to_vec(),
                next: AtomicUsize::new(0),
                secure,
            };
            (h.host.clone(), h.path.clone(), web::Data::new(ep))
        })
        .collect();
    let bosh: Vec<(String, String, web::Data<meerkat_actors::bosh::BoshEndpoint>)> = l
        .handlers
        .mod_bosh
        .iter()
        .map(|h| {
            let listener = (ctx.listener)(h.limits(), admission.clone(), max_rate);
            (h.host.clone(), h.path.clone(), crate::bosh::endpoint(h, ctx, listener, secure))
        })
        .collect();
    let paths: Vec<&str> = endpoints.iter().map(|(_, p, _)| p.as_str()).collect();
    let bosh_paths: Vec<&str> = bosh.iter().map(|(_, p, _)| p.as_str()).collect();
    let addr = SocketAddr::new(l.ip_address, l.port);
    tracing::info!(%addr, tls = secure, websocket = ?paths, bosh = ?bosh_paths, "http listener ready");
    let server = HttpServer::new(move || {
        let mut app = App::new();
        for (host, path, ep) in &endpoints {
            let mut resource = web::resource(path.as_str()).app_data(ep.clone());
            if host != "_" {
                resource = resource.guard(guard::Host(host.clone()));
            }
            app = app.service(resource.route(web::get().to(upgrade)));
        }
        for (host, path, ep) in &bosh {
            let mut resource = web::resource(path.as_str());
            if host != "_" {
                resource = resource.guard(guard::Host(host.clone()));
            }
            app = app.service(crate::bosh::resource(resource, ep.clone()));
        }
        app
    })
    .workers(ctx.workers)
    .disable_signals()
    .shutdown_timeout(ctx.shutdown_timeout)
    .on_connect({
        let certs = client_certs.clone();
        move |conn: &dyn Any, ext: &mut Extensions| on_connect(conn, ext, certs.as_deref())
    });
    let server = match &l.tls {
        None => server.bind(addr),
        Some(tls) => {
            let (cert, key_file) = match (&tls.certfile, &tls.keyfile) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                _ => crate::tls::self_signed(ctx.data_dir, ctx.hosts)?,
            };
            let mut config = (*crate::tls::server_config_with(&cert, &key_file, client_certs.as_ref())?).clone();
            // WebSocket needs HTTP/1.1 (actix has no RFC 8441 WebSocket over HTTP/2).
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            server.bind_rustls_0_23(addr, config)
        }
    }
    .with_context(|| format!("{key}: listening for HTTP on {addr}"))?;
    Ok(server.run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn the_xmpp_subprotocol_may_be_one_of_several() {
        let offered = |values: &[&str]| {
            let mut req = TestRequest::default();
            for v in values {
                req = req.append_header((header::SEC_WEBSOCKET_PROTOCOL, *v));
            }
            offers_xmpp(&req.to_http_request())
        };
        assert!(offered(&["xmpp"]));
        assert!(offered(&["mqtt, xmpp"]));
        assert!(offered(&["mqtt", "xmpp"]));
        assert!(!offered(&[]));
        assert!(!offered(&["xmpp-bosh"]));
    }
}
