//! TLS termination for the `[tls] listen` addresses and CONNECT tunnels
//! on lane entries ([`super::connect`]): certificates chosen by
//! SNI from a directory of PEM pairs (`<name>.crt` + `<name>.key`, matched by
//! the DNS names in each certificate, wildcards included), a default pair,
//! hot reload when the files change, ALPN `h2`/`http/1.1`, and handshake
//! metrics.
//!
//! The handshake is done here with tokio-rustls, not by Pingora's rustls
//! listener. Pingora 0.9 does accept a `ResolvesServerCert`, but its
//! listener reports nothing about handshakes to the application (a failure
//! is only logged inside Pingora, so `laneway_tls_handshake_errors_total`
//! could not be counted) and its `TlsSettings::build` panics on a bad
//! certificate. Terminating here keeps the listeners plain TCP Pingora
//! listeners (`SO_REUSEPORT`, graceful upgrade), bounds the handshake with a
//! timeout, counts it, and hands the decrypted stream to the engine ALPN
//! chose (see [`super::front`]).
//!
//! Certificates live in their own `ArcSwap`, not in the routing snapshot:
//! they are chosen during the handshake, before any request or snapshot
//! load, and change on their own schedule (file edits) rather than with
//! registrations and lanes. Handshakes: request path; loading and
//! watching: control plane (a watcher thread).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{Stream, ALPN};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{debug, error, info, warn};

use super::stream::Wrapped;
use crate::config::TlsConfig;
use crate::telemetry::Metrics;

/// How long a client may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] certs: {path}: {why}")]
    Pair { path: PathBuf, why: String },
    #[error("[tls] certs: cannot read the certificate directory {path}: {why}")]
    Dir { path: PathBuf, why: String },
    #[error("[tls] default_cert \"{name}\": no valid pair {dir}/{name}.crt + {name}.key{detail}")]
    NoDefault {
        name: String,
        dir: PathBuf,
        detail: String,
    },
    #[error("[tls]: {0}")]
    Config(String),
}

/// One loaded pair.
#[derive(Clone)]
struct Pair {
    key: Arc<CertifiedKey>,
    /// Lowercased DNS names (SAN, else CN) of the leaf; `*.x` for wildcards.
    names: Vec<String>,
}

/// The certificates being served: by exact name, by wildcard suffix, and
/// the default.
#[derive(Default)]
struct Certs {
    pairs: BTreeMap<String, Pair>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `lanes.test` for `*.lanes.test`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certs {
    fn index(pairs: BTreeMap<String, Pair>, default_name: &str) -> Certs {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        // In name order, the first pair claiming a name wins.
        for pair in pairs.values() {
            for name in &pair.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| pair.key.clone()),
                    None => exact
                        .entry(name.clone())
                        .or_insert_with(|| pair.key.clone()),
                };
            }
        }
        Certs {
            default: pairs.get(default_name).map(|p| p.key.clone()),
            pairs,
            exact,
            wildcard,
        }
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }

    /// A certificate names `name` (exactly or by a one-label wildcard); the
    /// default pair counts only through its own names.
    fn covers(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains_key(&name)
            || name
                .split_once('.')
                .is_some_and(|(_, parent)| self.wildcard.contains_key(parent))
    }
}

/// The certificate directory, loaded and kept current; the rustls resolver.
pub struct CertStore {
    dir: PathBuf,
    default_name: String,
    certs: ArcSwap<Certs>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir).finish()
    }
}

impl CertStore {
    /// Loads the directory. The default pair must load; another pair that
    /// fails is logged, counted and left out.
    pub fn open(cfg: &TlsConfig, metrics: Arc<Metrics>) -> Result<Arc<CertStore>, TlsError> {
        let store = CertStore {
            dir: cfg.certs.clone(),
            default_name: cfg.default_cert.clone(),
            certs: ArcSwap::from_pointee(Certs::default()),
            metrics,
        };
        let (pairs, errors) = store.load_dir(&BTreeMap::new())?;
        if !pairs.contains_key(&store.default_name) {
            let detail = errors
                .iter()
                .find(|e| matches!(e, TlsError::Pair { path, .. } if path.file_stem().is_some_and(|s| s == store.default_name.as_str())))
                .map_or(String::new(), |e| format!(" ({e})"));
            return Err(TlsError::NoDefault {
                name: store.default_name.clone(),
                dir: store.dir.clone(),
                detail,
            });
        }
        store.swap(pairs);
        Ok(Arc::new(store))
    }

