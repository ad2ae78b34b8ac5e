//! RFC 7395: XMPP over WebSocket, the framing layer.
//!
//! The node's HTTP layer upgrades the connection (subprotocol `xmpp`) and
//! hands it over as a [`WsConnection`]: WebSocket messages in and out
//! through two bounded channels. Everything else is the TCP path: the same
//! [`crate::negotiation`] state machine and the same
//! [`crate::session::C2sSession`] actor, driven by [`crate::c2s`]. This
//! module only translates between the two framings:
//!
//! - **In** ([`FrameReader`]): each text message must be one complete
//!   element (§3.3.3). It is fed to a [`StreamParser`] that was primed with
//!   an RFC 6120 stream header, so stanzas come out with the namespaces a
//!   TCP stream would give them. `<open/>` becomes a stream header event and
//!   `<close/>` the end of the stream (§3.3.2, §3.4, §3.6); a partial
//!   element, two elements in one message, a binary message or one over the
//!   size limit is a stream error.
//! - **Out** ([`frames`]): the c2s driver and the session write serialized
//!   elements (one per write) as they would on TCP; each becomes one text
//!   message. The stream header becomes `<open/>`, `</stream:stream>`
//!   becomes `<close/>`, `stream:`-prefixed elements declare the prefix,
//!   and stanzas declare `jabber:client` (every message must parse on its
//!   own, §3.3.3). No whitespace keepalives (§3.8): the writer sends
//!   WebSocket pings instead.
//!
//! STARTTLS is never offered (§3.9): TLS is the `wss` layer, whose RFC 9266
//! exporter the connection carries for SCRAM-*-PLUS.

use meerkat_xmpp::error::{StreamError, StreamErrorCondition};
use meerkat_xmpp::ns;
use meerkat_xmpp::parser::{Limits, StreamEvent, StreamHeader, StreamParser};
use tokio::sync::mpsc;

/// The framed stream namespace of `<open/>` and `<close/>` (RFC 7395 §3.3.2).
pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// What the HTTP layer passes on from the client.
#[derive(Debug)]
pub enum WsIn {
    /// A text message (continuation frames already joined).
    Text(String),
    /// A binary message: not XMPP.
    Binary,
    /// A message or frame over the size limit, refused before it was read.
    TooLarge,
    /// A ping or pong frame: the client is there, though it sent no element.
    Activity,
}

/// What the c2s driver asks the HTTP layer to send.
#[derive(Debug)]
pub enum WsOut {
    /// One text message: exactly one element.
    Text(String),
    /// A WebSocket ping (the keepalive, instead of whitespace).
    Ping,
}

/// One upgraded WebSocket connection, as the HTTP layer hands it over. When
/// `incoming` ends, the client is gone; when the driver drops `outgoing`,
/// the HTTP layer sends what is queued, then a close frame.
pub struct WsConnection {
    pub incoming: mpsc::Receiver<WsIn>,
    pub outgoing: mpsc::Sender<WsOut>,
    /// Whether the HTTP listener runs TLS (`wss`).
    pub secure: bool,
    /// RFC 9266 `tls-exporter` channel-binding data of the TLS connection, if any.
    pub tls_exporter: Option<Vec<u8>>,
    /// What the client certificate of the HTTPS connection names, when it verified.
    pub client_cert: Option<meerkat_xmpp::sasl::external::CertIdentity>,
}

/// The RFC 6120 header a [`FrameReader`]'s parser starts with, so that a
/// stanza without namespace declarations is read as in a TCP stream.
const PRIMER: &[u8] = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// Turns WebSocket messages into the stream events the c2s driver consumes.
#[derive(Debug)]
pub struct FrameReader {
    parser: StreamParser,
    /// The event (or error) of the last message, until the driver takes it.
    pending: Option<Result<StreamEvent, StreamError>>,
    /// Counts the elements read.
    pub meter: crate::instrument::Meter,
}

impl FrameReader {
    pub fn new(limits: Limits) -> Self {
        let mut r = FrameReader { parser: StreamParser::new(limits), pending: None, meter: Default::default() };
        r.restart();
        r
    }

