//! `CONNECT` on lane entries, shared by both engines' connection loops
//! ([`super::h1`], [`super::pingora_conn`]). Request path.
//!
//! A browser pointed at a lane by its PAC file (`/api/v1/lanes/<name>/pac`)
//! asks for HTTPS pages with `CONNECT bj.example.com:443`. laneway is no
//! open proxy: it does not tunnel to the host, it answers `200 Connection
//! Established` and terminates TLS itself with the certificate `[tls]
//! certs` holds for the name ([`super::tls`]), then serves the decrypted
//! requests like those of an HTTPS listener: HTTP/1.1 on the engine of the
//! connection, HTTP/2 (ALPN `h2`) on the Pingora engine, scheme `https`.
//!
//! The lane is the entry's: the decrypted stream keeps the socket digest of
//! the connection, so its destination is still the VIP or pool port the
//! client connected to. The tunnel's port (the `:443` of the CONNECT)
//! travels in the same digest as its original destination
//! (`SocketDigest::original_dst`, which laneway sets only here): the
//! requests are routed among the servers of that nginx port, as nginx
//! routes a `listen 443 ssl` server, rather than those of the plain
//! listener ([`nginx_port`]).
//!
//! Refused, each answered with `Connection: close`, counted in
//! `laneway_connect_total{result}` and access-logged (local reason
//! `connect`, the result as the error):
//!
//! | CONNECT                                                   | status | result |
//! |-----------------------------------------------------------|--------|--------|
//! | target not `host:port`                                    | 400 | `bad_target` |
//! | on a connection that is not a lane entry (a listen address, a free VIP or port, a TLS connection) | 403 | `not_entry` |
//! | to a port other than 443 and the rules' `ssl_ports`       | 403 | `port` |
//! | to a host no server name of the rules matches             | 403 | `not_served` |
//! | to a served host `[tls] certs` has no certificate for     | 502 | `no_certificate` |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora_core::protocols::l4::socket::SocketAddr as DigestAddr;
use pingora_core::protocols::{SocketDigest, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::ports::ListenPorts;
use super::stream::Wrapped;
use super::tls::{CertStore, Terminator, TlsError};
use crate::routing::snapshot::Snapshot;
use crate::telemetry::Metrics;

/// The port browsers CONNECT to for HTTPS, accepted whatever the rules say.
const HTTPS_PORT: u16 = 443;
/// How long a refusal may take to write, and how long the client's
/// remaining bytes are then read before the connection closes.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// What the connection loops need to answer `CONNECT`: the routing
/// snapshot (entries, rules) and the certificates. One per process.
pub struct Tunnels {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// `[tls] certs`, when `[tls]` is configured.
    certs: Option<(Arc<CertStore>, Terminator)>,
    cert_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

impl Tunnels {
    /// `certs`: the `[tls] certs` store, when `[tls]` is configured.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        certs: Option<Arc<CertStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<Tunnels, TlsError> {
        let (certs, cert_dir) = match certs {
            Some(store) => {
                let terminator = Terminator::new(store.server_config()?, metrics.clone());
                let dir = store.dir().to_path_buf();
                (Some((store, terminator)), Some(dir))
            }
            None => (None, None),
        };
        Ok(Tunnels {
            snapshot,
            certs,
            cert_dir,
            metrics,
        })
    }
}

/// A CONNECT laneway accepted: the host and port the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub host: String,
    pub port: u16,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadTarget(String),
    NotEntry(Option<SocketAddr>),
    Port { host: String, port: u16 },
    NotServed(String),
    NoCertificate { host: String, dir: Option<PathBuf> },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadTarget(_) => 400,
            Refusal::NotEntry(_) | Refusal::Port { .. } | Refusal::NotServed(_) => 403,
            Refusal::NoCertificate { .. } => 502,
        }
    }

    /// The `result` label of `laneway_connect_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Refusal::BadTarget(_) => "bad_target",
            Refusal::NotEntry(_) => "not_entry",
            Refusal::Port { .. } => "port",
            Refusal::NotServed(_) => "not_served",
            Refusal::NoCertificate { .. } => "no_certificate",
        }
    }

    /// The answer's body: the problem and what to do instead.
    pub fn message(&self) -> String {
        match self {
            Refusal::BadTarget(t) => format!(
                "laneway: CONNECT target {t:?} is not host:port (e.g. CONNECT bj.example.com:443)\n"
            ),
            Refusal::NotEntry(local) => format!(
                "laneway: CONNECT is accepted only on a lane's entry (the VIP or pool port a lane holds, plain HTTP); {} is not one. Use the lane's PAC file: GET /api/v1/lanes/<lane>/pac on the admin listener\n",
                local.map_or("this address".to_string(), |a| a.to_string())
            ),
            Refusal::Port { host, port } => format!(
                "laneway: CONNECT to {host}:{port} refused: laneway serves CONNECT only to port 443 and the rules' ssl_ports\n"
            ),
            Refusal::NotServed(host) => format!(
                "laneway: CONNECT to {host} refused: laneway is not an open proxy, and no server name of the rules matches {host}\n"
            ),
            Refusal::NoCertificate { host, dir: Some(dir) } => format!(
                "laneway: no certificate for {host} in the [tls] certs directory {}; add <name>.crt + <name>.key covering {host} (the test CA can issue one)\n",
                dir.display()
            ),
            Refusal::NoCertificate { host, dir: None } => format!(
                "laneway: no certificate for {host}: HTTPS through a lane needs [tls] certs, a directory holding a certificate for {host}\n"
            ),
        }
    }
}