    /// Every problem with the certificate directory, as `laneway check`
    /// reports them: bad pairs, and a missing default.
    pub fn check(cfg: &TlsConfig) -> Vec<TlsError> {
        let store = CertStore {
            dir: cfg.certs.clone(),
            default_name: cfg.default_cert.clone(),
            certs: ArcSwap::from_pointee(Certs::default()),
            metrics: Arc::new(Metrics::new()),
        };
        match store.load_dir(&BTreeMap::new()) {
            Err(e) => vec![e],
            Ok((pairs, mut errors)) => {
                if !pairs.contains_key(&store.default_name) && errors.is_empty() {
                    errors.push(TlsError::NoDefault {
                        name: store.default_name.clone(),
                        dir: store.dir.clone(),
                        detail: String::new(),
                    });
                }
                errors
            }
        }
    }

    /// Reads every pair again. A pair that fails keeps its previous
    /// certificate (logged and counted in `laneway_tls_cert_errors_total`);
    /// a pair whose files are gone is dropped, except the default.
    pub fn reload(&self) {
        let old = self.certs.load();
        match self.load_dir(&old.pairs) {
            Ok((pairs, _)) => self.swap(pairs),
            Err(e) => {
                self.metrics.tls.cert_errors.inc();
                error!(error = %e, "certificate reload failed; serving the previous certificates");
            }
        }
    }

    fn swap(&self, pairs: BTreeMap<String, Pair>) {
        self.metrics.tls.certificates.set(pairs.len() as i64);
        self.metrics.tls.cert_reloads.inc();
        info!(dir = %self.dir.display(), pairs = pairs.len(), "certificates loaded");
        self.certs
            .store(Arc::new(Certs::index(pairs, &self.default_name)));
    }

    /// Every `<name>.crt` with its `<name>.key`. `previous` supplies the pair
    /// kept when one fails to load.
    #[allow(clippy::type_complexity)]
    fn load_dir(
        &self,
        previous: &BTreeMap<String, Pair>,
    ) -> Result<(BTreeMap<String, Pair>, Vec<TlsError>), TlsError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| TlsError::Dir {
            path: self.dir.clone(),
            why: e.to_string(),
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let mut pairs = BTreeMap::new();
        let mut errors = Vec::new();
        for name in names {
            match load_pair(&self.dir, &name) {
                Ok(pair) => {
                    pairs.insert(name, pair);
                }
                Err(e) => {
                    self.metrics.tls.cert_errors.inc();
                    match previous.get(&name) {
                        Some(old) => {
                            error!(error = %e, pair = %name, "bad certificate pair; keeping the previous certificate");
                            pairs.insert(name, old.clone());
                        }
                        None => {
                            error!(error = %e, pair = %name, "bad certificate pair; not served")
                        }
                    }
                    errors.push(e);
                }
            }
        }
        if let (false, Some(old)) = (
            pairs.contains_key(&self.default_name),
            previous.get(&self.default_name),
        ) {
            warn!(pair = %self.default_name, "the default certificate pair is gone; keeping the previous one");
            pairs.insert(self.default_name.clone(), old.clone());
        }
        Ok((pairs, errors))
    }

    /// Watches the directory and reloads after changes (a burst of events is
    /// coalesced), on a thread of its own for the life of the process.
    pub fn watch(self: &Arc<Self>) -> Result<(), TlsError> {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(()); // the reload thread ended only if the store is gone
            }
        })
        .map_err(|e| TlsError::Config(format!("cannot watch {}: {e}", self.dir.display())))?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| TlsError::Config(format!("cannot watch {}: {e}", self.dir.display())))?;
        let store = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("laneway-certs".into())
            .spawn(move || {
                let _watcher = watcher; // watches as long as this thread runs
                while rx.recv().is_ok() {
                    // Let a burst of writes (crt, then key) settle into one reload.
                    while rx.recv_timeout(Duration::from_millis(150)).is_ok() {}
                    let Some(store) = store.upgrade() else { return };
                    store.reload();
                }
            })
            .map_err(|e| TlsError::Config(format!("cannot start the certificate watcher: {e}")))?;
        Ok(())
    }

    /// A certificate of the directory names `host` (exactly or by a
    /// wildcard): what a CONNECT to `host` needs ([`super::connect`]).
    pub fn covers(&self, host: &str) -> bool {
        self.certs.load().covers(host)
    }

    /// The certificate directory (`[tls] certs`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rustls server configuration: this store as the resolver, ALPN
    /// `h2` then `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = self.certs.load().pick(hello.server_name());
        if picked.is_none() {
            self.metrics.tls.error("no_certificate").inc();
        }
        picked
    }
}

