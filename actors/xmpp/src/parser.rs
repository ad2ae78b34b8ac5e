//! Incremental parser for XMPP XML streams (RFC 6120 §4 "XML Streams" and
//! §11 "XML Usage": the restricted XML profile).
//!
//! Bytes go in with [`StreamParser::feed`], events come out of
//! [`StreamParser::next_event`]: the stream header, each top-level element (a
//! stanza or a negotiation element) as a complete [`Element`] tree with
//! resolved namespaces, and the end of the stream. `Ok(None)` means "feed me
//! more"; input may be split at any byte, including inside a UTF-8 sequence,
//! a tag, an attribute value or a reference.
//!
//! ```
//! use meerkat_xmpp::parser::{Limits, StreamEvent, StreamParser};
//!
//! let mut p = StreamParser::new(Limits::default());
//! p.feed(b"<stream:stream xmlns='jabber:client' \
//!     xmlns:stream='http://etherx.jabber.org/streams'><message to='a@b'><bo");
//! assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
//! assert_eq!(p.next_event(), Ok(None)); // the message is not complete yet
//! p.feed(b"dy>hi</body></message>");
//! match p.next_event() {
//!     Ok(Some(StreamEvent::Stanza(m))) => assert_eq!(
//!         m.to_xml("jabber:client"),
//!         "<message to='a@b'><body>hi</body></message>"
//!     ),
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```
//!
//! # Design
//!
//! quick-xml parses; this module decides *what* to hand it and checks what
//! a non-validating parser leaves out. Two layers:
//!
//! **quick-xml, one stanza at a time.** A top-level element (stanza) that
//! is complete in the buffer is a contiguous slice of it, and a fresh
//! `quick_xml::Reader` parses that slice in place (no copy), with end-name
//! checking on: tags, attributes (quick-xml's attribute iterator), character
//! data, CDATA and references. Text and attribute values are unescaped by
//! quick-xml (`resolve_xml_entity`, character references, attribute-value
//! normalization); a reference to anything but the five predefined entities
//! and character references is refused (`restricted-xml`: there is no DTD
//! to define it), as are comments, processing instructions and DTDs. On
//! top of that this module checks what XML requires and quick-xml does
//! not: QName syntax, XML `Char`s (control characters, U+FFFE/U+FFFF, also
//! when produced by a character reference), `]]>` and `<` where they are
//! forbidden, whitespace between attributes, and distinct attribute names
//! (a check that, unlike quick-xml's, allocates nothing for usual tags).
//! It also resolves namespaces against a scope stack seeded with the stream
//! header's declarations (`xmlns`, `xmlns:stream`), because each stanza's
//! reader starts without them. The stream header is parsed the same way,
//! from the slice holding its start tag, and so is `</stream:stream>`.
//!
//! **Boundary scanner.** An XMPP stream is one never-ending document, read
//! in arbitrary pieces, so something must tell an incomplete stanza from a
//! malformed one: quick-xml cannot, since a slice reader takes the end of
//! its input for the end of the document and cannot resume. The scanner
//! walks the bytes of the stanza being received, markup token by markup
//! token (start tag, end tag, CDATA section; character data is skipped to
//! the next `<`), keeping the names of the open elements (where they lie in
//! the buffer, at most [`Limits::max_depth`] of them), until the top-level
//! element ends. It is resumable: it remembers where the token it is in started,
//! how far it looked, and whether it stopped inside a quoted attribute
//! value, so a stanza arriving in many small reads is scanned once overall,
//! not once per read, with a word-at-a-time search for `>` and quotes.
//! While the stanza is still incomplete it applies the checks that must not
//! wait for its end, because the end may never come or may be far away:
//! comments, DTDs (the billion-laughs attack fails at `<!D`) and processing
//! instructions (RFC 6120 §11.1), [`Limits::max_depth`] (10,000 unclosed
//! `<a>` fail at the 65th), [`Limits::max_stanza_size`],
//! [`MAX_NAMESPACES_IN_SCOPE`] (counted from the attribute name in front of
//! each opening quote), and an end tag that does not close the innermost
//! open element (`<body>oops</message>` fails at `</message>`, not when the
//! peer ends the stream). It also rejects a start tag whose name is not a
//! QName or that has stray bytes after its last attribute: such a tag (`<>`,
//! `<a / >`) would otherwise count as an open element and the error would
//! only show once the peer closed it. Other malformed syntax is reported
//! when the stanza is complete (or too large).
//!
//! **Fast path.** Usually a stanza arrives whole in one read. So before
//! scanning a new stanza, the parser lets quick-xml find its end directly
//! in what is buffered (at most [`Limits::max_stanza_size`] bytes). If that
//! yields a complete element with every check passed, it is the result,
//! and the scanner never runs: the scanner's checks are implied by
//! quick-xml's and the tree's (same tokens, depth, declarations and size).
//! On anything else (an incomplete stanza, any error) the attempt is
//! dropped and the scanner takes over from the start of the stanza, so the
//! errors reported, and when, do not depend on how the input was split.
//! The attempt is made once per stanza, keeping the work linear, and is
//! skipped when the buffer cannot hold the whole stanza (no `>` at its end
//! and no end tag with the stanza's name), so a stanza split over reads
//! costs about one scan more than one parse, not two parses.
//!
//! Why not a single `Reader` over the stream: a reader over `io::Read`
//! treats "no more bytes yet" as end of file and cannot resume after it,
//! and restarting a reader on each token would lose end-tag checking and
//! makes quick-xml drop a U+FEFF at the start of text (it takes it for a
//! byte order mark). A stanza always starts with `<`, so neither problem
//! arises, and the stanza is the unit the parser returns anyway.
//!
//! # What is refused, and with which stream error condition
//!
//! | input | condition |
//! |-------|-----------|
//! | comment, processing instruction (other than the XML declaration before the header), DOCTYPE/DTD, references to entities other than the five predefined ones | `restricted-xml` (§11.1) |
//! | malformed syntax, mismatched end tag, `<` in an attribute value, references to characters XML forbids (`&#0;`), control characters, duplicate attributes, bad namespace declarations, content after `</stream:stream>` | `not-well-formed` |
//! | invalid UTF-8, or a declared encoding other than UTF-8 | `unsupported-encoding` (§4.9.3.22 names "violating the rules of UTF-8" explicitly, and §11.6 requires UTF-8) |
//! | undeclared prefix, element with the `xml:` prefix | `bad-namespace-prefix` |
//! | root not `stream` in `http://etherx.jabber.org/streams` | `invalid-namespace` |
//! | non-whitespace character data (or CDATA) between stanzas | `bad-format` |
//! | stanza over [`Limits::max_stanza_size`] bytes, nesting over [`Limits::max_depth`], header over [`MAX_HEADER_SIZE`], over [`MAX_NAMESPACES_IN_SCOPE`] namespace declarations | `policy-violation` |
//!
//! CDATA sections are allowed inside stanzas (RFC 6120 does not forbid them)
//! and become ordinary text. XML end-of-line handling and attribute-value
//! normalization (XML 1.0 §2.11, §3.3.3) are applied, as any XML parser does.
//! A byte order mark is skipped at the start of a stream only.
//!
//! Whitespace between stanzas is keepalive (RFC 6120 §4.6.1) and is consumed
//! as soon as it is seen, so it neither accumulates nor counts as
//! [`StreamParser::buffered_len`]. A stanza that is still incomplete stays
//! in the buffer (and counts) until it is parsed.

use std::borrow::Cow;
use std::collections::HashSet;
use std::mem;

use quick_xml::errors::{Error as XmlError, IllFormedError};
use quick_xml::escape::{resolve_xml_entity, EscapeError};
use quick_xml::events::attributes::{AttrError, Attribute};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use crate::element::{Element, Node};
use crate::error::StreamErrorCondition;
use crate::ns;

/// Upper bound on the bytes before and including the stream header (XML
/// declaration, whitespace, the `<stream:stream>` tag). Real headers are a
/// few hundred bytes.
pub const MAX_HEADER_SIZE: usize = 8 * 1024;

/// Upper bound on namespace declarations in scope at once (the header's
/// plus those of the open elements). Every element name is resolved by a
/// scan over the declarations in scope, so without a bound a stanza could
/// declare thousands of prefixes and make each of its thousands of children
/// expensive; real stanzas use a handful.
pub const MAX_NAMESPACES_IN_SCOPE: usize = 64;

/// Resource limits applied while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size in bytes of one top-level element, checked while it is
    /// still incomplete.
    pub max_stanza_size: usize,
    /// Maximum element nesting depth; the stanza itself is depth 1.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_stanza_size: 65536, max_depth: 64 }
    }
}

/// The attributes of an opening `<stream:stream>` tag (RFC 6120 §4.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    /// `to` attribute.
    pub to: Option<String>,
    /// `from` attribute.
    pub from: Option<String>,
    /// `id` attribute.
    pub id: Option<String>,
    /// `version` attribute.
    pub version: Option<String>,
    /// `xml:lang` attribute.
    pub lang: Option<String>,
    /// The default namespace declared on the header (the content namespace,
    /// e.g. `jabber:client`); `None` if the header declared none. Checking
    /// that it is acceptable is the caller's job (`invalid-namespace`).
    pub default_ns: Option<String>,
}

/// One thing read from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The opening stream tag.
    Header(StreamHeader),
    /// A complete top-level element.
    Stanza(Element),
    /// The closing `</stream:stream>` tag (or a self-closed header).
    End,
}

/// Why the stream cannot be parsed. Every error is fatal for the stream;
/// [`ParseError::condition`] says which stream error to send.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Bytes that are not UTF-8.
    #[error("input is not valid UTF-8")]
    InvalidUtf8,
    /// An XML declaration naming an encoding other than UTF-8.
    #[error("unsupported encoding {0:?}")]
    UnsupportedEncoding(String),
    /// Malformed XML.
    #[error("XML is not well-formed: {0}")]
    NotWellFormed(&'static str),
    /// An XML feature RFC 6120 §11.1 forbids.
    #[error("restricted XML: {0} not allowed")]
    RestrictedXml(&'static str),
    /// A reference to an entity that is not predefined (there is no DTD to
    /// define it).
    #[error("restricted XML: reference to undefined entity &{0};")]
    UndefinedEntity(String),
    /// A prefix with no namespace declaration in scope.
    #[error("undeclared namespace prefix {0:?}")]
    UndeclaredPrefix(String),
    /// An element in the reserved `xml` namespace.
    #[error("element in the reserved xml namespace")]
    ReservedNamespace,
    /// The root element is not `<stream>` in the streams namespace.
    #[error("stream root must be <stream/> in namespace {}", ns::STREAM)]
    InvalidNamespace,
    /// Non-whitespace character data directly inside `<stream:stream>`.
    #[error("character data at stream level")]
    TextAtStreamLevel,
    /// A top-level element larger than the limit.
    #[error("stanza larger than {0} bytes")]
    StanzaTooLarge(usize),
    /// A stream header larger than [`MAX_HEADER_SIZE`].
    #[error("stream header larger than {0} bytes")]
    HeaderTooLarge(usize),
    /// Elements nested deeper than the limit.
    #[error("elements nested deeper than {0}")]
    TooDeep(usize),
    /// More than [`MAX_NAMESPACES_IN_SCOPE`] declarations in scope.
    #[error("more than {0} namespace declarations in scope")]
    TooManyNamespaces(usize),
}

impl ParseError {
    /// The stream error condition to report (see the module docs' table).
    pub fn condition(&self) -> StreamErrorCondition {
        use StreamErrorCondition as C;
        match self {
            ParseError::InvalidUtf8 | ParseError::UnsupportedEncoding(_) => C::UnsupportedEncoding,
            ParseError::NotWellFormed(_) => C::NotWellFormed,
            ParseError::RestrictedXml(_) | ParseError::UndefinedEntity(_) => C::RestrictedXml,
            ParseError::UndeclaredPrefix(_) | ParseError::ReservedNamespace => C::BadNamespacePrefix,
            ParseError::InvalidNamespace => C::InvalidNamespace,
            ParseError::TextAtStreamLevel => C::BadFormat,
            ParseError::StanzaTooLarge(_)
            | ParseError::HeaderTooLarge(_)
            | ParseError::TooDeep(_)
            | ParseError::TooManyNamespaces(_) => C::PolicyViolation,
        }
    }
}

type Result<T> = std::result::Result<T, ParseError>;

/// Why [`parse_element`] found no element.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ElementError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("not exactly one complete element")]
    NotOneElement,
}

