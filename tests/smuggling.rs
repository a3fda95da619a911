//! HTTP/1 request smuggling and framing attacks, end to end on both engines:
//! raw client bytes in, a deliberately lenient recording upstream behind,
//! and assertions on what laneway answers and on what the upstream parsed.
//!
//! The upstream ([`RawUpstream`]) trusts Content-Length first, then
//! chunked, accepts bare LF line ends and reads pipelined requests on a
//! kept-alive connection: the kind of parser that turns a proxy's framing
//! mistake into a hidden second request. A correct proxy hands it exactly
//! the requests the client meant (0 or 1 per case), framed so that no two
//! parsers can read them differently.
//!
//! Each test function starts one laneway per engine and runs a table of
//! cases against it; every case is checked and the failures are listed
//! together at the end, so one run says which cases each engine gets wrong.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Laneway};

/// `example.test` is the default server; `internal.test` is another one,
/// with its own service, so that routing by the wrong name shows.
const ROUTES: &str = r#"
[[server]]
names = ["example.test"]
default = true

[[server.location]]
match = "/"
service = "edge"

[[server]]
names = ["internal.test"]

[[server.location]]
match = "/"
service = "internal"
"#;

/// What laneway is given to read: a client never waits longer for an
/// answer or a close (a safety net, never a pass/fail timing).
const SAFETY: Duration = Duration::from_secs(5);

/// The pipelined request an attack tries to slip past the proxy.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n";

// ------------------------------------------------------------ the upstream

/// One request as the recording upstream parsed it.
#[derive(Debug, Clone)]
struct Seen {
    upstream: &'static str,
    conn: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    /// Every value of a field, in order (names compared case-insensitively).
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream has parsed, and the bytes each open connection holds
/// unparsed (`None` once closed).
#[derive(Default)]
struct Record {
    seen: Vec<Seen>,
    pending: Vec<Option<Vec<u8>>>,
}

/// A TCP server with a lenient, Content-Length-first HTTP/1 parser that
/// records every request it parses and answers each with a small 200
/// naming the path it parsed, or with a scripted response on `/resp/…`.
struct RawUpstream {
    name: &'static str,
    addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    /// Open connections, to close them from the test.
    open: Arc<Mutex<Vec<(usize, TcpStream)>>>,
    /// Connections that served `/late`, for [`RawUpstream::send_late`].
    late: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Shared {
    name: &'static str,
    record: Arc<Mutex<Record>>,
    open: Arc<Mutex<Vec<(usize, TcpStream)>>>,
    late: Arc<Mutex<Vec<TcpStream>>>,
}

impl RawUpstream {
    fn start(name: &'static str) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the raw upstream");
        let addr = listener.local_addr().expect("raw upstream address");
        let up = RawUpstream {
            name,
            addr,
            record: Arc::default(),
            open: Arc::default(),
            late: Arc::default(),
            stop: Arc::default(),
        };
        let shared = Shared {
            name,
            record: up.record.clone(),
            open: up.open.clone(),
            late: up.late.clone(),
        };
        let stop = up.stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let id = {
                    let mut r = shared.record.lock().unwrap();
                    r.pending.push(Some(Vec::new()));
                    r.pending.len() - 1
                };
                if let Ok(clone) = conn.try_clone() {
                    shared.open.lock().unwrap().push((id, clone));
                }
                std::thread::spawn(move || serve(conn, id, &shared));
            }
        });
        up
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Forgets what was parsed so far.
    fn clear(&self) {
        self.record.lock().unwrap().seen.clear();
    }

