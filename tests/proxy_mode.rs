//! laneway as the proxy of a browser: the per-lane PAC file (evaluated with
//! node), absolute-form requests at a lane's VIP and pool-port entries, and
//! CONNECT to a served host at a lane entry, with laneway terminating TLS
//! with the host's certificate from `[tls] certs`; and every CONNECT it
//! refuses. Engine-neutral: `scripts/test.sh` runs it on both engines.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com", "*.example.com", "www.example.*", "~^(?<c>[a-z]+)\\.city\\.test$", "~^api\\d+$"]
default = true

[[server.location]]
match = "/"
service = "web"
"#;

/// A test CA and the leaf pairs it signs, in a `[tls] certs` directory.
struct Certs {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca_pem: String,
}

fn certs() -> Certs {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    std::fs::create_dir(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "laneway test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let pair = |name: &str, names: &[&str]| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        write(&dir.join(format!("{name}.crt")), &cert.pem());
        write(&dir.join(format!("{name}.key")), &key.serialize_pem());
    };
    pair("default", &["default.test"]);
    // bj.example.com is served (by *.example.com) but has no certificate
    pair("shop", &["shop.example.com"]);
    pair("city", &["*.city.test"]);
    Certs {
        _tmp: tmp,
        dir,
        ca_pem: ca.pem(),
    }
}

