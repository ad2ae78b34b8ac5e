//! The stanza tree and its serializer: the subset of XML 1.0 with Namespaces
//! in XML 1.0 that RFC 6120 §11 allows on an XMPP stream.
//!
//! An [`Element`] carries its *resolved* namespace, never a prefix: prefixes
//! are a property of one serialization, not of the data, so two stanzas that
//! differ only in prefixes compare equal. The serializer therefore writes
//! every element unprefixed and declares the default namespace wherever it
//! changes ([`Element::write_to`]).
//!
//! Attributes keep their qualified names (`xml:lang` stays `xml:lang`).
//! Namespace declarations are not attributes, with one exception: when an
//! attribute uses a prefix other than `xml`, the parser keeps the matching
//! `xmlns:prefix` declaration on that same element, because without it the
//! attribute could not be written back out (the tree has nowhere else to
//! remember what the prefix meant).

use std::fmt;

/// One XML element with a resolved namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Element {
    /// Local name (no prefix).
    pub name: String,
    /// Resolved namespace URI; empty for "no namespace".
    pub ns: String,
    /// Attributes in document order, values unescaped. See the module docs
    /// for how prefixed attributes are represented.
    pub attrs: Vec<(String, String)>,
    /// Child nodes in document order.
    pub children: Vec<Node>,
}

/// A child of an [`Element`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data, unescaped. The parser merges adjacent text, CDATA and
    /// references into one node and never produces an empty one.
    Text(String),
}

/// Deepest nesting of elements a deserialized tree may have (from another
/// node or data center; the stream parser has its own, smaller `max_depth`).
/// Each level is a recursive call, so without a bound a few bytes per level
/// of a hostile frame would overflow the stack.
pub const MAX_DESERIALIZED_DEPTH: usize = 256;

thread_local! {
    static DESERIALIZE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of nesting while a tree is deserialized; the level is given back on drop.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Option<DepthGuard> {
        DESERIALIZE_DEPTH.with(|d| {
            let now = d.get();
            (now < MAX_DESERIALIZED_DEPTH).then(|| {
                d.set(now + 1);
                DepthGuard
            })
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DESERIALIZE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// [`Node`] as serde derives it: the same encoding, read under a [`DepthGuard`].
#[derive(serde::Deserialize)]
#[serde(rename = "Node")]
enum NodeRepr {
    Element(Element),
    Text(String),
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        let Some(_level) = DepthGuard::enter() else {
            return Err(serde::de::Error::custom(format!(
                "elements nested deeper than {MAX_DESERIALIZED_DEPTH} levels"
            )));
        };
        Ok(match NodeRepr::deserialize(d)? {
            NodeRepr::Element(e) => Node::Element(e),
            NodeRepr::Text(t) => Node::Text(t),
        })
    }
}

impl Node {
    /// The element, if this node is one.
    pub fn as_element(&self) -> Option<&Element> {
        match self {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        }
    }

    /// The text, if this node is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Node::Element(_) => None,
            Node::Text(t) => Some(t),
        }
    }
}

impl Element {
    /// About how many bytes of memory this element holds: its strings, and
    /// the bookkeeping of each element, attribute and child. Walks the tree
    /// without recursion, so any depth is safe.
    pub fn weight(&self) -> usize {
        const ELEMENT: usize = std::mem::size_of::<Element>();
        const ATTR: usize = std::mem::size_of::<(String, String)>();
        const NODE: usize = std::mem::size_of::<Node>();
        let mut total = 0usize;
        let mut stack = vec![self];
        while let Some(el) = stack.pop() {
            total = total.saturating_add(ELEMENT + el.name.len() + el.ns.len());
            for (k, v) in &el.attrs {
                total = total.saturating_add(ATTR + k.len() + v.len());
            }
            for child in &el.children {
                total = total.saturating_add(NODE);
                match child {
                    Node::Element(e) => stack.push(e),
                    Node::Text(t) => total = total.saturating_add(t.len()),
                }
            }
        }
        total
    }

    /// An element without attributes or children.
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element { name: name.into(), ns: ns.into(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Value of the attribute with this qualified name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Sets an attribute, replacing an existing one of the same name in place
    /// (so attribute order stays stable).
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let idx = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(idx).1)
    }

    /// Builder form of [`Element::set_attr`].
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder form of [`Element::push_child`].
    pub fn with_child(mut self, child: Element) -> Self {
        self.push_child(child);
        self
    }

    /// Builder form of [`Element::push_text`].
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text);
        self
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// Appends text. Merges with a trailing text node and ignores empty text,
    /// so that built trees have the same shape as parsed ones (a serialized
    /// tree must re-parse to an equal tree).
    pub fn push_text(&mut self, text: impl Into<String>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    /// Child elements, skipping text.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(Node::as_element)
    }

    /// Mutable child elements, skipping text.
    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// First child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    /// Mutable first child element with this name and namespace.
    pub fn get_child_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.is(name, ns))
    }

    /// Whether a child element with this name and namespace exists.
    pub fn has_child(&self, name: &str, ns: &str) -> bool {
        self.get_child(name, ns).is_some()
    }

    /// Removes and returns the first child element with this name and
    /// namespace.
    pub fn remove_child(&mut self, name: &str, ns: &str) -> Option<Element> {
        let idx = self.children.iter().position(|n| matches!(n, Node::Element(e) if e.is(name, ns)))?;
        match self.children.remove(idx) {
            Node::Element(e) => Some(e),
            // Unreachable by the `position` predicate above; returning None
            // keeps this panic-free.
            Node::Text(_) => None,
        }
    }

    /// Concatenation of the direct text children (not of descendants: XMPP
    /// text-only elements like `<body/>` never nest markup).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Whether this element has this local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// Serializes this element into `out`.
    ///
    /// `parent_ns` is the default namespace in force where the element is
    /// written (for a stanza: the stream's content namespace); `xmlns='..'`
    /// is only emitted where the namespace differs from it, including
    /// `xmlns=''` for "no namespace" below a namespaced parent.
    ///
    /// Attribute values escape `& < > ' "` and also tab, LF and CR as
    /// character references, because a parser normalizes literal whitespace
    /// in attribute values to spaces (XML 1.0 §3.3.3) and the value would not
    /// survive a round trip otherwise. Text escapes `& < >` and CR (a literal
    /// CR would be turned into LF by end-of-line handling, XML 1.0 §2.11).
    ///
    /// An attribute literally named `xmlns` is skipped: the default
    /// namespace is governed by [`Element::ns`] alone. Prefixed attributes are
    /// written as named; their `xmlns:p` declaration is expected among the
    /// attributes (the parser keeps it there, see the module docs).
    ///
    /// Recursion depth equals tree depth, which the parser bounds
    /// ([`crate::parser::Limits::max_depth`]).
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_attr(out, &self.ns);
            out.push('\'');
        }
        for (k, v) in &self.attrs {
            if k == "xmlns" {
                continue;
            }
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            escape_attr(out, v);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_text(out, t),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serializes into a new string; see [`Element::write_to`].
    pub fn to_xml(&self, parent_ns: &str) -> String {
        let mut out = String::with_capacity(128);
        self.write_to(&mut out, parent_ns);
        out
    }
}

