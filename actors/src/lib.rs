//! Sessions, the server's own processing, and the XMPP modules.
//!
//! # Layout
//! A client connection passes through these modules in order:
//! - [`c2s`] accepts the socket, reads bytes into the `meerkat-xmpp` parser
//!   and drives [`negotiation`] (a sans-IO state machine: STARTTLS, SASL,
//!   in-band registration, bind), looking up [`auth`] credentials when asked.
//! - At bind, [`session`] starts a `C2sSession` actor with a bounded mailbox;
//!   it stamps and routes what the client sends and writes what it receives.
//! - Stanzas for the server itself, for an account's bare JID, subscription
//!   presence and undeliverable messages go to [`server`], sharded workers
//!   that run the [`modules`] (roster, presence, offline, disco, vCard, …).
//! - [`services`] is what they all share: router, storage, accounts, settings.
//!
//! A connection reaches [`c2s`] as TCP bytes (RFC 6120, [`transport`]) or as
//! WebSocket messages the node upgraded (RFC 7395, [`websocket`]), or as
//! BOSH requests (XEP-0124/0206, [`bosh`]) that a bridge turns into the same
//! framed messages; from there on all take the same path.
//!
//! Services that run once per node, such as the XEP-0114 component listener,
//! are in [`node_services`], on the [`ext::Service`] boundary.
//!
//! **Architecture Invariant:** only [`c2s`], [`transport`] and the listeners
//! of [`node_services`] touch sockets ([`websocket`] gets messages through
//! channels, and [`bosh`] request bodies, never HTTP);
//! only the session actor writes to its client.
#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod bosh;
pub mod c2s;
pub mod client_cert;
pub mod ext;
pub mod instrument;
pub mod modules;
pub mod negotiation;
pub mod node_services;
pub mod server;
pub mod services;
pub mod session;
pub mod transport;
pub mod websocket;