/// laneway with the test routes, a VIP pool and a port pool, `[tls]
/// certs` without an HTTPS listener, and two versions of `web`; lane `t-1`
/// runs `web` v2. Returns the lane's VIP entry and pool-port entry.
fn start(certs: Option<&Path>, lanes_extra: &str) -> (Laneway, Upstream, Upstream, Value) {
    let base = free_port_range(4);
    let net = vip_net();
    let lanes = format!(
        "vip_pool = [\"{net}.2-{net}.9\"]\nport_pool = \"{base}-{}\"\n{lanes_extra}",
        base + 3
    );
    // `[log] access_file` (the section the harness writes last), then `[tls]`.
    let tls = certs.map_or(String::new(), |d| {
        format!("[tls]\nlisten = []\ncerts = \"{}\"\n", d.display())
    });
    let tls = format!("access_file = \"access.log\"\n{tls}");
    let lw = Laneway::start_with_lanes(ROUTES, &lanes, &tls);
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    lw.register("web-1", "web", None, stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    let (status, lane) = lw.create_lane(r#"{"name":"t-1","services":{"web":"v2"}}"#);
    assert_eq!(status, 201, "{lane}");
    (lw, stable, v2, lane)
}

/// The lane's VIP at laneway's listen port, and its pool-port entry.
fn entries(lw: &Laneway, lane: &Value) -> (SocketAddr, SocketAddr) {
    let vip: IpAddr = lane["entries"]["vip"].as_str().unwrap().parse().unwrap();
    let port = lane["entries"]["port"].as_u64().unwrap() as u16;
    let vip = SocketAddr::new(vip, lw.proxy.port());
    let port = SocketAddr::new(lw.proxy.ip(), port);
    for addr in [vip, port] {
        assert!(
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "{addr} is not listening"
        );
    }
    (vip, port)
}

fn metric(lw: &Laneway, line_prefix: &str) -> f64 {
    let (_, text) = lw.api("GET", "/metrics", None);
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------------ PAC

/// `FindProxyForURL` of `pac` for each of `hosts`, run by node with the
/// PAC helpers browsers provide.
fn run_pac(pac: &str, hosts: &[&str]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lane.pac");
    write(&file, pac);
    let harness = r#"
const src = require('fs').readFileSync(process.argv[1], 'utf8');
function dnsDomainIs(h, d) { return h.length >= d.length && h.substring(h.length - d.length) === d; }
function shExpMatch(s, p) {
  const re = p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp('^' + re + '$').test(s);
}
eval(src);
for (const h of process.argv.slice(2)) console.log(FindProxyForURL('http://' + h + '/', h));
"#;
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(harness)
        .arg(&file)
        .args(hosts)
        .output()
        .expect("node runs (the PAC is checked as JavaScript)");
    assert!(
        out.status.success(),
        "node failed on the PAC:\n{}\n{pac}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn node_present() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_pac_sends_the_rules_hosts_and_pac_domains_to_the_lanes_vip() {
    let (lw, _stable, _v2, lane) = start(None, "pac_domains = [\"corp.test\"]");
    let vip = lane["entries"]["vip"].as_str().unwrap();
    let url = format!("http://{}/api/v1/lanes/t-1/pac", lw.admin);
    let resp = ureq::get(&url).call().expect("PAC answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/x-ns-proxy-autoconfig")
    );
    let pac = resp.into_string().unwrap();
    let lane_proxy = format!("PROXY {vip}:{}", lw.proxy.port());
    assert!(pac.contains(&lane_proxy), "{pac}");
    assert!(pac.contains("host == \"shop.example.com\""), "{pac}");
    assert!(pac.contains("not covered: server name ~^api\\d+$"), "{pac}");
    if !node_present() {
        eprintln!("node is not installed: the PAC was checked as text only");
        return;
    }
    let cases = [
        ("shop.example.com", true),
        ("SHOP.Example.COM", true),
        ("bj.example.com", true),
        ("example.com", false),
        ("www.example.org", true),
        ("bj.city.test", true),
        ("api7", false),
        ("corp.test", true),
        ("wiki.corp.test", true),
        ("notcorp.test", false),
        ("www.google.com", false),
    ];
    let hosts: Vec<&str> = cases.iter().map(|(h, _)| *h).collect();
    let answers = run_pac(&pac, &hosts);
    assert_eq!(answers.len(), cases.len(), "{answers:?}");
    for ((host, to_lane), answer) in cases.iter().zip(&answers) {
        let want = if *to_lane {
            lane_proxy.as_str()
        } else {
            "DIRECT"
        };
        assert_eq!(answer, want, "FindProxyForURL for {host}:\n{pac}");
    }

    let (status, body) = lw.api("GET", "/api/v1/lanes/nope/pac", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("lane \\\"nope\\\" does not exist"), "{body}");
}

#[test]
fn a_lane_without_a_vip_or_port_has_no_pac() {
    let lw = Laneway::start(ROUTES, "");
    let (status, lane) = lw.create_lane(r#"{"name":"t-9","services":{}}"#);
    assert_eq!(status, 201, "{lane}");
    let (status, body) = lw.api("GET", "/api/v1/lanes/t-9/pac", None);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no VIP or port entry"), "{body}");
}

// -------------------------------------------------- absolute-form requests

#[test]
fn absolute_form_requests_at_lane_entries_are_served_in_the_lane_with_keep_alive() {
    let (lw, _stable, _v2, lane) = start(None, "");
    let (vip, port) = entries(&lw, &lane);
    for entry in [vip, port] {
        let mut conn = Conn::open(entry).unwrap();
        for path in ["/one", "/two?x=1"] {
            let resp = conn
                .request(
                    "GET",
                    &format!("http://shop.example.com{path}"),
                    &[
                        ("Host", "shop.example.com"),
                        ("Proxy-Connection", "keep-alive"),
                    ],
                    b"",
                )
                .unwrap_or_else(|e| panic!("{path} via {entry} on one connection: {e}"));
            assert_eq!(resp.status, 200, "{}", resp.body);
            let echo = resp.json();
            assert_eq!(echo["upstream"], "v2", "{entry}: {}", resp.body);
            assert_eq!(echo["target"], path, "origin-form upstream: {}", resp.body);
            assert_eq!(echo["headers"]["host"], "shop.example.com");
            assert!(
                echo["headers"].get("proxy-connection").is_none(),
                "Proxy-Connection is hop-by-hop: {}",
                resp.body
            );
            assert_eq!(resp.header("x-laneway-lane"), Some("t-1"));
        }
    }
    // The same request at the plain listener is the baseline's.
    let resp = Conn::open(lw.proxy)
        .unwrap()
        .request(
            "GET",
            "http://shop.example.com/one",
            &[("Host", "shop.example.com")],
            b"",
        )
        .unwrap();
    assert_eq!(resp.upstream(), "stable", "{}", resp.body);
}

// ---------------------------------------------------------------- CONNECT

/// Sends `CONNECT target` on a new connection to `addr`; the status and
/// the response head, and the connection.
async fn connect(addr: SocketAddr, target: &str) -> (u16, String, TcpStream) {
    connect_then(addr, target, b"").await
}

/// As [`connect`], with `early` sent right after the head, before the
/// answer (as a client that does not wait for it sends its ClientHello).
async fn connect_then(addr: SocketAddr, target: &str, early: &[u8]) -> (u16, String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Connection: keep-alive\r\nUser-Agent: laneway-test\r\n\r\n"
    );
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(early);
    tcp.write_all(&bytes).await.unwrap();
    // Read the head byte by byte: nothing after it may be consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => panic!(
                "CONNECT {target} via {addr}: no complete answer ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, tcp)
}

/// The body of a refusal (after its head).
async fn rest_of(mut tcp: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS client trusting only the test CA, offering `alpn`.
fn client(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Two HTTP/1.1 GETs on `io` (keep-alive, then close); the raw responses.
async fn two_gets<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, host: &str) -> String {
    let req = format!(
        "GET /first HTTP/1.1\r\nhost: {host}\r\n\r\nGET /second HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    );
    io.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn bodies(raw: &str) -> Vec<Value> {
    raw.split("HTTP/1.1 ")
        .skip(1)
        .map(|r| {
            let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
            serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_at_a_lane_entry_terminates_tls_with_the_hosts_certificate_and_serves_the_lane() {
    let certs = certs();
    let (lw, _stable, _v2, lane) = start(Some(&certs.dir), "");
    let (vip, port) = entries(&lw, &lane);
    for (entry, host) in [(vip, "shop.example.com"), (port, "bj.city.test")] {
        let (status, head, tcp) = connect(entry, &format!("{host}:443")).await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.starts_with("HTTP/1.1 200 Connection Established"),
            "{head}"
        );
        // Verified against the test CA for the name: the host's certificate.
        let tls = client(&certs.ca_pem, &[b"http/1.1"])
            .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS through CONNECT {host} via {entry}: {e}"));
        let raw = two_gets(tls, host).await;
        let echoes = bodies(&raw);
        assert_eq!(echoes.len(), 2, "two answers on the tunnel: {raw}");
        for (echo, path) in echoes.iter().zip(["/first", "/second"]) {
            assert_eq!(echo["upstream"], "v2", "{host} via {entry}: {raw}");
            assert_eq!(echo["target"], path);
            assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{raw}");
        }
        assert!(raw.contains("x-laneway-lane: t-1"), "{raw}");
    }

    // HTTP/2 through the tunnel (ALPN h2) is served in the lane too.
    let (status, head, tcp) = connect(vip, "shop.example.com:443").await;
    assert_eq!(status, 200, "{head}");
    let tls = client(&certs.ca_pem, &[b"h2"])
        .connect(ServerName::try_from("shop.example.com").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("https://shop.example.com/h2")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-laneway-lane"], "t-1");
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let echo: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(echo["upstream"], "v2", "{echo}");

    assert!(metric(&lw, "laneway_connect_total{result=\"tunnel\"}") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_off_entries_to_unserved_hosts_other_ports_and_hosts_without_a_certificate(
) {
    let certs = certs();
    let (lw, _stable, _v2, lane) = start(Some(&certs.dir), "");
    let (vip, _) = entries(&lw, &lane);
    let cases = [
        (vip, "evil.test:443", 403, "not an open proxy", "not_served"),
        (vip, "shop.example.com:22", 403, "port 443", "port"),
        (
            vip,
            "bj.example.com:443",
            502,
            certs.dir.to_str().unwrap(),
            "no_certificate",
        ),
        (
            lw.proxy,
            "shop.example.com:443",
            403,
            "lane's entry",
            "not_entry",
        ),
    ];
    for (addr, target, want, says, result) in cases {
        let (status, head, tcp) = connect(addr, target).await;
        assert_eq!(status, want, "CONNECT {target} via {addr}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let body = rest_of(tcp).await;
        assert!(body.contains(says), "CONNECT {target} via {addr}: {body}");
        let counted = metric(
            &lw,
            &format!("laneway_connect_total{{result=\"{result}\"}}"),
        );
        assert_eq!(counted, 1.0, "{result}");
    }
    // Bytes sent before the answer do not cost the client its refusal.
    let (status, head, tcp) = connect_then(vip, "evil.test:443", &[0x16; 4096]).await;
    assert_eq!(status, 403, "{head}");
    assert!(rest_of(tcp).await.contains("not an open proxy"));
    // Access-logged in the entry's lane, the refusal as the error.
    let path = lw.path("access.log");
    let line = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("CONNECT") && l.contains("evil.test:443"))
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(10), || line().is_some()),
        "no access line for the refused CONNECT:\n{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
    let line = line().unwrap();
    for field in [
        "status=403",
        "lane=t-1",
        "lane_source=vip",
        "local=connect",
        "not_served",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_tls_certs_names_the_missing_section() {
    let (lw, _stable, _v2, lane) = start(None, "");
    let (vip, _) = entries(&lw, &lane);
    let (status, head, tcp) = connect(vip, "shop.example.com:443").await;
    assert_eq!(status, 502, "{head}");
    let body = rest_of(tcp).await;
    assert!(body.contains("[tls] certs"), "{body}");
}

/// Production nginx often redirects port 80 to HTTPS and serves the site on
/// `listen 443 ssl`: requests through a CONNECT tunnel are routed among the
/// servers of the CONNECT port, not those of the plain listener (which
/// would redirect the browser to HTTPS again, forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_a_tunnel_are_routed_among_the_servers_of_the_connect_port() {
    let routes = r#"
[[server]]
names = ["shop.example.com"]
ports = [80]

[[server.location]]
match = "/"
redirect = { status = 301, to = "https://$host$request_uri" }

[[server]]
names = ["shop.example.com"]
ports = [443]
ssl_ports = [443]

[[server.location]]
match = "/"
service = "web"
"#;
    let certs = certs();
    let net = vip_net();
    let tls = format!("[tls]\nlisten = []\ncerts = \"{}\"\n", certs.dir.display());
    let lw = Laneway::start_with_lanes(routes, &format!("vip_pool = [\"{net}.2-{net}.9\"]"), &tls);
    let stable = Upstream::start("stable");
    let v2 = Upstream::start("v2");
    lw.register("web-1", "web", None, stable.port());
    lw.register("web-2", "web", Some("v2"), v2.port());
    let (status, lane) = lw.create_lane(r#"{"name":"t-2","services":{"web":"v2"}}"#);
    assert_eq!(status, 201, "{lane}");
    let vip: IpAddr = lane["entries"]["vip"].as_str().unwrap().parse().unwrap();
    let vip = SocketAddr::new(vip, lw.proxy.port());
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(vip).is_ok()
    }));

    // Plain HTTP at the VIP: the port-80 server redirects.
    let resp = get(vip, "shop.example.com", "/cart", &[]);
    assert_eq!(resp.status, 301, "{}", resp.body);

    // Through CONNECT :443: the port-443 server proxies, in the lane.
    let (status, head, tcp) = connect(vip, "shop.example.com:443").await;
    assert_eq!(status, 200, "{head}");
    let io = client(&certs.ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from("shop.example.com").unwrap(), tcp)
        .await
        .unwrap();
    let raw = two_gets(io, "shop.example.com").await;
    let echoes = bodies(&raw);
    assert_eq!(echoes.len(), 2, "{raw}");
    assert!(echoes.iter().all(|e| e["upstream"] == "v2"), "{raw}");
}

/// The DOM Chromium (headless, with `pac` as its proxy auto-config) shows
/// for `url`; `None` when Chromium is not installed.
fn chromium_dom(pac: &str, url: &str) -> Option<String> {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|b| Path::new(b).exists())?;
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            // the page's certificate is checked against the test CA by the
            // CONNECT tests above; the browser only has to get through
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--proxy-pac-url={pac}"))
        .args(["--dump-dom", url])
        .stdout(out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let exited = eventually(Duration::from_secs(60), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium did not finish loading {url} within 60 s");
    }
    Some(std::fs::read_to_string(out.path()).unwrap_or_default())
}

#[test]
fn a_browser_with_the_lanes_pac_opens_production_urls_in_the_lane() {
    let certs = certs();
    let (lw, _stable, _v2, _lane) = start(Some(&certs.dir), "");
    let pac = format!("http://{}/api/v1/lanes/t-1/pac", lw.admin);
    // plain HTTP (absolute form to the VIP), then HTTPS (CONNECT, TLS by laneway)
    for url in [
        "http://shop.example.com/browse",
        "https://bj.city.test/browse",
    ] {
        let Some(dom) = chromium_dom(&pac, url) else {
            eprintln!("chromium is not installed: the browser check is skipped");
            return;
        };
        assert!(dom.contains("\"upstream\":\"v2\""), "{url}: {dom}");
        assert!(dom.contains("\"target\":\"/browse\""), "{url}: {dom}");
    }
}