/// One element standing alone, as storage or an API hands it over, parsed
/// as if in a `jabber:client` stream under `limits`: exactly one complete
/// element, nothing but whitespace after it.
pub fn parse_element(xml: &str, limits: Limits) -> std::result::Result<Element, ElementError> {
    let mut p = StreamParser::new(limits);
    p.feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    p.feed(xml.as_bytes());
    match p.next_event()? {
        Some(StreamEvent::Header(_)) => {}
        _ => return Err(ElementError::NotOneElement),
    }
    let Some(StreamEvent::Stanza(el)) = p.next_event()? else { return Err(ElementError::NotOneElement) };
    if p.next_event()?.is_some() || !xml.trim_end().ends_with('>') {
        return Err(ElementError::NotOneElement);
    }
    Ok(el)
}

/// Where in the stream we are.
#[derive(Debug)]
enum State {
    /// Before the stream header (optional XML declaration, whitespace).
    Prolog,
    /// Inside `<stream:stream>`.
    Open,
    /// After `</stream:stream>`.
    Closed,
    /// A fatal error happened; it is returned forever.
    Failed(ParseError),
}

/// Kind of a complete markup token found by the scanner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    /// A start tag; `true` if it is an empty-element tag (`<a/>`).
    Start(bool),
    End,
    CData,
    Pi,
}

/// What the scanner found in the buffer.
enum Scanned {
    /// The top-level element is not complete yet.
    Incomplete,
    /// A complete top-level element of this many bytes.
    Stanza(usize),
    /// An end tag of this many bytes at stream level: the stream's end.
    StreamEnd(usize),
}

enum Progress {
    Event(StreamEvent),
    NeedMore,
    Continue,
}

/// One namespace declaration in scope. The empty prefix is the default
/// namespace.
#[derive(Debug)]
struct Binding {
    prefix: String,
    uri: String,
}

/// An element whose end tag has not been read yet.
#[derive(Debug)]
struct Frame {
    el: Element,
    /// Length of the scope stack before this element's declarations.
    scope_len: usize,
}

/// The stanza being built from quick-xml's events, and the namespaces in
/// scope. Kept between stanzas so its buffers are reused.
#[derive(Debug, Default)]
struct Tree {
    /// Declarations on the stream header; in scope for every stanza.
    base: Vec<Binding>,
    /// Declarations of the currently open elements.
    scope: Vec<Binding>,
    stack: Vec<Frame>,
    /// Character data not yet attached to the innermost open element, so
    /// that text, CDATA and references (separate events) end up as one text
    /// node.
    text: String,
    /// Scratch space for attributes while a start tag is read.
    attr_buf: Vec<(String, String)>,
    /// The top-level element, once its end has been read.
    root: Option<Element>,
}

/// State of the boundary scanner for the stanza (or, before the header, the
/// token) at the front of the buffer. Offsets are relative to the start of
/// the unconsumed bytes.
#[derive(Debug, Default)]
struct Scanner {
    /// Start of the token being scanned; everything before it has been
    /// scanned and checked.
    at: usize,
    /// How far the scanner already looked for the end of the token at `at`.
    resume: usize,
    /// Quote byte if the scan stopped inside an attribute value, else 0.
    quote: u8,
    /// Just after the last closing quote of the start tag at `at`, 0 if none
    /// yet.
    quote_end: usize,
    /// Namespace declarations seen so far in the start tag at `at`.
    tag_ns: usize,
    /// Open elements of the current top-level element, outermost first; at
    /// most [`Limits::max_depth`].
    open: Vec<OpenElement>,
    /// Sum of the open elements' namespace declarations.
    ns_total: usize,
    /// [`StreamParser::parse_direct`] was tried on this stanza.
    direct_tried: bool,
}

/// An element whose start tag the scanner has passed and whose end tag it
/// has not.
#[derive(Debug)]
struct OpenElement {
    /// Where its qualified name lies in the stanza: the bytes stay buffered
    /// until the stanza is consumed, so the name is not copied.
    name_start: usize,
    name_end: usize,
    /// Namespace declarations of its start tag.
    ns: usize,
}

