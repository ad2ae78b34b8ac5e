//! SASL `EXTERNAL` with a client certificate (XEP-0178): who the certificate
//! lets the client log in as, without IO.
//!
//! The TLS layer verifies the certificate; this module only maps what it
//! names ([`CertIdentity`]: its `id-on-xmppAddr` subject alternative names,
//! OID 1.3.6.1.5.5.7.8.5, and its subject common name) and the
//! authorization identity the client sent to an account of the stream's
//! domain, with the checks MongooseIM's `auth.sasl_external` lists, tried in
//! order until one succeeds:
//!
//! - [`ExternalCheck::Standard`]: the xmppAddrs. One and no authzid: that
//!   one. An authzid: it must be one of them. Several and no authzid:
//!   `invalid-authzid` (the client must say which). None: `not-authorized`.
//!   The chosen JID must be an account (`user@domain`) of the stream's domain.
//!   Unlike MongooseIM, an authzid equal to the only xmppAddr is accepted
//!   (XEP-0178 §3.2 lets a client send its own identity).
//! - [`ExternalCheck::CommonName`]: the subject's common name is the
//!   username; an authzid must then be `CN@domain`, else `invalid-authzid`.
//!
//! When every check fails, the last one's failure is the answer. Whether the
//! account exists is the caller's question.

use super::SaslFailure;
use crate::jid::parse_bare;

/// One way of mapping a certificate to an account (`auth.sasl_external`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalCheck {
    Standard,
    CommonName,
}

/// What a verified client certificate names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Its `id-on-xmppAddr` names, as written.
    pub xmpp_addrs: Vec<String>,
    /// Its subject's common name.
    pub common_name: Option<String>,
    /// Its `dNSName` subject alternative names, as written.
    pub dns_names: Vec<String>,
}

/// Whether a verified certificate names the server `domain` (RFC 6120
/// §13.7.2.1, RFC 6125 §6.4): a `dNSName` equal to it, or a wildcard in the
/// left-most label only (`*.example.com` names `chat.example.com`, not
/// `example.com` nor `a.chat.example.com`); an `id-on-xmppAddr` equal to
/// it; the subject's common name only when the certificate has neither.
/// Names compare canonically (case, IDNA).
pub fn names_server(id: &CertIdentity, domain: &str) -> bool {
    let Ok(domain) = crate::jid::canonical_domain(domain) else { return false };
    let canon = |n: &str| crate::jid::canonical_domain(n.trim_end_matches('.')).ok();
    let dns = id.dns_names.iter().any(|n| match n.strip_prefix("*.") {
        Some(parent) => match (canon(parent), domain.split_once('.')) {
            (Some(parent), Some((label, rest))) => !label.is_empty() && rest == parent,
            _ => false,
        },
        None => canon(n).as_deref() == Some(domain.as_str()),
    });
    let xmpp = id.xmpp_addrs.iter().any(|a| canon(a).as_deref() == Some(domain.as_str()));
    let cn = id.dns_names.is_empty()
        && id.xmpp_addrs.is_empty()
        && id.common_name.as_deref().and_then(canon).as_deref() == Some(domain.as_str());
    dns || xmpp || cn
}

/// The domain a server authenticates as with SASL EXTERNAL on a stream whose
/// header said `from` (XEP-0178 §3): the authorization identity, when sent,
/// must be that domain (`invalid-authzid`), and the certificate must name it
/// (`not-authorized`).
pub fn external_server(id: &CertIdentity, authzid: Option<&str>, from: Option<&str>) -> Result<String, SaslFailure> {
    let from = from.and_then(|f| crate::jid::canonical_domain(f).ok());
    let claimed = match authzid {
        Some(a) => crate::jid::canonical_domain(a).map_err(|_| SaslFailure::InvalidAuthzid)?,
        None => from.clone().ok_or(SaslFailure::InvalidAuthzid)?,
    };
    if from.as_ref().is_some_and(|f| *f != claimed) {
        return Err(SaslFailure::InvalidAuthzid);
    }
    if !names_server(id, &claimed) {
        return Err(SaslFailure::NotAuthorized);
    }
    Ok(claimed)
}

