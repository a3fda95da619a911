//! Request heads: the request line, the fields, and what they decide
//! together (framing, keep-alive, upgrade, the host). Request path.

use super::fields::{
    self, field_line, line_end, Codings, ConnectionTokens, Field, Fields, Known, Span, NO_END,
};
use super::scan::{H2_PREFACE, LINE_TOO_LONG, SECTION_TOO_LARGE, TOO_MANY_FIELDS};
use super::{is_tchar, Framing, Reject, MAX_FIELD_SECTION, MAX_REQUEST_FIELDS, MAX_REQUEST_LINE};

/// The form of a request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query`: `authority` is the request's host;
    /// `path` is what follows it (empty, `/…` or `?…`).
    Absolute { authority: Span, path: Span },
    /// `host:port`, with CONNECT.
    Authority,
    /// `*`, with OPTIONS.
    Asterisk,
}

/// A parsed and checked request head: offsets into the buffer it was
/// parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Length of the head through its empty line.
    pub len: usize,
    pub method: Span,
    /// The request target as received.
    pub target: Span,
    pub form: TargetForm,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    pub fields: Fields,
    pub framing: Framing,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Connection: upgrade` with an `Upgrade` field.
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The request's host: an absolute-form target's authority, else the
    /// Host field; `None` only for HTTP/1.0 without either.
    pub host: Option<Span>,
    /// The request carries a Host field.
    pub has_host_field: bool,
}

impl RequestHead {
    /// The target to send upstream, in origin-form: the path and query of
    /// an absolute-form target, else the target as received. `(slash,
    /// rest)`: write `/` before `rest` when `slash` is true (an
    /// absolute-form target without a path: `http://a` or `http://a?q`).
    pub fn origin_form<'a>(&self, buf: &'a [u8]) -> (bool, &'a [u8]) {
        match self.form {
            TargetForm::Absolute { path, .. } => {
                let path = path.of(buf);
                (path.first() != Some(&b'/'), path)
            }
            _ => (false, self.target.of(buf)),
        }
    }
}

/// Parses `buf`, which holds a complete request head (through its empty
/// line; bytes after it are ignored), and checks it against RFC 9112 and
/// laneway's limits. See the module documentation for what is refused.
pub fn parse_request_head(buf: &[u8]) -> Result<RequestHead, Reject> {
    let mut at = 0;
    while buf[at..].starts_with(b"\r\n") {
        at += 2;
        if at > MAX_REQUEST_LINE {
            return Err(LINE_TOO_LONG);
        }
    }
    // request line, its length checked first: looked at no further than
    // 8 KiB and a CRLF
    let limit = buf.len().min(at + MAX_REQUEST_LINE + 2);
    let line_end = match line_end(&buf[..limit], at) {
        Err(NO_END) if limit < buf.len() => return Err(LINE_TOO_LONG),
        r => r?,
    };
    let (method, target, minor) = request_line(buf, at, line_end)?;
    let method_bytes = method.of(buf);

    let mut fields = Fields::new();
    let mut facts = Facts::default();
    let section_start = line_end + 2;
    let mut next = section_start;
    loop {
        let line = field_line(buf, next)?;
        if line.end - section_start > MAX_FIELD_SECTION {
            return Err(SECTION_TOO_LARGE);
        }
        next = line.next;
        let Some(f) = line.field else {
            break;
        };
        if fields.len() >= MAX_REQUEST_FIELDS {
            return Err(TOO_MANY_FIELDS);
        }
        facts.add(buf, f)?;
        fields.push(f);
    }

    let framing = facts.framing(minor)?;
    let form = target_form(method_bytes, target, buf)?;
    let host = match form {
        TargetForm::Absolute { authority, .. } => {
            if let Some(h) = facts.host {
                if h.of(buf) != authority.of(buf) {
                    return Err(Reject::new(
                        400,
                        "Host differs from the authority of the absolute-form target",
                    ));
                }
            } else if minor >= 1 {
                return Err(MISSING_HOST);
            }
            Some(authority)
        }
        _ => {
            if facts.host.is_none() && minor >= 1 {
                return Err(MISSING_HOST);
            }
            facts.host
        }
    };
    let keep_alive = !facts.connection.close && (minor >= 1 || facts.connection.keep_alive);
    Ok(RequestHead {
        len: next,
        method,
        target,
        form,
        minor,
        fields,
        framing,
        keep_alive,
        upgrade: facts.connection.upgrade && facts.upgrade_field,
        expect_continue: facts.expect_continue,
        host,
        has_host_field: facts.host.is_some(),
    })
}

const MISSING_HOST: Reject = Reject::new(400, "HTTP/1.1 request without a Host field");