/// Splits a CONNECT target `host:port` (`[v6]:port` included).
fn split_target(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return None;
    }
    Some((host, port))
}

/// The checks, in order, of a CONNECT to `target` received on a
/// connection to `local` (`tls`: the connection is TLS already).
pub fn check(
    snap: &Snapshot,
    certs: Option<&CertStore>,
    cert_dir: Option<&PathBuf>,
    local: Option<SocketAddr>,
    tls: bool,
    target: &str,
) -> Result<Accepted, Refusal> {
    let entry = local.filter(|l| {
        !tls && (snap.lane_by_port(l.port()).is_some() || snap.lane_by_vip(l.ip()).is_some())
    });
    if entry.is_none() {
        return Err(Refusal::NotEntry(local));
    }
    let (host, port) =
        split_target(target).ok_or_else(|| Refusal::BadTarget(target.to_string()))?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if port != HTTPS_PORT && !snap.rules.ssl_ports().contains(&port) {
        return Err(Refusal::Port { host, port });
    }
    if !snap.rules.serves_host(&host) {
        return Err(Refusal::NotServed(host));
    }
    if !certs.is_some_and(|c| c.covers(&host)) {
        return Err(Refusal::NoCertificate {
            host,
            dir: cert_dir.cloned(),
        });
    }
    Ok(Accepted { host, port })
}

/// Answers a CONNECT request head (`head`, checked by the framing rules)
/// on `io`: `200 Connection Established` when accepted (the caller then
/// calls [`terminate`]), else the refusal, with `Connection: close` (the
/// caller then closes). Counted and access-logged either way.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    tunnels: &Tunnels,
    io: &mut S,
    head: &[u8],
    target: &str,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    tls: bool,
) -> Option<Accepted> {
    let started = std::time::Instant::now();
    let snap = tunnels.snapshot.load();
    let checked = check(
        &snap,
        tunnels.certs.as_ref().map(|(c, _)| &**c),
        tunnels.cert_dir.as_ref(),
        local,
        tls,
        target,
    );
    match checked {
        Ok(accepted) => {
            tunnels.metrics.tls.connect("tunnel").inc();
            debug!(host = %accepted.host, port = accepted.port, local = ?local, "CONNECT accepted; terminating TLS");
            log(&snap, head, target, peer, local, 200, None, started);
            let write = async {
                io.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await?;
                io.flush().await
            };
            match write.await {
                Ok(()) => Some(accepted),
                Err(e) => {
                    debug!(error = %e, "client gone before the CONNECT answer");
                    None
                }
            }
        }
        Err(r) => {
            tunnels.metrics.tls.connect(r.result()).inc();
            debug!(target, local = ?local, result = r.result(), "CONNECT refused");
            log(
                &snap,
                head,
                target,
                peer,
                local,
                r.status(),
                Some(r.result()),
                started,
            );
            let body = r.message();
            let reason = http::StatusCode::from_u16(r.status())
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let resp = format!(
                "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                r.status(),
                body.len()
            );
            let write = async {
                io.write_all(resp.as_bytes()).await?;
                io.shutdown().await
            };
            match tokio::time::timeout(LINGER, write).await {
                Ok(Ok(())) => linger(io).await,
                Ok(Err(e)) => debug!(error = %e, "cannot write the CONNECT refusal"),
                Err(_) => debug!("client does not read the CONNECT refusal; closing"),
            }
            None
        }
    }
}

