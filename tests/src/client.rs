//! A small async XMPP client for tests and load generation.
//!
//! It speaks the client side of RFC 6120 with `meerkat-xmpp`'s parser and
//! SASL code: plain TCP, STARTTLS or direct TLS (tokio-rustls, ring), SASL
//! PLAIN and SCRAM-SHA-1/256/512 with or without `-PLUS` (`tls-exporter`
//! channel binding, RFC 9266), resource binding, then stanzas in and out.
//!
//! The usual path is [`Client::login`]; the building blocks
//! ([`Client::connect`], [`Client::starttls`], [`Client::auth`],
//! [`Client::bind`]) are public so a test can stop anywhere, and
//! [`Client::send_raw`] sends arbitrary bytes for hostile-input tests.
//!
//! Reading is explicit: nothing is read unless a `recv*`/`expect*` method is
//! called, which is what lets a test play a client that never reads.
//! Elements that [`Client::recv_until`] skips are kept in a backlog that
//! later calls look at first, so waiting for one stanza never loses another.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, ParseError, StreamEvent, StreamHeader, StreamParser};
use meerkat_xmpp::sasl::{plain_initial_response, ClientChannelBinding, HashAlg, ScramClient};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

/// Default time to wait for an expected answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("timed out")]
    Timeout,
    #[error("the server closed the connection")]
    Closed,
    #[error("stream error <{condition}/>{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    StreamError { condition: String, text: Option<String> },
    #[error("SASL failure <{0}/>")]
    SaslFailure(String),
    #[error("the server's XML does not parse: {0}")]
    Parse(#[from] ParseError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// How the client trusts the server's certificate.
#[derive(Clone, Debug, Default)]
pub enum TlsTrust {
    /// Accept any certificate (handshake signatures are still checked). Test use only.
    #[default]
    AcceptAny,
    /// Trust the certificates in this PEM file (e.g. the node's generated `selfsigned.pem`).
    Pem(PathBuf),
}

/// A client certificate and its key, PEM files, presented in TLS handshakes.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A SASL mechanism as the client chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sasl {
    Plain,
    Scram(HashAlg),
    /// SCRAM with `tls-exporter` channel binding; needs TLS 1.3.
    ScramPlus(HashAlg),
}

impl Sasl {
    /// The registered mechanism name.
    pub fn name(self) -> String {
        let hash = |h: HashAlg| match h {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha512 => "SHA-512",
        };
        match self {
            Sasl::Plain => "PLAIN".into(),
            Sasl::Scram(h) => format!("SCRAM-{}", hash(h)),
            Sasl::ScramPlus(h) => format!("SCRAM-{}-PLUS", hash(h)),
        }
    }
}

/// Channel-binding data the client sends with a `-PLUS` mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// This connection's real `tls-exporter` value.
    Exporter,
    /// The exporter value with its first byte flipped, as a man in the middle would present.
    Corrupted,
}

/// How to reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP, no TLS.
    Plain,
    /// Plain TCP, then STARTTLS.
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Gone => Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "connection is gone")),
        }
    }
}

/// One client connection.
pub struct Client {
    conn: Conn,
    parser: StreamParser,
    buf: Vec<u8>,
    domain: String,
    trust: TlsTrust,
    client_cert: Option<ClientCert>,
    backlog: VecDeque<Element>,
    next_id: u64,
    /// The server's last stream header.
    pub header: Option<StreamHeader>,
    /// The last `<stream:features/>`.
    pub features: Option<Element>,
    /// The bound full JID.
    pub jid: Option<String>,
    /// The server closed its stream (`</stream:stream>` or EOF).
    pub closed: bool,
}

fn client_limits() -> Limits {
    Limits { max_stanza_size: 64 * 1024 * 1024, max_depth: 4096 }
}

