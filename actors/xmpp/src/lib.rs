//! IO-free XMPP protocol pieces.
//!
//! # Layout
//! Bytes from a socket pass through this crate in this order:
//! - [`parser`] turns bytes into [`parser::StreamEvent`]s: the stream header,
//!   stanzas as [`element::Element`] trees with resolved namespaces, and the
//!   stream end. Partial input is normal: the parser simply asks for more.
//! - [`element`] is the stanza tree and its escaping serializer.
//! - [`stanza`] reads addressing and kinds off an element.
//! - [`jid`] parses JIDs through the `jid` crate and makes domains canonical.
//! - [`sasl`] holds the SASL mechanisms (PLAIN, SCRAM-* and their -PLUS
//!   variants) as step functions, server and client side.
//! - [`error`] names every stream and stanza error condition, and is the one
//!   place that turns them into XML.
//! - [`caps`] checks XEP-0115 entity capabilities (a disco#info answer against its `ver`).
//! - [`component`] is XEP-0114's handshake and stanza namespace.
//! - [`ns`] holds the namespaces.
//!
//! **Architecture Invariant:** this crate does no IO and knows nothing of
//! tokio, actix, Raft, Redis or SQL.
#![forbid(unsafe_code)]

pub mod caps;
pub mod component;
pub mod element;
pub mod error;
pub mod jid;
pub mod ns;
pub mod parser;
pub mod s2s;
pub mod sasl;
pub mod sm;
pub mod stanza;