    /// A new stream after SASL success (§3.7): the client sends `<open/>` again.
    pub fn restart(&mut self) {
        self.parser.reset();
        self.parser.feed(PRIMER);
        // The primer's own header event; it cannot fail.
        let _ = self.parser.next_event();
        self.pending = None;
    }

    /// The event of the last message, once.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamError> {
        let ev = self.pending.take().transpose()?;
        if let Some(StreamEvent::Stanza(el)) = &ev {
            self.meter.parsed(el, self.parser.last_stanza_len());
        }
        Ok(ev)
    }

    /// Something that is not a text message holding one element.
    pub fn fail(&mut self, err: StreamError) {
        self.pending = Some(Err(err));
    }

    /// A message or frame the HTTP layer refused for its size.
    pub fn fail_too_large(&mut self) {
        self.pending = Some(Err(too_large(self.parser.limits().max_stanza_size)));
    }

    /// Reads one text message. The driver takes each event before it
    /// receives the next message, so there is at most one pending.
    pub fn push_message(&mut self, text: &str) {
        self.pending = self.read_message(text);
    }

    fn read_message(&mut self, text: &str) -> Option<Result<StreamEvent, StreamError>> {
        let max = self.parser.limits().max_stanza_size;
        if text.len() > max {
            return Some(Err(too_large(max)));
        }
        // An XML declaration is allowed, though not recommended (§3.3.3); the
        // parser would take it for a processing instruction inside the stream.
        let body = strip_xml_declaration(text);
        if body.trim_start().is_empty() {
            // Whitespace is no keepalive here (§3.8), but it is harmless.
            return None;
        }
        self.parser.feed(body.as_bytes());
        let ev = match self.parser.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => return Some(Err(framing_error("a message must hold one complete element"))),
            Err(e) => return Some(Err(StreamError::with_text(e.condition(), e.to_string()))),
        };
        if !matches!(self.parser.next_event(), Ok(None)) || self.parser.buffered_len() > 0 {
            return Some(Err(framing_error("a message must hold exactly one element")));
        }
        Some(match ev {
            StreamEvent::Stanza(el) if el.ns == FRAMING && el.name == "open" => Ok(StreamEvent::Header(StreamHeader {
                to: el.attr("to").map(str::to_owned),
                from: el.attr("from").map(str::to_owned),
                id: el.attr("id").map(str::to_owned),
                version: el.attr("version").map(str::to_owned),
                lang: el.attr("xml:lang").map(str::to_owned),
                // The content namespace is fixed by the subprotocol.
                default_ns: Some(ns::CLIENT.to_owned()),
            })),
            StreamEvent::Stanza(el) if el.ns == FRAMING && el.name == "close" => Ok(StreamEvent::End),
            StreamEvent::Stanza(el) if el.name == "open" || el.name == "close" => Err(StreamError::with_text(
                StreamErrorCondition::InvalidNamespace,
                format!("<{}/> must be in the namespace {FRAMING}", el.name),
            )),
            StreamEvent::Stanza(el) => Ok(StreamEvent::Stanza(el)),
            // `<stream:stream>` cannot be one complete element, and `</stream:stream>`
            // ends the primer: both mean an RFC 6120 stream inside WebSocket.
            StreamEvent::Header(_) | StreamEvent::End => {
                Err(framing_error("use <open/> and <close/> instead of <stream:stream>"))
            }
        })
    }
}

/// The stream error for a message over the size limit.
pub fn too_large(max: usize) -> StreamError {
    StreamError::with_text(StreamErrorCondition::PolicyViolation, format!("message larger than {max} bytes"))
}

/// The stream error for a message that is not one element in text.
pub fn framing_error(text: &str) -> StreamError {
    StreamError::with_text(StreamErrorCondition::NotWellFormed, format!("{text} (RFC 7395 §3.3.3)"))
}

fn strip_xml_declaration(text: &str) -> &str {
    let t = text.trim_start();
    if t.starts_with("<?xml") {
        if let Some(end) = t.find("?>") {
            return &t[end + 2..];
        }
    }
    text
}

