//! What a client's certificate names, for SASL EXTERNAL (XEP-0178): its
//! `id-on-xmppAddr` subject alternative names (OID 1.3.6.1.5.5.7.8.5, a
//! UTF8String each) and its subject's common name. The TLS layer verifies
//! the certificate (chain, validity, key usage; [`ClientCerts`] says how a
//! listener asks for one and judges it); [`identity_of`] only reads it,
//! with a maintained X.509 parser, and
//! [`meerkat_xmpp::sasl::external::external_username`] decides who it is.

use std::sync::Arc;

use meerkat_xmpp::sasl::external::CertIdentity;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;

/// `id-on-xmppAddr` (RFC 6120 §13.7.1.4).
const ID_ON_XMPPADDR: &str = "1.3.6.1.5.5.7.8.5";

/// What the DER certificate names; an error when it does not parse.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut xmpp_addrs = Vec::new();
    let mut dns_names = Vec::new();
    let san = cert.subject_alternative_name().map_err(|e| format!("bad subjectAltName: {e}"))?;
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        if let GeneralName::DNSName(dns) = name {
            dns_names.push((*dns).to_owned());
        }
        if let GeneralName::OtherName(oid, value) = name {
            if oid.to_id_string() == ID_ON_XMPPADDR {
                match explicit_utf8(value) {
                    Some(addr) => xmpp_addrs.push(addr),
                    None => return Err("an xmppAddr that is not a UTF8String".into()),
                }
            }
        }
    }
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    Ok(CertIdentity { xmpp_addrs, common_name, dns_names })
}

/// The value of an otherName: `[0] EXPLICIT UTF8String`, in DER.
fn explicit_utf8(der: &[u8]) -> Option<String> {
    use x509_parser::asn1_rs::{FromDer as _, TaggedExplicit, Utf8String};
    let (rest, tagged) = TaggedExplicit::<Utf8String, x509_parser::asn1_rs::Error, 0>::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    Some(tagged.into_inner().string())
}

/// `tls.verify_mode` of a listener (MongooseIM's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Client certificates are asked for and must chain to `tls.cacertfile`.
    #[default]
    Peer,
    /// As `peer`, and a self-signed certificate is accepted as well.
    SelfsignedPeer,
    /// No client certificate is asked for.
    None,
}

/// How a listener asks for client certificates and decides which are good.
///
/// A certificate is asked for during the TLS handshake but never required,
/// and one that does not verify does not end the handshake: the client may
/// still log in with a password, and SASL EXTERNAL, which it alone allows,
/// is then not offered (and answered `<not-authorized/>` if tried). The
/// handshake checks only that the client holds the certificate's key;
/// [`ClientCerts::identity`] checks the chain (to `tls.cacertfile`, or the
/// certificate itself under `selfsigned_peer`), validity dates and key usage
/// with webpki, after the handshake.
pub struct ClientCerts {
    chain: Option<Arc<dyn ClientCertVerifier>>,
    selfsigned: bool,
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCerts").field("ca", &self.chain.is_some()).field("selfsigned", &self.selfsigned).finish()
    }
}

impl ClientCerts {
    /// The policy for `mode` with these CA certificates; `None` when no
    /// client certificate is to be asked for (`none`, or `peer` without a CA).
    pub fn new(
        mode: VerifyMode,
        cacerts: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Option<Arc<ClientCerts>>, String> {
        if mode == VerifyMode::None || (mode == VerifyMode::Peer && cacerts.is_empty()) {
            return Ok(None);
        }
        let (chain, hints) = if cacerts.is_empty() {
            (None, Vec::new())
        } else {
            let mut roots = RootCertStore::empty();
            for c in cacerts {
                roots.add(c).map_err(|e| format!("a CA certificate cannot be used: {e}"))?;
            }
            let hints = roots.subjects();
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("client certificate verifier: {e}"))?;
            (Some(v), hints)
        };
        Ok(Some(Arc::new(ClientCerts { chain, selfsigned: mode == VerifyMode::SelfsignedPeer, provider, hints })))
    }

    /// The verifier for the listener's rustls configuration: it asks for a
    /// certificate and checks only the client's proof that it holds the key.
    pub fn handshake_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Requesting(self.clone()))
    }

    /// What the client's certificate on this connection names, when it
    /// presented one that verifies now; `None` otherwise (the reason is logged).
    pub fn identity(&self, conn: &rustls::ServerConnection) -> Option<CertIdentity> {
        let (end, intermediates) = conn.peer_certificates()?.split_first()?;
        let now = UnixTime::now();
        let chained = match &self.chain {
            Some(v) => v.verify_client_cert(end, intermediates, now).map_err(|e| e.to_string()),
            None => Err("no CA is configured".to_owned()),
        };
        let verified = match chained {
            Ok(_) => Ok(()),
            Err(e) if self.selfsigned => self.self_signed(end, now).map_err(|e2| format!("{e}; not self-signed: {e2}")),
            Err(e) => Err(e),
        };
        if let Err(e) = verified {
            tracing::debug!(error = %e, "client certificate not verified");
            return None;
        }
        match identity_of(end) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate unreadable");
                None
            }
        }
    }

    /// Checks `end` as its own trust anchor: signed by its own key, in its
    /// validity period, and fit for client authentication.
    fn self_signed(&self, end: &CertificateDer<'_>, now: UnixTime) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(end.clone().into_owned()).map_err(|e| e.to_string())?;
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        v.verify_client_cert(end, &[], now).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Asks for a client certificate during the handshake, optionally.
#[derive(Debug)]
struct Requesting(Arc<ClientCerts>);

impl ClientCertVerifier for Requesting {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The chain is judged after the handshake (ClientCerts::identity).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
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
        assert_eq!(explicit_utf8(&[0xA0, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(explicit_utf8(&[0xA0, 0x03, 0x0C, 0x01, 0xFF]), None, "not UTF-8");
    }
}
