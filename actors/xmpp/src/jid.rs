//! XMPP addresses (RFC 7622), parsed by the `jid` crate and made canonical.
//!
//! The `jid` crate applies the stringprep profiles (nodeprep, nameprep,
//! resourceprep), which among other things lowercases the domain, but it
//! keeps IDNA A-labels (`xn--…`) as they were sent. RFC 7622 §3.2 says a
//! domainpart containing A-labels is compared after converting them to
//! U-labels; doing that once at parse time means `Jid` equality, hashing and
//! routing-table lookups all agree that `bücher.example` and
//! `xn--bcher-kva.example` are the same server.

pub use jid::{BareJid, DomainPart, FullJid, Jid, NodePart, ResourcePart};

/// Cheap bare-JID operations. The `jid` crate's `to_bare` rebuilds the string
/// through `format!` for every call; a JID's canonical string already starts
/// with its bare form, so a copy cut at the resource does the same work with
/// one allocation, and a comparison needs none.
pub trait Bare {
    /// The bare JID (`node@domain` or `domain`).
    fn bare(&self) -> BareJid;
    /// Whether both have the same bare JID.
    fn same_bare(&self, other: &Jid) -> bool;
    /// The bare JID's string, borrowed from this one's (no allocation).
    fn bare_str(&self) -> &str;
}

impl Bare for Jid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }

    fn same_bare(&self, other: &Jid) -> bool {
        self.node() == other.node() && self.domain() == other.domain()
    }

    fn bare_str(&self) -> &str {
        let s = self.as_str();
        match self.resource() {
            // The canonical string is `bare/resource`.
            Some(r) => &s[..s.len() - r.as_str().len() - 1],
            None => s,
        }
    }
}

/// Why a string is not an acceptable JID.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    /// The input was empty.
    #[error("empty JID")]
    Empty,
    /// Rejected by the `jid` crate (syntax, stringprep or length).
    #[error("invalid JID: {0}")]
    Invalid(#[from] jid::Error),
    /// An A-label in the domain did not decode to a valid U-label.
    #[error("invalid internationalized domain name")]
    Idna,
    /// A bare JID was required but a resource was present.
    #[error("expected a bare JID, found a resource")]
    NotBare,
    /// A full JID was required but no resource was present.
    #[error("expected a full JID, no resource found")]
    NotFull,
}

/// Whether any label of `domain` is an IDNA A-label. Checked first so the
/// common all-ASCII, no-punycode domain costs one scan and no allocation.
fn has_a_label(domain: &str) -> bool {
    domain.split('.').any(|l| l.len() >= 4 && l.as_bytes()[..4].eq_ignore_ascii_case(b"xn--"))
}

/// The U-label form of an already validated domain, if it differs.
fn unicode_domain(domain: &str) -> Result<Option<String>, JidError> {
    if !has_a_label(domain) {
        return Ok(None);
    }
    let (unicode, result) = idna::domain_to_unicode(domain);
    result.map_err(|_| JidError::Idna)?;
    // Run the result through the same validation as any other domain, so the
    // canonical form is guaranteed to be one the `jid` crate accepts.
    let part = DomainPart::new(&unicode)?;
    Ok(Some(part.into_owned().into_inner()))
}

/// Parses a JID and makes its domain canonical (U-labels, lowercase, no
/// trailing dot).
pub fn parse_jid(s: &str) -> Result<Jid, JidError> {
    if s.is_empty() {
        return Err(JidError::Empty);
    }
    let jid = Jid::new(s)?;
    match unicode_domain(jid.domain().as_str())? {
        None => Ok(jid),
        Some(domain) => {
            let domain = DomainPart::new(&domain)?;
            Ok(Jid::from_parts(jid.node(), &domain, jid.resource()))
        }
    }
}

/// Parses a JID that must not have a resource.
pub fn parse_bare(s: &str) -> Result<BareJid, JidError> {
    parse_jid(s)?.try_into().map_err(|_| JidError::NotBare)
}

/// Parses a JID that must have a resource.
pub fn parse_full(s: &str) -> Result<FullJid, JidError> {
    parse_jid(s)?.try_into().map_err(|_| JidError::NotFull)
}

