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
//! The parser works token by token (a tag, a run of character data, a CDATA
//! section, the XML declaration). A small resumable scanner finds where the
//! token at the front of the buffer ends, remembering how far it looked (and
//! whether it is inside a quoted attribute value) so that a token arriving in
//! many small reads is scanned once overall, not once per read. A token is
//! only interpreted once it is complete, so "incomplete" and "malformed" are
//! never confused; each complete token is interpreted exactly once and then
//! dropped from the buffer, with the partially built stanza kept as a stack
//! of open elements. Namespace prefixes are resolved against a scope stack
//! seeded with the stream header's declarations (`xmlns`, `xmlns:stream`).
//!
//! The hand-written tokenizer does not use `quick_xml::Reader` for the main
//! loop on purpose: (1) telling "incomplete" from "malformed" needs token
//! boundaries before parsing anyway; (2) a `Reader` restarted in the middle
//! of an element cannot check end tags, and silently drops a U+FEFF at the
//! start of any text it is restarted on (it takes it for a byte order mark);
//! (3) RFC 6120 wants restricted XML rejected *early* (a DTD is refused at
//! `<!D`, not after its end has been buffered). quick-xml still parses the
//! XML declaration.
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
//! [`StreamParser::buffered_len`].

use std::collections::HashSet;
use std::mem;

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

/// Kind of a complete token at the front of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Text,
    Start,
    End,
    CData,
    Pi,
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

/// An element whose end tag has not arrived yet.
#[derive(Debug)]
struct Frame {
    el: Element,
    /// Prefix used in the start tag, needed to match the end tag literally.
    prefix: String,
    /// Length of the scope stack before this element's declarations.
    scope_len: usize,
}

/// The partially built stanza and the namespaces in scope.
#[derive(Debug, Default)]
struct Tree {
    /// Declarations on the stream header; in scope for every stanza.
    base: Vec<Binding>,
    /// Declarations of the currently open elements.
    scope: Vec<Binding>,
    stack: Vec<Frame>,
    /// Character data not yet attached to the innermost open element, so
    /// that text, CDATA and references split over several tokens end up as
    /// one text node.
    text: String,
    /// Bytes of the current top-level element consumed so far.
    stanza_used: usize,
    /// Scratch space for attributes while a start tag is parsed.
    attr_buf: Vec<(String, String)>,
}

/// Incremental XMPP stream parser; see the module documentation.
#[derive(Debug)]
pub struct StreamParser {
    limits: Limits,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// How far (relative to `pos`) the scanner already looked for the end of
    /// the token at `pos`.
    resume: usize,
    /// Quote byte if the scanner stopped inside an attribute value, else 0.
    quote: u8,
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
}