impl fmt::Display for Element {
    /// Serializes with an explicit namespace declaration on the root.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml(""))
    }
}

/// Appends `s` escaped for use as character data.
pub fn escape_text(out: &mut String, s: &str) {
    escape_with(out, s, |b| match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\r' => Some("&#xD;"),
        _ => None,
    });
}

/// Appends `s` escaped for use inside a single- or double-quoted attribute
/// value.
pub fn escape_attr(out: &mut String, s: &str) {
    escape_with(out, s, |b| match b {
        b'&' => Some("&amp;"),
        b'<' => Some("&lt;"),
        b'>' => Some("&gt;"),
        b'\'' => Some("&apos;"),
        b'"' => Some("&quot;"),
        b'\t' => Some("&#x9;"),
        b'\n' => Some("&#xA;"),
        b'\r' => Some("&#xD;"),
        _ => None,
    });
}

/// Copies unescaped runs as whole slices: most text needs no escaping at all,
/// and pushing slices is far cheaper than pushing characters.
#[inline]
fn escape_with(out: &mut String, s: &str, rep: impl Fn(u8) -> Option<&'static str>) {
    let mut last = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        // All escaped bytes are ASCII, so `i` is always a char boundary.
        if let Some(r) = rep(b) {
            out.push_str(&s[last..i]);
            out.push_str(r);
            last = i + 1;
        }
    }
    out.push_str(&s[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Element {
        Element::new("message", "jabber:client")
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "chat")
            .with_child(Element::new("body", "jabber:client").with_text("hi"))
            .with_child(Element::new("active", "http://jabber.org/protocol/chatstates"))
    }

    #[test]
    fn accessors() {
        let mut m = sample();
        assert_eq!(m.attr("to"), Some("juliet@example.com"));
        assert_eq!(m.attr("from"), None);
        m.set_attr("to", "romeo@example.net");
        assert_eq!(m.attrs.len(), 2);
        assert_eq!(m.attrs[0], ("to".into(), "romeo@example.net".into()));
        assert_eq!(m.remove_attr("type"), Some("chat".into()));
        assert_eq!(m.remove_attr("type"), None);
        assert!(m.has_child("body", "jabber:client"));
        assert!(!m.has_child("body", "jabber:server"));
        assert_eq!(m.get_child("body", "jabber:client").map(Element::text), Some("hi".to_string()));
        if let Some(b) = m.get_child_mut("body", "jabber:client") {
            b.push_text(" there");
        }
        assert_eq!(
            m.get_child("body", "jabber:client").map(|b| b.children.len()),
            Some(1),
            "push_text merges adjacent text"
        );
        assert_eq!(m.elements().count(), 2);
        let active = m.remove_child("active", "http://jabber.org/protocol/chatstates");
        assert!(active.is_some());
        assert_eq!(m.elements().count(), 1);
        assert!(m.is("message", "jabber:client"));
    }

    #[test]
    fn serialize_cases() {
        let cases: Vec<(Element, &str, &str)> = vec![
            (
                sample(),
                "jabber:client",
                "<message to='juliet@example.com' type='chat'><body>hi</body>\
                 <active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            ),
            (Element::new("a", "urn:a"), "", "<a xmlns='urn:a'/>"),
            (Element::new("a", "urn:a").with_child(Element::new("b", "")), "", "<a xmlns='urn:a'><b xmlns=''/></a>"),
            (
                Element::new("a", "").with_attr("v", "<&>'\"\t\n\r").with_text("<&>'\"\r\n"),
                "",
                "<a v='&lt;&amp;&gt;&apos;&quot;&#x9;&#xA;&#xD;'>&lt;&amp;&gt;'\"&#xD;\n</a>",
            ),
            (
                Element::new("a", "").with_attr("xml:lang", "en").with_text("héllo 😀"),
                "",
                "<a xml:lang='en'>héllo 😀</a>",
            ),
            (Element::new("a", "u").with_attr("xmlns", "ignored"), "u", "<a/>"),
        ];
        for (el, parent, want) in cases {
            assert_eq!(el.to_xml(parent), want);
        }
    }

    #[test]
    fn empty_text_is_ignored() {
        let e = Element::new("a", "").with_text("");
        assert!(e.children.is_empty());
        assert_eq!(e.to_xml(""), "<a/>");
    }
}
