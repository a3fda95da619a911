//! The access log: one [`AccessRecord`] per request, filled by both engines
//! and turned into one line by [`log`], as `key=value` text or as JSON of
//! the configured fields. Request path (after the response is sent), when
//! the access log is on; the line goes to [`super::access_writer`], which
//! writes it on its own thread.
//!
//! Why not through `tracing`: an access event through tracing-subscriber's
//! fmt layer cost a visitor call per field, a `String` per event and a
//! synchronous write to standard error under its lock, ~30% of a proxied
//! request's CPU on the load benchmark. Here a line is formatted straight
//! into a recycled buffer (integers with `itoa`, durations as fixed-point
//! milliseconds, no `fmt` machinery), with no allocation once the buffers
//! are warm, and handed off without a system call. The main log stays on
//! `tracing`.
//!
//! Hostile values (a `Host` or request target with quotes, control bytes
//! or bytes outside ASCII) are escaped, so one request is always one line.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::access_writer::AccessWriter;

/// Every field an access-log line can have, in the order of a text line.
pub const ACCESS_FIELDS: [&str; 17] = [
    "ts",
    "client",
    "method",
    "host",
    "uri",
    "lane",
    "lane_source",
    "lane_unknown",
    "service",
    "version",
    "upstream",
    "tries",
    "local",
    "status",
    "duration_ms",
    "upstream_ms",
    "error",
];

/// The fields of a JSON line when `[log] access_fields` is not set.
pub const ACCESS_FIELDS_DEFAULT: [&str; 14] = [
    "ts",
    "client",
    "method",
    "host",
    "uri",
    "lane",
    "lane_source",
    "lane_unknown",
    "service",
    "version",
    "upstream",
    "status",
    "duration_ms",
    "upstream_ms",
];

/// What the access log says about one request. Both engines fill it the
/// same way; `None` is written as `-` (and `upstream_ms` as JSON `null`).
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    /// The request target as the client sent it.
    pub uri: &'a str,
    pub lane: &'a str,
    /// How the lane was found (`header`, `cookie`, …, `default`).
    pub lane_source: &'a str,
    /// A lane the request named that does not exist (a text line has the
    /// field only then).
    pub lane_unknown: Option<&'a str>,
    pub service: Option<&'a str>,
    /// The service version served.
    pub version: Option<&'a str>,
    /// The instance tried last.
    pub upstream: Option<SocketAddr>,
    /// Upstream attempts, retries included.
    pub tries: u32,
    /// Why laneway answered itself (`not_found`, `health`, …).
    pub local: Option<&'a str>,
    /// The status sent to the client (0: none was sent).
    pub status: u16,
    pub duration: Duration,
    /// From sending the request upstream to the end of the response.
    pub upstream_duration: Option<Duration>,
    /// What ended the exchange early, when something did.
    pub error: Option<&'a str>,
}

/// A field of the access log, see [`ACCESS_FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Ts,
    Client,
    Method,
    Host,
    Uri,
    Lane,
    LaneSource,
    LaneUnknown,
    Service,
    Version,
    Upstream,
    Tries,
    Local,
    Status,
    DurationMs,
    UpstreamMs,
    Error,
}

const ALL: [Field; 17] = [
    Field::Ts,
    Field::Client,
    Field::Method,
    Field::Host,
    Field::Uri,
    Field::Lane,
    Field::LaneSource,
    Field::LaneUnknown,
    Field::Service,
    Field::Version,
    Field::Upstream,
    Field::Tries,
    Field::Local,
    Field::Status,
    Field::DurationMs,
    Field::UpstreamMs,
    Field::Error,
];

impl Field {
    /// The field called `name` (one of [`ACCESS_FIELDS`]).
    pub fn from_name(name: &str) -> Option<Field> {
        ACCESS_FIELDS
            .iter()
            .position(|f| *f == name)
            .map(|i| ALL[i])
    }

    fn name(self) -> &'static str {
        ACCESS_FIELDS[self as usize]
    }
}

/// How lines are written.
#[derive(Debug, Clone)]
pub enum Format {
    /// `<timestamp>  INFO laneway::access: client=… method=… …`: the shape
    /// of the main log's lines, every field but `ts` in [`ACCESS_FIELDS`]
    /// order.
    Text,
    /// One JSON object of these fields, in this order.
    Json(Box<[Field]>),
}

