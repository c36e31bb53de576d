//! TLS material for a listener and, for the peer port, the matching client (SPEC §1): PEM files
//! read at start and re-read when they change on disk, turned into rustls configs, with the
//! served certificate's expiry.
//!
//! A change is noticed by content, not by modification time, so an atomic rename or a swapped
//! symlink (as secret managers do) is seen as well as an edit in place. A change that does not
//! load (half-written file, key of another certificate) keeps the previous material in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The files of one TLS identity; `ca` (the trust anchors for the other side's certificates)
/// is optional on the API and required for peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("{0}")]
    Rustls(String),
}

/// What the files make, at one load.
pub struct Loaded {
    /// For the listener: serves the certificate; requires a client certificate signed by the
    /// CA when one is given.
    pub server: Arc<ServerConfig>,
    /// For calling the other nodes (when a CA is given): trusts only that CA and presents the
    /// same certificate.
    pub client: Option<Arc<ClientConfig>>,
    /// The served (leaf) certificate's notAfter, in Unix seconds.
    pub not_after: i64,
}

/// The raw bytes of the files, to notice a change.
type Contents = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// A TLS identity that follows its files.
pub struct Reloading {
    files: TlsFiles,
    state: Mutex<State>,
    /// Bumped on every load that took effect, so users can rebuild what they derived.
    generation: AtomicU64,
}

struct State {
    loaded_from: Contents,
    loaded: Arc<Loaded>,
    /// Contents that failed to load, so a bad file is reported once, not every check.
    failed: Option<Contents>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish()
    }
}

/// What a `Reloading::reload` call found.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Loaded,
    /// The files changed but do not load; the previous material stays in force. Reported once
    /// per distinct content.
    Failed(TlsError),
    /// Still the same broken content as last time.
    StillFailed,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn roots(path: &Path, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, pem)? {
        store.add(cert).map_err(|e| pem_error(path, e))?;
    }
    Ok(Arc::new(store))
}

/// The notAfter of a DER certificate, in Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// Builds the configs from file contents. Pure apart from the crypto; the paths only name
/// files in errors.
fn build(files: &TlsFiles, c: &Contents) -> Result<Loaded, TlsError> {
    let chain = certs(&files.cert, &c.0)?;
    let not_after = not_after(&chain[0]).map_err(|e| pem_error(&files.cert, e))?;
    let key = PrivateKeyDer::from_pem_slice(&c.1).map_err(|e| pem_error(&files.key, e))?;
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?;
    let (builder, ca_roots) = match (&files.ca, &c.2) {
        (Some(path), Some(pem)) => {
            let roots = roots(path, pem)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| pem_error(path, e))?;
            (builder.with_client_cert_verifier(verifier), Some(roots))
        }
        _ => (builder.with_no_client_auth(), None),
    };
    let server = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| pem_error(&files.key, format!("does not fit the certificate: {e}")))?;
    let client = match ca_roots {
        Some(roots) => Some(Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(rustls_err)?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(rustls_err)?,
        )),
        None => None,
    };
    Ok(Loaded {
        server: Arc::new(server),
        client,
        not_after,
    })
}

impl Reloading {
    /// Loads the files once; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Reloading>, TlsError> {
        let contents = Self::read_all(&files)?;
        let loaded = Arc::new(build(&files, &contents)?);
        Ok(Arc::new(Reloading {
            files,
            state: Mutex::new(State {
                loaded_from: contents,
                loaded,
                failed: None,
            }),
            generation: AtomicU64::new(0),
        }))
    }

    fn read_all(files: &TlsFiles) -> Result<Contents, TlsError> {
        let ca = match &files.ca {
            Some(p) => Some(read(p)?),
            None => None,
        };
        Ok((read(&files.cert)?, read(&files.key)?, ca))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The material in force.
    pub fn current(&self) -> Arc<Loaded> {
        self.lock().loaded.clone()
    }

    /// Changes with every load that took effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the files and loads them if they changed. Blocking file reads: call it from a
    /// blocking context or rarely (about once a second).
    pub fn reload(&self) -> Reload {
        let contents = match Self::read_all(&self.files) {
            Ok(c) => c,
            // A file missing for a moment (being replaced) is not a change yet.
            Err(_) => return Reload::Unchanged,
        };
        {
            let state = self.lock();
            if state.loaded_from == contents {
                return Reload::Unchanged;
            }
            if state.failed.as_ref() == Some(&contents) {
                return Reload::StillFailed;
            }
        }
        match build(&self.files, &contents) {
            Ok(loaded) => {
                let mut state = self.lock();
                state.loaded = Arc::new(loaded);
                state.loaded_from = contents;
                state.failed = None;
                self.generation.fetch_add(1, Ordering::AcqRel);
                Reload::Loaded
            }
            Err(e) => {
                self.lock().failed = Some(contents);
                Reload::Failed(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, Issuer, KeyPair};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (cert PEM, key PEM) for 127.0.0.1, valid until `not_after` (Unix seconds).
    fn leaf(ca: &Ca, not_after: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.not_after =
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(not_after as u64);
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_and_follows_its_files_keeping_the_old_material_when_a_change_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("test ca");
        let (cert, key) = leaf(&ca, 2_000_000_000);
        let files = TlsFiles {
            cert: write(dir.path(), "cert.pem", &cert),
            key: write(dir.path(), "key.pem", &key),
            ca: Some(write(dir.path(), "ca.pem", &ca.pem)),
        };
        let r = Reloading::load(files.clone()).unwrap();
        assert_eq!(r.current().not_after, 2_000_000_000);
        assert!(r.current().client.is_some(), "a CA makes a client config");
        assert!(matches!(r.reload(), Reload::Unchanged));
        assert_eq!(r.generation(), 0);

        // A rotation: new certificate and key.
        let (cert2, key2) = leaf(&ca, 2_100_000_000);
        write(dir.path(), "cert.pem", &cert2);
        write(dir.path(), "key.pem", &key2);
        assert!(matches!(r.reload(), Reload::Loaded));
        assert_eq!(r.current().not_after, 2_100_000_000);
        assert_eq!(r.generation(), 1);

        // Half a rotation (the certificate without its key) does not load, once.
        let (cert3, _) = leaf(&ca, 2_200_000_000);
        write(dir.path(), "cert.pem", &cert3);
        match r.reload() {
            Reload::Failed(e) => assert!(e.to_string().contains("key.pem"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.reload(), Reload::StillFailed));
        assert_eq!(
            r.current().not_after,
            2_100_000_000,
            "the old material stays"
        );

        // A file being replaced (missing for a moment) is not a change.
        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(r.reload(), Reload::Unchanged));
    }

    #[test]
    fn bad_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("test ca");
        let (cert, key) = leaf(&ca, 2_000_000_000);
        let other = leaf(&ca, 2_000_000_000).1;
        let cases = [
            ("garbage", "not a pem", key.as_str(), "cert.pem"),
            (
                "a key that is not the certificate's",
                &*cert,
                &*other,
                "key.pem",
            ),
            ("no key", &*cert, "", "key.pem"),
        ];
        for (name, cert_text, key_text, blamed) in cases {
            let files = TlsFiles {
                cert: write(dir.path(), "cert.pem", cert_text),
                key: write(dir.path(), "key.pem", key_text),
                ca: None,
            };
            let e = Reloading::load(files)
                .err()
                .unwrap_or_else(|| panic!("{name}"));
            assert!(e.to_string().contains(blamed), "{name}: {e}");
        }
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("key.pem"),
            ca: None,
        };
        let e = Reloading::load(missing).err().unwrap();
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }
}