/// The text messages for one write of the c2s driver or the session: a
/// serialized element, a stream header, or a stream's end (a stream error
/// followed by `</stream:stream>`, or the tag alone).
pub fn frames(xml: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(1);
    let (head, closed) = match xml.strip_suffix("</stream:stream>") {
        Some(head) => (head, true),
        None => (xml, false),
    };
    let head = head.trim();
    if head.starts_with("<?xml") || head.starts_with("<stream:stream") {
        out.push(open_frame(head));
    } else if !head.is_empty() {
        out.push(standalone(head));
    }
    if closed {
        out.push(format!("<close xmlns='{FRAMING}'/>"));
    }
    out
}

/// `<open/>` with the attributes of our RFC 6120 stream header (§3.4).
fn open_frame(header: &str) -> String {
    let mut p = StreamParser::new(Limits::default());
    p.feed(header.as_bytes());
    let h = match p.next_event() {
        Ok(Some(StreamEvent::Header(h))) => h,
        // Only ever our own header; keep going with what RFC 7395 requires.
        _ => StreamHeader::default(),
    };
    let mut open = meerkat_xmpp::element::Element::new("open", FRAMING);
    for (name, value) in [("from", &h.from), ("id", &h.id), ("version", &h.version), ("xml:lang", &h.lang)] {
        if let Some(v) = value {
            open.set_attr(name, v.as_str());
        }
    }
    open.to_xml("")
}