/// The canonical form of a bare domain name, as used for virtual hosts and
/// server-to-server routing.
pub fn canonical_domain(s: &str) -> Result<String, JidError> {
    if s.is_empty() {
        return Err(JidError::Empty);
    }
    let part = DomainPart::new(s)?;
    match unicode_domain(part.as_str())? {
        Some(d) => Ok(d),
        None => Ok(part.into_owned().into_inner()),
    }
}

/// The JID of a bare domain (a server or service address).
pub fn domain_jid(domain: &str) -> Result<BareJid, JidError> {
    parse_bare(&canonical_domain(domain)?)
}

/// `bare/resource`, with resourceprep applied to `resource`.
pub fn full_jid(bare: &BareJid, resource: &str) -> Result<FullJid, JidError> {
    Ok(bare.with_resource_str(resource)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_is_the_crate_s_to_bare() {
        for j in ["a@b/c", "a@b", "b", "b/c", "ü@bücher.example/r/s", "xn--bcher-kva.example/x"] {
            let jid = parse_jid(j).unwrap();
            assert_eq!(jid.bare(), jid.to_bare(), "{j}");
            assert_eq!(jid.bare().to_string(), jid.to_bare().to_string(), "{j}");
            assert!(jid.same_bare(&Jid::from(jid.to_bare())), "{j}");
            assert_eq!(jid.bare_str(), jid.to_bare().as_str(), "{j}");
        }
        let full = parse_full("a@b/c").unwrap();
        assert_eq!(full.bare_str(), "a@b");
        assert_eq!(full.bare(), parse_bare("a@b").unwrap());
        assert!(!parse_jid("a@b/c").unwrap().same_bare(&parse_jid("a@c/c").unwrap()));
        assert!(!parse_jid("a@b").unwrap().same_bare(&parse_jid("b").unwrap()));
        assert!(!parse_jid("a@b").unwrap().same_bare(&parse_jid("x@b").unwrap()));
    }

    #[test]
    fn parse_cases() {
        // (input, expected canonical string or None for error)
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("EXAMPLE.com", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("user@example.com", Some("user@example.com")),
            ("User@Example.COM/Res", Some("user@example.com/Res")),
            ("bücher.example", Some("bücher.example")),
            ("xn--bcher-kva.example", Some("bücher.example")),
            ("XN--BCHER-KVA.example", Some("bücher.example")),
            ("juliet@xn--bcher-kva.example/balcony", Some("juliet@bücher.example/balcony")),
            ("BÜCHER.example", Some("bücher.example")),
            ("[::1]", Some("[::1]")),
            ("127.0.0.1", Some("127.0.0.1")),
            ("", None),
            ("@example.com", None),
            ("user@", None),
            ("user@example.com/", None),
            ("a@b@c", None),
            ("xn--zz.example", None),
            ("exa mple.com", None),
        ];
        for (input, want) in cases {
            let got = parse_jid(input).map(|j| j.to_string()).ok();
            assert_eq!(got.as_deref(), *want, "input {input:?}");
        }
    }

    #[test]
    fn a_labels_and_u_labels_are_equal() {
        let a = parse_jid("romeo@xn--bcher-kva.example/x");
        let u = parse_jid("romeo@bücher.example/x");
        assert!(a.is_ok());
        assert_eq!(a, u);
        assert_eq!(canonical_domain("xn--bcher-kva.example"), canonical_domain("Bücher.Example"));
    }

    #[test]
    fn bare_and_full() {
        assert!(parse_bare("a@b").is_ok());
        assert_eq!(parse_bare("a@b/c"), Err(JidError::NotBare));
        assert!(parse_full("a@b/c").is_ok());
        assert_eq!(parse_full("a@b"), Err(JidError::NotFull));
        let bare = parse_bare("a@xn--bcher-kva.example").expect("bare");
        let full = full_jid(&bare, "phone").expect("full");
        assert_eq!(full.to_string(), "a@bücher.example/phone");
        assert_eq!(domain_jid("XN--bcher-kva.example.").map(|j| j.to_string()), Ok("bücher.example".to_string()));
        assert_eq!(canonical_domain(""), Err(JidError::Empty));
    }
}