/// Incremental XMPP stream parser; see the module documentation.
#[derive(Debug)]
pub struct StreamParser {
    limits: Limits,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`: the first byte of the stanza
    /// being received, or of the next token before the header.
    pos: usize,
    scan: Scanner,
    /// Set when the last call needed more input and nothing was fed since:
    /// avoids re-scanning when polled without new data.
    starved: bool,
    state: State,
    /// A byte order mark may still be skipped.
    bom_allowed: bool,
    /// The XML declaration may still appear.
    decl_allowed: bool,
    /// Bytes consumed before the stream header (for [`MAX_HEADER_SIZE`]).
    prolog_used: usize,
    /// The header was self-closing: report `End` next.
    pending_end: bool,
    /// Qualified name of the root element, to match `</stream:stream>`.
    header_qname: String,
    tree: Tree,
    /// Bytes of the last stanza returned, as received.
    last_stanza_len: usize,
}

impl StreamParser {
    /// A parser expecting a stream header.
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            limits,
            buf: Vec::new(),
            pos: 0,
            scan: Scanner::default(),
            starved: false,
            state: State::Prolog,
            bom_allowed: true,
            decl_allowed: true,
            prolog_used: 0,
            pending_end: false,
            header_qname: String::new(),
            tree: Tree::default(),
            last_stanza_len: 0,
        }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends raw bytes read from the peer. Ignored once the stream failed.
    pub fn feed(&mut self, data: &[u8]) {
        if data.is_empty() || matches!(self.state, State::Failed(_)) {
            return;
        }
        // Drop consumed bytes when it is cheap relative to what was consumed
        // (amortized O(1) per byte), keeping memory bounded by the pending
        // stanza. The scanner's offsets are relative to `pos`, so they stay
        // valid.
        if self.pos == self.buf.len() {
            self.buf.clear();
            // An idle stream should not keep the memory of its largest stanza.
            if self.buf.capacity() > 16 * 1024 {
                self.buf = Vec::new();
            }
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() - self.pos {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        self.starved = false;
    }

    /// Bytes fed but not yet consumed. After a stanza is returned this is
    /// what followed it (minus keepalive whitespace); after `<starttls/>` it
    /// must be zero, or the peer injected plaintext that would otherwise be
    /// processed as if it came over TLS.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How many bytes the last stanza returned took in the input.
    pub fn last_stanza_len(&self) -> usize {
        self.last_stanza_len
    }

    /// Forgets everything, including buffered bytes, and expects a new
    /// stream header: used after STARTTLS and after SASL success (RFC 6120
    /// §5.4.3.3, §6.4.6). Buffered bytes are discarded because none may
    /// legitimately precede the restart; check [`Self::buffered_len`] first
    /// if their presence should be an error.
    pub fn reset(&mut self) {
        *self = StreamParser::new(self.limits);
    }

    /// The next event, `Ok(None)` if more input is needed. After an error
    /// the stream is dead and every further call returns the same error.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if self.starved {
            return Ok(None);
        }
        loop {
            let step = match self.state {
                State::Prolog => self.step_prolog(),
                State::Open => self.step_open(),
                State::Closed => self.step_closed(),
                State::Failed(ref e) => Err(e.clone()),
            };
            match step {
                Ok(Progress::Event(ev)) => return Ok(Some(ev)),
                Ok(Progress::NeedMore) => {
                    self.starved = true;
                    if self.pos == self.buf.len() {
                        self.release_buffers();
                    }
                    return Ok(None);
                }
                Ok(Progress::Continue) => {}
                Err(e) => {
                    // Free memory held for a stream that is dead anyway.
                    self.buf = Vec::new();
                    self.pos = 0;
                    self.scan = Scanner::default();
                    self.tree = Tree::default();
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
    }

    fn step_prolog(&mut self) -> Result<Progress> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if self.bom_allowed {
            let data = &self.buf[self.pos..];
            if data.len() < BOM.len() && BOM.starts_with(data) {
                return Ok(Progress::NeedMore);
            }
            self.bom_allowed = false;
            if data.starts_with(BOM) {
                self.consume(BOM.len());
                self.prolog_used += BOM.len();
            }
        }
        self.prolog_used += self.skip_ws();
        if self.prolog_used > MAX_HEADER_SIZE {
            return Err(ParseError::HeaderTooLarge(MAX_HEADER_SIZE));
        }
        match self.buf.get(self.pos) {
            None => return Ok(Progress::NeedMore),
            Some(b'<') => {}
            Some(_) => return Err(ParseError::NotWellFormed("text before the stream header")),
        }
        let data = &self.buf[self.pos..];
        let Some((tok, len)) = self.scan.markup_end(data, self.decl_allowed, usize::MAX)? else {
            if self.prolog_used + self.buffered_len() > MAX_HEADER_SIZE {
                return Err(ParseError::HeaderTooLarge(MAX_HEADER_SIZE));
            }
            return Ok(Progress::NeedMore);
        };
        if self.prolog_used + len > MAX_HEADER_SIZE {
            return Err(ParseError::HeaderTooLarge(MAX_HEADER_SIZE));
        }
        self.decl_allowed = false;
        let bytes = &data[..len];
        match tok {
            Tok::Pi => {
                parse_decl(bytes)?;
                self.consume(len);
                self.prolog_used += len;
                Ok(Progress::Continue)
            }
            Tok::Start(_) => {
                let (header, base, qname, empty) = parse_header(bytes)?;
                self.header_qname = qname;
                self.tree = Tree { base, ..Tree::default() };
                self.pending_end = empty;
                self.consume(len);
                self.state = State::Open;
                Ok(Progress::Event(StreamEvent::Header(header)))
            }
            Tok::End => Err(ParseError::NotWellFormed("end tag before the stream header")),
            Tok::CData => Err(ParseError::NotWellFormed("character data before the stream header")),
        }
    }

    fn step_open(&mut self) -> Result<Progress> {
        if self.pending_end {
            self.pending_end = false;
            self.state = State::Closed;
            return Ok(Progress::Event(StreamEvent::End));
        }
        if self.scan.at == 0 {
            // Between stanzas (or inside the first token of one, which then
            // starts with `<` and nothing is skipped).
            self.skip_ws();
            match self.buf.get(self.pos) {
                None => return Ok(Progress::NeedMore),
                Some(b'<') => {}
                Some(_) => return Err(ParseError::TextAtStreamLevel),
            }
            if !self.scan.direct_tried {
                self.scan.direct_tried = true;
                if let Some((stanza, len)) = self.parse_direct() {
                    self.consume(len);
                    self.last_stanza_len = len;
                    self.skip_ws();
                    return Ok(Progress::Event(StreamEvent::Stanza(stanza)));
                }
            }
        }
        let data = &self.buf[self.pos..];
        let ns_room = MAX_NAMESPACES_IN_SCOPE.saturating_sub(self.tree.base.len());
        match self.scan.stanza(data, self.limits, ns_room)? {
            Scanned::Incomplete => Ok(Progress::NeedMore),
            Scanned::StreamEnd(len) => {
                check_stream_end(&data[..len], &self.header_qname)?;
                self.consume(len);
                self.state = State::Closed;
                Ok(Progress::Event(StreamEvent::End))
            }
            Scanned::Stanza(len) => {
                let stanza = match self.tree.parse(&data[..len], self.limits.max_depth, true)? {
                    Some((stanza, end)) if end == len => stanza,
                    // The scanner and quick-xml agree on where the element
                    // ends; make sure nothing goes unparsed if they do not.
                    _ => return Err(ParseError::NotWellFormed("malformed element")),
                };
                self.consume(len);
                self.last_stanza_len = len;
                // Consume keepalive whitespace right away so it does not
                // count as buffered data (see `buffered_len`).
                self.skip_ws();
                Ok(Progress::Event(StreamEvent::Stanza(stanza)))
            }
        }
    }

    /// The fast path for a stanza that arrived whole, which is the usual
    /// case: lets quick-xml find its end instead of the scanner. Returns the
    /// stanza and its length if quick-xml read a complete top-level element
    /// within the size limit, with every check passed. Anything else (an
    /// incomplete stanza, any error) is left to the scanner path, which
    /// then starts from scratch: that way errors, and the point at which
    /// they are reported, are the same however the input was split. For a
    /// stanza that passes, the scanner's checks are implied by quick-xml's
    /// and the tree's (its tokens, depth, declarations and size are the
    /// same), so both paths accept the same stanzas.
    fn parse_direct(&mut self) -> Option<(Element, usize)> {
        let data = &self.buf[self.pos..];
        let window = &data[..data.len().min(self.limits.max_stanza_size)];
        if !may_be_complete(window) {
            return None;
        }
        match self.tree.parse(window, self.limits.max_depth, false) {
            Ok(Some(done)) => Some(done),
            Ok(None) | Err(_) => {
                self.tree.clear();
                None
            }
        }
    }

    fn step_closed(&mut self) -> Result<Progress> {
        self.skip_ws();
        if self.pos < self.buf.len() {
            return Err(ParseError::NotWellFormed("content after the end of the stream"));
        }
        Ok(Progress::NeedMore)
    }

    /// Drops the `len` bytes at `pos` (a token before the header, or a
    /// whole stanza) and resets the scanner for what follows.
    fn consume(&mut self, len: usize) {
        self.pos += len;
        self.scan.reset();
    }

    /// Gives back the memory of the buffers once everything fed has been
    /// parsed, so that an idle stream holds none: the next feed allocates
    /// what it needs. Scratch space still in use keeps its contents.
    fn release_buffers(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        self.scan.open.shrink_to_fit();
        let tree = &mut self.tree;
        tree.base.shrink_to_fit();
        tree.scope.shrink_to_fit();
        tree.stack.shrink_to_fit();
        tree.text.shrink_to_fit();
        tree.attr_buf.shrink_to_fit();
    }

    /// Consumes XML whitespace at `pos`, returning how much. Only called
    /// where no token is partially scanned.
    fn skip_ws(&mut self) -> usize {
        let n = self.buf[self.pos..].iter().take_while(|&&c| is_ws(c)).count();
        self.pos += n;
        n
    }
}

impl Scanner {
    /// Forgets the stanza (or token) just consumed, keeping allocations.
    fn reset(&mut self) {
        self.advance(0);
        self.open.clear();
        self.ns_total = 0;
        self.direct_tried = false;
    }

    /// Moves on to the token starting at `to`.
    fn advance(&mut self, to: usize) {
        self.at = to;
        self.resume = to;
        self.quote = 0;
        self.quote_end = 0;
        self.tag_ns = 0;
    }

    /// Scans the stanza at the front of `data` (which starts with `<`) up
    /// to its end, or up to the end of `data`, remembering how far it got.
    /// Applies the checks that must not wait for the stanza to be complete.
    fn stanza(&mut self, data: &[u8], limits: Limits, ns_room: usize) -> Result<Scanned> {
        loop {
            let at = self.at;
            match data.get(at) {
                None => break,
                Some(b'<') => {}
                Some(_) => {
                    // Character data inside an element: quick-xml reads it
                    // later, the scanner only needs to know where it ends.
                    match find_byte(b'<', data, self.resume.max(at)) {
                        Some(i) => {
                            self.advance(i);
                            continue;
                        }
                        None => {
                            self.resume = data.len();
                            break;
                        }
                    }
                }
            }
            let Some((tok, end)) = self.markup_end(data, false, ns_room)? else {
                break;
            };
            if end > limits.max_stanza_size {
                return Err(ParseError::StanzaTooLarge(limits.max_stanza_size));
            }
            match tok {
                Tok::Start(empty) => {
                    let name_len = check_start_tag(&data[at..end], empty, self.quote_end.saturating_sub(at))?;
                    if self.open.len() >= limits.max_depth {
                        return Err(ParseError::TooDeep(limits.max_depth));
                    }
                    if !empty {
                        self.open.push(OpenElement {
                            name_start: at + 1,
                            name_end: at + 1 + name_len,
                            ns: self.tag_ns,
                        });
                        self.ns_total += self.tag_ns;
                    }
                    self.advance(end);
                    if self.open.is_empty() {
                        return Ok(Scanned::Stanza(end));
                    }
                }
                Tok::End => {
                    let Some(open) = self.open.pop() else {
                        return Ok(Scanned::StreamEnd(end));
                    };
                    // Checked now rather than when the stanza is complete: a
                    // stanza closed by the wrong name may never become so.
                    if !closes(&data[at..end], &data[open.name_start..open.name_end]) {
                        // Bytes that are not UTF-8 are reported as such,
                        // as quick-xml reports them in a complete stanza.
                        utf8(&data[at..end])?;
                        return Err(ParseError::NotWellFormed("mismatched end tag"));
                    }
                    self.ns_total -= open.ns;
                    self.advance(end);
                    if self.open.is_empty() {
                        return Ok(Scanned::Stanza(end));
                    }
                }
                Tok::CData if self.open.is_empty() => return Err(ParseError::TextAtStreamLevel),
                Tok::CData => self.advance(end),
                // `markup_end` refuses these when they are not allowed.
                Tok::Pi => return Err(ParseError::RestrictedXml("processing instruction")),
            }
        }
        if data.len() > limits.max_stanza_size {
            return Err(ParseError::StanzaTooLarge(limits.max_stanza_size));
        }
        Ok(Scanned::Incomplete)
    }

    /// Finds the end of the markup token at `at` (`data[at]` is `<`):
    /// `Some((kind, end))` once it is complete, `None` (remembering how far
    /// it looked) if not. Rejects comments, DTDs and processing instructions
    /// (unless `pi_allowed`) as soon as their first bytes are seen, without
    /// waiting for their end. Counts the namespace declarations of a start
    /// tag, failing as soon as more than `ns_room` are open.
    fn markup_end(&mut self, data: &[u8], pi_allowed: bool, ns_room: usize) -> Result<Option<(Tok, usize)>> {
        let at = self.at;
        let Some(&second) = data.get(at + 1) else {
            return Ok(None);
        };
        match second {
            b'/' => Ok(match find_byte(b'>', data, self.resume.max(at + 2)) {
                Some(i) => Some((Tok::End, i + 1)),
                None => {
                    self.resume = data.len();
                    None
                }
            }),
            b'?' => {
                if !pi_allowed {
                    return Err(ParseError::RestrictedXml("processing instruction"));
                }
                Ok(match find_seq(b"?>", data, self.resume.max(at + 2)) {
                    Some(i) => Some((Tok::Pi, i + 2)),
                    None => {
                        // The `?` of a split `?>` may be the last byte.
                        self.resume = (data.len() - 1).max(at + 2);
                        None
                    }
                })
            }
            b'!' => {
                const CDATA: &[u8] = b"<![CDATA[";
                let tok = &data[at..];
                let n = tok.len().min(CDATA.len());
                if tok[..n] != CDATA[..n] {
                    // The first two bytes matched, so `n >= 3`.
                    return Err(match tok[2] {
                        b'-' => ParseError::RestrictedXml("comment"),
                        b'[' => ParseError::NotWellFormed("malformed CDATA section"),
                        _ => ParseError::RestrictedXml("document type declaration"),
                    });
                }
                if n < CDATA.len() {
                    return Ok(None);
                }
                Ok(match find_seq(b"]]>", data, self.resume.max(at + CDATA.len())) {
                    Some(i) => Some((Tok::CData, i + 3)),
                    None => {
                        self.resume = (data.len() - 2).max(at + CDATA.len());
                        None
                    }
                })
            }
            _ => {
                // Start tag: ends at the first `>` outside a quoted value.
                let mut i = self.resume.max(at + 1);
                let mut quote = self.quote;
                loop {
                    if quote != 0 {
                        match find_byte(quote, data, i) {
                            Some(j) => {
                                i = j + 1;
                                quote = 0;
                                self.quote_end = i;
                            }
                            None => break,
                        }
                    } else {
                        match find_tag_delim(data, i) {
                            Some(j) if data[j] == b'>' => {
                                // Inside a value a `/` is never right before
                                // the closing `>`, so this is exact.
                                let empty = j >= at + 2 && data[j - 1] == b'/';
                                return Ok(Some((Tok::Start(empty), j + 1)));
                            }
                            Some(j) => {
                                if is_ns_decl(&data[at..j]) {
                                    self.tag_ns += 1;
                                    if self.ns_total + self.tag_ns > ns_room {
                                        return Err(ParseError::TooManyNamespaces(MAX_NAMESPACES_IN_SCOPE));
                                    }
                                }
                                quote = data[j];
                                i = j + 1;
                            }
                            None => break,
                        }
                    }
                }
                self.resume = data.len();
                self.quote = quote;
                Ok(None)
            }
        }
    }
}

/// Whether `data`, which starts with `<`, may hold a whole top-level
/// element. If not, the fast path would certainly run out of input, so it
/// is not tried: a stanza split over reads then costs a search for `</`
/// here instead of a wasted parse.
fn may_be_complete(data: &[u8]) -> bool {
    // Usually a read ends with the end of a stanza (and maybe whitespace).
    if data.iter().rev().find(|&&c| !is_ws(c)) == Some(&b'>') {
        return true;
    }
    // Otherwise the read ended inside some token, perhaps after complete
    // stanzas. The element can only be complete if its end tag, `</` and
    // its name, occurs. (A self-closed one is missed, and then simply
    // takes the scanner path.)
    let name_end = data.iter().position(|&c| is_ws(c) || matches!(c, b'>' | b'/')).unwrap_or(data.len());
    let name = &data[1..name_end.max(1)];
    let mut from = 1;
    while let Some(j) = find_byte(b'<', data, from) {
        if data.get(j + 1) == Some(&b'/') && data[j + 2..].starts_with(name) {
            return true;
        }
        from = j + 1;
    }
    false
}

/// Whether the attribute whose value opens right after `before` (the start
/// tag from its `<` up to the opening quote) is a namespace declaration
/// that will be added to the scope: `xmlns` or `xmlns:p`, except
/// `xmlns:xml`, which may only restate the predefined binding. Looks back no
/// further than the previous quote, so a tag is still scanned in linear time.
fn is_ns_decl(before: &[u8]) -> bool {
    let mut k = before.len();
    while k > 0 && is_ws(before[k - 1]) {
        k -= 1;
    }
    if k == 0 || before[k - 1] != b'=' {
        return false;
    }
    k -= 1;
    while k > 0 && is_ws(before[k - 1]) {
        k -= 1;
    }
    let end = k;
    while k > 0 && !matches!(before[k - 1], b' ' | b'\t' | b'\n' | b'\r' | b'\'' | b'"' | b'=' | b'<') {
        k -= 1;
    }
    let name = &before[k..end];
    name == b"xmlns" || (name.starts_with(b"xmlns:") && name != b"xmlns:xml")
}

/// Whether the end tag `tag` (from `</` to `>`) closes the element named
/// `name`: XML allows whitespace after the name, nothing else.
fn closes(tag: &[u8], name: &[u8]) -> bool {
    let inner = &tag[2..tag.len() - 1];
    inner.starts_with(name) && inner[name.len()..].iter().all(|&c| is_ws(c))
}

/// The scanner's own checks on a complete start tag (`tag` runs from `<`
/// to `>`): a QName, and nothing but whitespace after the last attribute
/// value (`quote_end`, relative to `tag`, 0 if there is none). The rest is
/// quick-xml's job once the stanza is complete. Returns the length of the
/// name.
fn check_start_tag(tag: &[u8], empty: bool, quote_end: usize) -> Result<usize> {
    let content_end = tag.len() - if empty { 2 } else { 1 };
    let name_end = tag[1..content_end].iter().position(|&c| is_ws(c)).map_or(content_end, |p| p + 1);
    let name = &tag[1..name_end];
    let valid = match is_qname_ascii(name) {
        Some(valid) => valid,
        None => is_qname_unicode(utf8(name)?),
    };
    if !valid {
        return Err(ParseError::NotWellFormed("invalid element name"));
    }
    let tail = if quote_end > 0 { quote_end } else { name_end };
    if !tag[tail..content_end].iter().all(|&c| is_ws(c)) {
        return Err(ParseError::NotWellFormed("malformed start tag"));
    }
    Ok(name.len())
}

/// A quick-xml reader over one complete piece of markup, with the checks
/// this module relies on switched on explicitly.
fn xml_reader(xml: &[u8]) -> Reader<&[u8]> {
    let mut reader = Reader::from_reader(xml);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    config.expand_empty_elements = false;
    config.trim_markup_names_in_closing_tags = true;
    config.trim_text(false);
    reader
}

/// Parses the stream header's start tag: the header, the namespace
/// declarations it makes, its qualified name, and whether it self-closed.
fn parse_header(tag: &[u8]) -> Result<(StreamHeader, Vec<Binding>, String, bool)> {
    let mut reader = xml_reader(tag);
    let (start, empty) = match reader.read_event().map_err(xml_error)? {
        Event::Start(e) => (e, false),
        Event::Empty(e) => (e, true),
        _ => return Err(ParseError::NotWellFormed("malformed stream header")),
    };
    let mut scope = Vec::new();
    let mut attrs = Vec::new();
    let qname = read_start_tag(&start, false, &mut scope, &mut attrs)?;
    if scope.len() > MAX_NAMESPACES_IN_SCOPE {
        return Err(ParseError::TooManyNamespaces(MAX_NAMESPACES_IN_SCOPE));
    }
    let (prefix, local) = split_qname(qname);
    let ns = lookup(&scope, &[], prefix).ok_or_else(|| ParseError::UndeclaredPrefix(prefix.to_owned()))?;
    if local != "stream" || ns != ns::STREAM {
        return Err(ParseError::InvalidNamespace);
    }
    resolve_attr_prefixes(&mut attrs, &scope, &[])?;
    let mut header = StreamHeader {
        default_ns: scope.iter().find(|b| b.prefix.is_empty()).map(|b| b.uri.clone()),
        ..StreamHeader::default()
    };
    for (k, v) in attrs {
        let slot = match k.as_str() {
            "to" => &mut header.to,
            "from" => &mut header.from,
            "id" => &mut header.id,
            "version" => &mut header.version,
            "xml:lang" => &mut header.lang,
            _ => continue,
        };
        *slot = Some(v);
    }
    Ok((header, scope, qname.to_owned(), empty))
}

/// Checks that `tag`, an end tag at stream level, closes the stream header
/// (whose qualified name is `expected`).
fn check_stream_end(tag: &[u8], expected: &str) -> Result<()> {
    let mut reader = xml_reader(tag);
    // The matching start tag was read by another reader.
    reader.config_mut().allow_unmatched_ends = true;
    match reader.read_event().map_err(xml_error)? {
        Event::End(e) if e.name().0 == expected => Ok(()),
        _ => Err(ParseError::NotWellFormed("mismatched end tag")),
    }
}

impl Tree {
    /// Parses the top-level element at the start of `xml` with quick-xml:
    /// `Some((element, length))`, or `None` if `xml` ends before it does.
    /// `scanned` says the scanner has checked `xml` (and found it complete).
    fn parse(&mut self, xml: &[u8], max_depth: usize, scanned: bool) -> Result<Option<(Element, usize)>> {
        let mut reader = xml_reader(xml);
        loop {
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(e) => return Err(xml_error(e)),
            };
            match event {
                // A stanza starts with its start tag: character data before
                // it is stream-level text, which RFC 6120 §11 forbids.
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if self.stack.is_empty() => {
                    return Err(ParseError::TextAtStreamLevel)
                }
                Event::Start(e) => self.start(&e, false, max_depth, scanned)?,
                Event::Empty(e) => self.start(&e, true, max_depth, scanned)?,
                // quick-xml has checked that the name matches.
                Event::End(_) => self.end()?,
                Event::Text(t) => {
                    // Usually there is no CR, and quick-xml's end-of-line
                    // handling would only search for one again.
                    match check_chars(&t, Chars::Text)? {
                        true => self.text.push_str(&t.xml10_content()),
                        false => self.text.push_str(&t),
                    }
                }
                Event::CData(t) => match check_chars(&t, Chars::Plain)? {
                    true => self.text.push_str(&t.xml10_content()),
                    false => self.text.push_str(&t),
                },
                Event::GeneralRef(r) => push_reference(&r, &mut self.text)?,
                // The scanner refuses these before the stanza is complete;
                // this is a second line of defense.
                Event::Comment(_) => return Err(ParseError::RestrictedXml("comment")),
                Event::PI(_) | Event::Decl(_) => return Err(ParseError::RestrictedXml("processing instruction")),
                Event::DocType(_) => return Err(ParseError::RestrictedXml("document type declaration")),
                Event::Eof => return Ok(None),
            }
            if let Some(stanza) = self.root.take() {
                // The position is at most `xml.len()`.
                return Ok(Some((stanza, reader.buffer_position() as usize)));
            }
        }
    }

    /// Handles a start (or empty-element) tag.
    fn start(&mut self, e: &BytesStart<'_>, empty: bool, max_depth: usize, scanned: bool) -> Result<()> {
        if self.stack.len() >= max_depth {
            return Err(ParseError::TooDeep(max_depth));
        }
        let scope_len = self.scope.len();
        // Read into a reused buffer, then copy out with the exact capacity:
        // one allocation instead of one per doubling.
        self.attr_buf.clear();
        let qname = read_start_tag(e, scanned, &mut self.scope, &mut self.attr_buf)?;
        if self.scope.len() + self.base.len() > MAX_NAMESPACES_IN_SCOPE {
            return Err(ParseError::TooManyNamespaces(MAX_NAMESPACES_IN_SCOPE));
        }
        let mut attrs = Vec::with_capacity(self.attr_buf.len());
        attrs.append(&mut self.attr_buf);
        let (prefix, local) = split_qname(qname);
        let ns = lookup(&self.scope, &self.base, prefix)
            .ok_or_else(|| ParseError::UndeclaredPrefix(prefix.to_owned()))?
            .to_owned();
        resolve_attr_prefixes(&mut attrs, &self.scope, &self.base)?;
        let el = Element { name: local.to_owned(), ns, attrs, children: Vec::new() };
        self.flush_text();
        if empty {
            self.scope.truncate(scope_len);
            self.attach(el);
        } else {
            self.stack.push(Frame { el, scope_len });
        }
        Ok(())
    }

    /// Handles an end tag.
    fn end(&mut self) -> Result<()> {
        self.flush_text();
        let Some(frame) = self.stack.pop() else {
            return Err(ParseError::NotWellFormed("unexpected end tag"));
        };
        self.scope.truncate(frame.scope_len);
        self.attach(frame.el);
        Ok(())
    }

    /// Adds a finished element to its parent, or makes it the result if it
    /// is the top-level element.
    fn attach(&mut self, el: Element) {
        match self.stack.last_mut() {
            Some(parent) => parent.el.children.push(Node::Element(el)),
            None => self.root = Some(el),
        }
    }

    /// Forgets a partly built element, keeping the header's declarations
    /// and the allocations.
    fn clear(&mut self) {
        self.scope.clear();
        self.stack.clear();
        self.text.clear();
        self.attr_buf.clear();
        self.root = None;
    }

    fn flush_text(&mut self) {
        if self.text.is_empty() {
            return;
        }
        if let Some(top) = self.stack.last_mut() {
            top.el.children.push(Node::Text(mem::take(&mut self.text)));
        }
    }
}

/// Reads the name and attributes of a start tag parsed by quick-xml: pushes
/// namespace declarations onto `scope` and other attributes (unescaped,
/// normalized) onto `attrs`, and returns the qualified name. `scanned` says
/// the boundary scanner has already checked the name's syntax.
fn read_start_tag<'e>(
    e: &'e BytesStart<'_>,
    scanned: bool,
    scope: &mut Vec<Binding>,
    attrs: &mut Vec<(String, String)>,
) -> Result<&'e str> {
    let qname = e.name().0;
    if !(scanned || is_qname(qname)) || qname.starts_with("xmlns:") {
        return Err(ParseError::NotWellFormed("invalid element name"));
    }
    if qname.starts_with("xml:") {
        // Allowed by Namespaces in XML but meaningless in XMPP, and such an
        // element could not be written back out unprefixed.
        return Err(ParseError::ReservedNamespace);
    }
    let tag_scope = scope.len();
    let tag_attrs = attrs.len();
    let raw = e.attributes_raw();
    // Duplicates are checked below without the allocation quick-xml's
    // check makes for every tag with attributes.
    for attr in e.attributes().with_checks(false) {
        let attr = attr.map_err(attr_error)?;
        let name = attr.key.0;
        // quick-xml accepts `a='1'b='2'`; XML wants whitespace in between.
        // The name is a slice of `raw`, so its offset tells what precedes it.
        let offset = (name.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
        if !offset.checked_sub(1).and_then(|i| raw.as_bytes().get(i)).is_some_and(|&c| is_ws(c)) {
            return Err(ParseError::NotWellFormed("missing whitespace before attribute"));
        }
        if !is_qname(name) {
            return Err(ParseError::NotWellFormed("invalid attribute name"));
        }
        let value = attr_value(&attr)?.into_owned();
        if name == "xmlns" {
            declare(scope, tag_scope, "", value)?;
        } else if let Some(prefix) = name.strip_prefix("xmlns:") {
            declare(scope, tag_scope, prefix, value)?;
        } else {
            attrs.push((name.to_owned(), value));
        }
    }
    // Declarations were checked by `declare`.
    if !attr_names_distinct(&attrs[tag_attrs..]) {
        return Err(ParseError::NotWellFormed("duplicate attribute"));
    }
    Ok(qname)
}

/// An attribute's value, unescaped and normalized by quick-xml (XML 1.0
/// §3.3.3), after the checks quick-xml does not make.
fn attr_value<'a>(attr: &Attribute<'a>) -> Result<Cow<'a, str>> {
    if !check_chars(&attr.value, Chars::AttrValue)? {
        // Nothing to unescape or normalize (most values).
        return Ok(attr.value.clone());
    }
    let value = attr.normalized_value_with(XmlVersion::Implicit1_0, 1, resolve_xml_entity).map_err(xml_error)?;
    if let Cow::Owned(v) = &value {
        // Character references may have produced characters XML forbids.
        check_chars(v, Chars::Plain)?;
    }
    Ok(value)
}

/// Appends what a reference in character data stands for: one of the five
/// predefined entities or a character reference. Anything else would need
/// a DTD, which RFC 6120 forbids, so it is refused without any expansion.
fn push_reference(r: &BytesRef<'_>, out: &mut String) -> Result<()> {
    match r.resolve_char_ref() {
        Ok(Some(c)) if is_xml_char(c) => out.push(c),
        Ok(Some(_)) | Err(_) => return Err(ParseError::NotWellFormed("invalid character reference")),
        // `resolve_xml_entity`, not `resolve_predefined_entity`: the latter
        // knows the HTML entities if any crate enables quick-xml's
        // `escape-html` feature.
        Ok(None) => match resolve_xml_entity(r) {
            Some(s) => out.push_str(s),
            None => return Err(undefined_entity(r)),
        },
    }
    Ok(())
}

/// The error for `&name;` with a name that is not predefined.
fn undefined_entity(name: &str) -> ParseError {
    if is_name(name) {
        let mut name = name.to_owned();
        name.truncate(name.floor_char_boundary(64));
        ParseError::UndefinedEntity(name)
    } else {
        ParseError::NotWellFormed("malformed reference")
    }
}

/// Maps quick-xml's errors to ours.
fn xml_error(e: XmlError) -> ParseError {
    match e {
        XmlError::Encoding(_) => ParseError::InvalidUtf8,
        XmlError::Syntax(_) => ParseError::NotWellFormed("malformed markup"),
        XmlError::IllFormed(IllFormedError::MismatchedEndTag { .. }) => ParseError::NotWellFormed("mismatched end tag"),
        XmlError::IllFormed(IllFormedError::UnmatchedEndTag(_)) => ParseError::NotWellFormed("unexpected end tag"),
        XmlError::IllFormed(IllFormedError::UnclosedReference) => ParseError::NotWellFormed("unterminated reference"),
        XmlError::IllFormed(_) => ParseError::NotWellFormed("malformed XML"),
        XmlError::InvalidAttr(e) => attr_error(e),
        XmlError::Escape(EscapeError::UnrecognizedEntity(_, name)) => undefined_entity(&name),
        XmlError::Escape(EscapeError::InvalidCharRef(_)) => ParseError::NotWellFormed("invalid character reference"),
        XmlError::Escape(EscapeError::UnterminatedEntity(_) | EscapeError::TooManyNestedEntities) => {
            ParseError::NotWellFormed("unterminated reference")
        }
        XmlError::Io(_) | XmlError::Namespace(_) => ParseError::NotWellFormed("malformed XML"),
    }
}

fn attr_error(e: AttrError) -> ParseError {
    match e {
        AttrError::Duplicated(..) => ParseError::NotWellFormed("duplicate attribute"),
        _ => ParseError::NotWellFormed("malformed attribute"),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| ParseError::InvalidUtf8)
}

/// XML `S` production.
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of the result is set where `word` has a zero byte; the
/// lowest set bit is always exact (higher ones may be false positives), which
/// is all a forward search needs.
#[inline]
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(LO) & !word & HI
}

/// First index `>= from` of a byte in `data` that `hit` flags, scanning eight
/// bytes per step (SWAR): every byte of the stream goes through these
/// searches, and tokens are short, so a word loop without call overhead
/// beats a general-purpose search here.
#[inline]
fn find_swar(data: &[u8], from: usize, hit: impl Fn(u64) -> u64, slow: impl Fn(u8) -> bool) -> Option<usize> {
    let hay = data.get(from..)?;
    let word = |at: usize| hay.get(at..at + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()).map(u64::from_le_bytes);
    let mut i = 0;
    while let Some(w) = word(i) {
        let found = hit(w);
        if found != 0 {
            return Some(from + i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if i == hay.len() {
        return None;
    }
    // A partial last word: re-read the last eight bytes and ignore those
    // already searched. They hold no hit, so they cannot cause a false one.
    if let Some(w) = hay.len().checked_sub(8).and_then(word) {
        let seen = 8 - (hay.len() - i);
        let found = hit(w) & (u64::MAX << (8 * seen));
        return (found != 0).then(|| from + hay.len() - 8 + (found.trailing_zeros() / 8) as usize);
    }
    hay[i..].iter().position(|&c| slow(c)).map(|j| from + i + j)
}

/// First index `>= from` of `needle` in `data`.
fn find_byte(needle: u8, data: &[u8], from: usize) -> Option<usize> {
    let rep = LO * u64::from(needle);
    find_swar(data, from, |w| zero_bytes(w ^ rep), |c| c == needle)
}

/// First index `>= from` of `>` or a quote in `data`.
fn find_tag_delim(data: &[u8], from: usize) -> Option<usize> {
    const GT: u64 = LO * b'>' as u64;
    const APOS: u64 = LO * b'\'' as u64;
    const QUOT: u64 = LO * b'"' as u64;
    find_swar(
        data,
        from,
        |w| zero_bytes(w ^ GT) | zero_bytes(w ^ APOS) | zero_bytes(w ^ QUOT),
        |c| matches!(c, b'>' | b'\'' | b'"'),
    )
}

/// String equality without a `memcmp` call: names and prefixes are a few
/// bytes long, and profiling showed the libc call (even for empty strings)
/// dominating namespace lookups.
#[inline]
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// First index `>= from` where `seq` starts in `data`.
fn find_seq(seq: &[u8], data: &[u8], from: usize) -> Option<usize> {
    let first = *seq.first()?;
    let mut i = from;
    while let Some(j) = find_byte(first, data, i) {
        match data.get(j..j + seq.len()) {
            Some(w) if w == seq => return Some(j),
            Some(_) => i = j + 1,
            None => return None,
        }
    }
    None
}

/// Splits `p:local` into `("p", "local")`, unprefixed names into `("", name)`.
fn split_qname(qname: &str) -> (&str, &str) {
    qname.split_once(':').unwrap_or(("", qname))
}

/// Resolves a prefix against the element scopes, then the header scope. The
/// `xml` prefix is bound by definition; an undeclared default namespace is
/// "no namespace".
fn lookup<'a>(scope: &'a [Binding], base: &'a [Binding], prefix: &str) -> Option<&'a str> {
    if same(prefix, "xml") {
        return Some(ns::XML);
    }
    match scope.iter().rev().chain(base.iter().rev()).find(|b| same(&b.prefix, prefix)) {
        Some(b) => Some(&b.uri),
        None if prefix.is_empty() => Some(""),
        None => None,
    }
}

/// Records a namespace declaration, enforcing Namespaces in XML 1.0 §3.
fn declare(scope: &mut Vec<Binding>, tag_start: usize, prefix: &str, uri: String) -> Result<()> {
    if prefix == "xml" {
        return if uri == ns::XML {
            Ok(())
        } else {
            Err(ParseError::NotWellFormed("the xml prefix cannot be rebound"))
        };
    }
    if prefix == "xmlns" {
        return Err(ParseError::NotWellFormed("the xmlns prefix cannot be declared"));
    }
    if uri == ns::XML || uri == ns::XMLNS {
        return Err(ParseError::NotWellFormed("reserved namespace name bound to a prefix"));
    }
    if !prefix.is_empty() && uri.is_empty() {
        return Err(ParseError::NotWellFormed("a prefix cannot be bound to the empty namespace"));
    }
    // Checked here too (the caller adds the header's declarations) so that
    // a tag with thousands of declarations fails before the quadratic
    // duplicate check below gets expensive.
    if scope.len() >= MAX_NAMESPACES_IN_SCOPE {
        return Err(ParseError::TooManyNamespaces(MAX_NAMESPACES_IN_SCOPE));
    }
    if scope[tag_start..].iter().any(|b| same(&b.prefix, prefix)) {
        return Err(ParseError::NotWellFormed("duplicate namespace declaration"));
    }
    scope.push(Binding { prefix: prefix.to_owned(), uri });
    Ok(())
}

/// Checks that prefixed attributes use declared prefixes and have distinct
/// expanded names, and keeps the `xmlns:p` declaration next to each such
/// attribute so the element can be serialized on its own (see
/// [`crate::element`]).
fn resolve_attr_prefixes(attrs: &mut Vec<(String, String)>, scope: &[Binding], base: &[Binding]) -> Result<()> {
    // Most elements have no prefixed attribute other than `xml:lang`: skip
    // the bookkeeping. `xml:` attributes need none: no other prefix can be
    // bound to the xml namespace (see `declare`), so their expanded names
    // are distinct if their literal names are, which quick-xml's reading
    // has checked.
    if !attrs.iter().any(|(k, _)| k.bytes().any(|c| c == b':') && !k.starts_with("xml:")) {
        return Ok(());
    }
    let mut keep: Vec<(String, String)> = Vec::new();
    let mut expanded: Vec<(&str, &str)> = Vec::new();
    for (name, _) in attrs.iter() {
        let Some((prefix, local)) = name.split_once(':') else {
            continue;
        };
        if prefix == "xmlns" {
            // Only kept declarations look like this; read_start_tag never
            // stores a declaration as an attribute.
            continue;
        }
        let uri = lookup(scope, base, prefix).ok_or_else(|| ParseError::UndeclaredPrefix(prefix.to_owned()))?;
        expanded.push((uri, local));
        if prefix != "xml" && !keep.iter().any(|(k, _)| same(&k[6..], prefix)) {
            keep.push((format!("xmlns:{prefix}"), uri.to_owned()));
        }
    }
    if !all_distinct(&expanded) {
        return Err(ParseError::NotWellFormed("duplicate attribute"));
    }
    attrs.extend(keep);
    Ok(())
}

/// Whether attribute names are distinct: [`all_distinct`] without
/// collecting the names first.
fn attr_names_distinct(attrs: &[(String, String)]) -> bool {
    if attrs.len() <= 8 {
        attrs.iter().enumerate().all(|(i, (a, _))| attrs[..i].iter().all(|(b, _)| !same(a, b)))
    } else {
        let mut seen = HashSet::with_capacity(attrs.len());
        attrs.iter().all(|(a, _)| seen.insert(a.as_str()))
    }
}

/// Duplicate check that stays linear for hostile tags with thousands of
/// attributes, and allocation-free for normal ones.
fn all_distinct<T: Eq + std::hash::Hash>(items: &[T]) -> bool {
    if items.len() <= 8 {
        items.iter().enumerate().all(|(i, a)| items[..i].iter().all(|b| a != b))
    } else {
        let mut seen = HashSet::with_capacity(items.len());
        items.iter().all(|a| seen.insert(a))
    }
}

/// Validates and handles the XML declaration. quick-xml does the parsing of
/// its pseudo-attributes.
fn parse_decl(bytes: &[u8]) -> Result<()> {
    let mut reader = xml_reader(bytes);
    match reader.read_event() {
        Ok(Event::Decl(decl)) => {
            let version = decl.version().map_err(|_| ParseError::NotWellFormed("XML declaration without version"))?;
            if !version.starts_with("1.") {
                return Err(ParseError::NotWellFormed("unsupported XML version"));
            }
            if let Some(enc) = decl.encoding() {
                let enc = enc.map_err(|_| ParseError::NotWellFormed("malformed XML declaration"))?;
                if !enc.eq_ignore_ascii_case("UTF-8") {
                    let mut enc = enc.into_owned();
                    enc.truncate(enc.floor_char_boundary(64));
                    return Err(ParseError::UnsupportedEncoding(enc));
                }
            }
            Ok(())
        }
        Ok(_) => Err(ParseError::RestrictedXml("processing instruction")),
        Err(XmlError::Encoding(_)) => Err(ParseError::InvalidUtf8),
        Err(_) => Err(ParseError::NotWellFormed("malformed XML declaration")),
    }
}

/// Which characters [`check_chars`] refuses besides those that are not XML
/// `Char`s, and which ones need rewriting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chars {
    /// Element content: also `]]>`. CR needs end-of-line handling.
    Text,
    /// A raw attribute value: also `<`. References, tab, LF and CR need
    /// unescaping and normalization.
    AttrValue,
    /// Only what is not an XML `Char` (CDATA content, unescaped values). CR
    /// needs end-of-line handling.
    Plain,
}

/// Checks what quick-xml does not: that `s` holds only XML `Char`s (no
/// control characters other than tab, LF and CR, no U+FFFE or U+FFFF;
/// surrogates cannot occur in a `str`), plus the per-context rules of
/// `what`. Returns whether `s` needs quick-xml's unescaping or end-of-line
/// handling, which most text and values do not. Skips eight ordinary bytes
/// per step: every byte of character data and attribute values passes here.
fn check_chars(s: &str, what: Chars) -> Result<bool> {
    let b = s.as_bytes();
    // Besides control characters and the lead byte of U+FFFE/U+FFFF, look
    // at these two bytes.
    let (x, y) = match what {
        Chars::Text => (b'>', b'>'),
        Chars::AttrValue => (b'<', b'&'),
        Chars::Plain => (0xEF, 0xEF),
    };
    let (xs, ys) = (LO * u64::from(x), LO * u64::from(y));
    let hit = |w: u64| {
        // Bytes below 0x20; as in `zero_bytes`, the lowest flag is exact.
        (w.wrapping_sub(LO * 0x20) & !w & HI) | zero_bytes(w ^ (LO * 0xEF)) | zero_bytes(w ^ xs) | zero_bytes(w ^ ys)
    };
    let slow = |c: u8| c < 0x20 || c == 0xEF || c == x || c == y;
    let mut rewrite = false;
    let mut from = 0;
    while let Some(i) = find_swar(b, from, hit, slow) {
        match b[i] {
            b'\t' | b'\n' => rewrite |= what == Chars::AttrValue,
            // `&` is only looked at in attribute values.
            b'\r' | b'&' => rewrite = true,
            b'<' => return Err(ParseError::NotWellFormed("'<' in attribute value")),
            b'>' if i >= 2 && &b[i - 2..i] == b"]]" => {
                return Err(ParseError::NotWellFormed("']]>' in character data"));
            }
            0..=0x1F => return Err(ParseError::NotWellFormed("control character")),
            // U+FFFE and U+FFFF are not XML characters (UTF-8 EF BF BE/BF).
            0xEF if b.get(i + 1) == Some(&0xBF) && matches!(b.get(i + 2), Some(0xBE | 0xBF)) => {
                return Err(ParseError::NotWellFormed("non-character U+FFFE/U+FFFF"));
            }
            _ => {}
        }
        from = i + 1;
    }
    Ok(rewrite)
}

/// XML 1.0 `Char` production (surrogates are excluded by `char` already).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 `NameStartChar` without `:` (the NCName version).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '_'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar` without `:`.
fn is_name_char(c: char) -> bool {
    is_name_start(c) || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if is_name_start(c)) && chars.all(is_name_char)
}