/// One serialized element made parsable on its own (§3.3.3). Our serializer
/// writes a root in the parent's namespace without `xmlns`, and any other
/// namespace first among the root's attributes, so a root not followed by
/// ` xmlns=` is a stanza in `jabber:client`. `stream:` elements (features,
/// errors) are written inside a stream that declared the prefix.
fn standalone(el: &str) -> String {
    if !el.starts_with('<') {
        return el.to_owned();
    }
    let name_len = el[1..].find([' ', '>', '/']).map_or(el.len(), |i| i + 1);
    let (open, rest) = el.split_at(name_len);
    let declaration = if open.starts_with("<stream:") {
        if rest.starts_with(" xmlns:stream=") {
            return el.to_owned();
        }
        " xmlns:stream='http://etherx.jabber.org/streams'"
    } else {
        if rest.starts_with(" xmlns=") {
            return el.to_owned();
        }
        " xmlns='jabber:client'"
    };
    let mut s = String::with_capacity(el.len() + declaration.len());
    s.push_str(open);
    s.push_str(declaration);
    s.push_str(rest);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use meerkat_xmpp::element::Element;

    fn reader() -> FrameReader {
        FrameReader::new(Limits { max_stanza_size: 1024, max_depth: 16 })
    }

    fn read(r: &mut FrameReader, msg: &str) -> Result<Option<StreamEvent>, StreamError> {
        r.push_message(msg);
        r.next_event()
    }

    fn condition(res: Result<Option<StreamEvent>, StreamError>) -> String {
        match res {
            Err(e) => e.condition.as_str().to_owned(),
            Ok(ev) => panic!("expected an error, got {ev:?}"),
        }
    }

    #[test]
    fn open_becomes_a_stream_header() {
        let mut r = reader();
        let ev = read(&mut r, "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>");
        let Ok(Some(StreamEvent::Header(h))) = ev else { panic!("{ev:?}") };
        assert_eq!(h.to.as_deref(), Some("example.com"));
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.default_ns.as_deref(), Some(ns::CLIENT));
        // Each event is handed out once.
        assert!(matches!(r.next_event(), Ok(None)));
    }

    #[test]
    fn close_ends_the_stream_and_restart_expects_open_again() {
        let mut r = reader();
        assert!(matches!(
            read(&mut r, "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"),
            Ok(Some(StreamEvent::End))
        ));
        r.restart();
        let ev = read(&mut r, "<?xml version='1.0'?><open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='a'/>");
        assert!(matches!(ev, Ok(Some(StreamEvent::Header(_)))), "{ev:?}");
    }

    #[test]
    fn stanzas_keep_their_namespaces() {
        let mut r = reader();
        let ev = read(&mut r, "<message xmlns='jabber:client' to='b@x'><body>hi</body></message>");
        let Ok(Some(StreamEvent::Stanza(m))) = ev else { panic!("{ev:?}") };
        assert!(m.is("message", ns::CLIENT));
        assert_eq!(m.get_child("body", ns::CLIENT).map(|b| b.text()).as_deref(), Some("hi"));
        let ev = read(&mut r, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>");
        let Ok(Some(StreamEvent::Stanza(a))) = ev else { panic!("{ev:?}") };
        assert!(a.is("auth", ns::SASL));
        // Stanzas must declare jabber:client, but a missing declaration is read as on TCP.
        let ev = read(&mut r, "<presence/>");
        assert!(matches!(ev, Ok(Some(StreamEvent::Stanza(ref p))) if p.is("presence", ns::CLIENT)), "{ev:?}");
    }

    #[test]
    fn bad_framing_is_a_stream_error() {
        let cases = [
            ("<message xmlns='jabber:client'><body>", "not-well-formed"),
            ("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>", "not-well-formed"),
            ("<open xmlns='jabber:client' to='a' version='1.0'/>", "invalid-namespace"),
            ("<close/>", "invalid-namespace"),
            (
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a'>",
                "not-well-formed",
            ),
            ("</stream:stream>", "not-well-formed"),
            ("<a><!-- no --></a>", "restricted-xml"),
            ("hello", "bad-format"),
        ];
        for (msg, want) in cases {
            let mut r = reader();
            assert_eq!(condition(read(&mut r, msg)), want, "{msg}");
        }
    }

    #[test]
    fn oversize_messages_are_refused_before_parsing() {
        let mut r = reader();
        let big = format!("<message xmlns='jabber:client'><body>{}</body></message>", "x".repeat(2000));
        let res = read(&mut r, &big);
        assert_eq!(condition(res), "policy-violation");
    }

    #[test]
    fn whitespace_is_ignored() {
        let mut r = reader();
        assert!(matches!(read(&mut r, " \n"), Ok(None)));
        assert!(matches!(read(&mut r, "<presence/>"), Ok(Some(StreamEvent::Stanza(_)))));
    }

    #[test]
    fn outgoing_writes_become_standalone_frames() {
        let header = crate::negotiation::stream_header_xml("example.com", "abc");
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                header,
                vec!["<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='example.com' id='abc' version='1.0' xml:lang='en'/>"],
            ),
            (
                "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>".into(),
                vec!["<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"],
            ),
            (
                Element::new("message", ns::CLIENT).with_attr("to", "a@b").with_child(Element::new("body", ns::CLIENT).with_text("x")).to_xml(ns::CLIENT),
                vec!["<message xmlns='jabber:client' to='a@b'><body>x</body></message>"],
            ),
            (Element::new("iq", ns::CLIENT).to_xml(ns::CLIENT), vec!["<iq xmlns='jabber:client'/>"]),
            (
                "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
                vec!["<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"],
            ),
            (
                format!("{}</stream:stream>", StreamError::new(StreamErrorCondition::Conflict).to_xml()),
                vec![
                    "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
                    "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
                ],
            ),
            ("</stream:stream>".into(), vec!["<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"]),
        ];
        for (write, want) in cases {
            assert_eq!(frames(&write), want, "{write}");
        }
    }

    /// Every frame we send parses on its own, as a client's framed parser
    /// reads it: one element, with its namespace.
    #[test]
    fn outgoing_frames_parse_on_their_own() {
        let err = StreamError::with_text(StreamErrorCondition::PolicyViolation, "x");
        let writes = [
            crate::negotiation::stream_header_xml("example.com", "abc"),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>".into(),
            format!("{}</stream:stream>", err.to_xml()),
            Element::new("presence", ns::CLIENT).to_xml(ns::CLIENT),
        ];
        for w in &writes {
            for f in frames(w) {
                let mut p = StreamParser::new(Limits::default());
                // As a document of its own: the wrapper binds neither `stream:` nor a default namespace.
                p.feed(b"<s:stream xmlns:s='http://etherx.jabber.org/streams'>");
                assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
                p.feed(f.as_bytes());
                let Ok(Some(StreamEvent::Stanza(el))) = p.next_event() else { panic!("{f}") };
                assert!(!el.ns.is_empty(), "{f} has no namespace");
            }
        }
    }
}
