//! A client connection as the c2s driver reads and writes it.
//!
//! [`Transport`] is TCP before and after TLS. [`Conn`] adds the framing on
//! top: an RFC 6120 byte stream fed to the stream parser, or RFC 7395
//! WebSocket messages through [`crate::websocket`]. Either way the driver
//! sees the same parser events and writes the same serialized elements;
//! after bind, [`Conn::split`] gives the session's reader and writer halves.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use meerkat_xmpp::error::{StreamError, StreamErrorCondition};
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
use meerkat_xmpp::sasl::external::CertIdentity;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::instrument::{DataMetrics, HostMetrics, Meter};
use crate::websocket::{self, FrameReader, WsConnection, WsIn, WsOut};

/// Bytes read from a client socket at a time (on the stack of the read).
const READ_BUFFER: usize = 4096;

/// RFC 9266 `tls-exporter` channel-binding data of a TLS connection, on TLS
/// 1.3 only (on TLS 1.2 the exporter is only safe with extended master
/// secret; we offer -PLUS on TLS 1.3 only).
pub fn tls_exporter_of(conn: &rustls::ServerConnection) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None).ok().map(|k| k.to_vec())
}

/// Plain TCP, or TCP under TLS (after STARTTLS or direct TLS).
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// RFC 9266 `tls-exporter` channel-binding data, when TLS 1.3 is in use.
    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls_exporter_of(tls.get_ref().1),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// What the client's certificate names, when it presented one that
    /// `policy` verifies.
    pub fn client_cert(&self, policy: Option<&crate::client_cert::ClientCerts>) -> Option<CertIdentity> {
        match (self, policy) {
            (Transport::Tls(tls), Some(policy)) => policy.identity(tls.get_ref().1),
            _ => None,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An RFC 6120 stream being read. It owns no read buffer: each read goes
/// through a buffer on the stack, only for as long as the read is polled,
/// and what it got is fed to the parser, whose own buffer is released
/// whenever it has parsed everything. An idle connection keeps no buffer.
pub(crate) struct ByteInput {
    parser: StreamParser,
    /// Counts what is read and parsed.
    pub meter: Meter,
}

impl ByteInput {
    fn new(limits: Limits, meter: Meter) -> Self {
        ByteInput { parser: StreamParser::new(limits), meter }
    }

    fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        let ev = self.parser.next_event().map_err(|e| StreamError::with_text(e.condition(), e.to_string()))?;
        if let Some(StreamEvent::Stanza(el)) = &ev {
            self.meter.parsed(el, self.parser.last_stanza_len());
        }
        Ok(ev)
    }

    /// Reads once, after the shaper's pause if it has one; `false` at the
    /// end of the stream. Cancel-safe: what a read returns is in the parser
    /// (and counted) before the poll that got it returns.
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        shaper: &mut Option<Box<Shaper>>,
    ) -> io::Result<bool> {
        Shaper::pace(shaper).await;
        std::future::poll_fn(|cx| {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_BUFFER];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(false));
            }
            self.parser.feed(buf.filled());
            self.meter.read(buf.filled().len());
            Shaper::count(shaper, buf.filled().len());
            Poll::Ready(Ok(true))
        })
        .await
    }
}

/// `[shaper.NAME] max_rate`: a token bucket over the bytes read from one
/// connection. A read that takes the bucket below zero makes the next read
/// wait until it is paid back, so a client sending faster than the rate is
/// slowed down by TCP back-pressure, never disconnected. The bucket holds
/// at most one second of the rate, so a client that was quiet may send that
/// much at once.
#[derive(Debug)]
pub struct Shaper {
    /// Bytes per second.
    rate: u64,
    /// Bytes that may be read now; negative is a debt.
    allowance: f64,
    at: tokio::time::Instant,
}

impl Shaper {
    /// A shaper of `max_rate` bytes per second; `None` for no shaping.
    pub fn new(max_rate: Option<u64>) -> Option<Box<Shaper>> {
        max_rate
            .filter(|r| *r > 0)
            .map(|rate| Box::new(Shaper { rate, allowance: rate as f64, at: tokio::time::Instant::now() }))
    }

    fn spend(&mut self, n: usize) {
        let now = tokio::time::Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.rate as f64;
        self.allowance = (self.allowance + earned).min(self.rate as f64) - n as f64;
        self.at = now;
    }

