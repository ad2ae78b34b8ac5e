//! One lean client connection: connect (from a chosen source address), TLS,
//! SASL, bind, initial presence; then the stream and the parser are handed
//! to the scenario. Nothing is kept that a scenario does not need: no
//! backlog, no features, a small read buffer that is dropped after login.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use meerkat_xmpp::element::{escape_text, Element};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::sasl::{plain_initial_response, ClientChannelBinding, HashAlg, ScramClient};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::cli::{Common, SaslChoice, TlsChoice};
use crate::client::{tls_client_config, TlsTrust};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Read buffer while negotiating (stream features, SASL, bind are small).
const LOGIN_READ_BUF: usize = 4096;

/// Plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where and how to connect, shared by every connection of a run.
pub struct Target {
    pub addr: SocketAddr,
    /// Where connections of odd slots (the second user of each chat pair) go, if not to `addr`.
    pub recv_addr: Option<SocketAddr>,
    pub domain: String,
    pub user_pattern: String,
    pub password: String,
    pub resource: String,
    pub sasl: SaslChoice,
    pub tls: TlsChoice,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    pub source_ips: Vec<IpAddr>,
    pub timeout: Duration,
    /// SCRAM SaltedPasswords per (user, salt, iteration count), as clients keep them.
    salted: Mutex<HashMap<SaltKey, Vec<u8>>>,
    /// The FAST token each user holds.
    fast_tokens: Mutex<HashMap<u64, String>>,
    /// Logins that used a FAST token.
    pub fast_logins: std::sync::atomic::AtomicU64,
}

/// A SaltedPassword's key: the user's number, the salt and the iteration count.
type SaltKey = (u64, Vec<u8>, u32);

