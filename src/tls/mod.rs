//! TLS with rustls (its `ring` provider): the certificates, keys and CAs the
//! configuration names ([`crate::config::TlsConfig`], a backend's `tls`),
//! read into rustls configurations, every error naming the key and the file;
//! and the streams a session or a backend connection runs on ([`stream`]).
//!
//! - client side (clients -> shardis): [`server_config`], one rustls
//!   `ServerConfig` with the proxy's certificate, and a client CA when client
//!   certificates are asked for;
//! - backend side (shardis -> Redis): [`client_config`] per distinct set of
//!   CA / client certificate / key, and a [`TlsTarget`] per backend (the
//!   connector and the name its certificate must carry).
//!
//! Everything here is read when the configuration is (at start-up and on
//! each reload): a handshake never touches the file system. Each loaded
//! piece keeps a SHA-256 digest of the files it came from, so a reload that
//! changed a file is seen as a change (a backend whose TLS files changed
//! gets new connections), one that did not is not.

pub mod stream;

use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
pub use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsConnector, client};

/// The one crypto provider (ring), given explicitly to every config, so no
/// process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads `path` (named by configuration key `key`), adding it to `h`.
fn read(key: &str, path: &str, h: &mut Sha256) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))?;
    h.update(path.as_bytes());
    h.update(&bytes);
    Ok(bytes)
}

/// The PEM certificates in `path` (at least one).
fn certs(key: &str, path: &str, h: &mut Sha256) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(key, path, h)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {path} holds no certificate (PEM, -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// The PEM private key in `path` (PKCS#8, PKCS#1 or SEC1).
fn private_key(key: &str, path: &str, h: &mut Sha256) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(key, path, h)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{key}: {path} holds no private key (PEM: PKCS#8, PKCS#1 or SEC1)")
        }
        e => format!("{key}: {path}: {e}"),
    })
}

/// The CA certificates in `path`, as trust anchors.
fn roots(key: &str, path: &str, h: &mut Sha256) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(key, path, h)? {
        store
            .add(cert)
            .map_err(|e| format!("{key}: {path}: not a usable CA certificate: {e}"))?;
    }
    Ok(Arc::new(store))
}

/// What a client-facing listener needs: the files and whether a client
/// must show a certificate signed by `client_ca`.
#[derive(Debug, Clone, Copy)]
pub struct ServerFiles<'a> {
    pub cert: &'a str,
    pub key: &'a str,
    pub client_ca: Option<&'a str>,
    pub require_client_cert: bool,
}

/// The client-facing TLS configuration, read from its files.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the files it was read from.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({:02x}{:02x}..)", self.digest[0], self.digest[1])
    }
}

/// Reads the proxy's certificate chain and key (and the client CA) into a
/// rustls server configuration: TLS 1.2 and 1.3, the certificate and key
/// checked to match, client certificates verified against `client_ca`
/// (required with `require_client_cert`, else optional).
pub fn server_config(f: ServerFiles<'_>) -> Result<ServerTls, String> {
    let mut h = Sha256::new();
    let chain = certs("tls.cert", f.cert, &mut h)?;
    let key = private_key("tls.key", f.key, &mut h)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match f.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots("tls.client_ca", ca, &mut h)?, provider());
            let v = if f.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v.build().map_err(|e| format!("tls.client_ca: {ca}: {e}"))?;
            h.update([u8::from(f.require_client_cert)]);
            builder.with_client_cert_verifier(v)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.cert, tls.key: {} with {}: {e}", f.cert, f.key))?;
    Ok(ServerTls {
        config: Arc::new(config),
        digest: h.finalize().into(),
    })
}

/// Where a backend connection's TLS material comes from: the CA its
/// server's certificate must chain to, and the client certificate and key
/// shardis shows (for a server with `tls-auth-clients yes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: String,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// A backend-side TLS configuration, read from its files.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub digest: [u8; 32],
}

/// Reads `files` into a rustls client configuration. `keys` names the
/// configuration keys of the CA, certificate and key, for errors.
pub fn client_config(files: &ClientFiles, keys: [&str; 3]) -> Result<ClientTls, String> {
    let mut h = Sha256::new();
    let roots = roots(keys[0], &files.ca, &mut h)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certs(keys[1], cert, &mut h)?;
            let k = private_key(keys[2], key, &mut h)?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| format!("{}, {}: {cert} with {key}: {e}", keys[1], keys[2]))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(ClientTls {
        config: Arc::new(config),
        digest: h.finalize().into(),
    })
}

/// How one backend is reached over TLS: the connector (or why its files
/// could not be read), and the name its certificate must carry (`None`:
/// the host of the address connected to, an IP address or a DNS name).
#[derive(Clone)]
pub struct TlsTarget {
    connector: Result<TlsConnector, Arc<str>>,
    pub server_name: Option<Arc<str>>,
    pub files: ClientFiles,
    digest: [u8; 32],
}

impl TlsTarget {
    pub fn new(loaded: Result<ClientTls, String>, files: ClientFiles, server_name: Option<&str>) -> TlsTarget {
        let (connector, digest) = match loaded {
            Ok(t) => (Ok(TlsConnector::from(t.config)), t.digest),
            Err(e) => (Err(Arc::from(e)), [0; 32]),
        };
        TlsTarget {
            connector,
            server_name: server_name.map(Arc::from),
            files,
            digest,
        }
    }

    /// The name `addr`'s certificate must carry: `server_name`, else the
    /// host part of `addr`.
    pub fn name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(n) => n.as_ref(),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
            }
        };
        ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name '{host}': {e}"))
    }

    /// The TLS handshake with the server at `addr` over `tcp`.
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> Result<client::TlsStream<TcpStream>, String> {
        let connector = self.connector.as_ref().map_err(|e| e.to_string())?;
        let name = self.name_for(addr)?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    }
}

impl PartialEq for TlsTarget {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.files == other.files && self.digest == other.digest
    }
}

impl Eq for TlsTarget {}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .field("files", &self.files)
            .field("loaded", &self.connector.as_ref().map(|_| ()))
            .finish()
    }
}
