//! XML namespace names used by XMPP (RFC 6120 §4.8, §5–§8 and the XEPs the
//! server implements).
//!
//! Kept in one place so that a typo in a namespace is a compile error rather
//! than a stanza that silently never matches.

/// Stream namespace, bound to the `stream:` prefix (RFC 6120 §4.8.1).
pub const STREAM: &str = "http://etherx.jabber.org/streams";
/// Content namespace of client-to-server streams (RFC 6120 §4.8.2).
pub const CLIENT: &str = "jabber:client";
/// Content namespace of server-to-server streams (RFC 6120 §4.8.2).
pub const SERVER: &str = "jabber:server";
/// Content namespace of external component streams (XEP-0114).
pub const COMPONENT: &str = "jabber:component:accept";
/// STARTTLS negotiation (RFC 6120 §5).
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
/// SASL negotiation (RFC 6120 §6).
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Resource binding (RFC 6120 §7).
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// Legacy session establishment (RFC 3921 §3, kept optional by RFC 6121).
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// Stanza error conditions (RFC 6120 §8.3).
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// Stream error conditions (RFC 6120 §4.9).
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// Roster management (RFC 6121 §2).
pub const ROSTER: &str = "jabber:iq:roster";
/// Service discovery, information (XEP-0030).
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// Service discovery, items (XEP-0030).
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// Software version (XEP-0092).
pub const VERSION: &str = "jabber:iq:version";
/// XMPP ping (XEP-0199).
pub const PING: &str = "urn:xmpp:ping";
/// Entity time (XEP-0202).
pub const TIME: &str = "urn:xmpp:time";
/// vCard storage (XEP-0054).
pub const VCARD: &str = "vcard-temp";
/// Private XML storage (XEP-0049).
pub const PRIVATE: &str = "jabber:iq:private";
/// In-band registration (XEP-0077).
pub const REGISTER: &str = "jabber:iq:register";
/// In-band registration stream feature (XEP-0077 §4).
pub const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
/// Delayed delivery (XEP-0203).
pub const DELAY: &str = "urn:xmpp:delay";
/// SASL channel-binding type capability (XEP-0440).
pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0388 Extensible SASL Profile (SASL2).
pub const SASL2: &str = "urn:xmpp:sasl:2";
/// XEP-0386 Bind 2.
pub const BIND2: &str = "urn:xmpp:bind:0";
/// XEP-0484 Fast Authentication Streamlining Tokens.
pub const FAST: &str = "urn:xmpp:fast:0";
/// The namespace bound to the `xml:` prefix by definition (Namespaces in XML
/// 1.0 §3); never declared on the wire.
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
/// Namespace of `xmlns` declarations themselves; may never be bound.
pub const XMLNS: &str = "http://www.w3.org/2000/xmlns/";
/// Data forms (XEP-0004).
pub const DATA_FORMS: &str = "jabber:x:data";
/// Entity capabilities (XEP-0115).
pub const CAPS: &str = "http://jabber.org/protocol/caps";
/// Stream management (XEP-0198).
pub const SM: &str = "urn:xmpp:sm:3";
/// Message carbons (XEP-0280).
pub const CARBONS: &str = "urn:xmpp:carbons:2";
/// Client state indication (XEP-0352).
pub const CSI: &str = "urn:xmpp:csi:0";
/// Message archive management (XEP-0313 v1.x).
pub const MAM: &str = "urn:xmpp:mam:2";
/// Result set management (XEP-0059).
pub const RSM: &str = "http://jabber.org/protocol/rsm";
/// Unique and stable stanza ids (XEP-0359).
pub const SID: &str = "urn:xmpp:sid:0";
/// Stanza forwarding (XEP-0297).
pub const FORWARD: &str = "urn:xmpp:forward:0";
/// Message processing hints (XEP-0334).
pub const HINTS: &str = "urn:xmpp:hints";
/// Blocking command (XEP-0191).
pub const BLOCKING: &str = "urn:xmpp:blocking";
/// Blocking command's application-specific errors (XEP-0191).
pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
/// Multi-user chat, user namespace (XEP-0045).
pub const MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// Chat state notifications (XEP-0085).
pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
/// Message delivery receipts (XEP-0184).
pub const RECEIPTS: &str = "urn:xmpp:receipts";
/// Chat markers (XEP-0333).
pub const CHAT_MARKERS: &str = "urn:xmpp:chat-markers:0";
/// MongooseIM's Inbox open extension.
pub const INBOX: &str = "erlang-solutions.com:xmpp:inbox:0";
/// Inbox conversation properties and actions.
pub const INBOX_CONVERSATION: &str = "erlang-solutions.com:xmpp:inbox:0#conversation";