    /// Waits until no open connection holds unparsed bytes, then returns
    /// what was parsed. Bytes left over after a complete request are what
    /// a smuggling attack leaves behind (the start of a hidden request), so
    /// they are an error; those connections are closed so that the next
    /// case starts clean.
    fn settle(&self) -> Result<Vec<Seen>, String> {
        let quiet = eventually(Duration::from_secs(2), || {
            let r = self.record.lock().unwrap();
            r.pending.iter().flatten().all(Vec::is_empty)
        });
        let r = self.record.lock().unwrap();
        if quiet {
            return Ok(r.seen.clone());
        }
        let stuck: Vec<(usize, String)> = r
            .pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().filter(|p| !p.is_empty()).map(|p| (i, p)))
            .map(|(i, p)| (i, short(&String::from_utf8_lossy(p))))
            .collect();
        drop(r);
        for (id, _) in &stuck {
            self.close(|c| c == *id);
        }
        Err(format!(
            "upstream {} holds bytes after the last request it parsed: {stuck:?}",
            self.name
        ))
    }

    /// Closes (FIN) every connection `which` selects and waits until the
    /// upstream has seen them closed.
    fn close(&self, which: impl Fn(usize) -> bool) {
        let mut ids = Vec::new();
        for (id, s) in self.open.lock().unwrap().iter() {
            if which(*id) {
                let _ = s.shutdown(Shutdown::Both);
                ids.push(*id);
            }
        }
        let closed = eventually(SAFETY, || {
            let r = self.record.lock().unwrap();
            ids.iter().all(|&id| r.pending[id].is_none())
        });
        assert!(
            closed,
            "upstream {}: connections {ids:?} did not close",
            self.name
        );
    }

    /// Closes every connection open now (laneway holds them idle).
    fn close_all(&self) -> usize {
        let n = self.open.lock().unwrap().len();
        self.close(|_| true);
        n
    }

    /// Writes `bytes` on every connection that served `/late` and is open:
    /// a response nobody asked for, arriving on an idle connection.
    fn send_late(&self, bytes: &[u8]) -> usize {
        let mut late = self.late.lock().unwrap();
        let sent = late
            .iter_mut()
            .filter(|s| (&**s).write_all(bytes).is_ok())
            .count();
        late.clear();
        sent
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, s) in self.open.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one connection: parses every complete request its bytes hold,
/// in order, answering each; ends when the peer closes or sends what even
/// this parser cannot read.
fn serve(mut conn: TcpStream, id: usize, up: &Shared) {
    // Every write leaves at once: late bytes must not wait in this side's
    // send buffer for an ACK (Nagle) while laneway reuses the connection.
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let done = |up: &Shared| {
        up.record.lock().unwrap().pending[id] = None;
        up.open.lock().unwrap().retain(|(i, _)| *i != id);
    };
    loop {
        loop {
            match parse_lenient(&buf) {
                Parsed::Partial => break,
                Parsed::Garbage => {
                    done(up);
                    return;
                }
                Parsed::Request {
                    method,
                    target,
                    headers,
                    body,
                    used,
                } => {
                    buf.drain(..used);
                    {
                        let mut r = up.record.lock().unwrap();
                        r.seen.push(Seen {
                            upstream: up.name,
                            conn: id,
                            method,
                            target: target.clone(),
                            headers,
                            body,
                        });
                        r.pending[id] = Some(buf.clone());
                    }
                    if target == "/late" {
                        // listed before the answer goes out, so that it is
                        // there once the client has the answer
                        if let Ok(clone) = conn.try_clone() {
                            up.late.lock().unwrap().push(clone);
                        }
                    }
                    let (answer, close) = answer_for(up.name, &target);
                    if conn.write_all(&answer).is_err() || close {
                        let _ = conn.shutdown(Shutdown::Both);
                        done(up);
                        return;
                    }
                }
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => {
                done(up);
                return;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                up.record.lock().unwrap().pending[id] = Some(buf.clone());
            }
        }
    }
}

/// The upstream's answer to a request for `target`, and whether it closes
/// the connection after it.
fn answer_for(name: &str, target: &str) -> (Vec<u8>, bool) {
    let scripted: &[u8] = match target {
        // Both framings: the client must get the chunked body, no length.
        "/resp/both-lengths" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "/resp/two-lengths" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        }
        "/resp/bad-status" => b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok",
        "/resp/long-status" => b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        _ => {
            let body = format!("{name} saw {target}");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Seen-Path: {target}\r\n\r\n",
                body.len()
            );
            return ([head.into_bytes(), body.into_bytes()].concat(), false);
        }
    };
    (scripted.to_vec(), true)
}

enum Parsed {
    Partial,
    Garbage,
    Request {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        used: usize,
    },
}