    /// When the debt is paid back, if there is one.
    fn ready_at(&self) -> Option<tokio::time::Instant> {
        (self.allowance < 0.0).then(|| self.at + Duration::from_secs_f64(-self.allowance / self.rate as f64))
    }

    /// Waits until reading may go on. Cancel-safe: it only sleeps.
    async fn pace(shaper: &Option<Box<Shaper>>) {
        if let Some(at) = shaper.as_ref().and_then(|s| s.ready_at()) {
            tokio::time::sleep_until(at).await;
        }
    }

    fn count(shaper: &mut Option<Box<Shaper>>, n: usize) {
        if let Some(s) = shaper {
            s.spend(n);
        }
    }
}

/// Takes the next WebSocket message into `input`; `false` once the client is gone.
async fn fill_frames(
    incoming: &mut mpsc::Receiver<WsIn>,
    input: &mut FrameReader,
    shaper: &mut Option<Box<Shaper>>,
) -> bool {
    Shaper::pace(shaper).await;
    match incoming.recv().await {
        None => false,
        Some(WsIn::Text(text)) => {
            Shaper::count(shaper, text.len());
            input.push_message(&text);
            true
        }
        Some(WsIn::Binary) => {
            input.fail(StreamError::with_text(
                StreamErrorCondition::BadFormat,
                "XMPP over WebSocket uses text messages (RFC 7395 §3.2)",
            ));
            true
        }
        Some(WsIn::TooLarge) => {
            input.fail_too_large();
            true
        }
        Some(WsIn::Activity) => true,
    }
}

fn ws_closed<T>(_: T) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
}

/// One client connection during negotiation, in its framing.
// One value per connection, made once and never moved around: boxing the
// larger variant would only add an indirection to every read and write.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn {
    /// RFC 6120: one XML stream over TCP, maybe under TLS.
    Stream { transport: Transport, input: ByteInput, shaper: Option<Box<Shaper>> },
    /// RFC 7395: one element per WebSocket message.
    WebSocket { ws: WsConnection, input: FrameReader, shaper: Option<Box<Shaper>> },
}

impl Conn {
    pub fn stream(transport: Transport, limits: Limits, shaper: Option<Box<Shaper>>, meter: Meter) -> Conn {
        Conn::Stream { transport, input: ByteInput::new(limits, meter), shaper }
    }

    /// Counts the elements of this connection as `host`'s from now on.
    pub fn meter_host(&mut self, host: Arc<HostMetrics>) {
        self.meter_mut().host = Some(host);
    }

    /// Counts the bytes of this connection as `data` from now on (after STARTTLS).
    pub fn meter_data(&mut self, data: DataMetrics) {
        self.meter_mut().data = Some(data);
    }

    fn meter_mut(&mut self) -> &mut Meter {
        match self {
            Conn::Stream { input, .. } => &mut input.meter,
            Conn::WebSocket { input, .. } => &mut input.meter,
        }
    }

    /// Takes TLS 1.3 early data (0-RTT) the handshake buffered, and feeds it
    /// to the parser ahead of anything read later; whether there was any.
    /// Early data can be replayed by whoever recorded it.
    pub fn take_early_data(&mut self) -> bool {
        use std::io::Read as _;
        let Conn::Stream { transport: Transport::Tls(tls), input, .. } = self else { return false };
        let Some(mut early) = tls.get_mut().1.early_data() else { return false };
        let mut bytes = Vec::new();
        if early.read_to_end(&mut bytes).is_err() || bytes.is_empty() {
            return false;
        }
        input.parser.feed(&bytes);
        true
    }

    pub fn websocket(ws: WsConnection, limits: Limits, shaper: Option<Box<Shaper>>, meter: Meter) -> Conn {
        let mut input = FrameReader::new(limits);
        input.meter = meter;
        Conn::WebSocket { ws, input, shaper }
    }

