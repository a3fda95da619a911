//! Test harness for laneway's end-to-end tests: the real `laneway` binary on
//! loopback, real upstream HTTP servers that say who answered, a small
//! HTTP/1.1 client with full control over headers, and `eventually`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago, never handed out twice in this process.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut taken = TAKEN.lock().unwrap();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// `n` consecutive ports that were all free a moment ago.
pub fn free_port_range(n: u16) -> u16 {
    loop {
        let base = 20000 + fastrand_u16() % 30000;
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
}

/// A loopback /24 (`127.x.y.0`) for one test's VIP pool, distinct per call.
pub fn vip_net() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let x = 1 + (std::process::id() as usize % 200);
    format!("127.{x}.{}", 10 + n)
}

fn fastrand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (t ^ (std::process::id() << 8)) as u16
}

// ---------------------------------------------------------------- upstreams

/// A real HTTP/1.1 upstream that answers every request with JSON naming
/// itself and echoing what it received; with status 200, or the status a
/// `/status/NNN` segment of the request path asks for (300–599).
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, h, s) = (name.to_string(), hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (n, h, s) = (n.clone(), h.clone(), s.clone());
                std::thread::spawn(move || serve_conn(conn, &n, &h, &s));
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            hits,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_conn(conn: TcpStream, name: &str, hits: &AtomicUsize, stop: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut writer = conn;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                }
                headers
                    .entry(k)
                    .and_modify(|old: &mut String| {
                        old.push_str(", ");
                        old.push_str(&v);
                    })
                    .or_insert(v);
            }
        }
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"));
        let mut body = vec![0; content_length];
        if chunked {
            body.clear();
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let Ok(n) = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                else {
                    return;
                };
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else if reader.read_exact(&mut body).is_err() {
            return;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let json = serde_json::json!({
            "upstream": name,
            "method": method,
            "target": target,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        let status = asked_status(&target).unwrap_or(200);
        // `/__redirect/<host>/<path>`: an absolute redirect to
        // http://<host>/<path>, as applications answer with their own name
        let resp = match target.strip_prefix("/__redirect/") {
            Some(to) => format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{to}\r\ncontent-length: 0\r\nx-upstream: {name}\r\n\r\n"
            ),
            None => format!(
                "HTTP/1.1 {status} Echo\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{json}",
                json.len()
            ),
        };
        if writer.write_all(resp.as_bytes()).is_err() || stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// The status a `/status/NNN` path segment asks the echo upstream for.
pub fn asked_status(target: &str) -> Option<u16> {
    let path = target.split('?').next().unwrap_or("");
    let mut segs = path.split('/');
    while let Some(seg) = segs.next() {
        if seg == "status" {
            return segs
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| (300..=599).contains(s));
        }
    }
    None
}

// ---------------------------------------------------------------- client

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The name of the upstream that answered (from the echo body).
    pub fn upstream(&self) -> String {
        self.json()["upstream"].as_str().unwrap_or("").to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one request; `headers` must include `Host`.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut req = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes())?;
        self.writer.write_all(body)?;
        read_response(&mut self.reader, method == "HEAD")
    }

    /// Like [`Conn::request`], with the body written `pause` after the head,
    /// so that it reaches laneway in a segment of its own. Whatever the
    /// timing, the outcome the caller asserts must be the same: the pause
    /// only makes the split case the likely one.
    pub fn request_split(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        pause: Duration,
    ) -> std::io::Result<Resp> {
        let mut req = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        self.writer.write_all(req.as_bytes())?;
        std::thread::sleep(pause);
        self.writer.write_all(body)?;
        read_response(&mut self.reader, method == "HEAD")
    }
}

fn read_response(r: &mut BufReader<TcpStream>, head: bool) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before a response"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if head || status == 204 || status == 304 {
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One GET on a fresh connection.
pub fn get(addr: SocketAddr, host: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    Conn::open(addr)
        .and_then(|mut c| c.request("GET", target, &all, b""))
        .unwrap_or_else(|e| panic!("GET http://{host}{target} via {addr}: {e}"))
}

// ---------------------------------------------------------------- laneway

