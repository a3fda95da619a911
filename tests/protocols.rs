//! End-to-end protocols of the data plane: TLS with SNI (two names, a
//! wildcard, the default), certificate hot reload, HTTP/2 over TLS and h2c,
//! gRPC unary and server streaming (tonic, both ways in and over TLS and
//! h2c upstream), WebSocket across snapshot swaps, the body size limit, and
//! the lane in W3C baggage.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------ certificates

/// A test CA and leaf certificates it signs, written as PEM pairs.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `names`; returns (cert PEM, key PEM, cert DER).
    fn leaf(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// Writes `<dir>/<name>.crt` and `.key` (each atomically: temp file and
    /// rename); returns the certificate's DER.
    fn write_pair(&self, dir: &Path, name: &str, names: &[&str]) -> Vec<u8> {
        let (crt, key, der) = self.leaf(names);
        write_atomic(&dir.join(format!("{name}.key")), key.as_bytes());
        write_atomic(&dir.join(format!("{name}.crt")), crt.as_bytes());
        der
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate: the tests compare the certificate
/// laneway chose with the expected one instead.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client config: verifying against `ca`, or accepting anything.
fn client_config(ca: Option<&str>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut cfg = match ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` with `sni` (an IP address sends no SNI).
async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// The DER of the certificate laneway presents for `sni`.
async fn served_cert(addr: SocketAddr, sni: &str) -> Vec<u8> {
    let tls = tls_connect(addr, sni, client_config(None, &[b"http/1.1"]))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {sni}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 request on `io`, `connection: close`; the raw response.
async fn h1_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
    target: &str,
    extra: &str,
) -> String {
    let req = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n{extra}\r\n");
    io.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = io.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn json_body(raw: &str) -> serde_json::Value {
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
}

/// A directory of certificates for laneway: default (also 127.0.0.1),
/// shop.example.com, and *.lanes.test.
struct CertDir {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    pki: Pki,
    default: Vec<u8>,
    shop: Vec<u8>,
    lanes: Vec<u8>,
}

fn cert_dir() -> CertDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    std::fs::create_dir(&dir).unwrap();
    let pki = Pki::new("laneway test CA");
    let default = pki.write_pair(&dir, "default", &["default.test", "127.0.0.1"]);
    let shop = pki.write_pair(&dir, "shop", &["shop.example.com"]);
    let lanes = pki.write_pair(&dir, "lanes", &["*.lanes.test", "lanes.test"]);
    CertDir {
        _tmp: tmp,
        dir,
        pki,
        default,
        shop,
        lanes,
    }
}

fn tls_section(addr: SocketAddr, dir: &Path) -> String {
    format!(
        "[tls]\nlisten = [\"{addr}\"]\ncerts = \"{}\"\ndefault_cert = \"default\"\n",
        dir.display()
    )
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_listening(addr: SocketAddr) {
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "{addr} is not listening"
    );
}

fn metric(lw: &Laneway, line_prefix: &str) -> f64 {
    let (_, text) = lw.api("GET", "/metrics", None);
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------ TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_picks_certificates_by_sni_with_a_wildcard_and_a_default() {
    let certs = cert_dir();
    let tls = loopback(free_port());
    let lw = Laneway::start(SIMPLE_ROUTES, &tls_section(tls, &certs.dir));
    wait_listening(tls);
    let up = Upstream::start("web");
    lw.register("web-1", "web", None, up.port());

    assert_eq!(served_cert(tls, "shop.example.com").await, certs.shop);
    assert_eq!(served_cert(tls, "t-42.lanes.test").await, certs.lanes);
    assert_eq!(served_cert(tls, "LANES.test").await, certs.lanes);
    assert_eq!(served_cert(tls, "nothing.example.org").await, certs.default);
    // An IP address sends no SNI at all.
    assert_eq!(served_cert(tls, "127.0.0.1").await, certs.default);

    // HTTPS/1.1 through the h1 engine, verified against the test CA; the
    // upstream is told the scheme was https.
    let ca = certs.pki.ca_pem();
    let io = tls_connect(
        tls,
        "shop.example.com",
        client_config(Some(&ca), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let raw = h1_over(io, "shop.example.com", "/over-tls", "").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let echo = json_body(&raw);
    assert_eq!(echo["target"], "/over-tls");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");

    // A client that does not trust the CA fails the handshake; it is counted.
    let untrusted = Pki::new("someone else").ca_pem();
    assert!(tls_connect(
        tls,
        "shop.example.com",
        client_config(Some(&untrusted), &[])
    )
    .await
    .is_err());
    let mut plain = TcpStream::connect(tls).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = plain.read(&mut [0u8; 64]).await;
    assert!(eventually(Duration::from_secs(5), || {
        metric(
            &lw,
            "laneway_tls_handshake_errors_total{reason=\"protocol\"}",
        ) >= 1.0
    }));
    assert!(metric(&lw, "laneway_tls_handshakes_total{protocol=\"http/1.1\"}") >= 6.0);
    assert_eq!(metric(&lw, "laneway_tls_certificates"), 3.0);
}

/// Servers chosen by nginx port: a `[tls] listen` listener stands for port
/// 443 and a `[proxy] listen` one for port 80 unless `[routes.nginx_listen]`
/// says otherwise, for HTTPS/1.1 (h1 engine) and HTTP/2 (Pingora engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_stand_for_nginx_port_443_by_default() {
    let certs = cert_dir();
    let tls = loopback(free_port());
    let routes = r#"
[[server]]
names = ["www.example.test"]
ports = [80]
[[server.location]]
match = "/"
service = "plain-web"

[[server]]
names = ["www.example.test"]
ports = [443]
ssl_ports = [443]
[[server.location]]
match = "/"
service = "secure-web"
"#;
    let lw = Laneway::start(routes, &tls_section(tls, &certs.dir));
    wait_listening(tls);
    let plain = Upstream::start("plain-web");
    let secure = Upstream::start("secure-web");
    lw.register("p-1", "plain-web", None, plain.port());
    lw.register("s-1", "secure-web", None, secure.port());

    assert_eq!(
        lw.get("www.example.test", "/a", &[]).upstream(),
        "plain-web"
    );
    let io = tls_connect(tls, "www.example.test", client_config(None, &[b"http/1.1"]))
        .await
        .unwrap();
    let raw = h1_over(io, "www.example.test", "/b", "").await;
    assert_eq!(json_body(&raw)["upstream"], "secure-web", "{raw}");
    let io = tls_connect(tls, "www.example.test", client_config(None, &[b"h2"]))
        .await
        .unwrap();
    let (status, _, body) = h2_request(io, "GET", "https://www.example.test/c", &[], None).await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["upstream"], "secure-web", "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_and_a_bad_file_keeps_the_previous_one() {
    let certs = cert_dir();
    let tls = loopback(free_port());
    let lw = Laneway::start(SIMPLE_ROUTES, &tls_section(tls, &certs.dir));
    wait_listening(tls);
    assert_eq!(served_cert(tls, "shop.example.com").await, certs.shop);

    // A new pair for the same name: the next handshakes see it.
    let renewed =
        certs
            .pki
            .write_pair(&certs.dir, "shop", &["shop.example.com", "www.example.com"]);
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen = served_cert(tls, "shop.example.com").await;
        if seen == renewed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, renewed, "the renewed certificate is served");
    assert_eq!(served_cert(tls, "www.example.com").await, renewed);

    // A new pair appears: its name is served.
    let api = certs
        .pki
        .write_pair(&certs.dir, "api", &["api.example.com"]);
    for _ in 0..500 {
        if served_cert(tls, "api.example.com").await == api {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_cert(tls, "api.example.com").await, api);

    // A broken certificate file: logged, counted, the previous one stays.
    let errors_before = metric(&lw, "laneway_tls_cert_errors_total");
    write_atomic(
        &certs.dir.join("shop.crt"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &lw,
            "laneway_tls_cert_errors_total"
        ) > errors_before),
        "the bad file is counted:\n{}",
        lw.log()
    );
    assert_eq!(served_cert(tls, "shop.example.com").await, renewed);
    assert!(lw.log().contains("shop.crt"), "the log names the file");
    // A key that belongs to another certificate is refused the same way.
    let (other_crt, _, _) = certs.pki.leaf(&["shop.example.com"]);
    write_atomic(&certs.dir.join("shop.crt"), other_crt.as_bytes());
    let errors_before = metric(&lw, "laneway_tls_cert_errors_total");
    assert!(eventually(Duration::from_secs(10), || metric(
        &lw,
        "laneway_tls_cert_errors_total"
    ) > errors_before));
    assert_eq!(served_cert(tls, "shop.example.com").await, renewed);
    assert_eq!(served_cert(tls, "t-1.lanes.test").await, certs.lanes);
}

#[test]
fn a_missing_default_certificate_stops_laneway_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("default.crt"), "garbage").unwrap();
    std::fs::write(dir.join("default.key"), "garbage").unwrap();
    let config = tmp.path().join("laneway.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n[admin]\nlisten = \"127.0.0.1:{}\"\n[store]\ndata_dir = \"data\"\n{}",
            free_port(),
            free_port(),
            tls_section(loopback(free_port()), &dir)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default_cert \"default\"") && err.contains("default.crt"),
        "{err}"
    );
    // `laneway check` finds it offline too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default.crt: no CERTIFICATE block"), "{err}");
}

// ---------------------------------------------------------------- HTTP/2

/// One HTTP/2 request on `io`; status, headers and body.
async fn h2_request<S>(
    io: S,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, http::HeaderMap, Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let end = body.is_none();
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), end).unwrap();
    if let Some(body) = body {
        // In pieces, so a streamed body crosses the limit mid-way.
        for piece in body.chunks(512) {
            send.reserve_capacity(piece.len());
            if send
                .send_data(Bytes::copy_from_slice(piece), false)
                .is_err()
            {
                break;
            }
        }
        let _ = send.send_data(Bytes::new(), true);
    }
    let resp = resp.await.expect("h2 response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, headers, Bytes::from(out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_and_h2c_reach_http1_upstreams() {
    let certs = cert_dir();
    let tls = loopback(free_port());
    let h2c = loopback(free_port());
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        &format!("h2c_listen = [\"{h2c}\"]"),
        "",
        &tls_section(tls, &certs.dir),
    );
    wait_listening(tls);
    wait_listening(h2c);
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    lw.register("web-1", "web", None, stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    lw.create_lane(r#"{"name":"t-42","services":{"web":"v2"}}"#);
    let ca = certs.pki.ca_pem();

    // TLS with ALPN h2, certificate verified.
    let io = tls_connect(
        tls,
        "shop.example.com",
        client_config(Some(&ca), &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, headers, body) =
        h2_request(io, "GET", "https://shop.example.com/h2?x=1", &[], None).await;
    assert_eq!(status, 200, "{body:?}");
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["upstream"], "stable");
    assert_eq!(echo["target"], "/h2?x=1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echo["headers"]["host"], "shop.example.com");
    assert_eq!(headers["x-laneway-lane"], "baseline");

    // A lane hostname over h2: the wildcard certificate, the lane's version.
    let io = tls_connect(tls, "t-42.lanes.test", client_config(Some(&ca), &[b"h2"]))
        .await
        .unwrap();
    let (status, _, body) = h2_request(io, "GET", "https://t-42.lanes.test/", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["upstream"],
        "v2"
    );

    // h2c with prior knowledge, the lane from baggage.
    let io = TcpStream::connect(h2c).await.unwrap();
    let (status, headers, body) = h2_request(
        io,
        "POST",
        "http://shop.example.com/h2c",
        &[
            ("baggage", "userId=alice,laneway-lane=t-42"),
            ("content-length", "9"),
        ],
        Some(b"hello h2c".to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["upstream"], "v2");
    assert_eq!(echo["body"], "hello h2c");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echo["headers"]["baggage"], "userId=alice,laneway-lane=t-42");
    assert_eq!(headers["x-laneway-version"], "v2");

    // HTTP/1.1 on the h2c listener still works.
    let raw = h1_over(
        TcpStream::connect(h2c).await.unwrap(),
        "shop.example.com",
        "/h1",
        "",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(json_body(&raw)["upstream"], "stable");
    assert!(metric(&lw, "laneway_tls_handshakes_total{protocol=\"h2\"}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_vip_selects_its_lane_on_https_and_h2c_listeners() {
    let certs = cert_dir();
    let tls = loopback(free_port());
    let h2c = loopback(free_port());
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        &format!("h2c_listen = [\"{h2c}\"]"),
        "vip_pool = [\"127.0.77.2-127.0.77.9\"]",
        &tls_section(tls, &certs.dir),
    );
    wait_listening(tls);
    wait_listening(h2c);
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    lw.register("web-1", "web", None, stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    let (status, lane) = lw.create_lane(r#"{"name":"t-7","services":{"web":"v2"}}"#);
    assert_eq!(status, 201, "{lane}");
    let vip: std::net::IpAddr = lane["entries"]["vip"].as_str().unwrap().parse().unwrap();
    let ca = certs.pki.ca_pem();
    let vip_tls = SocketAddr::new(vip, tls.port());
    let vip_h2c = SocketAddr::new(vip, h2c.port());
    wait_listening(vip_tls);

    // HTTPS/1.1 and h2 to the VIP at the TLS port: the lane, no header.
    let io = tls_connect(
        vip_tls,
        "shop.example.com",
        client_config(Some(&ca), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let raw = h1_over(io, "shop.example.com", "/vip", "").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(json_body(&raw)["upstream"], "v2", "{raw}");
    let io = tls_connect(
        vip_tls,
        "shop.example.com",
        client_config(Some(&ca), &[b"h2"]),
    )
    .await
    .unwrap();
    let (status, headers, body) =
        h2_request(io, "GET", "https://shop.example.com/vip", &[], None).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(headers["x-laneway-lane"], "t-7");
    // h2c prior knowledge to the VIP at the h2c port.
    let io = TcpStream::connect(vip_h2c).await.unwrap();
    let (status, _, body) = h2_request(io, "GET", "http://shop.example.com/vip", &[], None).await;
    assert_eq!(status, 200, "{body:?}");
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["upstream"], "v2");

    // The listen address itself is still the baseline.
    let io = tls_connect(
        tls,
        "shop.example.com",
        client_config(Some(&ca), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let raw = h1_over(io, "shop.example.com", "/plain", "").await;
    assert_eq!(json_body(&raw)["upstream"], "stable", "{raw}");
}

// ------------------------------------------------------------------ gRPC

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    /// The lane header and baggage the server received.
    #[prost(string, tag = "2")]
    lane: String,
    #[prost(string, tag = "3")]
    baggage: String,
}

/// A gRPC echo service without generated code: `<any>/Unary` answers once,
/// `<any>/Stream` answers `count` times.
#[derive(Clone)]
struct EchoService {
    name: &'static str,
}

fn reply(name: &str, meta: &tonic::metadata::MetadataMap, message: String) -> EchoReply {
    let get = |k: &str| {
        meta.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    EchoReply {
        message: format!("{name}: {message}"),
        lane: get("x-laneway-lane"),
        baggage: get("baggage"),
    }
}

struct Unary(&'static str);

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = tonic::codegen::BoxFuture<tonic::Response<EchoReply>, tonic::Status>;
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let r = reply(self.0, req.metadata(), req.get_ref().message.clone());
        Box::pin(async move { Ok(tonic::Response::new(r)) })
    }
}

struct ServerStream(&'static str);

type ReplyStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

// tonic's own signature: the stream's items are `Result<_, Status>`.
#[allow(clippy::result_large_err)]
impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = tonic::codegen::BoxFuture<tonic::Response<ReplyStream>, tonic::Status>;
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let name = self.0;
        let meta = req.metadata().clone();
        let msg = req.into_inner();
        let replies: Vec<_> = (0..msg.count)
            .map(|i| Ok(reply(name, &meta, format!("{} #{i}", msg.message))))
            .collect();
        Box::pin(async move {
            Ok(tonic::Response::new(
                Box::pin(futures_util::stream::iter(replies)) as ReplyStream,
            ))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for EchoService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let name = self.name;
        let path = req.uri().path().to_string();
        Box::pin(async move {
            let codec = tonic::codec::ProstCodec::<EchoReply, EchoRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(if path.ends_with("/Unary") {
                grpc.unary(Unary(name), req).await
            } else if path.ends_with("/Stream") {
                grpc.server_streaming(ServerStream(name), req).await
            } else {
                http::Response::builder()
                    .header("grpc-status", "12")
                    .header("content-type", "application/grpc")
                    .body(tonic::body::empty_body())
                    .unwrap()
            })
        })
    }
}

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "echo.Echo";
}

/// Starts a gRPC server (h2c, or TLS with `identity`) on loopback.
async fn grpc_server(name: &'static str, identity: Option<(String, String)>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut builder = tonic::transport::Server::builder();
    if let Some((crt, key)) = identity {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(crt, key)),
            )
            .unwrap();
    }
    let router = builder.add_service(EchoService { name });
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

async fn grpc_unary(
    channel: tonic::transport::Channel,
    path: &'static str,
    lane: Option<&str>,
) -> Result<EchoReply, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(EchoRequest {
        message: "hi".into(),
        count: 0,
    });
    if let Some(lane) = lane {
        req.metadata_mut()
            .insert("x-laneway-lane", lane.parse().unwrap());
    }
    let codec = tonic::codec::ProstCodec::<EchoRequest, EchoReply>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|r| r.into_inner())
}

async fn grpc_stream(
    channel: tonic::transport::Channel,
    path: &'static str,
    count: u32,
) -> Vec<String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(EchoRequest {
        message: "s".into(),
        count,
    });
    let codec = tonic::codec::ProstCodec::<EchoRequest, EchoReply>::default();
    let mut stream = grpc
        .server_streaming(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .expect("server streaming call")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("stream message") {
        out.push(m.message);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_through_h2c_and_tls_to_h2c_and_tls_upstreams() {
    let certs = cert_dir();
    // The TLS upstream's certificate names grpc.internal, from the same CA.
    let (up_crt, up_key, _) = certs.pki.leaf(&["grpc.internal"]);
    let ca_file = certs.dir.parent().unwrap().join("upstream-ca.pem");
    std::fs::write(&ca_file, certs.pki.ca_pem()).unwrap();
    let wrong_ca = certs.dir.parent().unwrap().join("wrong-ca.pem");
    std::fs::write(&wrong_ca, Pki::new("not the upstream's CA").ca_pem()).unwrap();

    let plain_port = grpc_server("plain", None).await;
    let secure_port = grpc_server("secure", Some((up_crt, up_key))).await;
    let routes = r#"
[[server]]
names = ["shop.example.com"]
default = true
[[server.location]]
match = "/echo.Echo/"
service = "grpc"
[[server.location]]
match = "/secure.Echo/"
service = "grpc-tls"
rewrite = ["^/secure\\.Echo/(.*)$", "/echo.Echo/$1"]
[[server.location]]
match = "/badca.Echo/"
service = "grpc-badca"
rewrite = ["^/badca\\.Echo/(.*)$", "/echo.Echo/$1"]
"#;
    let tls = loopback(free_port());
    let h2c = loopback(free_port());
    let services = format!(
        "{}\n[services.grpc]\nh2 = true\n[services.grpc-tls]\ntls = true\nh2 = true\nsni = \"grpc.internal\"\nca_file = \"{}\"\n[services.grpc-badca]\ntls = true\nh2 = true\nsni = \"grpc.internal\"\nca_file = \"{}\"\n",
        tls_section(tls, &certs.dir),
        ca_file.display(),
        wrong_ca.display()
    );
    let lw = Laneway::start_full(routes, &format!("h2c_listen = [\"{h2c}\"]"), "", &services);
    wait_listening(tls);
    wait_listening(h2c);
    lw.register("grpc-1", "grpc", None, plain_port);
    lw.register("grpc-tls-1", "grpc-tls", None, secure_port);
    lw.register("grpc-badca-1", "grpc-badca", None, secure_port);
    lw.create_lane(r#"{"name":"t-9","services":{}}"#);

    let h2c_channel = tonic::transport::Endpoint::from_shared(format!("http://{h2c}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tls_channel = tonic::transport::Endpoint::from_shared(format!("https://{tls}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(certs.pki.ca_pem()))
                .domain_name("shop.example.com"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();

    for (how, channel) in [("h2c", &h2c_channel), ("tls", &tls_channel)] {
        // h2c upstream.
        let r = grpc_unary(channel.clone(), "/echo.Echo/Unary", Some("t-9"))
            .await
            .unwrap_or_else(|e| panic!("{how}: {e}\n{}", lw.log()));
        assert_eq!(r.message, "plain: hi", "{how}");
        assert_eq!(r.lane, "t-9", "{how}");
        assert_eq!(r.baggage, "laneway-lane=t-9", "{how}");
        let msgs = grpc_stream(channel.clone(), "/echo.Echo/Stream", 5).await;
        assert_eq!(
            msgs,
            (0..5).map(|i| format!("plain: s #{i}")).collect::<Vec<_>>(),
            "{how}"
        );
        // TLS upstream with the service's CA and SNI, verified.
        let r = grpc_unary(channel.clone(), "/secure.Echo/Unary", None)
            .await
            .unwrap_or_else(|e| panic!("{how}: {e}\n{}", lw.log()));
        assert_eq!(
            (r.message.as_str(), r.lane.as_str()),
            ("secure: hi", "baseline")
        );
        let msgs = grpc_stream(channel.clone(), "/secure.Echo/Stream", 3).await;
        assert_eq!(msgs.len(), 3, "{how}");
        // The wrong CA: verification fails, the call fails.
        assert!(
            grpc_unary(channel.clone(), "/badca.Echo/Unary", None)
                .await
                .is_err(),
            "{how}: an upstream the CA does not vouch for is refused"
        );
    }

    // An HTTP/1.1 client reaches an h2 upstream too (the h1 engine hands
    // the connection to the Pingora engine); gRPC needs HTTP/2 end to end,
    // so check the answer is the upstream's, not laneway's.
    let raw = h1_over(
        TcpStream::connect(lw.proxy).await.unwrap(),
        "shop.example.com",
        "/echo.Echo/Unary",
        "",
    )
    .await;
    assert!(
        raw.to_ascii_lowercase().contains("grpc-status") || raw.contains("application/grpc"),
        "{raw}"
    );
}

// ------------------------------------------------------------- WebSocket

/// A WebSocket echo server; each connection answers `<name>: <text>`.
async fn ws_server(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let back =
                            tokio_tungstenite::tungstenite::Message::Text(format!("{name}: {t}"));
                        if ws.send(back).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_survives_snapshot_swaps() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let first = ws_server("first").await;
    let second = ws_server("second").await;
    lw.register("ws-1", "web", None, first);

    let tcp = TcpStream::connect(lw.proxy).await.unwrap();
    let req = "ws://shop.example.com/socket"
        .into_client_request()
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-laneway-lane"], "baseline");
    ws.send(Message::Text("one".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("first: one".into())
    );

    // New snapshots mid-stream: another instance, then the serving one gone
    // from the registry. The open stream stays with its upstream.
    lw.register("ws-2", "web", None, second);
    ws.send(Message::Text("two".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("first: two".into())
    );
    lw.deregister("ws-1");
    for i in 0..20 {
        let text = format!("after swap {i}");
        ws.send(Message::Text(text.clone())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text(format!("first: {text}"))
        );
    }
    // New WebSockets go to what the registry says now.
    let tcp = TcpStream::connect(lw.proxy).await.unwrap();
    let req = "ws://shop.example.com/socket"
        .into_client_request()
        .unwrap();
    let (mut ws2, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    ws2.send(Message::Text("new".into())).await.unwrap();
    assert_eq!(
        ws2.next().await.unwrap().unwrap(),
        Message::Text("second: new".into())
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_https_reaches_the_lanes_version() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let certs = cert_dir();
    let tls = loopback(free_port());
    let lw = Laneway::start(SIMPLE_ROUTES, &tls_section(tls, &certs.dir));
    wait_listening(tls);
    let stable = ws_server("stable").await;
    let v2 = ws_server("v2").await;
    lw.register("ws-1", "web", None, stable);
    lw.register("ws-2", "web", Some("v2"), v2);
    assert_eq!(
        lw.create_lane(r#"{"name":"t-3","services":{"web":"v2"}}"#)
            .0,
        201
    );
    let ca = certs.pki.ca_pem();
    for (host, want) in [("shop.example.com", "stable"), ("t-3.lanes.test", "v2")] {
        let io = tls_connect(tls, host, client_config(Some(&ca), &[b"http/1.1"]))
            .await
            .unwrap();
        let req = format!("wss://{host}/socket")
            .into_client_request()
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, io).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..3 {
            ws.send(Message::Text(format!("m{i}"))).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::Text(format!("{want}: m{i}")),
                "{host}"
            );
        }
        ws.close(None).await.unwrap();
    }
}

// ------------------------------------------------------------ body limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_max_body_size_get_413() {
    let h2c = loopback(free_port());
    let lw = Laneway::start_full(
        SIMPLE_ROUTES,
        &format!("max_body_size = \"1k\"\nh2c_listen = [\"{h2c}\"]"),
        "",
        "",
    );
    wait_listening(h2c);
    let up = Upstream::start("web");
    lw.register("web-1", "web", None, up.port());

    // Within the limit.
    let mut conn = Conn::open(lw.proxy).unwrap();
    let r = conn
        .request(
            "POST",
            "/ok",
            &[("host", "shop.example.com")],
            &[b'a'; 1024],
        )
        .unwrap();
    assert_eq!(r.status, 200);

    // Content-Length announces too much: 413 before any byte goes upstream.
    let hits = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut s = TcpStream::connect(lw.proxy).await.unwrap();
    s.write_all(b"POST /big HTTP/1.1\r\nhost: shop.example.com\r\ncontent-length: 5000\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("max_body_size (1024 bytes)"), "{out}");
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "an announced over-limit body never reaches the upstream"
    );

    // A chunked body that grows past the limit while streaming (sent in one
    // write, so laneway has read all of it when it answers and closes).
    let chunk = format!("258\r\n{}\r\n", "c".repeat(600));
    let req = format!(
        "POST /chunks HTTP/1.1\r\nhost: shop.example.com\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let mut s = TcpStream::connect(lw.proxy).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");

    // HTTP/2: announced, and streamed without a length.
    let io = TcpStream::connect(h2c).await.unwrap();
    let (status, _, _) = h2_request(
        io,
        "POST",
        "http://shop.example.com/h2-big",
        &[("content-length", "4096")],
        Some(vec![b'x'; 4096]),
    )
    .await;
    assert_eq!(status, 413);
    // Streamed: to an upstream that reads the whole body before it answers
    // (one that answered early would have its answer forwarded).
    let reader = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    lw.register(
        "user-1",
        "user-api",
        None,
        reader.local_addr().unwrap().port(),
    );
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = reader.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.ends_with(b"\r\n0\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let io = TcpStream::connect(h2c).await.unwrap();
    let (status, _, body) = h2_request(
        io,
        "POST",
        "http://shop.example.com/user/h2-stream",
        &[],
        Some(vec![b'x'; 4096]),
    )
    .await;
    assert_eq!(status, 413, "{body:?}");
    assert!(
        metric(
            &lw,
            "laneway_local_responses_total{reason=\"body_too_large\"}"
        ) >= 4.0
    );
}

// --------------------------------------------------------------- baggage

#[test]
fn the_lane_comes_from_baggage_and_goes_upstream_in_header_and_baggage() {
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    lw.register("web-1", "web", None, stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    lw.create_lane(r#"{"name":"t-42","services":{"web":"v2"}}"#);
    lw.create_lane(r#"{"name":"t-7","services":{}}"#);

    // In: baggage names the lane; other members are kept, in order.
    let r = lw.get(
        "shop.example.com",
        "/",
        &[
            ("baggage", "userId=alice, laneway-lane=t-42;src=qa"),
            ("baggage", "k2=v2"),
        ],
    );
    assert_eq!(r.upstream(), "v2");
    assert_eq!(r.header("x-laneway-lane"), Some("t-42"));
    let sent = &r.json()["headers"];
    assert_eq!(sent["x-laneway-lane"], "t-42");
    assert_eq!(sent["baggage"], "userId=alice,k2=v2,laneway-lane=t-42");

    // The header wins over baggage; baggage wins over the cookie.
    let r = lw.get(
        "shop.example.com",
        "/",
        &[("x-laneway-lane", "t-7"), ("baggage", "laneway-lane=t-42")],
    );
    assert_eq!(r.json()["headers"]["baggage"], "laneway-lane=t-7");
    let r = lw.get(
        "shop.example.com",
        "/",
        &[
            ("cookie", "laneway_lane=t-7"),
            ("baggage", "laneway-lane=t-42"),
        ],
    );
    assert_eq!(r.upstream(), "v2");

    // Out: a lane found any other way is added to baggage.
    let r = lw.get("t-42.lanes.test", "/", &[]);
    assert_eq!(r.json()["headers"]["baggage"], "laneway-lane=t-42");
    let r = lw.get("shop.example.com", "/", &[]);
    assert_eq!(r.json()["headers"]["baggage"], "laneway-lane=baseline");
}