impl StreamParser {
    /// A parser expecting a stream header.
    pub fn new(limits: Limits) -> Self {
        StreamParser {
            limits,
            buf: Vec::new(),
            pos: 0,
            resume: 0,
            quote: 0,
            starved: false,
            state: State::Prolog,
            bom_allowed: true,
            decl_allowed: true,
            prolog_used: 0,
            pending_end: false,
            header_qname: String::new(),
            tree: Tree::default(),
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
        // token and stanza.
        if self.pos == self.buf.len() {
            self.buf.clear();
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
                    return Ok(None);
                }
                Ok(Progress::Continue) => {}
                Err(e) => {
                    // Free memory held for a stream that is dead anyway.
                    self.buf = Vec::new();
                    self.pos = 0;
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
        let Some((tok, len)) = self.find_token()? else {
            if self.prolog_used + self.buffered_len() > MAX_HEADER_SIZE {
                return Err(ParseError::HeaderTooLarge(MAX_HEADER_SIZE));
            }
            return Ok(Progress::NeedMore);
        };
        if self.prolog_used + len > MAX_HEADER_SIZE {
            return Err(ParseError::HeaderTooLarge(MAX_HEADER_SIZE));
        }
        self.decl_allowed = false;
        let bytes = &self.buf[self.pos..self.pos + len];
        match tok {
            Tok::Pi => {
                parse_decl(bytes)?;
                self.consume(len);
                self.prolog_used += len;
                Ok(Progress::Continue)
            }
            Tok::Start => {
                let header = self.open_stream(len)?;
                self.consume(len);
                self.state = State::Open;
                Ok(Progress::Event(StreamEvent::Header(header)))
            }
            Tok::End => Err(ParseError::NotWellFormed("end tag before the stream header")),
            Tok::Text | Tok::CData => Err(ParseError::NotWellFormed("character data before the stream header")),
        }
    }

    fn step_open(&mut self) -> Result<Progress> {
        if self.pending_end {
            self.pending_end = false;
            self.state = State::Closed;
            return Ok(Progress::Event(StreamEvent::End));
        }
        let at_top = self.tree.stack.is_empty();
        if at_top {
            self.skip_ws();
            match self.buf.get(self.pos) {
                None => return Ok(Progress::NeedMore),
                Some(b'<') => {}
                Some(_) => return Err(ParseError::TextAtStreamLevel),
            }
        }
        let Some((tok, len)) = self.find_token()? else {
            if self.tree.stanza_used + self.buffered_len() > self.limits.max_stanza_size {
                return Err(ParseError::StanzaTooLarge(self.limits.max_stanza_size));
            }
            return Ok(Progress::NeedMore);
        };
        if self.tree.stanza_used + len > self.limits.max_stanza_size {
            return Err(ParseError::StanzaTooLarge(self.limits.max_stanza_size));
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        let done = match tok {
            Tok::Text => {
                // At top level the whitespace check above stops text first.
                decode(bytes, &mut self.tree.text, Mode::Text)?;
                None
            }
            Tok::CData if at_top => return Err(ParseError::TextAtStreamLevel),
            Tok::CData => {
                // `<![CDATA[` and `]]>` are ASCII, so slicing the bytes is exact.
                decode(&bytes[9..len - 3], &mut self.tree.text, Mode::CData)?;
                None
            }
            Tok::Start => self.tree.start(bytes, self.limits.max_depth)?,
            Tok::End if at_top => {
                if end_tag_name(bytes)? != self.header_qname {
                    return Err(ParseError::NotWellFormed("mismatched end tag"));
                }
                self.consume(len);
                self.state = State::Closed;
                return Ok(Progress::Event(StreamEvent::End));
            }
            Tok::End => self.tree.end(bytes)?,
            // `find_token` only yields this while the declaration is allowed.
            Tok::Pi => return Err(ParseError::RestrictedXml("processing instruction")),
        };
        self.consume(len);
        match done {
            Some(stanza) => {
                self.tree.stanza_used = 0;
                // Consume keepalive whitespace right away so it does not
                // count as buffered data (see `buffered_len`).
                self.skip_ws();
                Ok(Progress::Event(StreamEvent::Stanza(stanza)))
            }
            None => {
                self.tree.stanza_used += len;
                Ok(Progress::Continue)
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

    /// Parses the stream header token of `len` bytes at `pos` and installs
    /// its namespace declarations as the base scope.
    fn open_stream(&mut self, len: usize) -> Result<StreamHeader> {
        let tok = utf8(&self.buf[self.pos..self.pos + len])?;
        let mut scope = Vec::new();
        let mut attrs = Vec::new();
        let (qname, empty) = parse_start_tag(tok, &mut scope, &mut attrs)?;
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
        self.header_qname = qname.to_owned();
        self.tree = Tree { base: scope, ..Tree::default() };
        self.pending_end = empty;
        Ok(header)
    }

    fn consume(&mut self, len: usize) {
        self.pos += len;
        self.resume = 0;
        self.quote = 0;
    }

    /// Consumes XML whitespace at `pos`, returning how much. Only called
    /// where no token is partially scanned.
    fn skip_ws(&mut self) -> usize {
        let n = self.buf[self.pos..].iter().take_while(|&&c| is_ws(c)).count();
        self.pos += n;
        n
    }

    /// Finds the end of the token starting at `pos`: `Some((kind, length))`
    /// once it is complete, `None` (remembering how far it looked) if not.
    /// Rejects comments, DTDs and processing instructions as soon as their
    /// first bytes are seen, without waiting for their end.
    fn find_token(&mut self) -> Result<Option<(Tok, usize)>> {
        let data = &self.buf[self.pos..];
        let Some(&first) = data.first() else {
            return Ok(None);
        };
        if first != b'<' {
            return Ok(match find_byte(b'<', data, self.resume) {
                Some(i) => Some((Tok::Text, i)),
                None => {
                    self.resume = data.len();
                    None
                }
            });
        }
        let Some(&second) = data.get(1) else {
            return Ok(None);
        };
        match second {
            b'/' => Ok(match find_byte(b'>', data, self.resume.max(2)) {
                Some(i) => Some((Tok::End, i + 1)),
                None => {
                    self.resume = data.len();
                    None
                }
            }),
            b'?' => {
                if !self.decl_allowed {
                    return Err(ParseError::RestrictedXml("processing instruction"));
                }
                Ok(match find_seq(b"?>", data, self.resume.max(2)) {
                    Some(i) => Some((Tok::Pi, i + 2)),
                    None => {
                        // The `?` of a split `?>` may be the last byte.
                        self.resume = (data.len() - 1).max(2);
                        None
                    }
                })
            }
            b'!' => {
                const CDATA: &[u8] = b"<![CDATA[";
                let n = data.len().min(CDATA.len());
                if data[..n] != CDATA[..n] {
                    return Err(match data[2] {
                        b'-' => ParseError::RestrictedXml("comment"),
                        b'[' => ParseError::NotWellFormed("malformed CDATA section"),
                        _ => ParseError::RestrictedXml("document type declaration"),
                    });
                }
                if n < CDATA.len() {
                    return Ok(None);
                }
                Ok(match find_seq(b"]]>", data, self.resume.max(CDATA.len())) {
                    Some(i) => Some((Tok::CData, i + 3)),
                    None => {
                        self.resume = (data.len() - 2).max(CDATA.len());
                        None
                    }
                })
            }
            _ => {
                // Start tag: ends at the first `>` outside a quoted value.
                let mut i = self.resume.max(1);
                let mut quote = self.quote;
                loop {
                    if quote != 0 {
                        match find_byte(quote, data, i) {
                            Some(j) => {
                                i = j + 1;
                                quote = 0;
                            }
                            None => break,
                        }
                    } else {
                        match find_tag_delim(data, i) {
                            Some(j) if data[j] == b'>' => return Ok(Some((Tok::Start, j + 1))),
                            Some(j) => {
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

impl Tree {
    /// Handles a complete start (or empty-element) tag. Returns the stanza if
    /// this was a self-closed top-level element.
    fn start(&mut self, bytes: &[u8], max_depth: usize) -> Result<Option<Element>> {
        // Checked before any work so that deep nesting fails fast.
        if self.stack.len() >= max_depth {
            return Err(ParseError::TooDeep(max_depth));
        }
        let tok = utf8(bytes)?;
        let scope_len = self.scope.len();
        // Parse into a reused buffer, then copy out with the exact capacity:
        // one allocation instead of one per doubling.
        self.attr_buf.clear();
        let (qname, empty) = parse_start_tag(tok, &mut self.scope, &mut self.attr_buf)?;
        if self.scope.len() + self.base.len() > MAX_NAMESPACES_IN_SCOPE {
            return Err(ParseError::TooManyNamespaces(MAX_NAMESPACES_IN_SCOPE));
        }
        let mut attrs: Vec<(String, String)> = self.attr_buf.drain(..).collect();
        let (prefix, local) = split_qname(qname);
        let ns = lookup(&self.scope, &self.base, prefix)
            .ok_or_else(|| ParseError::UndeclaredPrefix(prefix.to_owned()))?
            .to_owned();
        resolve_attr_prefixes(&mut attrs, &self.scope, &self.base)?;
        let el = Element { name: local.to_owned(), ns, attrs, children: Vec::new() };
        self.flush_text();
        if empty {
            self.scope.truncate(scope_len);
            return Ok(self.attach(el));
        }
        self.stack.push(Frame { el, prefix: prefix.to_owned(), scope_len });
        Ok(None)
    }

    /// Handles an end tag inside a stanza. Returns the stanza if this closed
    /// the top-level element.
    fn end(&mut self, bytes: &[u8]) -> Result<Option<Element>> {
        let name = end_tag_name(bytes)?;
        self.flush_text();
        let Some(frame) = self.stack.pop() else {
            return Err(ParseError::NotWellFormed("unexpected end tag"));
        };
        let matches = match name.split_once(':') {
            Some((prefix, local)) => same(prefix, &frame.prefix) && same(local, &frame.el.name),
            None => frame.prefix.is_empty() && same(name, &frame.el.name),
        };
        if !matches {
            return Err(ParseError::NotWellFormed("mismatched end tag"));
        }
        self.scope.truncate(frame.scope_len);
        Ok(self.attach(frame.el))
    }

    /// Adds a finished element to its parent, or returns it if top-level.
    fn attach(&mut self, el: Element) -> Option<Element> {
        match self.stack.last_mut() {
            Some(parent) => {
                parent.el.children.push(Node::Element(el));
                None
            }
            None => Some(el),
        }
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
/// bytes per step (SWAR): tokens are scanned on every read, so this loop is
/// most of the tokenizer's cost.
#[inline]
fn find_swar(data: &[u8], from: usize, hit: impl Fn(u64) -> u64, slow: impl Fn(u8) -> bool) -> Option<usize> {
    let hay = data.get(from..)?;
    let mut i = 0;
    while let Some(chunk) = hay.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let found = hit(u64::from_le_bytes(bytes));
        if found != 0 {
            return Some(from + i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
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
    if scope[tag_start..].iter().any(|b| b.prefix == prefix) {
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
    // Most elements have no prefixed attribute at all: skip the bookkeeping.
    if !attrs.iter().any(|(k, _)| k.contains(':')) {
        return Ok(());
    }
    let mut keep: Vec<(String, String)> = Vec::new();
    let mut expanded: Vec<(&str, &str)> = Vec::new();
    for (name, _) in attrs.iter() {
        let Some((prefix, local)) = name.split_once(':') else {
            continue;
        };
        if prefix == "xmlns" {
            // Only kept declarations look like this; parse_start_tag never
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

/// [`all_distinct`] for attribute names, without collecting them first.
fn attr_names_distinct(attrs: &[(String, String)]) -> bool {
    if attrs.len() <= 8 {
        attrs.iter().enumerate().all(|(i, (a, _))| attrs[..i].iter().all(|(b, _)| !same(a, b)))
    } else {
        let mut seen = HashSet::with_capacity(attrs.len());
        attrs.iter().all(|(a, _)| seen.insert(a.as_str()))
    }
}

/// Parses `<qname attr='v' ...>` or `<qname .../>`: pushes namespace
/// declarations onto `scope` and other attributes (unescaped, normalized)
/// onto `attrs`. Returns the qualified name and whether the tag self-closed.
fn parse_start_tag<'t>(
    tok: &'t str,
    scope: &mut Vec<Binding>,
    attrs: &mut Vec<(String, String)>,
) -> Result<(&'t str, bool)> {
    let b = tok.as_bytes();
    // The scanner guarantees `<` first and `>` last; inside a quoted value a
    // `/` can never be directly before the final `>`, so this is exact.
    let mut end = b.len() - 1;
    let empty = end >= 2 && b[end - 1] == b'/';
    if empty {
        end -= 1;
    }
    let inner = &tok[1..end];
    let ib = inner.as_bytes();
    let name_end = ib.iter().position(|&c| is_ws(c)).unwrap_or(ib.len());
    let qname = &inner[..name_end];
    if !is_qname(qname) || qname.starts_with("xmlns:") {
        return Err(ParseError::NotWellFormed("invalid element name"));
    }
    if qname.starts_with("xml:") {
        // Allowed by Namespaces in XML but meaningless in XMPP, and such an
        // element could not be written back out unprefixed.
        return Err(ParseError::ReservedNamespace);
    }
    let tag_scope = scope.len();
    let mut i = name_end;
    loop {
        let ws_start = i;
        while i < ib.len() && is_ws(ib[i]) {
            i += 1;
        }
        if i == ib.len() {
            break;
        }
        if i == ws_start {
            return Err(ParseError::NotWellFormed("missing whitespace before attribute"));
        }
        let name_start = i;
        while i < ib.len() && ib[i] != b'=' && !is_ws(ib[i]) {
            i += 1;
        }
        let name = &inner[name_start..i];
        if !is_qname(name) {
            return Err(ParseError::NotWellFormed("invalid attribute name"));
        }
        while i < ib.len() && is_ws(ib[i]) {
            i += 1;
        }
        if ib.get(i) != Some(&b'=') {
            return Err(ParseError::NotWellFormed("expected '=' after attribute name"));
        }
        i += 1;
        while i < ib.len() && is_ws(ib[i]) {
            i += 1;
        }
        let quote = match ib.get(i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(ParseError::NotWellFormed("attribute value must be quoted")),
        };
        let value_end = find_byte(quote, ib, i + 1).ok_or(ParseError::NotWellFormed("unterminated attribute value"))?;
        let raw = &inner[i + 1..value_end];
        i = value_end + 1;
        let mut value = String::with_capacity(raw.len());
        decode(raw.as_bytes(), &mut value, Mode::Attr)?;
        if name == "xmlns" {
            declare(scope, tag_scope, "", value)?;
        } else if let Some(prefix) = name.strip_prefix("xmlns:") {
            declare(scope, tag_scope, prefix, value)?;
        } else {
            attrs.push((name.to_owned(), value));
        }
    }
    if !attr_names_distinct(attrs) {
        return Err(ParseError::NotWellFormed("duplicate attribute"));
    }
    Ok((qname, empty))
}

/// The name in `</name>`, allowing whitespace before `>`.
fn end_tag_name(bytes: &[u8]) -> Result<&str> {
    let tok = utf8(bytes)?;
    let inner = &tok[2..tok.len() - 1];
    let name = inner.trim_end_matches([' ', '\t', '\n', '\r']);
    if name.is_empty() || name.bytes().any(is_ws) {
        return Err(ParseError::NotWellFormed("malformed end tag"));
    }
    Ok(name)
}

/// Validates and handles the XML declaration. quick-xml does the parsing of
/// its pseudo-attributes.
fn parse_decl(bytes: &[u8]) -> Result<()> {
    use quick_xml::events::Event;
    let tok = utf8(bytes)?;
    let mut reader = quick_xml::Reader::from_str(tok);
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
        Err(_) => Err(ParseError::NotWellFormed("malformed XML declaration")),
    }
}

/// What kind of character data [`decode`] handles.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Element content: references, end-of-line handling, no `]]>`.
    Text,
    /// Attribute value: references, whitespace normalized to spaces, no `<`.
    Attr,
    /// CDATA section content: literal apart from end-of-line handling.
    CData,
}

/// Validates (UTF-8, XML `Char`) and unescapes `raw` into `out`, in one pass
/// that copies unchanged runs as whole slices.
fn decode(raw: &[u8], out: &mut String, mode: Mode) -> Result<()> {
    let s = utf8(raw)?;
    let b = raw;
    let special = match mode {
        Mode::Text => &TEXT_SPECIAL,
        Mode::Attr => &ATTR_SPECIAL,
        Mode::CData => &CDATA_SPECIAL,
    };
    let mut i = 0;
    let mut last = 0;
    loop {
        // Tight skip over ordinary bytes; only flagged ones reach the match.
        while i < b.len() && !special[usize::from(b[i])] {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        match b[i] {
            b'&' if mode != Mode::CData => {
                out.push_str(&s[last..i]);
                let semi = find_byte(b';', b, i + 1).ok_or(ParseError::NotWellFormed("unterminated reference"))?;
                resolve_reference(&s[i + 1..semi], out)?;
                i = semi + 1;
                last = i;
            }
            b'\r' => {
                // XML 1.0 §2.11: CR LF and lone CR become LF; in attributes
                // §3.3.3 then turns it into a space.
                out.push_str(&s[last..i]);
                out.push(if mode == Mode::Attr { ' ' } else { '\n' });
                i += if b.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                last = i;
            }
            b'\t' | b'\n' if mode == Mode::Attr => {
                out.push_str(&s[last..i]);
                out.push(' ');
                i += 1;
                last = i;
            }
            b'\t' | b'\n' => i += 1,
            b'<' if mode == Mode::Attr => {
                return Err(ParseError::NotWellFormed("'<' in attribute value"));
            }
            b'>' if mode == Mode::Text && i >= 2 && &b[i - 2..i] == b"]]" => {
                return Err(ParseError::NotWellFormed("']]>' in character data"));
            }
            0..=0x1F => return Err(ParseError::NotWellFormed("control character")),
            // U+FFFE and U+FFFF are not XML characters (UTF-8 EF BF BE/BF).
            0xEF if b.get(i + 1) == Some(&0xBF) && matches!(b.get(i + 2), Some(0xBE | 0xBF)) => {
                return Err(ParseError::NotWellFormed("non-character U+FFFE/U+FFFF"));
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[last..]);
    Ok(())
}

/// Bytes [`decode`] must look at, per mode: everything else is copied.
const fn special_bytes(mode: Mode) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'\r' as usize] = true;
    t[0xEF] = true;
    match mode {
        Mode::Text => {
            t[b'\t' as usize] = false;
            t[b'\n' as usize] = false;
            t[b'&' as usize] = true;
            t[b'>' as usize] = true;
        }
        Mode::Attr => {
            t[b'&' as usize] = true;
            t[b'<' as usize] = true;
        }
        Mode::CData => {
            t[b'\t' as usize] = false;
            t[b'\n' as usize] = false;
        }
    }
    t
}

static TEXT_SPECIAL: [bool; 256] = special_bytes(Mode::Text);
static ATTR_SPECIAL: [bool; 256] = special_bytes(Mode::Attr);
static CDATA_SPECIAL: [bool; 256] = special_bytes(Mode::CData);

/// Appends the replacement of `&name;`: one of the five predefined entities
/// or a character reference. Anything else would need a DTD, which RFC 6120
/// forbids, so it is refused without any expansion.
fn resolve_reference(name: &str, out: &mut String) -> Result<()> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            if let Some(num) = name.strip_prefix('#') {
                char_reference(num)?
            } else if is_name(name) {
                let mut name = name.to_owned();
                name.truncate(name.floor_char_boundary(64));
                return Err(ParseError::UndefinedEntity(name));
            } else {
                return Err(ParseError::NotWellFormed("malformed reference"));
            }
        }
    };
    out.push(c);
    Ok(())
}

/// `&#NNN;` / `&#xHHH;` (the part after `#`).
fn char_reference(num: &str) -> Result<char> {
    let (digits, radix) = match num.strip_prefix('x') {
        Some(hex) => (hex, 16),
        None => (num, 10),
    };
    let bad = ParseError::NotWellFormed("invalid character reference");
    // `from_str_radix` alone would accept a sign.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad);
    }
    match u32::from_str_radix(digits, radix).ok().and_then(char::from_u32) {
        Some(c) if is_xml_char(c) => Ok(c),
        _ => Err(bad),
    }
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
    let mut need_start = true;
    let mut seen_colon = false;
    for &c in s.as_bytes() {
        let Some(&class) = ASCII_NAME.get(usize::from(c)) else {
            return is_qname_unicode(s);
        };
        match class {
            2 => need_start = false,
            1 if !need_start => {}
            3 if !need_start && !seen_colon => {
                seen_colon = true;
                need_start = true;
            }
            _ => return false,
        }
    }
    !need_start
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
}