/// The installed access log: its format and its writer.
struct AccessLog {
    format: Format,
    writer: AccessWriter,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// Installs the access log for the life of the process; a second call
/// changes nothing.
pub(super) fn install(format: Format, writer: AccessWriter) {
    let _ = ACCESS_LOG.set(AccessLog { format, writer }); // first install wins
}

/// Writes one request's access line, when the access log is on. Never
/// blocks: a line the writer has no room for is dropped and counted in
/// `laneway_access_log_dropped_total`.
/// Logs a request refused by the framing rules before it was parsed
/// whole (both engines): the method, target and Host are read from `raw`,
/// the bytes received, as far as they go (`-` where they don't parse).
pub fn log_refused(
    raw: &[u8],
    client: Option<SocketAddr>,
    status: u16,
    why: &str,
    started: std::time::Instant,
) {
    let mut lines = raw
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next().unwrap_or_default();
    let mut words = start.split(|&b| b == b' ').filter(|w| !w.is_empty());
    fn text(b: Option<&[u8]>) -> Option<&str> {
        b.and_then(|b| std::str::from_utf8(b).ok())
    }
    let method = text(words.next()).unwrap_or("-");
    let uri = text(words.next()).unwrap_or("-");
    let host = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let colon = l.iter().position(|&b| b == b':')?;
        l[..colon]
            .eq_ignore_ascii_case(b"host")
            .then(|| l[colon + 1..].trim_ascii())
    });
    log(&AccessRecord {
        client,
        method,
        host: text(host),
        uri,
        lane: crate::allocation::lanes::BASELINE,
        lane_source: "default",
        lane_unknown: None,
        service: None,
        version: None,
        upstream: None,
        tries: 0,
        local: Some(if status == 408 {
            "header_timeout"
        } else {
            "bad_request"
        }),
        status,
        duration: started.elapsed(),
        upstream_duration: None,
        error: Some(why),
    });
}

pub fn log(record: &AccessRecord<'_>) {
    let Some(access) = ACCESS_LOG.get() else {
        return;
    };
    let mut line = access.writer.buffer();
    format_line(&mut line, &access.format, record, SystemTime::now());
    access.writer.send(line);
}

/// Waits up to `timeout` until every line logged so far is written out.
/// `false` when the writer did not finish in time (or there is none).
pub fn flush(timeout: Duration) -> bool {
    ACCESS_LOG
        .get()
        .is_some_and(|access| access.writer.flush(timeout))
}

/// Appends `record` as one line (with its `\n`) to `out`.
pub fn format_line(out: &mut Vec<u8>, format: &Format, r: &AccessRecord<'_>, now: SystemTime) {
    // one allocation check for the whole line in the common case
    out.reserve(320 + r.uri.len() + r.host.map_or(0, str::len));
    match format {
        Format::Text => text_line(out, r, now),
        Format::Json(fields) => json_line(out, fields, r, now),
    }
    out.push(b'\n');
}

/// Every field but `ts` in [`ACCESS_FIELDS`] order, one straight run.
fn text_line(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    out.extend_from_slice(&timestamp(now, 6));
    out.extend_from_slice(b"  INFO laneway::access: client=");
    text_addr(out, r.client);
    out.extend_from_slice(b" method=");
    text_str(out, Some(r.method));
    out.extend_from_slice(b" host=");
    text_str(out, r.host);
    out.extend_from_slice(b" uri=");
    text_str(out, Some(r.uri));
    out.extend_from_slice(b" lane=");
    text_str(out, Some(r.lane));
    out.extend_from_slice(b" lane_source=");
    text_str(out, Some(r.lane_source));
    if r.lane_unknown.is_some() {
        out.extend_from_slice(b" lane_unknown=");
        text_str(out, r.lane_unknown);
    }
    out.extend_from_slice(b" service=");
    text_str(out, r.service);
    out.extend_from_slice(b" version=");
    text_str(out, r.version);
    out.extend_from_slice(b" upstream=");
    text_addr(out, r.upstream);
    out.extend_from_slice(b" tries=");
    write_int(out, u64::from(r.tries));
    out.extend_from_slice(b" local=");
    text_str(out, r.local);
    out.extend_from_slice(b" status=");
    write_int(out, u64::from(r.status));
    out.extend_from_slice(b" duration_ms=");
    write_ms(out, r.duration);
    out.extend_from_slice(b" upstream_ms=");
    match r.upstream_duration {
        Some(d) => write_ms(out, d),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" error=");
    text_str(out, r.error);
}