/// The mechanism FAST logins use.
const FAST_MECHANISM: &str = "HT-SHA-256-NONE";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Target {
    /// Resolves the server address and prepares TLS. Start-up only.
    pub fn new(c: &Common) -> Result<Target> {
        use std::net::ToSocketAddrs as _;
        let addr = (c.host.as_str(), c.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", c.host))?
            .next()
            .ok_or_else(|| anyhow!("{} has no address", c.host))?;
        let tls_config = if c.tls == TlsChoice::None {
            None
        } else {
            let trust = c.ca.clone().map(TlsTrust::Pem).unwrap_or(TlsTrust::AcceptAny);
            Some(Arc::new(tls_client_config(&trust)?))
        };
        if !c.user_pattern.contains("{}") {
            bail!("--user-pattern must contain {{}} (the user's number)");
        }
        Ok(Target {
            addr,
            recv_addr: None,
            domain: c.domain.clone(),
            user_pattern: c.user_pattern.clone(),
            password: c.password.clone(),
            resource: c.resource.clone(),
            sasl: c.sasl,
            tls: c.tls,
            tls_config,
            source_ips: c.source_ips.0.clone(),
            timeout: Duration::from_secs_f64(c.timeout.max(0.001)),
            salted: Mutex::new(HashMap::new()),
            fast_tokens: Mutex::new(HashMap::new()),
            fast_logins: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The user name of user number `n`.
    pub fn username(&self, n: u64) -> String {
        self.user_pattern.replace("{}", &n.to_string())
    }

    /// The bare JID of user number `n`.
    pub fn bare_jid(&self, n: u64) -> String {
        format!("{}@{}", self.username(n), self.domain)
    }

    /// Resolves `HOST:PORT` for [`Target::recv_addr`].
    pub fn resolve(server: &str) -> Result<SocketAddr> {
        use std::net::ToSocketAddrs as _;
        server
            .to_socket_addrs()
            .with_context(|| format!("resolving {server} (HOST:PORT)"))?
            .next()
            .ok_or_else(|| anyhow!("{server} has no address"))
    }

    async fn tcp(&self, slot: usize) -> Result<TcpStream> {
        let addr = match self.recv_addr {
            Some(a) if slot % 2 == 1 => a,
            _ => self.addr,
        };
        let tcp = if self.source_ips.is_empty() {
            TcpStream::connect(addr).await?
        } else {
            let ip = self.source_ips[slot % self.source_ips.len()];
            let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {ip}"))?;
            socket.connect(addr).await?
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Stream> {
        let config = self.tls_config.clone().ok_or_else(|| anyhow!("TLS is not configured"))?;
        let name = ServerName::try_from(self.domain.clone()).map_err(|e| anyhow!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.context("TLS handshake")?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    /// Connects (with TLS if configured) and opens the stream; returns the connection and the features.
    pub async fn open(&self, slot: usize) -> Result<(Negotiating, Element)> {
        let deadline = Instant::now() + self.timeout;
        let tcp =
            tokio::time::timeout_at(deadline, self.tcp(slot)).await.map_err(|_| anyhow!("connect timed out"))??;
        let stream = match self.tls {
            TlsChoice::Tls => {
                tokio::time::timeout_at(deadline, self.handshake(tcp)).await.map_err(|_| anyhow!("TLS timed out"))??
            }
            _ => Stream::Plain(tcp),
        };
        let mut n = Negotiating::new(stream, deadline);
        let mut features = n.open_stream(&self.domain).await?;
        if self.tls == TlsChoice::Starttls {
            if features.get_child("starttls", ns::TLS).is_none() {
                bail!("the server does not offer STARTTLS");
            }
            n.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
            let el = n.next_element().await?;
            if !el.is("proceed", ns::TLS) {
                bail!("STARTTLS refused: {el}");
            }
            let Stream::Plain(tcp) = n.stream else { bail!("STARTTLS on a TLS stream") };
            n.stream = tokio::time::timeout_at(deadline, self.handshake(tcp))
                .await
                .map_err(|_| anyhow!("TLS timed out"))??;
            n.parser.reset();
            features = n.open_stream(&self.domain).await?;
        }
        Ok((n, features))
    }

    /// A complete login of user number `n` (connection `slot` picks the
    /// source address): stream, TLS, SASL, bind, session if required,
    /// initial presence and its echo.
    pub async fn login(&self, n: u64, slot: usize) -> Result<Session> {
        let user = self.username(n);
        let (mut c, features) = self.open(slot).await?;
        c.deadline = Instant::now() + self.timeout;
        if self.sasl == SaslChoice::Fast {
            let jid = c.auth_sasl2(self, n, &user, &features).await.with_context(|| format!("{user}: SASL2"))?;
            return c.available(jid, n, &user).await;
        }
        c.auth(self, n, &user, &features).await.with_context(|| format!("{user}: SASL"))?;
        c.parser.reset();
        c.deadline = Instant::now() + self.timeout;
        let features = c.open_stream(&self.domain).await?;
        let bind = format!(
            "<iq type='set' id='bind1'><bind xmlns='{}'><resource>{}</resource></bind></iq>",
            ns::BIND,
            escaped(&self.resource)
        );
        c.send(bind.as_bytes()).await?;
        let res = c.iq_result("bind1").await.with_context(|| format!("{user}: bind"))?;
        let jid = res
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(Element::text)
            .ok_or_else(|| anyhow!("{user}: bind result without a JID: {res}"))?;
        // RFC 3921 sessions: only when the server still requires them.
        if let Some(s) = features.get_child("session", ns::SESSION) {
            if !s.has_child("optional", ns::SESSION) {
                c.send(format!("<iq type='set' id='sess1'><session xmlns='{}'/></iq>", ns::SESSION).as_bytes()).await?;
                c.iq_result("sess1").await.with_context(|| format!("{user}: session"))?;
            }
        }
        c.available(jid, n, &user).await
    }

    /// XEP-0077 in-band registration of user number `n`; an existing user is no error.
    pub async fn register(&self, n: u64, slot: usize) -> Result<()> {
        let user = self.username(n);
        let (mut c, _features) = self.open(slot).await?;
        let iq = format!(
            "<iq type='set' id='reg1'><query xmlns='{}'><username>{}</username><password>{}</password></query></iq>",
            ns::REGISTER,
            escaped(&user),
            escaped(&self.password)
        );
        c.send(iq.as_bytes()).await?;
        let result = match c.iq_result("reg1").await {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("conflict") => Ok(()),
            Err(e) => Err(e.context(format!("{user}: registration"))),
        };
        let _ = c.send(b"</stream:stream>").await;
        result
    }
}

/// Escapes text for element content.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_text(&mut out, s);
    out
}

/// Parser limits on the client side (servers' stanzas are trusted here).
pub fn limits() -> Limits {
    Limits { max_stanza_size: 16 * 1024 * 1024, max_depth: 256 }
}

/// A stream being negotiated, with a deadline for the current step.
pub struct Negotiating {
    stream: Stream,
    parser: StreamParser,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Negotiating {
    fn new(stream: Stream, deadline: Instant) -> Negotiating {
        Negotiating { stream, parser: StreamParser::new(limits()), buf: vec![0; LOGIN_READ_BUF], deadline }
    }

    async fn send(&mut self, data: &[u8]) -> Result<()> {
        tokio::time::timeout_at(self.deadline, async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| anyhow!("write timed out"))??;
        Ok(())
    }

    async fn open_stream(&mut self, domain: &str) -> Result<Element> {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{}' version='1.0'>",
            ns::CLIENT,
            ns::STREAM,
            domain
        );
        self.send(header.as_bytes()).await?;
        let el = self.next_element().await?;
        if !el.is("features", ns::STREAM) {
            bail!("expected <stream:features/>, got {el}");
        }
        Ok(el)
    }

    /// The next top-level element; stream errors and the end of the stream are errors.
    pub async fn next_element(&mut self) -> Result<Element> {
        loop {
            match self.parser.next_event()? {
                Some(StreamEvent::Header(_)) => continue,
                Some(StreamEvent::End) => bail!("the server closed the stream"),
                Some(StreamEvent::Stanza(el)) => {
                    if el.is("error", ns::STREAM) {
                        bail!("stream error: {}", stream_error_condition(&el));
                    }
                    return Ok(el);
                }
                None => {}
            }
            let n = tokio::time::timeout_at(self.deadline, self.stream.read(&mut self.buf))
                .await
                .map_err(|_| anyhow!("timed out waiting for the server"))??;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.parser.feed(&self.buf[..n]);
        }
    }

    /// Waits for the result of IQ `id`; an error reply is an error naming its condition.
    async fn iq_result(&mut self, id: &str) -> Result<Element> {
        loop {
            let el = self.next_element().await?;
            if el.name != "iq" || el.attr("id") != Some(id) {
                continue;
            }
            return match el.attr("type") {
                Some("result") => Ok(el),
                _ => Err(anyhow!("error reply: {}", stanza_error_condition(&el).unwrap_or_else(|| el.to_string()))),
            };
        }
    }

    /// Initial presence, and its echo.
    async fn available(mut self, jid: String, n: u64, user: &str) -> Result<Session> {
        self.send(b"<presence/>").await?;
        loop {
            let el = self.next_element().await.with_context(|| format!("{user}: waiting for the presence echo"))?;
            if el.name == "presence" && el.attr("type").is_none() && el.attr("from") == Some(jid.as_str()) {
                break;
            }
        }
        Ok(Session { stream: self.stream, parser: self.parser, jid, n })
    }

    /// A SCRAM client whose SaltedPassword comes from the cache when the
    /// server names a salt and iteration count seen before for this user.
    fn scram_answer(t: &Target, n: u64, client: &mut ScramClient, server_first: &[u8]) -> Result<Vec<u8>> {
        let (salt, iterations) = ScramClient::server_first_params(server_first).map_err(|e| anyhow!("SCRAM: {e}"))?;
        let key = (n, salt.clone(), iterations);
        let cached = lock(&t.salted).get(&key).cloned();
        let salted = match cached {
            Some(s) => s,
            None => {
                let s = client.salted_password(&salt, iterations).map_err(|e| anyhow!("SCRAM: {e}"))?;
                lock(&t.salted).insert(key, s.clone());
                s
            }
        };
        client.use_salted_password(salt, iterations, salted);
        client.handle_server_first(server_first).map_err(|e| anyhow!("SCRAM: {e}"))
    }

    /// SASL2 + Bind2 (XEP-0388, XEP-0386): with the user's FAST token when it
    /// has one, else SCRAM-SHA-256 asking for a token. Returns the bound JID.
    async fn auth_sasl2(&mut self, t: &Target, n: u64, user: &str, features: &Element) -> Result<String> {
        let auth = features.get_child("authentication", ns::SASL2).ok_or_else(|| anyhow!("no SASL2 offered"))?;
        let fast_offered = auth
            .get_child("inline", ns::SASL2)
            .and_then(|i| i.get_child("fast", ns::FAST))
            .is_some_and(|f| f.elements().any(|m| m.text().trim() == FAST_MECHANISM));
        if !fast_offered {
            bail!("the server does not offer FAST with {FAST_MECHANISM}");
        }
        let agent = format!("00000000-0000-4000-8000-{n:012x}");
        let bind = format!("<bind xmlns='{}'><tag>{}</tag></bind>", ns::BIND2, escaped(&t.resource));
        let token = lock(&t.fast_tokens).get(&n).cloned();
        let mut scram = None;
        let xml = match &token {
            Some(token) => {
                let m = meerkat_xmpp::sasl::fast::HtMechanism::from_name(FAST_MECHANISM)
                    .ok_or_else(|| anyhow!("unknown mechanism"))?;
                format!(
                    "<authenticate xmlns='{}' mechanism='{FAST_MECHANISM}'><initial-response>{}</initial-response>\
                     <user-agent id='{agent}'/>{bind}<fast xmlns='{}'/></authenticate>",
                    ns::SASL2,
                    B64.encode(m.initial_response(user, token, b"")),
                    ns::FAST
                )
            }
            None => {
                let mut s = ScramClient::new(HashAlg::Sha256, user, &t.password, ClientChannelBinding::None);
                let first = s.client_first();
                scram = Some(s);
                format!(
                    "<authenticate xmlns='{}' mechanism='SCRAM-SHA-256'><initial-response>{}</initial-response>\
                     <user-agent id='{agent}'/>{bind}<request-token xmlns='{}' mechanism='{FAST_MECHANISM}'/></authenticate>",
                    ns::SASL2,
                    B64.encode(first),
                    ns::FAST
                )
            }
        };
        self.send(xml.as_bytes()).await?;
        loop {
            let el = self.next_element().await?;
            if el.ns != ns::SASL2 {
                continue;
            }
            match el.name.as_str() {
                "challenge" => {
                    let s = scram.as_mut().ok_or_else(|| anyhow!("a challenge for a FAST login"))?;
                    let data = B64.decode(el.text().trim()).map_err(|_| anyhow!("bad base64 in {el}"))?;
                    let reply = Self::scram_answer(t, n, s, &data)?;
                    let xml = format!("<response xmlns='{}'>{}</response>", ns::SASL2, B64.encode(reply));
                    self.send(xml.as_bytes()).await?;
                }
                "success" => {
                    let data = el
                        .get_child("additional-data", ns::SASL2)
                        .map(|d| B64.decode(d.text().trim()))
                        .transpose()
                        .map_err(|_| anyhow!("bad base64 in {el}"))?;
                    match (&scram, &token, data) {
                        (Some(s), _, Some(d)) => {
                            s.verify_server_final(&d).map_err(|e| anyhow!("server signature: {e}"))?
                        }
                        (None, Some(token), Some(d)) => {
                            let m = meerkat_xmpp::sasl::fast::HtMechanism::from_name(FAST_MECHANISM)
                                .ok_or_else(|| anyhow!("unknown mechanism"))?;
                            if m.responder(token, b"") != d {
                                bail!("the server's FAST proof is wrong");
                            }
                        }
                        _ => bail!("<success/> without the server's proof: {el}"),
                    }
                    if token.is_some() {
                        t.fast_logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(new) = el.get_child("token", ns::FAST).and_then(|t| t.attr("token")) {
                        lock(&t.fast_tokens).insert(n, new.to_owned());
                    }
                    if !el.has_child("bound", ns::BIND2) {
                        bail!("<success/> without <bound/>: {el}");
                    }
                    return el
                        .get_child("authorization-identifier", ns::SASL2)
                        .map(Element::text)
                        .ok_or_else(|| anyhow!("<success/> without the JID: {el}"));
                }
                "failure" => {
                    let cond = el.elements().find(|e| e.name != "text").map(|e| e.name.clone()).unwrap_or_default();
                    if token.is_some() {
                        lock(&t.fast_tokens).remove(&n);
                    }
                    bail!("failure <{cond}/>");
                }
                other => bail!("unexpected SASL2 element <{other}/>"),
            }
        }
    }

    async fn auth(&mut self, t: &Target, n: u64, user: &str, features: &Element) -> Result<()> {
        let name = t.sasl.name();
        let offered = features
            .get_child("mechanisms", ns::SASL)
            .is_some_and(|m| m.elements().any(|e| e.name == "mechanism" && e.text().trim() == name));
        if !offered {
            bail!("the server does not offer {name}");
        }
        let mut scram = match t.sasl {
            SaslChoice::Plain => None,
            SaslChoice::ScramSha1 => {
                Some(ScramClient::new(HashAlg::Sha1, user, &t.password, ClientChannelBinding::None))
            }
            SaslChoice::ScramSha256 => {
                Some(ScramClient::new(HashAlg::Sha256, user, &t.password, ClientChannelBinding::None))
            }
            SaslChoice::Fast => bail!("FAST runs over SASL2"),
        };
        let initial = match &mut scram {
            None => plain_initial_response(None, user, &t.password),
            Some(s) => s.client_first(),
        };
        let auth = format!("<auth xmlns='{}' mechanism='{name}'>{}</auth>", ns::SASL, B64.encode(initial));
        self.send(auth.as_bytes()).await?;
        loop {
            let el = self.next_element().await?;
            if el.ns != ns::SASL {
                continue;
            }
            let text = el.text();
            let text = text.trim();
            let data = if text.is_empty() || text == "=" {
                Vec::new()
            } else {
                B64.decode(text).map_err(|_| anyhow!("bad base64 in {el}"))?
            };
            match el.name.as_str() {
                "challenge" => {
                    let s = scram.as_mut().ok_or_else(|| anyhow!("a challenge for PLAIN"))?;
                    let reply = Self::scram_answer(t, n, s, &data)?;
                    let xml = format!("<response xmlns='{}'>{}</response>", ns::SASL, B64.encode(reply));
                    self.send(xml.as_bytes()).await?;
                }
                "success" => {
                    if let Some(s) = &scram {
                        s.verify_server_final(&data).map_err(|e| anyhow!("server signature: {e}"))?;
                    }
                    return Ok(());
                }
                "failure" => {
                    let cond = el.elements().find(|e| e.name != "text").map(|e| e.name.clone()).unwrap_or_default();
                    bail!("failure <{cond}/>");
                }
                other => bail!("unexpected SASL element <{other}/>"),
            }
        }
    }
}

/// The condition of a `<stream:error/>`.
pub fn stream_error_condition(el: &Element) -> String {
    let cond = el.elements().find(|e| e.ns == ns::STREAMS && e.name != "text").map(|e| e.name.clone());
    let text = el.get_child("text", ns::STREAMS).map(Element::text);
    match (cond, text) {
        (Some(c), Some(t)) => format!("<{c}/> ({t})"),
        (Some(c), None) => format!("<{c}/>"),
        _ => el.to_string(),
    }
}

/// The condition of a stanza error, e.g. `conflict`.
pub fn stanza_error_condition(el: &Element) -> Option<String> {
    let err = el.get_child("error", &el.ns)?;
    err.elements().find(|e| e.ns == ns::STANZAS && e.name != "text").map(|e| e.name.clone())
}

/// A logged-in, available session: the stream, the parser with whatever the
/// server sent after the presence echo, the bound JID and the user's number.
pub struct Session {
    pub stream: Stream,
    pub parser: StreamParser,
    pub jid: String,
    pub n: u64,
}
