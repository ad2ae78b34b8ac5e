//! Who a certificate says its holder is. With mutual TLS, the handshake
//! proves that a peer holds a certificate the deployment's CA signed; this
//! ties the node id (cluster) or data center name (global distribution) the
//! peer claims in its hello to a name in that certificate, so that one
//! node's certificate cannot be used to pose as another.
//!
//! A cluster node's certificate carries, besides the common server name
//! every node is reached by (`[cluster.tls] server_name`, which the TLS
//! handshake checks), the DNS name `node<ID>.<server name>` (for node 3 and
//! the default server name: `node3.meerkat-cluster`). A data center's
//! certificates carry its `local_host` (`dc1.example.com`).

use rustls_pki_types::{CertificateDer, ServerName};

/// Whether `cert`, already verified against the CA by the TLS handshake,
/// names `name` in its subject alternative names.
pub fn certificate_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(subject) = ServerName::try_from(name) else { return false };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else { return false };
    end_entity.verify_is_valid_for_subject_name(&subject).is_ok()
}

/// The DNS name node `id`'s certificate must carry: `node<id>.<server_name>`.
pub fn node_name(server_name: &ServerName<'_>, id: u64) -> String {
    let base = match server_name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        other => other.to_str().into_owned(),
    };
    format!("node{id}.{base}")
}

/// Why a peer's certificate does not do, or `None` when it names `name`.
pub fn check(cert: Option<&CertificateDer<'_>>, name: &str, who: &str) -> Option<String> {
    match cert {
        None => Some(format!("{who} presented no certificate")),
        Some(c) if certificate_names(c, name) => None,
        Some(_) => Some(format!("the certificate of {who} does not name {name}")),
    }
}
