//! Strict HTTP/1.x framing in one pure place: request and response heads
//! parsed and checked (RFC 9112 §2–§7, RFC 9110 §5), and chunked bodies
//! decoded. Request path, but no I/O and no tokio: both engines call it,
//! the lean engine ([`super::h1`]) on every head and body it reads, the
//! Pingora engine ([`super::pingora_engine`]) on the raw head Pingora read,
//! so that the two answer a request the same way.
//!
//! Everything here parses in place: a head is parsed into offsets into the
//! caller's buffer, with no allocation, in one pass over its lines.
//!
//! # What is rejected, and with which status
//!
//! A rejected request is answered with the status below and its connection
//! is closed; nothing of it reaches an upstream.
//!
//! | request                                                              | status |
//! |----------------------------------------------------------------------|--------|
//! | first bytes not an HTTP/1 request (TLS ClientHello, HTTP/2 preface)   | 400    |
//! | a bare CR or LF (lines end with CRLF only)                           | 400    |
//! | invalid method, request target or request line                        | 400    |
//! | HTTP version other than 1.0 and 1.1 (`HTTP/1.2`, `HTTP/2.0`, `HTTP/3`) | 505    |
//! | request line longer than 8 KiB                                       | 414    |
//! | header section larger than 64 KiB, or more than 100 fields           | 431    |
//! | obs-fold, whitespace before a colon, invalid field name              | 400    |
//! | CR, LF, NUL or another control byte in a field value                 | 400    |
//! | Content-Length not `1*DIGIT`, or values that differ                   | 400    |
//! | both Content-Length and Transfer-Encoding                            | 400    |
//! | Transfer-Encoding on HTTP/1.0                                        | 400    |
//! | Transfer-Encoding list malformed (empty element, `chunked` twice or with parameters) | 400 |
//! | Transfer-Encoding naming another coding than `chunked`                | 501    |
//! | no Host on HTTP/1.1, a second Host, an invalid Host                   | 400    |
//! | absolute-form target: scheme not `http`/`https`, no authority, userinfo, or a Host that differs | 400 |
//! | chunked body: size not `1*HEXDIG` (at most 16 digits), extension or trailer off its grammar, bare LF | 400 |
//! | chunked body larger than `[proxy] max_body_size`                     | 413    |
//!
//! An upstream response whose status line, fields, Content-Length or
//! Transfer-Encoding are invalid as above is answered 502. A response with
//! both Transfer-Encoding and Content-Length is framed by its
//! Transfer-Encoding (chunked wins) and its Content-Length is not passed on.
//!
//! # Absolute-form targets (RFC 9112 §3.2.2)
//!
//! `GET http://shop.example.com/cart?x=1 HTTP/1.1`, what a browser sends to
//! a proxy, is served: the target's authority (`shop.example.com`) is the
//! request's host, laneway routes by it, and the upstream gets the
//! origin-form `/cart?x=1` with `Host: shop.example.com`. RFC 9112 lets the
//! authority replace a differing Host; laneway, like Pingora's server and
//! HAProxy, rejects a Host that differs from the authority instead (400),
//! so a request never names two hosts and both engines answer alike. An
//! HTTP/1.0 request without Host takes its Host from the authority.

mod chunked;
mod fields;
mod request;
mod response;
mod scan;
#[cfg(test)]
mod tests;

pub use chunked::{ChunkError, ChunkedDecoder};
pub use fields::{Field, Fields, Span};
pub use request::{parse_request_head, RequestHead, TargetForm};
pub use response::{parse_response_head, ResponseHead};
pub use scan::{scan_head, HeadScanner};

use std::fmt;

/// Longest request line accepted (414 beyond).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header (or trailer) section accepted (431 beyond).
pub const MAX_FIELD_SECTION: usize = 64 * 1024;
/// Most fields a request head may carry (431 beyond).
pub const MAX_REQUEST_FIELDS: usize = 100;
/// Most fields a response head may carry (502 beyond).
pub const MAX_RESPONSE_FIELDS: usize = fields::CAPACITY;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (or an empty one).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why a message was refused: the status to answer with and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    status: u16,
    what: &'static str,
}

impl Reject {
    pub(crate) const fn new(status: u16, what: &'static str) -> Reject {
        Reject { status, what }
    }

    /// The status to answer with (502 for an upstream's response).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// What was wrong (the [`fmt::Display`] text).
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The same problem, found in an upstream's response: 502.
    pub(crate) const fn upstream(self) -> Reject {
        Reject {
            status: 502,
            what: self.what,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for Reject {}

/// `tchar` of RFC 9110 §5.6.2: the bytes of a token (method, field name,
/// coding, extension name).
pub(crate) const fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

/// A byte of a field value: HTAB, SP, VCHAR or obs-text (RFC 9110 §5.5).
pub(crate) const fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// The index of the first control byte (below 0x20: HTAB, CR, LF, NUL, …)
/// or DEL in `s`, or `s.len()`. Eight bytes at a time: heads are mostly
/// long runs of visible bytes.
pub(crate) fn first_ctl(s: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    for chunk in s.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        // a byte below 0x20 (bytes of 0x80 and up are never flagged), or
        // a byte equal to 0x7f
        let below = x.wrapping_sub(0x20 * LO) & !x & HI;
        let del = (x ^ (0x7f * LO)).wrapping_sub(LO) & !(x ^ (0x7f * LO)) & HI;
        if below | del != 0 {
            break;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&b| b < 0x20 || b == 0x7f)
        .unwrap_or(s.len() - i)
}

/// Optional whitespace (SP or HTAB).
pub(crate) const fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}
