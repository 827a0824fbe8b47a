//! `[tls]` and a backend's `tls`: TLS towards clients and towards the
//! backends (see [`crate::tls`] for reading the files and README, Security).
//!
//! Client side: with `cert` and `key` the proxy speaks TLS to its clients.
//! Without `listen` here the main `listen` address is TLS only (turning TLS
//! on never leaves a plaintext port open by accident); with it, TLS has
//! that address of its own and the main one stays plain, as Redis's
//! `tls-port` next to its `port` (for moving clients over one at a time).
//!
//! Backend side: a backend with `tls = true` is reached over TLS, its
//! certificate checked against `backend_ca` (or the backend's own `ca`) and
//! the backend's host (or `server_name`).

use serde::{Deserialize, Serialize};

use super::{Backend, Config, ConfigError, check_addr, invalid};
use crate::tls::{self, ClientFiles, ServerFiles, ServerTls, TlsTarget};

/// `[tls]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The proxy's certificate chain (PEM), leaf first.
    #[serde(default)]
    pub cert: Option<String>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: Option<String>,
    /// CA (PEM) client certificates are checked against; clients may show
    /// one, and must with `require_client_cert`.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Mutual TLS: a client without a certificate signed by `client_ca`
    /// fails the handshake.
    #[serde(default)]
    pub require_client_cert: bool,
    /// A TLS address of its own; the main `listen` then stays plain.
    #[serde(default)]
    pub listen: Option<String>,
    /// CA (PEM) the certificates of backends with `tls = true` are checked
    /// against (a backend's own `ca` overrides it).
    #[serde(default)]
    pub backend_ca: Option<String>,
    /// Client certificate and key shown to backends that ask for one
    /// (`tls-auth-clients yes`).
    #[serde(default)]
    pub backend_cert: Option<String>,
    #[serde(default)]
    pub backend_key: Option<String>,
    /// The client-side configuration, read from the files when the
    /// configuration is loaded.
    #[serde(skip)]
    pub server: Loaded,
}

/// The files of `[tls]` read, or nothing (no `cert`): equal when the same
/// files with the same content were read.
#[derive(Debug, Clone, Default)]
pub struct Loaded(pub Option<ServerTls>);

impl PartialEq for Loaded {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref().map(|t| t.digest) == other.0.as_ref().map(|t| t.digest)
    }
}

/// A backend's `tls`: `true`, or a table with its own settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(
    untagged,
    expecting = "true, false, or a table with any of ca, cert, key, server_name"
)]
pub enum BackendTls {
    On(bool),
    With(BackendTlsOptions),
}

/// `tls = { ... }` on a backend: TLS on, with these settings over `[tls]`'s.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsOptions {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The name the backend's certificate must carry, if not its host (a
    /// name shared by a master and its replicas, an IP address reached
    /// through a DNS name...).
    pub server_name: Option<String>,
}

impl BackendTls {
    fn options(&self) -> Option<BackendTlsOptions> {
        match self {
            BackendTls::On(false) => None,
            BackendTls::On(true) => Some(BackendTlsOptions::default()),
            BackendTls::With(o) => Some(o.clone()),
        }
    }
}

impl TlsConfig {
    /// Clients are served over TLS (on `listen`, or on the main address).
    pub fn serves_clients(&self) -> bool {
        self.cert.is_some()
    }

