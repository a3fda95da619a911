//! How laneway talks to a service's instances, from `[services.<name>]`:
//! TLS (with SNI, a CA file and verification, on by default) and HTTP/2
//! (ALPN `h2` over TLS, prior knowledge without). Compiled once at start
//! (CA files read and parsed); the request path only looks the service up.
//!
//! Requests to such services are carried by Pingora's upstream connectors,
//! which speak TLS (rustls) and HTTP/2 with connection pooling: the h1
//! engine hands a connection whose request targets one of them to the
//! Pingora engine (see [`super::h1`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};

use crate::config::ServiceConfig;

/// The upstream protocol of one service.
#[derive(Debug, Clone)]
pub struct UpstreamProto {
    pub tls: bool,
    pub sni: Option<String>,
    pub verify: bool,
    pub h2: bool,
    pub ca: Option<Arc<CaType>>,
    /// Keeps pooled upstream connections apart per service: two services
    /// at one address with different CAs never share a verified connection.
    pub group: u64,
}

/// Services with an upstream protocol other than plain HTTP/1.1.
pub type Services = HashMap<String, Arc<UpstreamProto>>;

/// Errors compiling `[services.<name>]`.
#[derive(Debug, thiserror::Error)]
#[error("[services.{service}] ca_file {path}: {why}")]
pub struct ServiceError {
    service: String,
    path: String,
    why: String,
}

/// Compiles the `[services]` tables, reading their CA files.
pub fn compile(
    services: &std::collections::BTreeMap<String, ServiceConfig>,
) -> Result<Services, ServiceError> {
    let mut out = HashMap::new();
    for (name, cfg) in services.iter().filter(|(_, c)| c.is_special()) {
        let ca = match &cfg.ca_file {
            None => None,
            Some(path) => {
                let err = |why: String| ServiceError {
                    service: name.clone(),
                    path: path.display().to_string(),
                    why,
                };
                let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                let mut certs = Vec::new();
                for der in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let der = der.map_err(|e| err(format!("not PEM: {e}")))?;
                    // Checked here so that the parse below cannot fail.
                    x509_parser::parse_x509_certificate(der.as_ref())
                        .map_err(|e| err(format!("not an X.509 certificate: {e}")))?;
                    certs.push(WrappedX509::new(der.to_vec(), |raw: &Vec<u8>| {
                        parse_x509(raw)
                    }));
                }
                if certs.is_empty() {
                    return Err(err("no CERTIFICATE block in the file".into()));
                }
                Some(Arc::<CaType>::from(certs))
            }
        };
        out.insert(
            name.clone(),
            Arc::new(UpstreamProto {
                tls: cfg.tls,
                sni: cfg.sni.clone(),
                verify: cfg.verify,
                h2: cfg.h2,
                ca,
                group: {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    name.hash(&mut h);
                    h.finish()
                },
            }),
        );
    }
    Ok(out)
}

impl UpstreamProto {
    /// The Pingora peer for instance `addr`; `host` is the request's
    /// production host (the SNI when none is configured).
    pub fn peer(&self, addr: SocketAddr, host: &str) -> HttpPeer {
        let sni = match (&self.sni, self.tls) {
            (Some(s), _) => s.clone(),
            (None, true) => crate::routing::lanes::strip_port(host).to_string(),
            (None, false) => String::new(),
        };
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        peer.options.alpn = if self.h2 { ALPN::H2 } else { ALPN::H1 };
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.group_key = self.group;
        peer
    }
}