/// A running laneway process with its own data directory.
pub struct Laneway {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

/// Default rules used by tests that don't care about routing details.
pub const SIMPLE_ROUTES: &str = r#"
[[server]]
names = ["shop.example.com", "*.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "/user/"
service = "user-api"
"#;

/// The HTTP engine a suite runs on unless a test names one: `h1` (the
/// default), or `$LANEWAY_ENGINE`. `scripts/test.sh` runs the engine-neutral
/// suites a second time with `LANEWAY_ENGINE=pingora`, so both engines
/// pass the same end-to-end tests.
pub fn engine() -> String {
    std::env::var("LANEWAY_ENGINE").unwrap_or_else(|_| "h1".to_string())
}

/// `proxy_extra` with `engine = ...` added when it names no engine.
fn with_engine(proxy_extra: &str) -> String {
    if proxy_extra.contains("engine") {
        proxy_extra.to_string()
    } else {
        format!("engine = \"{}\"\n{proxy_extra}", engine())
    }
}

impl Laneway {
    /// Starts laneway with `routes` as its rules file and `extra` appended to
    /// its configuration, in a fresh temporary directory.
    pub fn start(routes: &str, extra: &str) -> Laneway {
        Laneway::start_with_lanes(routes, "", extra)
    }

    /// As [`start`](Self::start), with `lanes` added to the `[lanes]`
    /// section (pools, quarantine, leases, auto lanes).
    pub fn start_with_lanes(routes: &str, lanes: &str, extra: &str) -> Laneway {
        Laneway::start_full(routes, "", lanes, extra)
    }

    /// Starts laneway with extra `[proxy]` keys, extra `[lanes]` keys and
    /// extra sections.
    pub fn start_full(routes: &str, proxy_extra: &str, lanes: &str, extra: &str) -> Laneway {
        Laneway::start_admin(routes, proxy_extra, "", lanes, extra)
    }

    /// As [`start_full`](Self::start_full), with extra `[admin]` keys
    /// (tokens, host names); `admin_extra` may name files relative to the
    /// laneway directory, which `files` writes first (name, content).
    pub fn start_admin(
        routes: &str,
        proxy_extra: &str,
        admin_extra: &str,
        lanes: &str,
        extra: &str,
    ) -> Laneway {
        Laneway::start_admin_files(routes, proxy_extra, admin_extra, lanes, extra, &[])
    }

    pub fn start_admin_files(
        routes: &str,
        proxy_extra: &str,
        admin_extra: &str,
        lanes: &str,
        extra: &str,
        files: &[(&str, &str)],
    ) -> Laneway {
        let proxy_extra = &with_engine(proxy_extra);
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("routes.toml"), routes).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.join("laneway.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[proxy]
listen = ["{proxy}"]
threads = 2
connect_timeout = "1s"
{proxy_extra}
[admin]
listen = "{admin}"
{admin_extra}
[lanes]
domain = "lanes.test"
{lanes}
[store]
data_dir = "data"
[routes]
file = "routes.toml"
[log]
level = "info,pingora=warn"
{extra}
"#
            ),
        )
        .unwrap();
        let mut lw = Laneway {
            dir,
            config,
            proxy,
            admin,
            child: None,
            _tmp: Some(tmp),
        };
        lw.spawn();
        lw
    }

    /// Starts laneway in `tmp` (which holds whatever the rules need) with
    /// `routes` as the body of its `[routes]` section.
    pub fn start_with_routes_section(tmp: tempfile::TempDir, routes: &str) -> Laneway {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Laneway::start_listening(tmp, &[proxy], "", routes)
    }

    /// As [`start_with_routes_section`](Self::start_with_routes_section),
    /// listening on every address of `listen` (the first is `proxy`), with
    /// `proxy_extra` in `[proxy]`; `routes` may hold sub-tables
    /// (`[routes.nginx_listen]`), so it comes last.
    pub fn start_listening(
        tmp: tempfile::TempDir,
        listen: &[SocketAddr],
        proxy_extra: &str,
        routes: &str,
    ) -> Laneway {
        let proxy_extra = &with_engine(proxy_extra);
        let dir = tmp.path().to_path_buf();
        let proxy = listen[0];
        let list: Vec<String> = listen.iter().map(|a| format!("\"{a}\"")).collect();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.join("laneway.toml");
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = [{}]\nthreads = 2\nconnect_timeout = \"1s\"\n{proxy_extra}\n\
                 [admin]\nlisten = \"{admin}\"\n[store]\ndata_dir = \"data\"\n\
                 [log]\nlevel = \"info,pingora=warn\"\n[routes]\n{routes}\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let mut lw = Laneway {
            dir,
            config,
            proxy,
            admin,
            child: None,
            _tmp: Some(tmp),
        };
        lw.spawn();
        lw
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("laneway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_laneway"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn laneway");
        self.child = Some(child);
        let admin = self.admin;
        let proxy = self.proxy;
        let ready = eventually(Duration::from_secs(30), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("laneway exited early with {status}:\n{}", self.log());
            }
            admin_call("GET", admin, "/healthz", None).0 == 200 && TcpStream::connect(proxy).is_ok()
        });
        assert!(ready, "laneway did not become ready:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("laneway.log")).unwrap_or_default()
    }

    /// Kills the process (SIGKILL) and starts it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (e.g. "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        eventually(timeout, || {
            status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        admin_call(method, self.admin, path, body)
    }

    /// Registers an instance in the embedded registry (Consul's body).
    pub fn register(&self, id: &str, service: &str, version: Option<&str>, port: u16) {
        let meta = match version {
            Some(v) => serde_json::json!({ "version": v }),
            None => Value::Null,
        };
        let body = serde_json::json!({
            "ID": id, "Name": service, "Address": "127.0.0.1", "Port": port, "Meta": meta,
        });
        let (status, text) = self.api("PUT", "/v1/agent/service/register", Some(&body.to_string()));
        assert_eq!(status, 200, "register {id}: {text}");
    }

    pub fn deregister(&self, id: &str) {
        let (status, text) = self.api("PUT", &format!("/v1/agent/service/deregister/{id}"), None);
        assert_eq!(status, 200, "deregister {id}: {text}");
    }

    pub fn create_lane(&self, body: &str) -> (u16, Value) {
        let (status, text) = self.api("POST", "/api/v1/lanes", Some(body));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GET through the proxy.
    pub fn get(&self, host: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        get(self.proxy, host, target, headers)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Laneway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One admin API call; returns status and body (errors are statuses too).
pub fn admin_call(
    method: &str,
    admin: SocketAddr,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("http://{admin}{path}");
    let req = ureq::request(method, &url).timeout(Duration::from_secs(10));
    let res = match body {
        Some(b) => req.set("content-type", "application/json").send_string(b),
        None => req.call(),
    };
    match res {
        Ok(r) => {
            let s = r.status();
            (s, r.into_string().unwrap_or_default())
        }
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