    /// The files a backend's TLS uses, with the configuration keys that
    /// name them (for errors); `None` without TLS on that backend.
    fn backend_files(&self, key: &str, b: &Backend) -> Option<Result<(ClientFiles, [String; 3]), ConfigError>> {
        let o = b.tls.as_ref()?.options()?;
        let pick = |own: &Option<String>, name: &str, shared: &Option<String>, sname: &str| match own {
            Some(p) => Some((p.clone(), format!("{key}.tls.{name}"))),
            None => shared.clone().map(|p| (p, format!("tls.{sname}"))),
        };
        let Some((ca, ca_key)) = pick(&o.ca, "ca", &self.backend_ca, "backend_ca") else {
            return Some(Err(invalid(
                format!("{key}.tls"),
                "needs a CA to check the backend's certificate: [tls] backend_ca, or tls = { ca = \"...\" } on the backend",
            )));
        };
        let cert = pick(&o.cert, "cert", &self.backend_cert, "backend_cert");
        let k = pick(&o.key, "key", &self.backend_key, "backend_key");
        if cert.is_some() != k.is_some() {
            return Some(Err(invalid(
                format!("{key}.tls"),
                "a client certificate needs its key and a key its certificate",
            )));
        }
        let (cert, cert_key) = cert.map_or((None, String::new()), |(p, k)| (Some(p), k));
        let (k, k_key) = k.map_or((None, String::new()), |(p, k)| (Some(p), k));
        let files = ClientFiles { ca, cert, key: k };
        Some(Ok((files, [ca_key, cert_key, k_key])))
    }

    /// How the backend `b` is reached over TLS, if it is: read from its
    /// files now (a backend only a fleet's topology names) if loading the
    /// configuration did not already (an error is kept and reported by
    /// each connection attempt).
    pub fn target(&self, b: &Backend) -> Option<TlsTarget> {
        let server_name = match b.tls.as_ref()? {
            BackendTls::With(o) => o.server_name.clone(),
            _ => None,
        };
        let (files, keys) = match self.backend_files(&format!("backend {}", b.name), b)? {
            Ok(f) => f,
            Err(e) => return Some(TlsTarget::new(Err(e.to_string()), ClientFiles::default(), None)),
        };
        let keys = [keys[0].as_str(), keys[1].as_str(), keys[2].as_str()];
        Some(TlsTarget::new(
            tls::client_config(&files, keys),
            files,
            server_name.as_deref(),
        ))
    }
}

/// Checks `[tls]` and the backends' `tls`, and reads every file they name
/// (so a missing or bad file refuses the configuration, naming it): the
/// client side into `cfg.tls.server`.
pub(super) fn load(cfg: &mut Config) -> Result<(), ConfigError> {
    let t = &cfg.tls;
    let both = |a: &Option<String>, b: &Option<String>| a.is_some() == b.is_some();
    if !both(&t.cert, &t.key) {
        return Err(invalid("tls", "cert and key go together"));
    }
    if !both(&t.backend_cert, &t.backend_key) {
        return Err(invalid("tls", "backend_cert and backend_key go together"));
    }
    if t.cert.is_none() && (t.client_ca.is_some() || t.require_client_cert || t.listen.is_some()) {
        return Err(invalid(
            "tls",
            "client_ca, require_client_cert and listen need the proxy's cert and key",
        ));
    }
    if t.require_client_cert && t.client_ca.is_none() {
        return Err(invalid("tls.require_client_cert", "needs client_ca"));
    }
    if let Some(l) = &t.listen {
        check_addr("tls.listen", l)?;
        // Port 0 (tests: any free port) is two ports.
        if *l == cfg.listen && !l.ends_with(":0") {
            return Err(invalid(
                "tls.listen",
                "is the plain listen address; leave tls.listen out to make that address TLS only",
            ));
        }
    }
    for (i, b) in cfg.backends.iter().enumerate() {
        let key = format!("backends[{i}]");
        if let Some(files) = t.backend_files(&key, b) {
            let (files, keys) = files?;
            tls::client_config(&files, [&keys[0], &keys[1], &keys[2]]).map_err(ConfigError::Parse)?;
        }
    }
    let server = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some(
            tls::server_config(ServerFiles {
                cert,
                key,
                client_ca: t.client_ca.as_deref(),
                require_client_cert: t.require_client_cert,
            })
            .map_err(ConfigError::Parse)?,
        ),
        _ => None,
    };
    cfg.tls.server = Loaded(server);
    Ok(())
}