/// Reads what the client still sends (a TLS ClientHello sent without
/// waiting for the answer) for up to [`LINGER`] after a refusal, so that
/// closing with unread bytes does not reset the connection before the
/// client has read the refusal.
async fn linger<S: AsyncRead + Unpin + ?Sized>(io: &mut S) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut drained = 0;
    let mut scratch = [0u8; 4096];
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, io.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// The access line of a CONNECT: the entry's lane, local reason
/// `connect`, and the refusal's `result` as its error.
#[allow(clippy::too_many_arguments)]
fn log(
    snap: &Snapshot,
    head: &[u8],
    target: &str,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    status: u16,
    refused: Option<&str>,
    started: std::time::Instant,
) {
    let entry = local.and_then(|l| {
        snap.lane_by_port(l.port())
            .map(|v| (v, "port"))
            .or_else(|| snap.lane_by_vip(l.ip()).map(|v| (v, "vip")))
    });
    let (lane, lane_source) = entry
        .map_or((crate::allocation::lanes::BASELINE, "default"), |(v, s)| {
            (&*v.name, s)
        });
    let host = head
        .split(|&b| b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            l[..colon]
                .eq_ignore_ascii_case(b"host")
                .then(|| l[colon + 1..].trim_ascii())
        })
        .and_then(|h| std::str::from_utf8(h).ok());
    crate::telemetry::access::log(&crate::telemetry::access::AccessRecord {
        client: peer,
        method: "CONNECT",
        host,
        uri: target,
        lane,
        lane_source,
        lane_unknown: None,
        service: None,
        version: None,
        upstream: None,
        tries: 0,
        local: Some("connect"),
        status,
        duration: started.elapsed(),
        upstream_duration: None,
        error: refused,
    });
}

/// After [`answer`] accepted: terminates TLS on `stream` (`rest`: bytes the
/// client sent after the CONNECT head, read again first) and returns the
/// decrypted stream, its original destination set to the entry's IP at
/// the CONNECT port. `None` when the handshake fails (counted by the
/// terminator).
pub async fn terminate(
    tunnels: &Tunnels,
    stream: Stream,
    rest: Bytes,
    accepted: &Accepted,
) -> Option<Stream> {
    let (_, terminator) = tunnels.certs.as_ref()?;
    if let Some(digest) = stream.get_socket_digest() {
        let local = digest.local_addr().and_then(|a| a.as_inet()).copied();
        if let Some(local) = local {
            let tunnel = SocketAddr::new(local.ip(), accepted.port);
            if digest
                .original_dst
                .set(Some(DigestAddr::Inet(tunnel)))
                .is_err()
            {
                debug!("connection digest holds an original destination already; routing by the listener's port");
            }
        }
    }
    let stream: Stream = if rest.is_empty() {
        stream
    } else {
        let facts = Wrapped::new((), &*stream);
        Box::new(Wrapped::new(stream, &facts).with_prefix(rest))
    };
    terminator.accept(stream).await
}

/// The nginx port a connection's requests are routed with: a CONNECT
/// tunnel's port ([`terminate`]), else the listener's
/// ([`ListenPorts::port_of`]).
#[inline]
pub fn nginx_port(
    ports: &ListenPorts,
    local: Option<SocketAddr>,
    digest: Option<&SocketDigest>,
) -> u16 {
    // `get`, not `original_dst()`: the getter would ask the kernel
    // (SO_ORIGINAL_DST); only a tunnel sets the field.
    if let Some(Some(DigestAddr::Inet(tunnel))) = digest.and_then(|d| d.original_dst.get()) {
        return tunnel.port();
    }
    ports.port_of(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(
            split_target("bj.example.com:443"),
            Some(("bj.example.com", 443))
        );
        assert_eq!(split_target("[::1]:8443"), Some(("[::1]", 8443)));
        assert_eq!(split_target("bj.example.com"), None);
        assert_eq!(split_target("bj.example.com:0"), None);
        assert_eq!(split_target(":443"), None);
        assert_eq!(split_target("bj.example.com:https"), None);
    }

    #[test]
    fn a_tunnels_port_is_the_nginx_port_of_its_requests() {
        let ports = ListenPorts::default();
        let entry: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let digest = SocketDigest::from_raw_fd(-1);
        assert_eq!(nginx_port(&ports, Some(entry), Some(&digest)), 0);
        assert!(digest.original_dst.get().is_none(), "no kernel query");
        digest
            .original_dst
            .set(Some(DigestAddr::Inet("127.0.0.2:443".parse().unwrap())))
            .unwrap();
        assert_eq!(nginx_port(&ports, Some(entry), Some(&digest)), 443);
    }

    #[test]
    fn refusals_name_the_problem_and_the_fix() {
        let r = Refusal::NotServed("evil.test".into());
        assert_eq!(r.status(), 403);
        assert!(r.message().contains("not an open proxy"), "{}", r.message());
        let r = Refusal::NoCertificate {
            host: "bj.example.com".into(),
            dir: Some(PathBuf::from("/etc/laneway/certs")),
        };
        assert_eq!((r.status(), r.result()), (502, "no_certificate"));
        assert!(
            r.message().contains("/etc/laneway/certs"),
            "{}",
            r.message()
        );
        let r = Refusal::NotEntry(Some("127.0.0.1:8080".parse().unwrap()));
        assert!(r.message().contains("lane's entry"), "{}", r.message());
        assert!(r.message().contains("127.0.0.1:8080"), "{}", r.message());
        let r = Refusal::Port {
            host: "bj.example.com".into(),
            port: 22,
        };
        assert!(r.message().contains("443"), "{}", r.message());
    }
}