impl Client {
    /// A TCP connection; nothing is sent yet.
    pub async fn tcp(addr: SocketAddr, domain: &str) -> Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        Ok(Client::with_conn(Conn::Plain(tcp), domain))
    }

    /// A TCP connection with a small receive buffer (for clients that do not read).
    pub async fn tcp_with_recv_buffer(addr: SocketAddr, domain: &str, bytes: u32) -> Result<Client> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_recv_buffer_size(bytes)?;
        let tcp = socket.connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        Ok(Client::with_conn(Conn::Plain(tcp), domain))
    }

    /// A direct TLS connection (XEP-0368); nothing is sent on the stream yet.
    pub async fn direct_tls(addr: SocketAddr, domain: &str, trust: TlsTrust) -> Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let mut c = Client::with_conn(Conn::Gone, domain);
        c.trust = trust;
        c.conn = Conn::Tls(Box::new(c.handshake(tcp).await?));
        Ok(c)
    }

    fn with_conn(conn: Conn, domain: &str) -> Client {
        Client {
            conn,
            parser: StreamParser::new(client_limits()),
            buf: vec![0u8; 64 * 1024],
            domain: domain.to_owned(),
            trust: TlsTrust::default(),
            client_cert: None,
            backlog: VecDeque::new(),
            next_id: 0,
            header: None,
            features: None,
            jid: None,
            closed: false,
        }
    }

    /// Connects and opens the stream; with [`Security::StartTls`] also upgrades to TLS.
    pub async fn connect(addr: SocketAddr, domain: &str, security: Security) -> Result<Client> {
        let mut c = match security {
            Security::DirectTls => Client::direct_tls(addr, domain, TlsTrust::default()).await?,
            _ => Client::tcp(addr, domain).await?,
        };
        c.open_stream().await?;
        if security == Security::StartTls {
            c.starttls().await?;
        }
        Ok(c)
    }

    /// Connects, upgrades with STARTTLS, authenticates with SCRAM-SHA-256 and binds `resource`.
    pub async fn login(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> Result<Client> {
        let mut c = Client::connect(addr, domain, Security::StartTls).await?;
        c.auth(Sasl::Scram(HashAlg::Sha256), user, password).await?;
        c.bind(resource).await?;
        Ok(c)
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The bound full JID (panics before bind).
    pub fn jid(&self) -> &str {
        self.jid.as_deref().expect("no resource bound yet")
    }

    /// The bound JID without its resource.
    pub fn bare_jid(&self) -> &str {
        let j = self.jid();
        j.split('/').next().unwrap_or(j)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.conn, Conn::Tls(_))
    }

    /// The negotiated TLS version, if any.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.conn {
            Conn::Tls(t) => t.get_ref().1.protocol_version(),
            _ => None,
        }
    }

    /// RFC 9266 `tls-exporter` channel-binding data of this connection.
    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        match &self.conn {
            Conn::Tls(t) => t
                .get_ref()
                .1
                .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok()
                .map(|k| k.to_vec()),
            _ => None,
        }
    }

    /// A fresh stanza id.
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("c{}", self.next_id)
    }

    // ------------------------------------------------------------ writing

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, data: &[u8]) -> Result<()> {
        Ok(self.conn.write_all(data).await?)
    }

    /// Writes a string as it is.
    pub async fn send_str(&mut self, xml: &str) -> Result<()> {
        self.send_raw(xml.as_bytes()).await
    }

    /// Serializes and writes an element in the `jabber:client` stream.
    pub async fn send(&mut self, el: &Element) -> Result<()> {
        let xml = el.to_xml(ns::CLIENT);
        self.send_str(&xml).await
    }

    /// Our stream header.
    pub fn header_xml(&self) -> String {
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{}' version='1.0' xml:lang='en'>",
            ns::CLIENT,
            ns::STREAM,
            self.domain
        )
    }

    /// Sends `</stream:stream>`.
    pub async fn close(&mut self) -> Result<()> {
        self.send_str("</stream:stream>").await
    }

    // ------------------------------------------------------------ reading

    /// The next element from the wire (no backlog), skipping stream headers.
    async fn read_element(&mut self, deadline: Instant) -> Result<Element> {
        loop {
            match self.parser.next_event()? {
                Some(StreamEvent::Header(h)) => {
                    self.header = Some(h);
                    continue;
                }
                Some(StreamEvent::End) => {
                    self.closed = true;
                    return Err(ClientError::Closed);
                }
                Some(StreamEvent::Stanza(el)) => {
                    if el.is("error", ns::STREAM) {
                        return Err(stream_error(&el));
                    }
                    return Ok(el);
                }
                None => {}
            }
            if self.closed {
                return Err(ClientError::Closed);
            }
            let n = match tokio::time::timeout_at(deadline, self.conn.read(&mut self.buf)).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(r) => r?,
            };
            if n == 0 {
                self.closed = true;
                return Err(ClientError::Closed);
            }
            self.parser.feed(&self.buf[..n]);
        }
    }

    /// The next element (backlog first), waiting up to `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Element> {
        if let Some(el) = self.backlog.pop_front() {
            return Ok(el);
        }
        self.read_element(Instant::now() + timeout).await
    }

    /// The next element, waiting up to [`TIMEOUT`].
    pub async fn recv(&mut self) -> Result<Element> {
        self.recv_timeout(TIMEOUT).await
    }

    /// The first element matching `pred`, waiting up to `timeout`; others
    /// are kept, in order, for later calls.
    pub async fn recv_until_timeout(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Element) -> bool,
    ) -> Result<Element> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return Ok(self.backlog.remove(i).expect("index is in range"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let el = self.read_element(deadline).await?;
            if pred(&el) {
                return Ok(el);
            }
            self.backlog.push_back(el);
        }
    }

    /// [`Client::recv_until_timeout`] with [`TIMEOUT`].
    pub async fn recv_until(&mut self, pred: impl FnMut(&Element) -> bool) -> Result<Element> {
        self.recv_until_timeout(TIMEOUT, pred).await
    }

    /// Elements received but not consumed yet.
    pub fn backlog(&self) -> impl Iterator<Item = &Element> {
        self.backlog.iter()
    }

    /// Forgets the backlog.
    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
    }

    /// Reads until a stream error arrives and returns its condition; stanzas
    /// before it are skipped. Any other end (timeout, close without error) is an error.
    pub async fn expect_stream_error_timeout(&mut self, timeout: Duration) -> Result<String> {
        self.backlog.clear();
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_element(deadline).await {
                Ok(_) => continue,
                Err(ClientError::StreamError { condition, .. }) => return Ok(condition),
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Client::expect_stream_error_timeout`] with [`TIMEOUT`], panicking on anything but a stream error.
    pub async fn expect_stream_error(&mut self) -> String {
        match self.expect_stream_error_timeout(TIMEOUT).await {
            Ok(c) => c,
            Err(e) => panic!("expected a stream error, got: {e}"),
        }
    }

    /// Reads until the server ends the connection (closing tag, EOF or
    /// reset), skipping stanzas and stream errors. Returns the stream error
    /// condition seen on the way, if any.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = None;
        loop {
            match self.read_element(deadline).await {
                Ok(_) => {}
                Err(ClientError::StreamError { condition, .. }) => seen = Some(condition),
                Err(ClientError::Closed) | Err(ClientError::Io(_)) => return Ok(seen),
                Err(e) => return Err(e),
            }
        }
    }

    // ------------------------------------------------------------ negotiation

    /// Sends our stream header and reads the server's header and features.
    pub async fn open_stream(&mut self) -> Result<Element> {
        let header = self.header_xml();
        self.send_str(&header).await?;
        let deadline = Instant::now() + TIMEOUT;
        let el = self.read_element(deadline).await?;
        if !el.is("features", ns::STREAM) {
            return Err(ClientError::Protocol(format!("expected <stream:features/>, got {el}")));
        }
        self.features = Some(el.clone());
        Ok(el)
    }

    /// Names of the SASL mechanisms in the last features.
    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.get_child("mechanisms", ns::SASL))
            .map(|m| m.elements().filter(|e| e.name == "mechanism").map(Element::text).collect())
            .unwrap_or_default()
    }

    /// Channel-binding types of XEP-0440 in the last features.
    pub fn channel_bindings(&self) -> Vec<String> {
        self.features
            .as_ref()
            .and_then(|f| f.get_child("sasl-channel-binding", ns::SASL_CB))
            .map(|m| {
                m.elements()
                    .filter(|e| e.is("channel-binding", ns::SASL_CB))
                    .filter_map(|e| e.attr("type").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the last features include this child.
    pub fn has_feature(&self, name: &str, namespace: &str) -> bool {
        self.features.as_ref().is_some_and(|f| f.has_child(name, namespace))
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        tls_client_config_with(&self.trust, self.client_cert.as_ref())
    }

    /// A client certificate for later TLS handshakes of this client.
    pub fn set_client_cert(&mut self, cert: ClientCert) {
        self.client_cert = Some(cert);
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_config()?));
        let name = ServerName::try_from(self.domain.clone()).map_err(|e| ClientError::Tls(e.to_string()))?;
        tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Tls(e.to_string()))
    }

    /// Trust for later TLS handshakes of this client.
    pub fn set_tls_trust(&mut self, trust: TlsTrust) {
        self.trust = trust;
    }

    /// STARTTLS (RFC 6120 §5): `<starttls/>`, `<proceed/>`, handshake, new stream.
    pub async fn starttls(&mut self) -> Result<Element> {
        self.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
        let el = self.read_element(Instant::now() + TIMEOUT).await?;
        if !el.is("proceed", ns::TLS) {
            return Err(ClientError::Protocol(format!("expected <proceed/>, got {el}")));
        }
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err(ClientError::Protocol("STARTTLS on a connection that is not plain TCP".into()));
        };
        self.conn = Conn::Tls(Box::new(self.handshake(tcp).await?));
        self.parser.reset();
        self.open_stream().await
    }

    /// SASL authentication, then the stream restart. Failure returns [`ClientError::SaslFailure`].
    pub async fn auth(&mut self, sasl: Sasl, user: &str, password: &str) -> Result<()> {
        self.auth_with(sasl, user, password, Binding::Exporter).await
    }

    /// Like [`Client::auth`], choosing the channel-binding data for `-PLUS` mechanisms.
    pub async fn auth_with(&mut self, sasl: Sasl, user: &str, password: &str, binding: Binding) -> Result<()> {
        let name = sasl.name();
        let mut scram = match sasl {
            Sasl::Plain => None,
            Sasl::Scram(h) => Some(ScramClient::new(h, user, password, ClientChannelBinding::None)),
            Sasl::ScramPlus(h) => {
                let mut cb = self
                    .tls_exporter()
                    .ok_or_else(|| ClientError::Protocol("-PLUS needs a TLS 1.3 connection".into()))?;
                if binding == Binding::Corrupted {
                    cb[0] ^= 0xff;
                }
                Some(ScramClient::new(h, user, password, ClientChannelBinding::TlsExporter(cb)))
            }
        };
        let initial = match &mut scram {
            None => plain_initial_response(None, user, password),
            Some(s) => s.client_first(),
        };
        self.send_str(&format!("<auth xmlns='{}' mechanism='{name}'>{}</auth>", ns::SASL, B64.encode(initial))).await?;
        loop {
            let el = self.read_element(Instant::now() + TIMEOUT).await?;
            if el.ns != ns::SASL {
                return Err(ClientError::Protocol(format!("unexpected element during SASL: {el}")));
            }
            let data =
                B64.decode(el.text().trim()).map_err(|_| ClientError::Protocol(format!("bad base64 in {el}")))?;
            match el.name.as_str() {
                "challenge" => {
                    let s = scram.as_mut().ok_or_else(|| ClientError::Protocol("challenge for PLAIN".into()))?;
                    let reply =
                        s.handle_server_first(&data).map_err(|e| ClientError::Protocol(format!("SCRAM: {e}")))?;
                    self.send_str(&format!("<response xmlns='{}'>{}</response>", ns::SASL, B64.encode(reply))).await?;
                }
                "success" => {
                    if let Some(s) = &scram {
                        s.verify_server_final(&data)
                            .map_err(|e| ClientError::Protocol(format!("server signature: {e}")))?;
                    }
                    self.parser.reset();
                    self.open_stream().await?;
                    return Ok(());
                }
                "failure" => {
                    let cond = el.elements().find(|e| e.name != "text").map(|e| e.name.clone()).unwrap_or_default();
                    return Err(ClientError::SaslFailure(cond));
                }
                other => return Err(ClientError::Protocol(format!("unexpected SASL element <{other}/>"))),
            }
        }
    }

    /// SASL EXTERNAL (XEP-0178) with the TLS client certificate, asking for
    /// `authzid` if given, then the stream restart.
    pub async fn auth_external(&mut self, authzid: Option<&str>) -> Result<()> {
        let body = authzid.map_or_else(|| "=".to_owned(), |a| B64.encode(a));
        self.send_str(&format!("<auth xmlns='{}' mechanism='EXTERNAL'>{body}</auth>", ns::SASL)).await?;
        let el = self.read_element(Instant::now() + TIMEOUT).await?;
        match (el.ns == ns::SASL, el.name.as_str()) {
            (true, "success") => {
                self.parser.reset();
                self.open_stream().await?;
                Ok(())
            }
            (true, "failure") => {
                let cond = el.elements().find(|e| e.name != "text").map(|e| e.name.clone()).unwrap_or_default();
                Err(ClientError::SaslFailure(cond))
            }
            _ => Err(ClientError::Protocol(format!("unexpected element during SASL: {el}"))),
        }
    }

    /// Resource binding (RFC 6120 §7); returns the full JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> Result<String> {
        let mut bind = Element::new("bind", ns::BIND);
        if let Some(r) = resource {
            bind.push_child(Element::new("resource", ns::BIND).with_text(r));
        }
        let iq = Element::new("iq", ns::CLIENT).with_attr("type", "set").with_child(bind);
        let res = self.iq(iq).await?;
        let jid = res
            .get_child("bind", ns::BIND)
            .and_then(|b| b.get_child("jid", ns::BIND))
            .map(Element::text)
            .ok_or_else(|| ClientError::Protocol(format!("bind failed: {res}")))?;
        self.jid = Some(jid.clone());
        Ok(jid)
    }

    // ------------------------------------------------------------ stanzas

    /// Sends an IQ (an id is added if missing) and returns its result or error.
    pub async fn iq(&mut self, mut iq: Element) -> Result<Element> {
        let id = match iq.attr("id") {
            Some(id) => id.to_owned(),
            None => {
                let id = self.new_id();
                iq.set_attr("id", id.clone());
                id
            }
        };
        self.send(&iq).await?;
        self.recv_until(|el| {
            el.name == "iq" && el.attr("id") == Some(&id) && matches!(el.attr("type"), Some("result") | Some("error"))
        })
        .await
    }

    /// [`Client::iq`] on an IQ written as XML text.
    pub async fn iq_xml(&mut self, xml: &str) -> Result<Element> {
        self.iq(parse_element(xml)).await
    }

    /// Sends a chat message with a body.
    pub async fn send_message(&mut self, to: &str, body: &str) -> Result<()> {
        self.send(&message(to, body)).await
    }

    /// Sends presence (available unless `type` is given) without `to`.
    pub async fn send_presence(&mut self, priority: Option<i8>) -> Result<()> {
        let mut p = Element::new("presence", ns::CLIENT);
        if let Some(pr) = priority {
            p.push_child(Element::new("priority", ns::CLIENT).with_text(pr.to_string()));
        }
        self.send(&p).await
    }

    /// Initial presence, then waits for its echo from our own full JID (RFC 6121 §4.2.2),
    /// which tells the server finished the broadcast.
    pub async fn go_online(&mut self, priority: Option<i8>) -> Result<()> {
        self.send_presence(priority).await?;
        let me = self.jid().to_owned();
        self.recv_until(|el| el.name == "presence" && el.attr("from") == Some(&me) && el.attr("type").is_none())
            .await?;
        Ok(())
    }

    /// The first message with a body.
    pub async fn recv_message(&mut self) -> Result<Element> {
        self.recv_until(|el| el.name == "message" && el.get_child("body", ns::CLIENT).is_some()).await
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting
/// the server's certificate as `trust` says. Shared with the load generator.
pub fn tls_client_config(trust: &TlsTrust) -> Result<rustls::ClientConfig> {
    tls_client_config_with(trust, None)
}

/// As [`tls_client_config`], presenting `client` when the server asks for a certificate.
pub fn tls_client_config_with(trust: &TlsTrust, client: Option<&ClientCert>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let builder = match trust {
        TlsTrust::AcceptAny => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
        TlsTrust::Pem(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| ClientError::Tls(e.to_string()))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some(c) => {
            let tls = |e: &dyn std::fmt::Display| ClientError::Tls(format!("{}: {e}", c.cert.display()));
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(&c.cert)
                .map_err(|e| tls(&e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| tls(&e))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&c.key).map_err(|e| tls(&e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| tls(&e))
        }
    }
}

/// Turns a `<stream:error/>` into [`ClientError::StreamError`].
fn stream_error(el: &Element) -> ClientError {
    let condition =
        el.elements().find(|e| e.ns == ns::STREAMS && e.name != "text").map(|e| e.name.clone()).unwrap_or_default();
    let text = el.get_child("text", ns::STREAMS).map(Element::text);
    ClientError::StreamError { condition, text }
}

/// Parses one element written as XML text; unprefixed elements are in `jabber:client`.
pub fn parse_element(xml: &str) -> Element {
    let mut p = StreamParser::new(client_limits());
    p.feed(format!("<stream:stream xmlns='{}' xmlns:stream='{}'>", ns::CLIENT, ns::STREAM).as_bytes());
    p.feed(xml.as_bytes());
    match p.next_event() {
        Ok(Some(StreamEvent::Header(_))) => {}
        other => panic!("test XML header: {other:?}"),
    }
    match p.next_event() {
        Ok(Some(StreamEvent::Stanza(el))) => el,
        other => panic!("test XML does not parse ({other:?}): {xml}"),
    }
}

/// A chat message with a body.
pub fn message(to: &str, body: &str) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("to", to)
        .with_attr("type", "chat")
        .with_child(Element::new("body", ns::CLIENT).with_text(body))
}

/// The body text of a message.
pub fn body(el: &Element) -> Option<String> {
    el.get_child("body", ns::CLIENT).map(Element::text)
}

/// The condition of a stanza error, e.g. `service-unavailable`.
pub fn stanza_error(el: &Element) -> Option<String> {
    let err = el.get_child("error", &el.ns)?;
    err.elements().find(|e| e.ns == ns::STANZAS && e.name != "text").map(|e| e.name.clone())
}

/// Certificate verifier that accepts any server certificate but still checks
/// the handshake signatures. For tests against a self-signed node only.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