/// The username (localpart, as canonical as the JID library makes it) the
/// certificate logs the client in as on `domain`; `authzid` is what the
/// client sent (`None` for the empty response, "=").
pub fn external_username(
    id: &CertIdentity,
    authzid: Option<&str>,
    domain: &str,
    checks: &[ExternalCheck],
) -> Result<String, SaslFailure> {
    let mut last = SaslFailure::NotAuthorized;
    for check in checks {
        let outcome = match check {
            ExternalCheck::Standard => standard(id, authzid, domain),
            ExternalCheck::CommonName => common_name(id, authzid, domain),
        };
        match outcome {
            Ok(user) => return Ok(user),
            Err(f) => last = f,
        }
    }
    Err(last)
}

/// The localpart of `jid` when it is an account of `domain`.
fn account_of(jid: &str, domain: &str) -> Result<String, SaslFailure> {
    let bare = parse_bare(jid).map_err(|_| SaslFailure::NotAuthorized)?;
    let domain = crate::jid::canonical_domain(domain).map_err(|_| SaslFailure::NotAuthorized)?;
    match bare.node() {
        Some(user) if bare.domain().as_str() == domain => Ok(user.to_string()),
        _ => Err(SaslFailure::NotAuthorized),
    }
}

fn same_jid(a: &str, b: &str) -> bool {
    match (parse_bare(a), parse_bare(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn standard(id: &CertIdentity, authzid: Option<&str>, domain: &str) -> Result<String, SaslFailure> {
    let chosen = match (&id.xmpp_addrs[..], authzid) {
        ([], _) => return Err(SaslFailure::NotAuthorized),
        ([one], None) => one.as_str(),
        (_, None) => return Err(SaslFailure::InvalidAuthzid),
        ([one], Some(a)) if !same_jid(one, a) => return Err(SaslFailure::InvalidAuthzid),
        (addrs, Some(a)) => match addrs.iter().find(|x| same_jid(x, a)) {
            Some(x) => x.as_str(),
            None => return Err(SaslFailure::NotAuthorized),
        },
    };
    account_of(chosen, domain)
}

fn common_name(id: &CertIdentity, authzid: Option<&str>, domain: &str) -> Result<String, SaslFailure> {
    let Some(cn) = id.common_name.as_deref().filter(|cn| !cn.is_empty()) else {
        return Err(SaslFailure::InvalidAuthzid);
    };
    // The common name must make an account of the domain.
    let user = account_of(&format!("{cn}@{domain}"), domain).map_err(|_| SaslFailure::NotAuthorized)?;
    match authzid {
        None => Ok(user),
        Some(a) => match account_of(a, domain) {
            Ok(u) if u == user => Ok(user),
            _ => Err(SaslFailure::InvalidAuthzid),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ExternalCheck::{CommonName, Standard};
    use SaslFailure::{InvalidAuthzid, NotAuthorized};

    fn cert(addrs: &[&str], cn: Option<&str>) -> CertIdentity {
        CertIdentity {
            xmpp_addrs: addrs.iter().map(|s| s.to_string()).collect(),
            common_name: cn.map(str::to_owned),
            dns_names: Vec::new(),
        }
    }

    fn server(dns: &[&str], addrs: &[&str], cn: Option<&str>) -> CertIdentity {
        CertIdentity { dns_names: dns.iter().map(|s| s.to_string()).collect(), ..cert(addrs, cn) }
    }

    #[test]
    fn a_server_certificate_names_its_domains() {
        let c = server(&["example.com", "*.example.com"], &[], Some("ignored.example"));
        assert!(names_server(&c, "example.com"));
        assert!(names_server(&c, "EXAMPLE.com"));
        assert!(names_server(&c, "chat.example.com"));
        assert!(!names_server(&c, "a.chat.example.com"));
        assert!(!names_server(&c, "example.org"));
        assert!(!names_server(&c, "ignored.example"), "the CN counts only without SANs");
        assert!(!names_server(&server(&["*.example.com"], &[], None), "example.com"));
        assert!(names_server(&server(&[], &["xmpp.example"], None), "xmpp.example"));
        assert!(names_server(&server(&[], &[], Some("old.example")), "old.example"));
        assert!(!names_server(&server(&["*"], &[], None), "example"));
        assert!(!names_server(&server(&[], &[], None), "example.com"));
    }

    #[test]
    fn a_server_authenticates_as_the_domain_of_its_stream() {
        let c = server(&["a.example"], &[], None);
        assert_eq!(external_server(&c, None, Some("a.example")), Ok("a.example".into()));
        assert_eq!(external_server(&c, Some("A.example"), Some("a.example")), Ok("a.example".into()));
        assert_eq!(external_server(&c, Some("a.example"), None), Ok("a.example".into()));
        assert_eq!(external_server(&c, Some("b.example"), Some("a.example")), Err(InvalidAuthzid));
        assert_eq!(external_server(&c, None, None), Err(InvalidAuthzid));
        assert_eq!(external_server(&c, None, Some("b.example")), Err(NotAuthorized));
        assert_eq!(external_server(&c, Some("not a domain@@"), Some("a.example")), Err(InvalidAuthzid));
    }

    #[test]
    fn standard_uses_the_xmpp_addrs() {
        let s = |c: &CertIdentity, a| external_username(c, a, "example.com", &[Standard]);
        let one = cert(&["alice@example.com"], None);
        assert_eq!(s(&one, None), Ok("alice".into()));
        assert_eq!(s(&one, Some("alice@example.com")), Ok("alice".into()));
        assert_eq!(s(&one, Some("bob@example.com")), Err(InvalidAuthzid));
        let two = cert(&["alice@example.com", "bob@example.com"], None);
        assert_eq!(s(&two, None), Err(InvalidAuthzid));
        assert_eq!(s(&two, Some("bob@example.com")), Ok("bob".into()));
        assert_eq!(s(&two, Some("carol@example.com")), Err(NotAuthorized));
        // The domain must be the stream's; the JID must be an account.
        assert_eq!(s(&cert(&["alice@other.example"], None), None), Err(NotAuthorized));
        assert_eq!(s(&cert(&["example.com"], None), None), Err(NotAuthorized));
        assert_eq!(s(&cert(&["not a jid@@"], None), None), Err(NotAuthorized));
        assert_eq!(s(&cert(&[], Some("alice")), None), Err(NotAuthorized));
        // Domains compare canonically.
        assert_eq!(s(&cert(&["alice@EXAMPLE.com"], None), None), Ok("alice".into()));
    }

    #[test]
    fn common_name_applies_when_asked() {
        let both = [Standard, CommonName];
        let c = cert(&[], Some("carol"));
        assert_eq!(external_username(&c, None, "example.com", &[Standard]), Err(NotAuthorized));
        assert_eq!(external_username(&c, None, "example.com", &both), Ok("carol".into()));
        assert_eq!(external_username(&c, Some("carol@example.com"), "example.com", &both), Ok("carol".into()));
        assert_eq!(external_username(&c, Some("dave@example.com"), "example.com", &both), Err(InvalidAuthzid));
        // The xmppAddr wins when it settles it.
        let c = cert(&["alice@example.com"], Some("carol"));
        assert_eq!(external_username(&c, None, "example.com", &both), Ok("alice".into()));
        // A certificate naming nothing usable.
        assert_eq!(external_username(&cert(&[], None), None, "example.com", &both), Err(InvalidAuthzid));
        assert_eq!(external_username(&cert(&[], Some("a b")), None, "example.com", &[CommonName]), Err(NotAuthorized));
    }
}
