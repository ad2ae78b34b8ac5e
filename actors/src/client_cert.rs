//! What a client's certificate names, for SASL EXTERNAL (XEP-0178): its
//! `id-on-xmppAddr` subject alternative names (OID 1.3.6.1.5.5.7.8.5, a
//! UTF8String each) and its subject's common name. The TLS layer verifies
//! the certificate (chain, validity, key usage); this only reads it, with
//! a maintained X.509 parser, and
//! [`meerkat_xmpp::sasl::external::external_username`] decides who it is.

use meerkat_xmpp::sasl::external::CertIdentity;
use x509_parser::extensions::GeneralName;

/// `id-on-xmppAddr` (RFC 6120 §13.7.1.4).
const ID_ON_XMPPADDR: &str = "1.3.6.1.5.5.7.8.5";

/// What the DER certificate names; an error when it does not parse.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut xmpp_addrs = Vec::new();
    let san = cert.subject_alternative_name().map_err(|e| format!("bad subjectAltName: {e}"))?;
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        if let GeneralName::OtherName(oid, value) = name {
            if oid.to_id_string() == ID_ON_XMPPADDR {
                match explicit_utf8(value) {
                    Some(addr) => xmpp_addrs.push(addr.to_owned()),
                    None => return Err("an xmppAddr that is not a UTF8String".into()),
                }
            }
        }
    }
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    Ok(CertIdentity { xmpp_addrs, common_name })
}

/// The value of an otherName: `[0] EXPLICIT UTF8String`, in DER.
fn explicit_utf8(der: &[u8]) -> Option<&str> {
    let (tag, inner, rest) = tlv(der)?;
    if tag != 0xA0 || !rest.is_empty() {
        return None;
    }
    let (tag, text, rest) = tlv(inner)?;
    if tag != 0x0C || !rest.is_empty() {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// One DER tag-length-value: its tag, its content and what follows.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: at most 4 length bytes (an xmppAddr is far shorter).
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(addrs: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = addrs
            .iter()
            .map(|a| SanType::OtherName((vec![1, 3, 6, 1, 5, 5, 7, 8, 5], (*a).into())))
            .chain([SanType::DnsName("client.example.com".try_into().unwrap())])
            .collect();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_xmpp_addrs_and_the_common_name() {
        let id = identity_of(&cert(&["alice@example.com", "bob@example.com"], Some("carol"))).unwrap();
        assert_eq!(id.xmpp_addrs, ["alice@example.com", "bob@example.com"]);
        assert_eq!(id.common_name.as_deref(), Some("carol"));
        let id = identity_of(&cert(&[], None)).unwrap();
        assert!(id.xmpp_addrs.is_empty() && id.common_name.is_none());
        // Long names take the long form of DER lengths.
        let long = format!("{}@example.com", "a".repeat(300));
        assert_eq!(identity_of(&cert(&[&long], None)).unwrap().xmpp_addrs, [long]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(identity_of(b"").is_err());
        assert!(identity_of(&[0x30, 0x82, 0xFF, 0xFF, 0x01]).is_err());
        let mut der = cert(&["alice@example.com"], None);
        der.truncate(der.len() / 2);
        assert!(identity_of(&der).is_err());
        assert_eq!(tlv(&[0xA0, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(explicit_utf8(&[0xA0, 0x03, 0x0C, 0x01, 0xFF]), None, "not UTF-8");
    }
}
