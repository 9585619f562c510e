//! TLS on the gateway's listeners: rustls (its `ring` provider, TLS 1.3 and 1.2), a certificate
//! chain and its private key from PEM files, and optionally client certificates required and
//! checked against a CA (mutual TLS). API keys and TOTP codes travel in request headers, so a
//! gateway reachable from other hosts should not serve them in clear.
//!
//! ALPN offers `h2` and `http/1.1`: gRPC clients that ask for HTTP/2 get it, REST clients either.
//! The files are read again when they change ([`TlsServer::watch`]), as a certificate renewed in
//! place (cert-manager, a mounted Kubernetes secret) changes them: new connections get the new
//! certificate, open ones keep theirs. A change that does not load (the key written before its
//! certificate, a broken file) is logged and the certificate in use kept; the next look tries
//! again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When given, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// A TLS configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the certificate and key (a key that does not match the certificate, a
    /// certificate it cannot parse, an unsupported key type).
    #[error("the TLS certificate {cert} and key {key} were refused: {source}")]
    Config {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client CA could not be used to check client certificates.
    #[error("the client CA {path} was refused: {source}")]
    ClientCa {
        /// The CA file.
        path: String,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// What the files looked like when last read: (modified, length, inode) of each, following
/// symbolic links (a Kubernetes secret swaps a link to a new folder).
type Stamp = Vec<Option<(std::time::SystemTime, u64, u64)>>;

/// A listener's TLS configuration, kept current with its files.
#[derive(Debug)]
pub struct TlsServer {
    files: TlsFiles,
    current: RwLock<(Stamp, Arc<ServerConfig>)>,
}

impl TlsServer {
    /// Reads `files`; an error says which file and what is wrong.
    pub fn load(files: TlsFiles) -> Result<TlsServer, TlsError> {
        let stamp = stamp(&files);
        let config = server_config(&files)?;
        Ok(TlsServer {
            files,
            current: RwLock::new((stamp, config)),
        })
    }

    /// The files served.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the configuration in use now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(current.1.clone())
    }

    /// Reads the files again if they changed since last read: `Ok(true)` when the new ones are
    /// in use, `Ok(false)` when nothing changed, and an error (the old configuration kept) when
    /// they changed but do not load; they are tried again at the next call.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == now {
            return Ok(false);
        }
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (now, config);
        Ok(true)
    }

    /// Looks at the files every `every` and takes changed ones ([`TlsServer::reload_if_changed`]),
    /// logging what happened. Runs until dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    // Once per failure, not once per look.
                    if !failing {
                        tracing::error!(error = %e, "the TLS files changed but do not load; the certificate in use is kept");
                    }
                    failing = true;
                }
            }
        }
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p).ok().map(|m| {
            (
                m.modified().unwrap_or(std::time::UNIX_EPOCH),
                m.len(),
                m.ino(),
            )
        })
    })
    .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        what: what.into(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block in it"));
    }
    Ok(certs)
}

/// The rustls configuration of `files`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key_bytes = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        pem_error(
            &files.key,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM) in it ({e})"),
        )
    })?;
    let refused = |source| TlsError::Config {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(refused)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots
                    .add(c)
                    .map_err(|e| pem_error(ca, format!("not a usable CA certificate ({e})")))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|source| TlsError::ClientCa {
                        path: ca.display().to_string(),
                        source,
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(refused)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