/// Lines ending in LF, a CR before it optional; `None` until a whole line
/// is there. Returns the line without its end and the offset after it.
fn line_at(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let lf = rest.iter().position(|&b| b == b'\n')?;
    let line = &rest[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, at + lf + 1))
}

/// A lenient HTTP/1 request parser, as the upstreams that make smuggling
/// possible have: bare LF accepted, empty lines before a request skipped,
/// Content-Length trusted over Transfer-Encoding, the first length field
/// read by its leading digits, any coding list naming `chunked` taken as
/// chunked, chunk sizes trimmed.
fn parse_lenient(buf: &[u8]) -> Parsed {
    let mut at = 0;
    let request_line = loop {
        let Some((line, next)) = line_at(buf, at) else {
            return Parsed::Partial;
        };
        at = next;
        if !line.is_empty() {
            break String::from_utf8_lossy(line).into_owned();
        }
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Parsed::Garbage;
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let Some((line, next)) = line_at(buf, at) else {
            return Parsed::Partial;
        };
        at = next;
        if line.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let field = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let length = field("content-length").and_then(|v| {
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    });
    let chunked =
        field("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if let Some(n) = length {
        let Some(b) = buf.get(at..at + n) else {
            return Parsed::Partial;
        };
        body.extend_from_slice(b);
        at += n;
    } else if chunked {
        loop {
            let Some((line, next)) = line_at(buf, at) else {
                return Parsed::Partial;
            };
            at = next;
            let line = String::from_utf8_lossy(line);
            let size = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return Parsed::Garbage;
            };
            if size == 0 {
                // trailers, up to an empty line
                loop {
                    let Some((line, next)) = line_at(buf, at) else {
                        return Parsed::Partial;
                    };
                    at = next;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let Some(data) = buf.get(at..at + size) else {
                return Parsed::Partial;
            };
            body.extend_from_slice(data);
            // the data's line end
            let Some((_, next)) = line_at(buf, at + size) else {
                return Parsed::Partial;
            };
            at = next;
        }
    }
    Parsed::Request {
        method,
        target,
        headers,
        body,
        used: at,
    }
}

// ---------------------------------------------------------------- client

/// A response as the raw client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a connection ended after the response.
#[derive(Debug, PartialEq)]
enum After {
    /// The peer closed (FIN).
    Closed,
    /// The peer reset the connection.
    Reset,
    /// Still open when the safety net ran out.
    Open,
    /// More bytes followed the response.
    Extra(String),
}

/// Reads one response (1xx interim answers skipped).
fn read_response(r: &mut impl BufRead) -> Result<Response, String> {
    loop {
        let resp = read_one(r)?;
        if !(100..200).contains(&resp.status) {
            return Ok(resp);
        }
    }
}

fn read_one(r: &mut impl BufRead) -> Result<Response, String> {
    let line = read_line(r)?;
    if line.is_empty() {
        return Err("closed before a response".into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let h = read_line(r)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let field = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if (100..200).contains(&status) || status == 204 || status == 304 {
    } else if field("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let size = read_line(r)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            if size == 0 {
                while !read_line(r)?.trim_end().is_empty() {}
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)
                .map_err(|e| format!("chunk: {e}"))?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = field("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        body.resize(len, 0);
        r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    } else {
        r.read_to_end(&mut body).map_err(|e| format!("body: {e}"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut buf = Vec::new();
    r.read_until(b'\n', &mut buf)
        .map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What follows the response: a close, a reset, more bytes, or nothing
/// (still open) until the safety net.
fn after(r: &mut BufReader<TcpStream>) -> After {
    let mut rest = [0u8; 512];
    match r.read(&mut rest) {
        Ok(0) => After::Closed,
        Ok(n) => After::Extra(short(&String::from_utf8_lossy(&rest[..n]))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => After::Reset,
        Err(_) => After::Open,
    }
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).expect("connect to laneway");
    s.set_read_timeout(Some(SAFETY)).unwrap();
    s.set_nodelay(true).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// How a case's bytes reach laneway.
enum Send {
    /// One write.
    Whole(Vec<u8>),
    /// Writes of `n` bytes, a moment apart so that they are likely to
    /// arrive as separate segments (the answer must not depend on it);
    /// writing stops early if laneway has closed.
    Pieces(Vec<u8>, usize),
}

/// Sends `send` on a fresh connection; returns the response and how the
/// connection went on.
fn exchange(addr: SocketAddr, send: &Send) -> (Result<Response, String>, After) {
    let (mut s, mut r) = connect(addr);
    match send {
        Send::Whole(bytes) => {
            let _ = s.write_all(bytes);
        }
        Send::Pieces(bytes, n) => {
            for piece in bytes.chunks(*n) {
                if s.write_all(piece).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let resp = read_response(&mut r);
    let after = if resp.is_ok() {
        after(&mut r)
    } else {
        After::Closed
    };
    (resp, after)
}

// ------------------------------------------------------------------ cases

/// A check of what the upstreams parsed for a forwarded request.
type Check = fn(&Response, &[Seen]) -> Result<(), String>;

struct Case {
    name: &'static str,
    send: Send,
    /// Statuses laneway may answer (the first is the expected one).
    status: &'static [u16],
    /// The connection must be closed after the answer.
    closes: bool,
    /// Requests the upstreams must parse in all.
    forwarded: usize,
    check: Option<Check>,
}

fn reject(name: &'static str, bytes: impl Into<Vec<u8>>, status: &'static [u16]) -> Case {
    Case {
        name,
        send: Send::Whole(bytes.into()),
        status,
        closes: true,
        forwarded: 0,
        check: None,
    }
}

fn forward(name: &'static str, bytes: impl Into<Vec<u8>>, check: Check) -> Case {
    Case {
        name,
        send: Send::Whole(bytes.into()),
        status: &[200],
        closes: false,
        forwarded: 1,
        check: Some(check),
    }
}

/// A POST whose body, read as chunked, holds [`HIDDEN`]; its
/// Content-Length covers only the chunk-size line, so a parser that trusts
/// the length reads `HIDDEN` as a second request (TE.CL).
fn te_cl(te_field: &str) -> Vec<u8> {
    let size = format!("{:x}\r\n", HIDDEN.len());
    format!(
        "POST /te-cl HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\n{te_field}\r\n\r\n{size}{HIDDEN}\r\n0\r\n\r\n",
        size.len()
    )
    .into_bytes()
}

/// A POST with `length` as its Content-Length field(s), a 5-byte body and
/// [`HIDDEN`] pipelined behind it.
fn with_length(fields: &str) -> Vec<u8> {
    let mut req =
        format!("POST /cl HTTP/1.1\r\nHost: example.test\r\n{fields}\r\n\r\nhello").into_bytes();
    req.extend_from_slice(HIDDEN.as_bytes());
    req
}

/// A chunked POST with `body` as its (raw) chunked body.
fn chunked(body: &str) -> Vec<u8> {
    format!(
        "POST /chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    )
    .into_bytes()
}

fn get_with(fields: &str) -> Vec<u8> {
    format!("GET /fields HTTP/1.1\r\n{fields}\r\n\r\n").into_bytes()
}

/// `text` cut to a readable length for a failure message.
fn short(text: &str) -> String {
    const MAX: usize = 160;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// The one request forwarded, or why not.
fn only(seen: &[Seen]) -> Result<&Seen, String> {
    match seen {
        [one] => Ok(one),
        _ => Err(format!(
            "expected one request upstream, saw {}",
            short(&format!("{seen:?}"))
        )),
    }
}

fn expect(what: &str, ok: bool, seen: &Seen) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what}; the upstream saw {}",
            short(&format!("{seen:?}"))
        ))
    }
}

/// A TLS 1.2 ClientHello record for `example.test` (SNI), as a client
/// that mistook the port for HTTPS sends it.
fn client_hello() -> Vec<u8> {
    let host = b"example.test";
    let mut sni = Vec::new();
    sni.extend_from_slice(&(host.len() as u16 + 3).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut hello = vec![3, 3];
    hello.extend_from_slice(&[0x5a; 32]);
    hello.push(0); // no session id
    hello.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]);
    hello.extend_from_slice(&[1, 0]); // null compression
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn request_cases() -> Vec<Case> {
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: example.test\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    // a 100 KB request line that never ends: refused while it arrives
    let endless_line = format!("GET /{}", "b".repeat(100 * 1024));
    let big_section = format!(
        "GET /big HTTP/1.1\r\nHost: example.test\r\n{}\r\n",
        (0..70)
            .map(|i| format!("X-Fill-{i}: {}\r\n", "c".repeat(1000)))
            .collect::<String>()
    );
    let many_fields = format!(
        "GET /many HTTP/1.1\r\nHost: example.test\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-F-{i}: v\r\n"))
            .collect::<String>()
    );
    vec![
        // Controls: valid requests go through, framed one way only.
        forward(
            "valid GET",
            "GET /plain HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
            |resp, seen| {
                let s = only(seen)?;
                expect("GET /plain to edge", s.upstream == "edge" && s.target == "/plain", s)?;
                expect("the answer names /plain", resp.body() == "edge saw /plain", s)
            },
        ),
        forward(
            "valid POST with Content-Length",
            "POST /post HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            |_, seen| {
                let s = only(seen)?;
                expect("body hello", s.body == b"hello", s)
            },
        ),
        forward(
            "valid chunked POST",
            "POST /chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;name=\"v\"\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n",
            |_, seen| {
                let s = only(seen)?;
                expect("body wikipedia", s.body == b"wikipedia", s)?;
                expect(
                    "chunked, and no Content-Length beside it",
                    s.values("content-length").is_empty()
                        && s.values("transfer-encoding") == ["chunked"],
                    s,
                )
            },
        ),
        // Content-Length and Transfer-Encoding together (TE.CL).
        reject("CL + TE chunked", te_cl("Transfer-Encoding: chunked"), &[400]),
        reject("CL + TE 'chunked '", te_cl("Transfer-Encoding: chunked "), &[400]),
        reject("CL + TE '\\tchunked'", te_cl("Transfer-Encoding:\tchunked"), &[400]),
        reject(
            "CL + TE 'chunked, identity'",
            te_cl("Transfer-Encoding: chunked, identity"),
            &[400, 501],
        ),
        reject("CL + TE xchunked", te_cl("Transfer-Encoding: xchunked"), &[400, 501]),
        reject(
            "CL + 'Transfer-Encoding : chunked'",
            te_cl("Transfer-Encoding : chunked"),
            &[400],
        ),
        reject(
            "TE chunked on HTTP/1.0",
            format!(
                "POST /te10 HTTP/1.0\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{HIDDEN}\r\n0\r\n\r\n",
                HIDDEN.len()
            ),
            &[400],
        ),
        // Content-Length that is not 1*DIGIT, or that disagrees with itself.
        reject("Content-Length: +5", with_length("Content-Length: +5"), &[400]),
        reject(
            "Content-Length: 5 then U+0085",
            with_length("Content-Length: 5\u{85}"),
            &[400],
        ),
        reject("Content-Length: 0x5", with_length("Content-Length: 0x5"), &[400]),
        reject("Content-Length: 5, 6", with_length("Content-Length: 5, 6"), &[400]),
        reject(
            "two Content-Length fields 5 and 6",
            with_length("Content-Length: 5\r\nContent-Length: 6"),
            &[400],
        ),
        forward(
            "two equal Content-Length fields (accepted)",
            "POST /twice HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            |_, seen| {
                let s = only(seen)?;
                expect("body hello", s.body == b"hello", s)?;
                expect(
                    "lengths that agree",
                    s.values("content-length").iter().all(|v| *v == "5"),
                    s,
                )
            },
        ),
        // Field syntax.
        reject(
            "obs-fold",
            get_with("Host: example.test\r\nX-A: a\r\n b"),
            &[400],
        ),
        reject("space before colon (Host : x)", get_with("Host : example.test"), &[400]),
        reject("NUL in a value", get_with("Host: example.test\r\nX-A: a\0b"), &[400]),
        // Chunked bodies a strict decoder refuses.
        reject("bare LF in a chunk extension", chunked("3;x=1\nabc\r\n0\r\n\r\n"), &[400]),
        reject("bare LF in a trailer", chunked("3\r\nabc\r\n0\r\nX-T: 1\n\r\n"), &[400]),
        reject("chunk size with a leading space", chunked(" 3\r\nabc\r\n0\r\n\r\n"), &[400]),
        reject("empty chunk size", chunked("\r\n3\r\nabc\r\n0\r\n\r\n"), &[400]),
        reject(
            "chunk size overflowing 64 bits",
            chunked("10000000000000003\r\nabc\r\n0\r\n\r\n"),
            &[400],
        ),
        // Host.
        reject(
            "two Host fields",
            get_with("Host: example.test\r\nHost: internal.test"),
            &[400],
        ),
        reject("HTTP/1.1 without Host", get_with("X-A: 1"), &[400]),
        forward(
            "absolute-form target with a Host that agrees",
            "GET http://internal.test/a?x=1 HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n",
            |_, seen| {
                let s = only(seen)?;
                expect("routed as internal.test", s.upstream == "internal", s)?;
                expect("origin-form /a?x=1", s.target == "/a?x=1", s)?;
                expect("Host: internal.test", s.values("host") == ["internal.test"], s)
            },
        ),
        // RFC 9112 §3.2.2 lets the target's authority win; laneway refuses
        // the disagreement instead, as Pingora and HAProxy do: two names
        // for one request are what host-confusion attacks are made of.
        reject(
            "absolute-form target whose authority differs from Host",
            "GET http://internal.test/a HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
            &[400],
        ),
        // Limits.
        reject("request line over 8 KiB, one write", long_line, &[414]),
        Case {
            name: "request line over 8 KiB, in pieces",
            send: Send::Pieces(endless_line.into_bytes(), 1024),
            ..reject("", "", &[414])
        },
        reject("header section over 64 KiB", big_section, &[431]),
        reject("more than 100 fields", many_fields, &[431]),
        // Versions.
        reject("HTTP/1.2", "GET / HTTP/1.2\r\nHost: example.test\r\n\r\n", &[505]),
        reject("HTTP/2.0 request line", "GET / HTTP/2.0\r\nHost: example.test\r\n\r\n", &[505]),
        reject("HTTP/3.0", "GET / HTTP/3.0\r\nHost: example.test\r\n\r\n", &[505]),
        // Other protocols on the plain HTTP/1 listener.
        reject("TLS ClientHello", client_hello(), &[400]),
        reject("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &[400]),
    ]
}

/// Runs one case; `Err` says what went wrong.
fn run_case(lw: &Laneway, ups: &[&RawUpstream], case: &Case) -> Result<(), String> {
    for up in ups {
        up.clear();
    }
    let (resp, after) = exchange(lw.proxy, &case.send);
    let mut seen = Vec::new();
    let mut problems = Vec::new();
    for up in ups {
        match up.settle() {
            Ok(s) => seen.extend(s),
            Err(e) => problems.push(e),
        }
    }
    match &resp {
        Ok(r) if case.status.contains(&r.status) => {}
        Ok(r) => problems.push(format!(
            "answered {} (expected {:?}): {:?}",
            r.status,
            case.status,
            short(&r.body())
        )),
        Err(e) => problems.push(format!("no answer (expected {:?}): {e}", case.status)),
    }
    if case.closes && resp.is_ok() && !matches!(after, After::Closed | After::Reset) {
        problems.push(format!("connection not closed after the answer: {after:?}"));
    }
    if seen.len() != case.forwarded {
        let what: Vec<String> = seen
            .iter()
            .map(|s| {
                let body = String::from_utf8_lossy(&s.body);
                short(&format!("{} {} (body {body:?})", s.method, s.target))
            })
            .collect();
        problems.push(format!(
            "the upstream parsed {} request(s), expected {}: {what:?}",
            seen.len(),
            case.forwarded
        ));
    } else if let (Some(check), Ok(r)) = (case.check, &resp) {
        if let Err(e) = check(r, &seen) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs every case, prints one line per case, and fails listing every
/// case that failed.
fn run_cases(engine: &str, lw: &Laneway, ups: &[&RawUpstream], cases: &[Case]) {
    let mut failed = Vec::new();
    for case in cases {
        match run_case(lw, ups, case) {
            Ok(()) => eprintln!("[{engine}] pass: {}", case.name),
            Err(e) => {
                eprintln!("[{engine}] FAIL: {}: {e}", case.name);
                failed.push(format!("{}: {e}", case.name));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{engine}: {} of {} cases failed:\n  {}",
        failed.len(),
        cases.len(),
        failed.join("\n  ")
    );
}

fn start(engine: &str, proxy_extra: &str, ups: &[&RawUpstream]) -> Laneway {
    let lw = Laneway::start_full(
        ROUTES,
        &format!("engine = \"{engine}\"\n{proxy_extra}"),
        "",
        "",
    );
    for up in ups {
        lw.register(&format!("{}-1", up.name), up.name, None, up.port());
    }
    lw
}

fn requests(engine: &str) {
    let edge = RawUpstream::start("edge");
    let internal = RawUpstream::start("internal");
    let lw = start(engine, "", &[&edge, &internal]);
    run_cases(engine, &lw, &[&edge, &internal], &request_cases());
}

#[test]
fn request_framing_h1() {
    requests("h1");
}

#[test]
fn request_framing_pingora() {
    requests("pingora");
}

// -------------------------------------------------------------- responses

fn response_cases() -> Vec<Case> {
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    let answer = |status: &'static [u16]| Case {
        name: "",
        send: Send::Whole(Vec::new()),
        status,
        closes: false,
        forwarded: 1,
        check: None,
    };
    vec![
        Case {
            name: "response with Content-Length and chunked: chunked wins",
            send: Send::Whole(get("/resp/both-lengths")),
            check: Some(|resp, _| {
                if resp.has("content-length") || resp.body() != "hello" {
                    return Err(format!(
                        "expected the chunked body \"hello\" without Content-Length, got {resp:?}"
                    ));
                }
                Ok(())
            }),
            ..answer(&[200])
        },
        Case {
            name: "response with two different Content-Lengths",
            send: Send::Whole(get("/resp/two-lengths")),
            ..answer(&[502])
        },
        Case {
            name: "response with a non-numeric status",
            send: Send::Whole(get("/resp/bad-status")),
            ..answer(&[502])
        },
        Case {
            name: "response with a four-digit status",
            send: Send::Whole(get("/resp/long-status")),
            ..answer(&[502])
        },
    ]
}

/// One request on a kept-alive client connection; the answer must name
/// `path` (the upstream's own answer to it).
fn ask(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
) -> Result<(), String> {
    let body = if method == "POST" { "payload" } else { "" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send {path}: {e}"))?;
    let resp = read_response(r).map_err(|e| format!("{method} {path}: {e}"))?;
    let want = format!("edge saw {path}");
    if resp.status != 200 || resp.body() != want {
        return Err(format!(
            "{method} {path}: expected 200 {want:?}, got {} {:?}",
            resp.status,
            resp.body()
        ));
    }
    Ok(())
}

/// Late bytes on an idle upstream connection never reach a client: after
/// `/late` is answered, the upstream writes a whole extra response on that
/// connection; the next request must get its own answer.
fn late_bytes(lw: &Laneway, up: &RawUpstream) -> Result<(), String> {
    let (mut s, mut r) = connect(lw.proxy);
    let mut reused = 0;
    for round in 0..3 {
        up.clear();
        ask(&mut s, &mut r, "GET", "/late")?;
        let sent = up.send_late(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled");
        if sent == 0 {
            return Err(format!(
                "round {round}: no idle connection to send late bytes on"
            ));
        }
        let next = format!("/after-late-{round}");
        ask(&mut s, &mut r, "GET", &next)?;
        let seen = up.settle()?;
        let conn_of = |t: &str| seen.iter().find(|x| x.target == t).map(|x| x.conn);
        if conn_of("/late").is_some() && conn_of("/late") == conn_of(&next) {
            reused += 1;
        }
    }
    // Not asserted (either is correct): whether the late connection was
    // still used, after its late bytes were drained or before they arrived.
    eprintln!("late bytes: {reused} of 3 next requests went on the late connection");
    Ok(())
}

/// A POST sent on a pooled connection the upstream closed while it was
/// idle is sent again on a fresh one: the upstream parses it once, the
/// client gets its answer.
fn post_after_idle_close(lw: &Laneway, up: &RawUpstream) -> Result<(), String> {
    let (mut s, mut r) = connect(lw.proxy);
    for round in 0..3 {
        ask(&mut s, &mut r, "GET", &format!("/prime-{round}"))?;
        if up.close_all() == 0 {
            return Err(format!(
                "round {round}: laneway kept no upstream connection open"
            ));
        }
        up.clear();
        let path = format!("/post-{round}");
        ask(&mut s, &mut r, "POST", &path)?;
        let seen = up.settle()?;
        let posts: Vec<&Seen> = seen.iter().filter(|x| x.target == path).collect();
        if posts.len() != 1 || posts[0].body != b"payload" {
            return Err(format!(
                "round {round}: expected one {path} with its body upstream, saw {seen:?}"
            ));
        }
    }
    Ok(())
}

fn responses(engine: &str) {
    let edge = RawUpstream::start("edge");
    let lw = start(engine, "", &[&edge]);
    run_cases(engine, &lw, &[&edge], &response_cases());
}

#[test]
fn response_framing_h1() {
    responses("h1");
}

#[test]
fn response_framing_pingora() {
    responses("pingora");
}

/// Runs a scenario on a laneway of its own (a failure leaves pooled
/// connections out of step, which would spill into other cases).
fn scenario(engine: &str, name: &str, run: fn(&Laneway, &RawUpstream) -> Result<(), String>) {
    let edge = RawUpstream::start("edge");
    let lw = start(engine, "", &[&edge]);
    if let Err(e) = run(&lw, &edge) {
        panic!("[{engine}] {name}: {e}");
    }
}

#[test]
fn late_upstream_bytes_h1() {
    scenario(
        "h1",
        "late bytes on an idle upstream connection",
        late_bytes,
    );
}

#[test]
fn late_upstream_bytes_pingora() {
    scenario(
        "pingora",
        "late bytes on an idle upstream connection",
        late_bytes,
    );
}

#[test]
fn post_after_idle_close_h1() {
    scenario(
        "h1",
        "POST on an upstream connection closed while idle",
        post_after_idle_close,
    );
}

#[test]
fn post_after_idle_close_pingora() {
    scenario(
        "pingora",
        "POST on an upstream connection closed while idle",
        post_after_idle_close,
    );
}

// ----------------------------------------------------------- slow heads

/// A client trickling a head one byte at a time is answered 408 (or just
/// closed) at `header_timeout`, and nothing goes upstream.
fn slow_head(engine: &str) {
    let edge = RawUpstream::start("edge");
    let lw = start(engine, "header_timeout = \"1s\"", &[&edge]);
    let (mut s, r) = connect(lw.proxy);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ended = Arc::new(AtomicBool::new(false));
    let reader = {
        let ended = ended.clone();
        let mut r = r;
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let how = r.read_to_end(&mut got);
            ended.store(true, Ordering::SeqCst);
            (got, how.map(|_| ()).map_err(|e| e.kind()))
        })
    };
    // Never complete: a head that would take 25 s at this pace.
    let head = format!(
        "GET /slow HTTP/1.1\r\nHost: example.test\r\nX-Slow: {}",
        "s".repeat(200)
    );
    let mut still_open = true;
    for b in head.bytes() {
        if ended.load(Ordering::SeqCst) || s.write_all(&[b]).is_err() {
            still_open = false;
            break;
        }
        // pacing of the slow client, not synchronisation
        std::thread::sleep(Duration::from_millis(100));
    }
    if still_open {
        // fail below, after ending the reader
        let _ = s.shutdown(Shutdown::Both);
    }
    let (got, how) = reader.join().unwrap();
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        !still_open,
        "{engine}: a head trickled for {} bytes was never cut off (header_timeout = 1s)",
        head.len()
    );
    assert!(
        matches!(how, Ok(()) | Err(io::ErrorKind::ConnectionReset)),
        "{engine}: the connection did not end in a close: {how:?}"
    );
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408"),
        "{engine}: expected 408 or a bare close, got {got:?}"
    );
    assert!(
        edge.settle().unwrap().is_empty(),
        "{engine}: a request went upstream"
    );
}

#[test]
fn slow_head_h1() {
    slow_head("h1");
}

#[test]
fn slow_head_pingora() {
    slow_head("pingora");
}