/// `method SP target SP HTTP/1.x` in `buf[start..end]`.
fn request_line(buf: &[u8], start: usize, end: usize) -> Result<(Span, Span, u8), Reject> {
    let line = &buf[start..end];
    if line == b"PRI * HTTP/2.0" {
        return Err(H2_PREFACE);
    }
    let m = line
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(line.len());
    if m == 0 || line.get(m) != Some(&b' ') {
        return Err(Reject::new(400, "invalid method in the request line"));
    }
    let t0 = m + 1;
    let t = line[t0..]
        .iter()
        .position(|&b| !is_target_byte(b))
        .map_or(line.len(), |i| t0 + i);
    if t == t0 {
        return Err(Reject::new(400, "empty or invalid request target"));
    }
    if line.get(t) != Some(&b' ') {
        return Err(Reject::new(400, "invalid byte in the request target"));
    }
    let minor = match &line[t + 1..] {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if is_other_version(v) => {
            return Err(Reject::new(
                505,
                "HTTP version not supported: send HTTP/1.1 or HTTP/1.0",
            ))
        }
        _ => return Err(Reject::new(400, "invalid HTTP version in the request line")),
    };
    Ok((
        Span::new(start, start + m),
        Span::new(start + t0, start + t),
        minor,
    ))
}

/// `HTTP/` DIGIT [ `.` DIGIT ]: a version, if not one laneway speaks.
fn is_other_version(v: &[u8]) -> bool {
    match v.strip_prefix(b"HTTP/") {
        Some([d]) => d.is_ascii_digit(),
        Some([d, b'.', e]) => d.is_ascii_digit() && e.is_ascii_digit(),
        _ => false,
    }
}

/// A byte of a request target: visible ASCII, or obs-text (raw UTF-8 that
/// some clients send; routing sees it as received).
fn is_target_byte(b: u8) -> bool {
    b > 0x20 && b != 0x7f
}

/// What the fields say, folded in one pass.
#[derive(Default)]
struct Facts {
    host: Option<Span>,
    length: Option<u64>,
    has_length: bool,
    codings: Codings,
    connection: ConnectionTokens,
    upgrade_field: bool,
    expect_continue: bool,
}

impl Facts {
    fn add(&mut self, buf: &[u8], f: Field) -> Result<(), Reject> {
        let value = f.value.of(buf);
        match fields::known(f.name.of(buf)) {
            Known::Host => {
                if self.host.is_some() {
                    return Err(Reject::new(400, "more than one Host field"));
                }
                if !is_host(value) {
                    return Err(Reject::new(400, "invalid Host field value"));
                }
                self.host = Some(f.value);
            }
            Known::ContentLength => {
                self.has_length = true;
                fields::content_length(value, &mut self.length)?;
            }
            Known::TransferEncoding => self.codings.add(value),
            Known::Connection => self.connection.add(value),
            Known::Expect => self.expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            Known::Upgrade => self.upgrade_field = true,
            Known::Other => {}
        }
        Ok(())
    }

    /// How the body is delimited (RFC 9112 §6.3, requests).
    fn framing(&self, minor: u8) -> Result<Framing, Reject> {
        let c = &self.codings;
        if !c.present {
            return Ok(match self.length {
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            });
        }
        if self.has_length {
            return Err(Reject::new(
                400,
                "both Content-Length and Transfer-Encoding: send one of them",
            ));
        }
        if minor == 0 {
            return Err(Reject::new(400, "Transfer-Encoding on an HTTP/1.0 request"));
        }
        if c.malformed || c.chunked > 1 {
            return Err(Reject::new(
                400,
                "malformed Transfer-Encoding: send exactly `chunked`",
            ));
        }
        if c.unknown {
            return Err(Reject::new(
                501,
                "Transfer-Encoding other than `chunked` is not implemented",
            ));
        }
        Ok(Framing::Chunked)
    }
}

/// The form of `target`, checked against the method.
fn target_form(method: &[u8], target: Span, buf: &[u8]) -> Result<TargetForm, Reject> {
    let t = target.of(buf);
    if t.first() == Some(&b'/') {
        return Ok(TargetForm::Origin);
    }
    if method == b"CONNECT" {
        return Ok(TargetForm::Authority);
    }
    if t == b"*" {
        return if method == b"OPTIONS" {
            Ok(TargetForm::Asterisk)
        } else {
            Err(Reject::new(
                400,
                "asterisk-form target with a method other than OPTIONS",
            ))
        };
    }
    let scheme_len = t.iter().position(|&b| b == b':').unwrap_or(0);
    let scheme = &t[..scheme_len];
    let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return Err(Reject::new(
            400,
            "request target is neither a path (/…) nor an absolute URI",
        ));
    }
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(Reject::new(
            400,
            "absolute-form target with a scheme other than http or https",
        ));
    }
    let Some(rest) = t[scheme_len + 1..].strip_prefix(b"//") else {
        return Err(Reject::new(
            400,
            "absolute-form target without an authority",
        ));
    };
    let a0 = target.start as usize + scheme_len + 3;
    let a_len = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..a_len];
    if authority.contains(&b'@') {
        return Err(Reject::new(400, "userinfo in the request target"));
    }
    if authority.is_empty() || !is_host(authority) {
        return Err(Reject::new(400, "invalid authority in the request target"));
    }
    Ok(TargetForm::Absolute {
        authority: Span::new(a0, a0 + a_len),
        path: Span::new(a0 + a_len, target.end as usize),
    })
}

/// A Host value: `uri-host [ ":" port ]` (RFC 9110 §7.2), or empty.
fn is_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
    })
}