/// Class of each ASCII byte in names: 0 invalid, 1 name character that
/// cannot start a name, 2 name start character, 3 colon.
static ASCII_NAME: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() || b == b'_' {
            2
        } else if b.is_ascii_digit() || b == b'-' || b == b'.' {
            1
        } else if b == b':' {
            3
        } else {
            0
        };
        c += 1;
    }
    t
};

/// Namespaces in XML `QName`: `NCName` or `NCName:NCName`. One pass over
/// the bytes for ASCII names (all XMPP names in practice); the general
/// Unicode rules otherwise.
fn is_qname(s: &str) -> bool {
    is_qname_ascii(s.as_bytes()).unwrap_or_else(|| is_qname_unicode(s))
}

/// [`is_qname`] for ASCII names; `None` if `s` is not ASCII.
fn is_qname_ascii(s: &[u8]) -> Option<bool> {
    let mut need_start = true;
    let mut seen_colon = false;
    for &c in s {
        let class = *ASCII_NAME.get(usize::from(c))?;
        match class {
            2 => need_start = false,
            1 if !need_start => {}
            3 if !need_start && !seen_colon => {
                seen_colon = true;
                need_start = true;
            }
            _ => return Some(false),
        }
    }
    Some(!need_start)
}

fn is_qname_unicode(s: &str) -> bool {
    match s.split_once(':') {
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
        None => is_ncname(s),
    }
}

