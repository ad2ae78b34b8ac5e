//! Who may open a connection: `max_connections` per listener and
//! `max_connections_per_ip` per source address.
//!
//! A listener holds one [`Admission`]; each connection (a TCP connection, a
//! WebSocket, a BOSH session) holds an [`Admitted`] for as long as it lives,
//! and dropping it gives the place back. A connection over a limit is
//! refused by its transport with a clear error (`<policy-violation/>` on a
//! stream, HTTP 503), never left hanging.
//!
//! IPv6 sources count per /64 network: one host usually holds a whole /64,
//! so counting single addresses would let it open a limit's worth from each.
//! IPv4-mapped IPv6 addresses count as the IPv4 address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::ext::util::source_of;

/// A listener's limits; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many connections to this listener")]
    Listener,
    #[error("too many connections from this address")]
    Address,
}

/// The live connections of one listener.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Live connections per source; an entry goes when its count reaches 0,
    /// so the map never holds more entries than there are connections.
    by_source: HashMap<IpAddr, usize>,
    refused: u64,
}

/// One admitted connection; its place is given back when this drops.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    source: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(src) = self.source {
            if let Some(n) = c.by_source.get_mut(&src) {
                *n -= 1;
                if *n == 0 {
                    c.by_source.remove(&src);
                }
            }
        }
    }
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Admission { limits, counts: Mutex::new(Counts::default()) })
    }

    /// No limits at all (tests, internal listeners).
    pub fn unlimited() -> Arc<Self> {
        Self::new(ConnectionLimits::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a connection from `peer` (unknown for some proxied
    /// HTTP requests: then only the listener's limit applies).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Admitted, Refused> {
        let mut c = self.lock();
        if self.limits.max_connections.is_some_and(|max| c.total >= max) {
            c.refused += 1;
            return Err(Refused::Listener);
        }
        let source = peer.map(source_of);
        if let (Some(src), Some(max)) = (source, self.limits.max_connections_per_ip) {
            if c.by_source.get(&src).copied().unwrap_or(0) >= max {
                c.refused += 1;
                return Err(Refused::Address);
            }
        }
        c.total += 1;
        if let Some(src) = source {
            *c.by_source.entry(src).or_insert(0) += 1;
        }
        Ok(Admitted { admission: self.clone(), source })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_listener_limit_counts_every_source_and_places_come_back() {
        let a = Admission::new(ConnectionLimits { max_connections: Some(2), max_connections_per_ip: None });
        let one = a.admit(ip("10.0.0.1")).unwrap();
        let _two = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refused::Listener);
        drop(one);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
        assert_eq!(a.refused(), 1);
    }

    #[test]
    fn the_per_address_limit_leaves_other_addresses_alone() {
        let a = Admission::new(ConnectionLimits { max_connections: None, max_connections_per_ip: Some(2) });
        let held: Vec<_> = (0..2).map(|_| a.admit(ip("192.0.2.7")).unwrap()).collect();
        assert_eq!(a.admit(ip("192.0.2.7")).unwrap_err(), Refused::Address);
        assert_eq!(a.admit(ip("::ffff:192.0.2.7")).unwrap_err(), Refused::Address, "mapped IPv4 is the same source");
        assert!(a.admit(ip("192.0.2.8")).is_ok());
        assert!(a.admit(None).is_ok(), "an unknown source meets only the listener's limit");
        drop(held);
        assert!(a.admit(ip("192.0.2.7")).is_ok());
        assert_eq!(a.lock().by_source.len(), 0, "entries go with their last connection");
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let a = Admission::new(ConnectionLimits { max_connections: None, max_connections_per_ip: Some(1) });
        let _x = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(a.admit(ip("2001:db8:1:2::ffff")).unwrap_err(), Refused::Address);
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
    }
}