fn json_line(out: &mut Vec<u8>, fields: &[Field], r: &AccessRecord<'_>, now: SystemTime) {
    out.push(b'{');
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(field.name().as_bytes());
        out.extend_from_slice(b"\":");
        match field {
            Field::Ts => {
                out.push(b'"');
                out.extend_from_slice(&timestamp(now, 3)[..24]);
                out.push(b'"');
            }
            Field::Client => json_addr(out, r.client),
            Field::Method => json_str(out, Some(r.method)),
            Field::Host => json_str(out, r.host),
            Field::Uri => json_str(out, Some(r.uri)),
            Field::Lane => json_str(out, Some(r.lane)),
            Field::LaneSource => json_str(out, Some(r.lane_source)),
            Field::LaneUnknown => json_str(out, r.lane_unknown),
            Field::Service => json_str(out, r.service),
            Field::Version => json_str(out, r.version),
            Field::Upstream => json_addr(out, r.upstream),
            Field::Tries => write_int(out, u64::from(r.tries)),
            Field::Local => json_str(out, r.local),
            Field::Status => write_int(out, u64::from(r.status)),
            Field::DurationMs => write_ms(out, r.duration),
            Field::UpstreamMs => match r.upstream_duration {
                Some(d) => write_ms(out, d),
                None => out.extend_from_slice(b"null"),
            },
            Field::Error => json_str(out, r.error),
        }
    }
    out.push(b'}');
}

/// Bytes a text value may hold unquoted: printable ASCII but for `"`
/// and `\`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = b'!';
    while b < 0x7f {
        t[b as usize] = b != b'"' && b != b'\\';
        b += 1;
    }
    t
};

/// A text value: `-` when absent; as it is when [`PLAIN`] throughout;
/// otherwise quoted, with `\"`, `\\`, `\n`, `\r`, `\t` and `\xNN` for
/// every other byte outside printable ASCII.
fn text_str(out: &mut Vec<u8>, s: Option<&str>) {
    let Some(s) = s else {
        out.push(b'-');
        return;
    };
    let s = s.as_bytes();
    if !s.is_empty() && s.iter().all(|&b| PLAIN[usize::from(b)]) {
        out.extend_from_slice(s);
        return;
    }
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b' '..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[b'\\', b'x', hex(b >> 4), hex(b & 0xf)]),
        }
    }
    out.push(b'"');
}

/// A JSON string, `"-"` when absent (the input is UTF-8: bytes from 0x80
/// up are kept).
fn json_str(out: &mut Vec<u8>, s: Option<&str>) {
    let s = s.unwrap_or("-").as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => &[b'\\', b'u', b'0', b'0', hex(b >> 4), hex(b & 0xf)],
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

fn hex(n: u8) -> u8 {
    b"0123456789abcdef"[usize::from(n & 0xf)]
}

fn write_int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (`1.234`), rounded to the microsecond.
fn write_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((d.subsec_nanos() + 500) / 1000));
    write_int(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn text_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(a) => write_addr(out, a),
        None => out.push(b'-'),
    }
}

fn json_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    out.push(b'"');
    text_addr(out, addr);
    out.push(b'"');
}

fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            // at most "255.255.255.255:65535"
            let mut buf = [0u8; 21];
            let mut n = 0;
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            buf[n] = b':';
            n += 1;
            let mut digits = itoa::Buffer::new();
            let port = digits.format(a.port()).as_bytes();
            buf[n..n + port.len()].copy_from_slice(port);
            out.extend_from_slice(&buf[..n + port.len()]);
        }
        SocketAddr::V6(a) => {
            use std::io::Write;
            let _ = write!(out, "{a}"); // writing to a Vec cannot fail
        }
    }
}

