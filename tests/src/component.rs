//! A bare XEP-0114 component over TCP, for the tests that need to send what
//! no real component library would (a wrong handshake, a forged `from`).

use std::net::SocketAddr;
use std::time::Duration;

use meerkat_xmpp::component::handshake_digest;
use meerkat_xmpp::element::Element;
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A component connection: the stream is open, the handshake maybe not.
pub struct RawComponent {
    sock: TcpStream,
    parser: StreamParser,
    /// The stream id the server gave.
    pub id: String,
    pub domain: String,
}

impl RawComponent {
    /// Connects and opens a stream for `domain`, returning once the server's
    /// header arrived.
    pub async fn open(addr: SocketAddr, domain: &str) -> std::io::Result<RawComponent> {
        let mut sock = TcpStream::connect(addr).await?;
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' to='{domain}'>",
            ns::COMPONENT,
            ns::STREAM
        );
        sock.write_all(header.as_bytes()).await?;
        let mut c = RawComponent {
            sock,
            parser: StreamParser::new(Limits::default()),
            id: String::new(),
            domain: domain.to_owned(),
        };
        match c.event(Duration::from_secs(10)).await? {
            StreamEvent::Header(h) => c.id = h.id.unwrap_or_default(),
            other => return Err(std::io::Error::other(format!("expected a stream header, got {other:?}"))),
        }
        Ok(c)
    }

    /// Opens a stream and hand-shakes with `secret`; panics unless accepted.
    pub async fn connect(addr: SocketAddr, domain: &str, secret: &str) -> RawComponent {
        let mut c = RawComponent::open(addr, domain).await.expect("component stream");
        let answer = c.handshake(secret).await.expect("handshake answer");
        assert!(answer.is("handshake", ns::COMPONENT), "handshake refused: {}", answer.to_xml(ns::COMPONENT));
        c
    }

    /// Sends the handshake for `secret`; returns what the server answered
    /// (`<handshake/>`, or a `<stream:error/>`).
    pub async fn handshake(&mut self, secret: &str) -> std::io::Result<Element> {
        let digest = handshake_digest(&self.id, secret);
        self.send_str(&format!("<handshake>{digest}</handshake>")).await?;
        self.recv_timeout(Duration::from_secs(10)).await
    }

    pub async fn send_str(&mut self, xml: &str) -> std::io::Result<()> {
        self.sock.write_all(xml.as_bytes()).await
    }

    /// The next element (a stanza in `jabber:component:accept`, or a stream error).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> std::io::Result<Element> {
        match self.event(timeout).await? {
            StreamEvent::Stanza(el) => Ok(el),
            other => Err(std::io::Error::other(format!("expected an element, got {other:?}"))),
        }
    }

    /// Reads until a stream error arrives and returns its condition.
    pub async fn expect_stream_error(&mut self, timeout: Duration) -> String {
        loop {
            let el = self.recv_timeout(timeout).await.expect("a stream error");
            if el.is("error", ns::STREAM) {
                return el
                    .elements()
                    .find(|c| c.ns == ns::STREAMS && c.name != "text")
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
            }
        }
    }

    async fn event(&mut self, timeout: Duration) -> std::io::Result<StreamEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "nothing from the server"))??;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
            self.parser.feed(&buf[..n]);
        }
    }
}