/// Reads `<dir>/<name>.crt` and `<dir>/<name>.key`.
fn load_pair(dir: &Path, name: &str) -> Result<Pair, TlsError> {
    let crt_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let bad = |path: &Path, why: String| TlsError::Pair {
        path: path.to_path_buf(),
        why,
    };
    let crt_pem = std::fs::read(&crt_path).map_err(|e| bad(&crt_path, e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut crt_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&crt_path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(&crt_path, "no CERTIFICATE block in the file".into()));
    }
    let key_pem = std::fs::read(&key_path).map_err(|e| bad(&key_path, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| bad(&key_path, format!("not PEM: {e}")))?
        .ok_or_else(|| bad(&key_path, "no PRIVATE KEY block in the file".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| bad(&key_path, format!("unsupported private key: {e}")))?;
    let names = dns_names(certs[0].as_ref()).map_err(|why| bad(&crt_path, why))?;
    let certified = CertifiedKey::new(certs, signer);
    certified.keys_match().map_err(|e| {
        bad(
            &key_path,
            format!("the key does not belong to {name}.crt: {e}"),
        )
    })?;
    debug!(pair = name, names = ?names, "certificate pair loaded");
    Ok(Pair {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names of a certificate: its subjectAltName DNS entries, else its
/// common name; lowercased.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    Ok(names)
}

/// Accepts TLS on a listener's connections.
pub struct Terminator {
    acceptor: tokio_rustls::TlsAcceptor,
    metrics: Arc<Metrics>,
}

impl Terminator {
    pub fn new(config: Arc<rustls::ServerConfig>, metrics: Arc<Metrics>) -> Terminator {
        Terminator {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            metrics,
        }
    }

    /// The handshake; `None` (counted and logged at debug) when it fails.
    pub async fn accept(&self, stream: Stream) -> Option<Stream> {
        let tls = &self.metrics.tls;
        let facts = Wrapped::new((), &*stream);
        let tls_stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Err(_) => {
                    tls.error("timeout").inc();
                    debug!("TLS handshake timed out");
                    return None;
                }
                Ok(Err(e)) => {
                    let reason = if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                        "protocol"
                    } else {
                        "io"
                    };
                    tls.error(reason).inc();
                    debug!(error = %e, "TLS handshake failed");
                    return None;
                }
                Ok(Ok(s)) => s,
            };
        let conn = tls_stream.get_ref().1;
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => {
                tls.by_protocol[0].inc();
                Some(ALPN::H2)
            }
            Some(b"http/1.1") => {
                tls.by_protocol[1].inc();
                Some(ALPN::H1)
            }
            _ => {
                tls.by_protocol[2].inc();
                None
            }
        };
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("");
        let digest = SslDigest::new(cipher, version, None, None, Vec::new());
        let wrapped = Wrapped::new(tls_stream, &facts)
            .with_alpn(alpn)
            .with_ssl(Some(Arc::new(digest)));
        Some(Box::new(wrapped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        Pair {
            names: dns_names(cert.der()).unwrap(),
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let mut pairs = BTreeMap::new();
        pairs.insert("default".to_string(), pair(&["localhost"]));
        pairs.insert("shop".to_string(), pair(&["shop.example.com"]));
        pairs.insert("lanes".to_string(), pair(&["*.lanes.test", "lanes.test"]));
        let certs = Certs::index(pairs.clone(), "default");
        let same = |a: Option<Arc<CertifiedKey>>, b: &str| {
            Arc::ptr_eq(&a.expect("a certificate"), &pairs[b].key)
        };
        assert!(same(certs.pick(Some("Shop.Example.Com.")), "shop"));
        assert!(same(certs.pick(Some("t-42.lanes.test")), "lanes"));
        assert!(same(certs.pick(Some("lanes.test")), "lanes"));
        // A wildcard covers one label only.
        assert!(same(
            certs.pick(Some("bj.example.com.t-42.lanes.test")),
            "default"
        ));
        assert!(same(certs.pick(Some("other.example.org")), "default"));
        assert!(same(certs.pick(None), "default"));
        assert!(certs.covers("SHOP.example.com."));
        assert!(certs.covers("t-42.lanes.test"));
        assert!(certs.covers("localhost"));
        assert!(!certs.covers("bj.example.com.t-42.lanes.test"));
        assert!(!certs.covers("other.example.org"));
    }
}