    /// Whether the connection is encrypted (TLS, or a `wss` WebSocket).
    pub fn is_secure(&self) -> bool {
        match self {
            Conn::Stream { transport, .. } => transport.is_tls(),
            Conn::WebSocket { ws, .. } => ws.secure,
        }
    }

    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        match self {
            Conn::Stream { transport, .. } => transport.tls_exporter(),
            Conn::WebSocket { ws, .. } => ws.tls_exporter.clone(),
        }
    }

    /// The verified client certificate's identity (see [`Transport::client_cert`];
    /// a WebSocket's was read when its HTTPS connection was accepted).
    pub fn client_cert(&self, policy: Option<&crate::client_cert::ClientCerts>) -> Option<CertIdentity> {
        match self {
            Conn::Stream { transport, .. } => transport.client_cert(policy),
            Conn::WebSocket { ws, .. } => ws.client_cert.clone(),
        }
    }

    /// The next event from what was read so far, without waiting.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        match self {
            Conn::Stream { input, .. } => input.next_event(),
            Conn::WebSocket { input, .. } => input.next_event(),
        }
    }

    /// Waits for more input; `false` once the client is gone. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<bool> {
        match self {
            Conn::Stream { transport, input, shaper } => input.fill(transport, shaper).await,
            Conn::WebSocket { ws, input, shaper } => Ok(fill_frames(&mut ws.incoming, input, shaper).await),
        }
    }

    /// Bytes read but not parsed yet (see [`StreamParser::buffered_len`]).
    pub fn buffered_len(&self) -> usize {
        match self {
            Conn::Stream { input, .. } => input.parser.buffered_len(),
            Conn::WebSocket { .. } => 0,
        }
    }

    /// A stream restart: forget what was read and expect a new header.
    pub fn restart(&mut self) {
        match self {
            Conn::Stream { input, .. } => input.parser.reset(),
            Conn::WebSocket { input, .. } => input.restart(),
        }
    }

    /// Writes one serialized element, a stream header or a stream's end.
    pub async fn send(&mut self, xml: &str) -> io::Result<()> {
        self.meter_mut().serialized(xml.as_bytes());
        match self {
            Conn::Stream { transport, input, .. } => {
                transport.write_all(xml.as_bytes()).await?;
                input.meter.wrote(xml.len());
                transport.flush().await
            }
            Conn::WebSocket { ws, .. } => {
                for frame in websocket::frames(xml) {
                    ws.outgoing.send(WsOut::Text(frame)).await.map_err(ws_closed)?;
                }
                Ok(())
            }
        }
    }

    /// Ends our stream, after `err` if given, and closes the connection.
    pub async fn close(&mut self, err: Option<&StreamError>) {
        let tail = match err {
            Some(e) => format!("{}</stream:stream>", e.to_xml()),
            None => "</stream:stream>".to_owned(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.send(&tail).await;
            if let Conn::Stream { transport, .. } = self {
                let _ = transport.shutdown().await;
            }
            // A WebSocket closes once its sender is dropped, with the connection.
        })
        .await;
    }

    /// The session's halves: the reader keeps parsing, the writer drains its queue.
    pub fn split(self) -> (ConnReader, ConnWriter) {
        match self {
            Conn::Stream { transport, input, shaper } => {
                let (half, writer) = tokio::io::split(transport);
                let meter = input.meter.clone();
                (ConnReader::Stream { half, input, shaper }, ConnWriter::Stream(writer, meter))
            }
            Conn::WebSocket { ws, input, shaper } => {
                let meter = input.meter.clone();
                (
                    ConnReader::WebSocket { incoming: ws.incoming, input: Box::new(input), shaper },
                    ConnWriter::WebSocket(ws.outgoing, meter),
                )
            }
        }
    }
}

/// What a bound session reads from. It lives as long as the session: the
/// larger WebSocket reader is boxed so that a byte stream does not pay for
/// it, and the byte stream's, the common case, stays inline.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ConnReader {
    Stream { half: ReadHalf<Transport>, input: ByteInput, shaper: Option<Box<Shaper>> },
    WebSocket { incoming: mpsc::Receiver<WsIn>, input: Box<FrameReader>, shaper: Option<Box<Shaper>> },
}

impl ConnReader {
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        match self {
            ConnReader::Stream { input, .. } => input.next_event(),
            ConnReader::WebSocket { input, .. } => input.next_event(),
        }
    }

    /// Waits for more input; `false` once the client is gone. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<bool> {
        match self {
            ConnReader::Stream { half, input, shaper } => input.fill(half, shaper).await,
            ConnReader::WebSocket { incoming, input, shaper } => Ok(fill_frames(incoming, input, shaper).await),
        }
    }
}

/// What a bound session's writer task writes to.
pub(crate) enum ConnWriter {
    Stream(WriteHalf<Transport>, Meter),
    WebSocket(mpsc::Sender<WsOut>, Meter),
}