/// XML 1.0 `Name` (colons allowed), for entity names.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == ':' || is_name_start(c)) && chars.all(|c| c == ':' || is_name_char(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDR: &str = "<stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>";
    const HDR_EV: &str = "header to=example.com version=1.0 ns=jabber:client";

    fn render(ev: &StreamEvent) -> String {
        match ev {
            StreamEvent::Header(h) => {
                let mut s = "header".to_string();
                for (k, v) in [
                    ("to", &h.to),
                    ("from", &h.from),
                    ("id", &h.id),
                    ("version", &h.version),
                    ("lang", &h.lang),
                    ("ns", &h.default_ns),
                ] {
                    if let Some(v) = v {
                        s.push_str(&format!(" {k}={v}"));
                    }
                }
                s
            }
            StreamEvent::Stanza(e) => e.to_xml(ns::CLIENT),
            StreamEvent::End => "end".to_string(),
        }
    }

    /// Feeds `chunks` one after the other, draining events after each, and
    /// renders everything that came out; an error is rendered by condition
    /// and ends the run.
    fn run_with(chunks: &[&[u8]], limits: Limits) -> (Vec<String>, Vec<StreamEvent>) {
        let mut p = StreamParser::new(limits);
        let mut out = Vec::new();
        let mut events = Vec::new();
        for chunk in chunks {
            p.feed(chunk);
            loop {
                match p.next_event() {
                    Ok(Some(ev)) => {
                        out.push(render(&ev));
                        events.push(ev);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The error sticks.
                        assert_eq!(p.next_event(), Err(e.clone()));
                        out.push(format!("error:{}", e.condition()));
                        return (out, events);
                    }
                }
            }
        }
        (out, events)
    }

    /// Serializing a stanza and parsing it again yields the same tree.
    fn assert_round_trip(el: &Element) {
        let xml = el.to_xml("");
        let wrapped = format!("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>{xml}");
        let (_, events) = run_with(&[wrapped.as_bytes()], Limits::default());
        assert_eq!(events.len(), 2, "re-parse of {xml}");
        assert_eq!(events[1], StreamEvent::Stanza(el.clone()), "re-parse of {xml}");
    }

    fn check_bytes_with(input: &[u8], limits: Limits, expected: &[&str]) {
        let (whole, events) = run_with(&[input], limits);
        assert_eq!(whole, expected, "input {:?}", String::from_utf8_lossy(input));
        for ev in &events {
            if let StreamEvent::Stanza(el) = ev {
                assert_round_trip(el);
            }
        }
        if input.len() > 4096 {
            return;
        }
        // Any split point gives the same events.
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            let (split, _) = run_with(&[a, b], limits);
            assert_eq!(split, expected, "split at {i} of {:?}", String::from_utf8_lossy(input));
        }
        // So does one byte at a time.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (single, _) = run_with(&bytes, limits);
        assert_eq!(single, expected, "byte by byte: {:?}", String::from_utf8_lossy(input));
    }

    fn check_bytes(input: &[u8], expected: &[&str]) {
        check_bytes_with(input, Limits::default(), expected);
    }

    fn check(input: &str, expected: &[&str]) {
        check_bytes(input.as_bytes(), expected);
    }

    /// A stream with `HDR`, then `body`: expect the header event, then
    /// `rest`.
    fn check_in_stream(body: &str, rest: &[&str]) {
        let input = format!("{HDR}{body}");
        let mut expected = vec![HDR_EV];
        expected.extend_from_slice(rest);
        check(&input, &expected);
    }

    /// Found by the fuzzer: the whole-stanza fast path skipped a CDATA
    /// section at stream level and returned the stanza after it, while the
    /// same bytes split across reads were (rightly) refused.
    #[test]
    fn cdata_at_stream_level_is_refused_however_split() {
        check_in_stream("<![CDATA[x]]><u/>", &["error:bad-format"]);
        check_in_stream("<![CDATA[x]]>", &["error:bad-format"]);
    }

    #[test]
    fn stream_structure() {
        let cases: &[(&str, &[&str])] = &[
            (
                "<message to='a@b'><body>hi</body></message></stream:stream>",
                &["<message to='a@b'><body>hi</body></message>", "end"],
            ),
            ("", &[]),
            ("</stream:stream>", &["end"]),
            ("</stream:stream>  \n", &["end"]),
            ("</stream:stream>x", &["end", "error:not-well-formed"]),
            ("</stream:stream><a/>", &["end", "error:not-well-formed"]),
            ("</stream>", &["error:not-well-formed"]),
            ("</stream:stream >", &["end"]),
            // Keepalive whitespace anywhere between stanzas.
            (" \n\t\r <presence/>\n \n<presence/> ", &["<presence/>", "<presence/>"]),
            ("<iq type='get' id='1'/>", &["<iq type='get' id='1'/>"]),
            // Incomplete stanzas yield nothing yet.
            ("<message><body>hi</bo", &[]),
            ("<message", &[]),
            ("<", &[]),
            // Negotiation elements in other namespaces.
            (
                "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                &["<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"],
            ),
            // Prefixed names resolve with the header's declarations.
            (
                "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
                &["<features xmlns='http://etherx.jabber.org/streams'>\
                   <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></features>"],
            ),
            (
                "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
                 </stream:error></stream:stream>",
                &[
                    "<error xmlns='http://etherx.jabber.org/streams'>\
                     <not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error>",
                    "end",
                ],
            ),
        ];
        for (body, rest) in cases {
            check_in_stream(body, rest);
        }
    }

    #[test]
    fn headers() {
        let cases: &[(&str, &[&str])] = &[
            (HDR, &[HDR_EV]),
            // Optional XML declaration, in its usual spellings.
            ("<?xml version='1.0'?>\n<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", &["header"]),
            ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", &["header"]),
            ("<?xml version='1.0' encoding='utf-8' standalone='yes'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", &["header"]),
            ("<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>", &["error:unsupported-encoding"]),
            ("<?xml encoding='UTF-8'?><stream:stream>", &["error:not-well-formed"]),
            ("<?xml version='2.0'?><stream:stream>", &["error:not-well-formed"]),
            ("<?xml-stylesheet href='x'?><stream:stream>", &["error:restricted-xml"]),
            ("<?xml version='1.0'?><?xml version='1.0'?>", &["error:restricted-xml"]),
            // Byte order mark at the very start.
            ("\u{FEFF}<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", &["header"]),
            ("\u{FEFF}<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", &["header"]),
            // All header attributes.
            (
                "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                 from='a.example' to='b.example' id='s&amp;1' version='1.0' xml:lang='en'>",
                &["header to=b.example from=a.example id=s&1 version=1.0 lang=en ns=jabber:server"],
            ),
            // Any prefix, or none, may name the streams namespace.
            ("<s:stream xmlns:s='http://etherx.jabber.org/streams'></s:stream>", &["header", "end"]),
            ("<stream xmlns='http://etherx.jabber.org/streams'></stream>", &["header ns=http://etherx.jabber.org/streams", "end"]),
            // A self-closed header opens and closes the stream.
            ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'/>", &["header", "end"]),
            // Wrong root name or namespace.
            ("<stream:stream xmlns:stream='urn:wrong'>", &["error:invalid-namespace"]),
            ("<stream xmlns='jabber:client'>", &["error:invalid-namespace"]),
            ("<stream:foo xmlns:stream='http://etherx.jabber.org/streams'>", &["error:invalid-namespace"]),
            ("<stream:stream xmlns='http://etherx.jabber.org/streams'>", &["error:bad-namespace-prefix"]),
            ("<stream:stream>", &["error:bad-namespace-prefix"]),
            ("<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x:y='1'>", &["error:bad-namespace-prefix"]),
            // Anything else before the header.
            ("hello", &["error:not-well-formed"]),
            ("</stream:stream>", &["error:not-well-formed"]),
            ("<![CDATA[x]]>", &["error:not-well-formed"]),
            ("<!-- hi --><stream:stream>", &["error:restricted-xml"]),
            ("<!DOCTYPE stream>", &["error:restricted-xml"]),
            ("  <?pi?>", &["error:restricted-xml"]),
            // Whitespace before the header is tolerated.
            ("\n <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", &["header"]),
        ];
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    #[test]
    fn billion_laughs_fails_fast() {
        let input = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>\
            <!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>]>\
            <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;";
        check(input, &["error:restricted-xml"]);
        // Refused as soon as `<!D` is seen, without waiting for the DTD.
        let mut p = StreamParser::new(Limits::default());
        p.feed(b"<!DOC");
        assert_eq!(p.next_event().map_err(|e| e.condition()), Err(StreamErrorCondition::RestrictedXml));
    }

    #[test]
    fn restricted_xml() {
        let cases: &[(&str, &[&str])] = &[
            ("<!-- c -->", &["error:restricted-xml"]),
            ("<message><!-- c --></message>", &["error:restricted-xml"]),
            ("<message><?pi x?></message>", &["error:restricted-xml"]),
            ("<?xml version='1.0'?>", &["error:restricted-xml"]),
            ("<message><!DOCTYPE x></message>", &["error:restricted-xml"]),
            ("<message><!ENTITY x 'y'></message>", &["error:restricted-xml"]),
            ("<message><body>&lol;</body></message>", &["error:restricted-xml"]),
            ("<message><body>&nbsp;</body></message>", &["error:restricted-xml"]),
            ("<message id='&ent;'/>", &["error:restricted-xml"]),
            // Errors are reported even if an earlier part was fine.
            ("<a/><b>&x;</b>", &["<a/>", "error:restricted-xml"]),
        ];
        for (body, rest) in cases {
            check_in_stream(body, rest);
        }
    }

    #[test]
    fn text_and_escaping() {
        let cases: &[(&str, &[&str])] = &[
            ("<message><body>héllo 😀</body></message>", &["<message><body>héllo 😀</body></message>"]),
            (
                "<message><body>&lt;&gt;&amp;&quot;&apos;&#65;&#x42;&#x1F600;&#233;</body></message>",
                &["<message><body>&lt;&gt;&amp;\"'AB😀é</body></message>"],
            ),
            (
                "<message id='a&amp;b&#x27;&lt;&quot;' to=\"x'y\"/>",
                &["<message id='a&amp;b&apos;&lt;&quot;' to='x&apos;y'/>"],
            ),
            // `>` is fine in text and attributes.
            ("<m a='>'>a>b</m>", &["<m a='&gt;'>a&gt;b</m>"]),
            // CDATA is text; adjacent text pieces merge.
            ("<m><body>a<![CDATA[<b> & ]]]]>c&amp;</body></m>", &["<m><body>a&lt;b&gt; &amp; ]]c&amp;</body></m>"]),
            ("<m><![CDATA[]]></m>", &["<m/>"]),
            // End-of-line handling and attribute normalization.
            ("<m>a\r\nb\rc\n</m>", &["<m>a\nb\nc\n</m>"]),
            ("<m a='x\ty\nz\r\nw'/>", &["<m a='x y z w'/>"]),
            ("<m a='&#9;&#10;&#13;'>&#13;</m>", &["<m a='&#x9;&#xA;&#xD;'>&#xD;</m>"]),
            // Mixed content keeps its order.
            ("<m>a<b/>c<d>e</d>f</m>", &["<m>a<b/>c<d>e</d>f</m>"]),
            // Whitespace inside a stanza is content.
            ("<m> <b> </b> </m>", &["<m> <b> </b> </m>"]),
            // U+FEFF inside text is kept.
            ("<m>\u{FEFF}x</m>", &["<m>\u{FEFF}x</m>"]),
            // Non-BMP and combining characters in names.
            ("<é:ü xmlns:é='urn:x' ñ='1'/>", &["<ü xmlns='urn:x' ñ='1'/>"]),
        ];
        for (body, rest) in cases {
            check_in_stream(body, rest);
        }
    }

    #[test]
    fn namespaces() {
        let cases: &[(&str, &[&str])] = &[
            ("<foo:bar xmlns:foo='urn:x'/>", &["<bar xmlns='urn:x'/>"]),
            (
                "<foo:bar xmlns:foo='urn:x'><foo:baz/><qux/></foo:bar>",
                &["<bar xmlns='urn:x'><baz/><qux xmlns='jabber:client'/></bar>"],
            ),
            (
                "<iq><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>",
                &["<iq><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>"],
            ),
            // Undeclaring the default namespace.
            ("<m><x xmlns=''><y/></x></m>", &["<m><x xmlns=''><y/></x></m>"]),
            // Declarations go out of scope with their element.
            ("<m><p:a xmlns:p='urn:p'/><p:b/></m>", &["error:bad-namespace-prefix"]),
            ("<foo:bar/>", &["error:bad-namespace-prefix"]),
            ("<m foo:a='1'/>", &["error:bad-namespace-prefix"]),
            // xml: is predefined and needs no declaration.
            ("<m xml:lang='en'/>", &["<m xml:lang='en'/>"]),
            ("<m xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>", &["<m xml:lang='en'/>"]),
            // Prefixed attributes keep their declaration so they can be
            // written back out.
            (
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' \
                 xmlns:ga='http://www.google.com/talk/protocol/auth' \
                 ga:client-uses-full-bind-result='true'/>",
                &["<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' \
                   ga:client-uses-full-bind-result='true' \
                   xmlns:ga='http://www.google.com/talk/protocol/auth'/>"],
            ),
            ("<m xmlns:a='urn:a'><n a:x='1' a:y='2'/></m>", &["<m><n a:x='1' a:y='2' xmlns:a='urn:a'/></m>"]),
            // Same expanded attribute name through two prefixes.
            ("<m xmlns:a='urn:a' xmlns:b='urn:a' a:x='1' b:x='2'/>", &["error:not-well-formed"]),
            // Bad declarations.
            ("<m xmlns:p=''/>", &["error:not-well-formed"]),
            ("<m xmlns:xml='urn:x'/>", &["error:not-well-formed"]),
            ("<m xmlns:xmlns='urn:x'/>", &["error:not-well-formed"]),
            ("<m xmlns:p='http://www.w3.org/XML/1998/namespace'/>", &["error:not-well-formed"]),
            ("<m xmlns='urn:a' xmlns='urn:b'/>", &["error:not-well-formed"]),
            ("<xmlns:m/>", &["error:not-well-formed"]),
            ("<xml:m/>", &["error:bad-namespace-prefix"]),
            // End tags must repeat the prefix literally.
            ("<a:m xmlns:a='u' xmlns:b='u'></b:m>", &["error:not-well-formed"]),
            ("<a:m xmlns:a='u'></a:m>", &["<m xmlns='u'/>"]),
            ("<a:m xmlns:a='u'></m>", &["error:not-well-formed"]),
            ("<a:m xmlns:a='u'></xa:m>", &["error:not-well-formed"]),
        ];
        for (body, rest) in cases {
            check_in_stream(body, rest);
        }
    }

    #[test]
    fn malformed() {
        let cases: &[(&str, &[&str])] = &[
            ("<a></b>", &["error:not-well-formed"]),
            ("<a><b></a></b>", &["error:not-well-formed"]),
            ("<>", &["error:not-well-formed"]),
            ("< a/>", &["error:not-well-formed"]),
            ("<1a/>", &["error:not-well-formed"]),
            ("<a:/>", &["error:not-well-formed"]),
            ("<a:b:c/>", &["error:not-well-formed"]),
            ("<a / >", &["error:not-well-formed"]),
            ("<a b/>", &["error:not-well-formed"]),
            ("<a b=c/>", &["error:not-well-formed"]),
            ("<a b='1'c='2'/>", &["error:not-well-formed"]),
            ("<a b='1' b='2'/>", &["error:not-well-formed"]),
            ("<a b='<'/>", &["error:not-well-formed"]),
            ("<a b='&'/>", &["error:not-well-formed"]),
            ("<a>&amp</a>", &["error:not-well-formed"]),
            ("<a>& b;</a>", &["error:not-well-formed"]),
            ("<a>&;</a>", &["error:not-well-formed"]),
            ("<a>&#;</a>", &["error:not-well-formed"]),
            ("<a>&#x;</a>", &["error:not-well-formed"]),
            ("<a>&#0;</a>", &["error:not-well-formed"]),
            ("<a>&#x1;</a>", &["error:not-well-formed"]),
            ("<a>&#xD800;</a>", &["error:not-well-formed"]),
            ("<a>&#xFFFE;</a>", &["error:not-well-formed"]),
            ("<a>&#x110000;</a>", &["error:not-well-formed"]),
            ("<a>&#99999999999999999999;</a>", &["error:not-well-formed"]),
            ("<a>&#X41;</a>", &["error:not-well-formed"]),
            ("<a>&#+65;</a>", &["error:not-well-formed"]),
            ("<a>a]]>b</a>", &["error:not-well-formed"]),
            ("<a>\u{1}</a>", &["error:not-well-formed"]),
            ("<a b='\u{0}'/>", &["error:not-well-formed"]),
            ("<a>\u{FFFF}</a>", &["error:not-well-formed"]),
            ("<a><![CDATA[\u{8}]]></a>", &["error:not-well-formed"]),
            ("<a><![CDAT[x]]></a>", &["error:not-well-formed"]),
            ("<a></a b>", &["error:not-well-formed"]),
            ("</a>", &["error:not-well-formed"]),
            // Character data at stream level.
            ("hello", &["error:bad-format"]),
            ("<a/>x<b/>", &["<a/>", "error:bad-format"]),
            ("&amp;", &["error:bad-format"]),
            ("<![CDATA[x]]>", &["error:bad-format"]),
        ];
        for (body, rest) in cases {
            check_in_stream(body, rest);
        }
    }

    #[test]
    fn invalid_utf8() {
        let hdr = HDR.as_bytes();
        let bodies: &[&[u8]] = &[
            b"<m>\xFF</m>",
            b"<m>\xC3</m>",
            b"<m a='\xE2\x82'/>",
            b"<m\xC0\xAF/>",
            b"<m>\xED\xA0\x80</m>",
            b"<m></m\xFF>",
        ];
        for body in bodies {
            let input = [hdr, body].concat();
            check_bytes(&input, &[HDR_EV, "error:unsupported-encoding"]);
        }
        check_bytes(b"<stream:stream a='\xFF'>", &["error:unsupported-encoding"]);
    }

    #[test]
    fn split_everywhere_with_multibyte_text() {
        // check() also splits at every position and feeds byte by byte,
        // so this cuts through "é" and "😀" and every tag and reference.
        let body = "<message to='jüliet@example.com' xml:lang='fr'>\
            <body>héllo 😀 &amp; &#x1F600; <![CDATA[<😀>]]></body>\
            <x:y xmlns:x='urn:😀' x:a='ü'/></message> \
            <presence/></stream:stream>";
        check_in_stream(
            body,
            &[
                "<message to='jüliet@example.com' xml:lang='fr'>\
                 <body>héllo 😀 &amp; 😀 &lt;😀&gt;</body>\
                 <y xmlns='urn:😀' x:a='ü' xmlns:x='urn:😀'/></message>",
                "<presence/>",
                "end",
            ],
        );
    }

    #[test]
    fn depth_limit() {
        let nest = |n: usize| format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
        let ok = nest(64);
        let (out, _) = run_with(&[HDR.as_bytes(), ok.as_bytes()], Limits::default());
        assert_eq!(out.len(), 2);
        assert!(out[1].starts_with("<a><a>"));
        check_in_stream(&nest(65), &["error:policy-violation"]);
        // An empty element counts too.
        let limits = Limits { max_depth: 2, ..Limits::default() };
        check_bytes_with(
            format!("{HDR}<a><b/></a><a><b><c/></b></a>").as_bytes(),
            limits,
            &[HDR_EV, "<a><b/></a>", "error:policy-violation"],
        );
    }

    #[test]
    fn namespace_declaration_limit() {
        let decls = |n: usize| -> String { (0..n).map(|i| format!(" xmlns:p{i}='urn:{i}'")).collect() };
        // The header declares two (default and stream:).
        let ok = format!("<a{}/>", decls(MAX_NAMESPACES_IN_SCOPE - 2));
        let (out, _) = run_with(&[HDR.as_bytes(), ok.as_bytes()], Limits::default());
        assert_eq!(out.len(), 2);
        check_in_stream(&format!("<a{}/>", decls(MAX_NAMESPACES_IN_SCOPE - 1)), &["error:policy-violation"]);
        // Counted across nesting, and released when elements close.
        let half = MAX_NAMESPACES_IN_SCOPE / 2;
        check_in_stream(
            &format!("<a{}><b{}/><c{}/></a>", decls(half - 2), decls(half), decls(half)),
            // Unused declarations are not kept in the tree.
            &["<a><b/><c/></a>"],
        );
        check_in_stream(&format!("<a{}><b{}/></a>", decls(half), decls(half)), &["error:policy-violation"]);
        let header = format!(
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'{}>",
            decls(MAX_NAMESPACES_IN_SCOPE)
        );
        check(&header, &["error:policy-violation"]);
    }

    #[test]
    fn deep_nesting_fails_without_waiting() {
        let started = std::time::Instant::now();
        let mut p = StreamParser::new(Limits::default());
        p.feed(HDR.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
        // Never closed: the error must come from the open tags alone.
        p.feed("<a>".repeat(10_000).as_bytes());
        assert_eq!(p.next_event(), Err(ParseError::TooDeep(64)));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// `<body>oops</message>` left the stanza one level deep, so the scanner
    /// waited for more input and the error came only when the peer closed the
    /// stream: an end tag must close the innermost open element.
    #[test]
    fn mismatched_end_tag_fails_without_waiting_for_the_stanza_end() {
        let cases: &[(&str, &[&str])] = &[
            ("<message to='bob@localhost'><body>oops</message>", &["error:not-well-formed"]),
            ("<a><b><c></b>", &["error:not-well-formed"]),
            ("<a><b></bb>", &["error:not-well-formed"]),
            ("<a><bb></b>", &["error:not-well-formed"]),
            ("<a><b></b c>", &["error:not-well-formed"]),
            ("<a><p:b xmlns:p='urn:x'></b>", &["error:not-well-formed"]),
            ("<a><b></p:b>", &["error:not-well-formed"]),
            ("<a><b/><c>text</a>", &["error:not-well-formed"]),
            ("<a><![CDATA[</a>]]><b></a>", &["error:not-well-formed"]),
            // What does close: the same qualified name, whitespace after it.
            ("<a><b></b ></a\n><c/>", &["<a><b/></a>", "<c/>"]),
            ("<a><p:b xmlns:p='urn:x'></p:b>", &[]),
            ("<a xmlns='urn:é'><é>é</é>", &[]),
        ];
        for (body, rest) in cases {
            check_in_stream(body, rest);
        }
        // The stanza is never completed, and the stream not closed.
        let mut p = StreamParser::new(Limits::default());
        p.feed(HDR.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
        p.feed(b"<message to='bob@localhost'><body>oops");
        assert_eq!(p.next_event(), Ok(None));
        p.feed(b"</message>");
        assert_eq!(p.next_event(), Err(ParseError::NotWellFormed("mismatched end tag")));
    }

    #[test]
    fn size_limits() {
        let limits = Limits { max_stanza_size: 100, ..Limits::default() };
        let fits = format!("<m>{}</m>", "x".repeat(93));
        assert_eq!(fits.len(), 100);
        let too_big = format!("<m>{}</m>", "x".repeat(94));
        check_bytes_with(
            format!("{HDR}{fits}{too_big}").as_bytes(),
            limits,
            &[HDR_EV, &fits, "error:policy-violation"],
        );
        // Detected while still incomplete, in text, in a tag, in a value.
        for partial in [
            format!("<m>{}", "x".repeat(200)),
            format!("<m{}", " ".repeat(200)),
            format!("<m a='{}", "x".repeat(200)),
            format!("<m><![CDATA[{}", "x".repeat(200)),
        ] {
            check_bytes_with(format!("{HDR}{partial}").as_bytes(), limits, &[HDR_EV, "error:policy-violation"]);
        }
        // Keepalive whitespace between stanzas does not count.
        let mut p = StreamParser::new(limits);
        p.feed(HDR.as_bytes());
        assert!(p.next_event().is_ok());
        for _ in 0..100 {
            p.feed(&[b' '; 64]);
            assert_eq!(p.next_event(), Ok(None));
        }
        assert_eq!(p.buffered_len(), 0);
        // The header has its own limit.
        let long_header = format!(
            "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x='{}'>",
            "y".repeat(MAX_HEADER_SIZE)
        );
        check_bytes_with(long_header.as_bytes(), limits, &["error:policy-violation"]);
        let mut p = StreamParser::new(limits);
        p.feed(" ".repeat(MAX_HEADER_SIZE + 1).as_bytes());
        assert_eq!(p.next_event(), Err(ParseError::HeaderTooLarge(MAX_HEADER_SIZE)));
    }

    #[test]
    fn large_token_in_tiny_reads_is_linear() {
        // 60 KB of text arriving one byte per read must not be re-scanned
        // from the start on every read.
        let started = std::time::Instant::now();
        let mut p = StreamParser::new(Limits::default());
        p.feed(HDR.as_bytes());
        assert!(p.next_event().is_ok());
        p.feed(b"<m a='");
        for _ in 0..30_000 {
            p.feed(b"x");
            assert_eq!(p.next_event(), Ok(None));
        }
        p.feed(b"'>");
        for _ in 0..30_000 {
            p.feed(b"y");
            assert_eq!(p.next_event(), Ok(None));
        }
        p.feed(b"</m>");
        match p.next_event() {
            Ok(Some(StreamEvent::Stanza(e))) => {
                assert_eq!(e.attr("a").map(str::len), Some(30_000));
                assert_eq!(e.text().len(), 30_000);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn polling_without_input_is_cheap_and_stable() {
        let mut p = StreamParser::new(Limits::default());
        assert_eq!(p.next_event(), Ok(None));
        p.feed(HDR.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
        p.feed(b"<m>");
        assert_eq!(p.next_event(), Ok(None));
        assert_eq!(p.next_event(), Ok(None));
        p.feed(b"</m>");
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
        assert_eq!(p.next_event(), Ok(None));
    }

    #[test]
    fn buffered_len_and_reset() {
        let mut p = StreamParser::new(Limits::default());
        p.feed(HDR.as_bytes());
        assert!(p.next_event().is_ok());
        // STARTTLS with injected plaintext behind it.
        p.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\n<iq type='set'/>");
        match p.next_event() {
            Ok(Some(StreamEvent::Stanza(e))) => assert!(e.is("starttls", ns::TLS)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(p.buffered_len(), "<iq type='set'/>".len());

        // A clean STARTTLS: only trailing whitespace, which is consumed.
        let mut p = StreamParser::new(Limits::default());
        p.feed(HDR.as_bytes());
        p.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\r\n");
        assert!(p.next_event().is_ok());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));
        assert_eq!(p.buffered_len(), 0);

        // After reset a new header (with declaration) is expected, and
        // buffered bytes are gone.
        p.feed(b"<partial");
        p.reset();
        assert_eq!(p.buffered_len(), 0);
        p.feed(b"<?xml version='1.0'?>");
        p.feed(HDR.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
        p.feed(b"<presence/>");
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Stanza(_)))));

        // Reset also revives a failed parser.
        p.feed(b"<!--");
        assert!(p.next_event().is_err());
        p.feed(b"ignored");
        assert_eq!(p.buffered_len(), 0);
        p.reset();
        p.feed(HDR.as_bytes());
        assert!(matches!(p.next_event(), Ok(Some(StreamEvent::Header(_)))));
    }

    #[test]
    fn error_conditions() {
        use StreamErrorCondition as C;
        let cases = [
            (ParseError::InvalidUtf8, C::UnsupportedEncoding),
            (ParseError::UnsupportedEncoding("x".into()), C::UnsupportedEncoding),
            (ParseError::NotWellFormed("x"), C::NotWellFormed),
            (ParseError::RestrictedXml("x"), C::RestrictedXml),
            (ParseError::UndefinedEntity("x".into()), C::RestrictedXml),
            (ParseError::UndeclaredPrefix("x".into()), C::BadNamespacePrefix),
            (ParseError::InvalidNamespace, C::InvalidNamespace),
            (ParseError::ReservedNamespace, C::BadNamespacePrefix),
            (ParseError::TextAtStreamLevel, C::BadFormat),
            (ParseError::StanzaTooLarge(1), C::PolicyViolation),
            (ParseError::HeaderTooLarge(1), C::PolicyViolation),
            (ParseError::TooDeep(1), C::PolicyViolation),
            (ParseError::TooManyNamespaces(1), C::PolicyViolation),
        ];
        for (e, c) in cases {
            assert_eq!(e.condition(), c, "{e}");
        }
    }

    #[test]
    fn names() {
        let cases = [
            ("a", true),
            ("message", true),
            ("a:b", true),
            ("_x.y-z9", true),
            ("origin-id", true),
            ("é", true),
            ("a:é", true),
            ("ü:ñ", true),
            ("", false),
            (":a", false),
            ("a:", false),
            ("a:b:c", false),
            ("1a", false),
            ("a:1", false),
            ("-a", false),
            (".a", false),
            ("a b", false),
            ("a/", false),
            ("a\u{D7}", false),
            ("\u{300}a", false),
        ];
        for (name, valid) in cases {
            assert_eq!(is_qname(name), valid, "{name:?}");
        }
        assert!(is_name("a:b:c"));
        assert!(!is_name("1"));
    }

    #[test]
    fn swar_search_matches_naive() {
        // Deterministic pseudo-random bytes biased towards the needles and
        // towards bytes >= 0x80, where borrow tricks tend to go wrong.
        let mut x: u32 = 12345;
        let mut data = Vec::new();
        for _ in 0..4096 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let r = (x >> 16) as u8;
            data.push(match r % 8 {
                0 => b'<',
                1 => b'>',
                2 => b'\'',
                3 => 0x80 | r,
                4 => r.wrapping_sub(1),
                _ => b'a' + (r % 26),
            });
        }
        for from in (0..200).chain([4090, 4095, 4096, 4097]) {
            for needle in [b'<', b'>', b'"', 0x80, 0xFF, 0x00] {
                let naive = data.get(from..).and_then(|d| d.iter().position(|&c| c == needle)).map(|i| i + from);
                assert_eq!(find_byte(needle, &data, from), naive, "{needle} from {from}");
            }
            let naive = data
                .get(from..)
                .and_then(|d| d.iter().position(|&c| matches!(c, b'>' | b'\'' | b'"')))
                .map(|i| i + from);
            assert_eq!(find_tag_delim(&data, from), naive, "delim from {from}");
        }
        assert_eq!(find_seq(b"]]>", b"]]]]>", 0), Some(2));
        assert_eq!(find_seq(b"?>", b"<?xml?", 0), None);
    }

    #[test]
    fn built_trees_round_trip() {
        let trees = [
            Element::new("message", ns::CLIENT)
                .with_attr("to", "a@b")
                .with_attr("weird", "<&>'\"\t\n\r ü")
                .with_child(Element::new("body", ns::CLIENT).with_text("a\r\nb <&> ]]> \t 😀"))
                .with_child(Element::new("x", "")),
            Element::new("a", "").with_child(Element::new("b", "urn:b").with_child(Element::new("c", ""))),
            Element::new("a", "urn:a").with_attr("xml:lang", "en").with_attr("p:x", "1").with_attr("xmlns:p", "urn:p"),
        ];
        for t in &trees {
            assert_round_trip(t);
        }
    }

    #[test]
    fn parse_element_takes_exactly_one() {
        let l = Limits::default();
        let el = parse_element("<message to='a@b'><body>x</body></message>\n", l).unwrap();
        assert!(el.is("message", ns::CLIENT));
        assert_eq!(parse_element("<message/><message/>", l), Err(ElementError::NotOneElement));
        assert_eq!(parse_element("<message>", l), Err(ElementError::NotOneElement));
        assert_eq!(parse_element("", l), Err(ElementError::NotOneElement));
        assert!(parse_element("<message/>trailing", l).is_err());
        assert!(matches!(parse_element("<a></b>", l), Err(ElementError::Parse(_))));
        let small = Limits { max_stanza_size: 16, max_depth: 4 };
        assert!(matches!(
            parse_element("<message><body>far too long</body></message>", small),
            Err(ElementError::Parse(_))
        ));
    }
}
