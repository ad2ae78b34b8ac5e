//! Server certificates and the rustls configuration of the listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use meerkat_actors::client_cert::{ClientCerts, VerifyMode};
use meerkat_actors::ext::{ListenerTls, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Loads a PEM certificate chain and key.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
    Ok((certs, key))
}

/// The self-signed certificate for `hosts` in `data_dir/tls`, generated on first use.
pub fn self_signed(data_dir: &Path, hosts: &[String]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let cert = dir.join("selfsigned.pem");
    let key = dir.join("selfsigned.key");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names: Vec<String> = hosts.to_vec();
    for h in hosts {
        // XEP-0368 and some clients connect to a subdomain-less host; wildcard covers services.
        names.push(format!("*.{h}"));
    }
    let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    std::fs::write(&cert, generated.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    tracing::warn!(cert = %cert.display(), "no certificate configured: generated a self-signed one for {hosts:?}");
    Ok((cert, key))
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// A rustls server configuration offering TLS 1.3 and 1.2, asking clients
/// for a certificate when `client_certs` says so.
pub fn server_config_with(
    cert: &Path,
    key: &Path,
    client_certs: Option<&Arc<ClientCerts>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (certs, key) = load(cert, key)?;
    server_config_from(certs, key, client_certs)
}

/// [`server_config_with`] for a chain and key loaded already.
fn server_config_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_certs: Option<&Arc<ClientCerts>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?;
    let builder = match client_certs {
        Some(c) => builder.with_client_cert_verifier(c.handshake_verifier()),
        None => builder.with_no_client_auth(),
    };
    let cfg = builder.with_single_cert(certs, key).context("the certificate and key do not match")?;
    Ok(Arc::new(cfg))
}

/// A service listener's TLS from its `tls` section: the server
/// configuration (asking for the other side's certificate per
/// `verify_mode` and `cacertfile`), and the certificate and key for the
/// connections the service opens itself.
pub fn listener_tls(cert: &Path, key: &Path, files: &TlsFiles) -> anyhow::Result<ListenerTls> {
    let client_certs = client_certs(files.verify_mode, files.cacertfile.as_deref())?;
    let (chain, key) = load(cert, key)?;
    let server = server_config_from(chain.clone(), key.clone_key(), client_certs.as_ref())?;
    let signing = provider().key_provider.load_private_key(key).context("the private key cannot sign")?;
    let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, signing));
    Ok(ListenerTls { server, client_certs, certified })
}

/// The most TLS 1.3 early data (0-RTT) accepted on a connection: room for
/// a stream header and a FAST authentication.
pub const MAX_EARLY_DATA: u32 = 16 * 1024;

/// The crypto provider of every TLS configuration here.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a listener with `tls.verify_mode` and `tls.cacertfile` asks for and
/// checks client certificates (SASL EXTERNAL); `None` when it asks for none.
pub fn client_certs(mode: VerifyMode, cacertfile: Option<&Path>) -> anyhow::Result<Option<Arc<ClientCerts>>> {
    let cacerts = match cacertfile {
        Some(ca) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading cacertfile {}", ca.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing cacertfile {}", ca.display()))?;
            if certs.is_empty() {
                anyhow::bail!("cacertfile {} holds no certificate", ca.display());
            }
            certs
        }
        None => Vec::new(),
    };
    ClientCerts::new(mode, cacerts, provider()).map_err(anyhow::Error::msg)
}

/// Mutual TLS between cluster nodes: every node presents a certificate signed
/// by the cluster CA for `server_name`, and accepts only peers that do.
pub fn cluster_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    server_name: &str,
) -> anyhow::Result<meerkat_cluster::transport::ClusterTls> {
    let (certs, key) = load(cert, key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(ca_cert.with_context(|| format!("parsing {}", ca.display()))?).context("adding the cluster CA")?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .context("building the cluster client verifier")?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .context("the cluster certificate and key do not match")?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .context("the cluster certificate and key do not match")?;
    let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("{server_name:?} is not a valid server name"))?;
    Ok(meerkat_cluster::transport::ClusterTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        server_name,
    })
}