/// `2025-06-01T12:00:00.123456Z` (UTC): with `digits` 6 all 27 bytes are
/// used, with 3 the first 24 (`….123Z`).
fn timestamp(now: SystemTime, digits: u32) -> [u8; 27] {
    thread_local! {
        /// The last second formatted on this thread, and its text.
        static SECOND: Cell<(u64, [u8; 27])> = const { Cell::new((u64::MAX, [0; 27])) };
    }
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let mut t = match SECOND.get() {
        (cached, t) if cached == secs => t,
        _ => {
            let t = whole_second(secs);
            SECOND.set((secs, t));
            t
        }
    };
    let digits = digits.clamp(1, 6) as usize;
    let mut frac = since.subsec_micros() / 10u32.pow(6 - digits as u32);
    for i in (20..20 + digits).rev() {
        t[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    t[20 + digits] = b'Z';
    t
}

/// `2025-06-01T12:00:00.` and room for the fraction.
fn whole_second(secs: u64) -> [u8; 27] {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    let mut t = *b"0000-00-00T00:00:00.000000Z";
    let mut put2 = |at: usize, n: u64| {
        t[at] = b'0' + (n / 10 % 10) as u8;
        t[at + 1] = b'0' + (n % 10) as u8;
    };
    put2(0, year / 100);
    put2(2, year % 100);
    put2(5, month);
    put2(8, day);
    put2(11, sod / 3600);
    put2(14, sod / 60 % 60);
    put2(17, sod % 60);
    t
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn record() -> AccessRecord<'static> {
        AccessRecord {
            client: Some("10.0.0.7:51000".parse().unwrap()),
            method: "GET",
            host: Some("shop.example.com"),
            uri: "/a?b=1",
            lane: "t-1",
            lane_source: "header",
            lane_unknown: None,
            service: Some("web"),
            version: Some("v2"),
            upstream: Some("127.0.0.1:8081".parse().unwrap()),
            tries: 1,
            local: None,
            status: 200,
            duration: Duration::from_micros(1234),
            upstream_duration: Some(Duration::from_nanos(987_654)),
            error: None,
        }
    }

    /// 2025-06-01T12:34:56.789012Z
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(1_748_781_296, 789_012_345)
    }

    fn text(r: &AccessRecord<'_>) -> String {
        let mut out = Vec::new();
        format_line(&mut out, &Format::Text, r, at());
        String::from_utf8(out).unwrap()
    }

    fn json(fields: &[&str], r: &AccessRecord<'_>) -> String {
        let fields: Box<[Field]> = fields
            .iter()
            .map(|f| Field::from_name(f).unwrap())
            .collect();
        let mut out = Vec::new();
        format_line(&mut out, &Format::Json(fields), r, at());
        String::from_utf8(out).unwrap()
    }

    /// `key=value` pairs of a text line, quoted values unescaped.
    fn pairs(line: &str) -> Vec<(String, String)> {
        let body = line.split_once(": ").unwrap().1.trim_end_matches('\n');
        let mut out = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').unwrap();
            let (value, next) = if let Some(q) = after.strip_prefix('"') {
                let mut v = String::new();
                let mut chars = q.char_indices();
                let end = loop {
                    let (i, c) = chars.next().expect("closing quote");
                    match c {
                        '"' => break i + 1,
                        '\\' => {
                            let (_, e) = chars.next().unwrap();
                            match e {
                                'n' => v.push('\n'),
                                'r' => v.push('\r'),
                                't' => v.push('\t'),
                                'x' => {
                                    let h: String =
                                        (0..2).map(|_| chars.next().unwrap().1).collect();
                                    v.push(char::from(u8::from_str_radix(&h, 16).unwrap()));
                                }
                                other => v.push(other),
                            }
                        }
                        c => v.push(c),
                    }
                };
                (v, &q[end..])
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            };
            out.push((key.to_string(), value));
            rest = next.trim_start_matches(' ');
        }
        out
    }

    #[test]
    fn a_text_line_has_every_field_in_order() {
        assert_eq!(
            text(&record()),
            "2025-06-01T12:34:56.789012Z  INFO laneway::access: client=10.0.0.7:51000 \
             method=GET host=shop.example.com uri=/a?b=1 lane=t-1 lane_source=header \
             service=web version=v2 upstream=127.0.0.1:8081 tries=1 local=- status=200 \
             duration_ms=1.234 upstream_ms=0.988 error=-\n"
        );
    }

    #[test]
    fn absent_values_are_dashes_and_durations_have_three_decimals() {
        let r = AccessRecord {
            client: None,
            host: None,
            service: None,
            version: None,
            upstream: None,
            tries: 0,
            local: Some("not_found"),
            status: 404,
            duration: Duration::from_secs(2) + Duration::from_nanos(499),
            upstream_duration: None,
            error: Some("ConnectRefused"),
            ..record()
        };
        let p = pairs(&text(&r));
        let get = |k: &str| p.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("client"), "-");
        assert_eq!(get("host"), "-");
        assert_eq!(get("upstream"), "-");
        assert_eq!(get("local"), "not_found");
        assert_eq!(get("duration_ms"), "2000.000");
        assert_eq!(get("upstream_ms"), "-");
        assert_eq!(get("error"), "ConnectRefused");
        // no lane named that does not exist: the text line has no field
        assert!(p.iter().all(|(k, _)| k != "lane_unknown"));
        let j: Json = serde_json::from_str(&json(&ACCESS_FIELDS, &r)).unwrap();
        assert_eq!(j["upstream_ms"], Json::Null);
        assert_eq!(j["lane_unknown"], "-");
        assert_eq!(j["client"], "-");
        assert_eq!(j["duration_ms"].as_f64(), Some(2000.0));
    }

    #[test]
    fn hostile_values_stay_on_one_line_and_read_back_unchanged() {
        let uri = "/x\r\nFAKE 1970-01-01T00:00:00Z  INFO laneway::access: status=200 \"q\" \\ \u{7f}\u{1b}[31m é";
        let host = "a.example.com\" status=999 x=\"";
        let r = AccessRecord {
            uri,
            host: Some(host),
            method: "G ET",
            lane: "",
            lane_unknown: Some("t-\"9 x=1"),
            ..record()
        };
        let line = text(&r);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'));
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line}");
        assert!(line.is_ascii(), "{line}");
        let p = pairs(&line);
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, &ACCESS_FIELDS[1..], "{line}");
        let get = |k: &str| p.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("host"), host);
        assert_eq!(get("method"), "G ET");
        assert_eq!(get("lane"), "");
        assert_eq!(get("lane_unknown"), "t-\"9 x=1");
        assert_eq!(get("status"), "200");
        // bytes outside ASCII come back one \xNN at a time
        let want: String = uri.bytes().map(char::from).collect();
        assert_eq!(get("uri"), want);

        let line = json(&ACCESS_FIELDS, &r);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(
            !line[..line.len() - 1].contains(['\r', '\u{1b}', '\u{7f}']),
            "{line}"
        );
        let j: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(j["uri"], uri);
        assert_eq!(j["host"], host);
        assert_eq!(j["status"], 200);
    }

    #[test]
    fn json_has_the_chosen_fields_in_their_order() {
        let line = json(
            &["status", "lane", "ts", "upstream_ms", "tries", "uri"],
            &record(),
        );
        assert_eq!(
            line,
            "{\"status\":200,\"lane\":\"t-1\",\"ts\":\"2025-06-01T12:34:56.789Z\",\
             \"upstream_ms\":0.988,\"tries\":1,\"uri\":\"/a?b=1\"}\n"
        );
        let every: Json = serde_json::from_str(&json(&ACCESS_FIELDS, &record())).unwrap();
        let keys: Vec<&String> = every.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), ACCESS_FIELDS.len());
        assert_eq!(every["client"], "10.0.0.7:51000");
        assert_eq!(every["upstream"], "127.0.0.1:8081");
        assert_eq!(every["duration_ms"].as_f64(), Some(1.234));
    }

    #[test]
    fn addresses_are_written_as_std_displays_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.100.9:80",
            "127.0.0.1:8081",
            "[::1]:4000",
            "[2001:db8::7]:443",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            write_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn timestamps_match_rfc3339() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_800,
            4_102_444_799,
            1_748_781_296,
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, 123_456_789);
            assert_eq!(
                std::str::from_utf8(&timestamp(t, 6)).unwrap(),
                humantime::format_rfc3339_micros(t).to_string()
            );
            assert_eq!(
                std::str::from_utf8(&timestamp(t, 3)[..24]).unwrap(),
                humantime::format_rfc3339_millis(t).to_string()
            );
        }
    }

    #[test]
    fn every_field_name_is_known() {
        for name in ACCESS_FIELDS {
            assert_eq!(Field::from_name(name).unwrap().name(), name);
        }
        assert_eq!(Field::from_name("colour"), None);
    }
}
