//! Response heads from upstreams: the status line, the fields, and the
//! framing they announce. Anything invalid is a 502 for the client.
//! Request path.

use super::fields::{
    self, field_line, line_end, Codings, ConnectionTokens, Fields, Known, Span, NO_END,
};
use super::scan::{SECTION_TOO_LARGE, TOO_MANY_FIELDS};
use super::{Framing, Reject, MAX_FIELD_SECTION, MAX_REQUEST_LINE, MAX_RESPONSE_FIELDS};

/// A parsed and checked response head: offsets into the buffer it was
/// parsed from.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Length of the head through its empty line.
    pub len: usize,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    pub status: u16,
    /// The status line after the version: `200 OK`.
    pub status_text: Span,
    pub fields: Fields,
    /// The framing the fields announce. Whether the response has a body at
    /// all (HEAD, 1xx, 204, 304) is the caller's to decide.
    pub framing: Framing,
    /// The upstream connection may carry another request after this one
    /// as far as the fields say (never after a response whose framing was
    /// suspect); a close-delimited body ends it in any case.
    pub keep_alive: bool,
    /// Transfer-Encoding framed the response despite a Content-Length:
    /// the Content-Length fields are not to be passed on.
    pub drop_content_length: bool,
}

/// Parses `buf`, which holds a complete response head (through its empty
/// line). Every failure is a [`Reject`] with status 502.
pub fn parse_response_head(buf: &[u8]) -> Result<ResponseHead, Reject> {
    parse(buf).map_err(Reject::upstream)
}

fn parse(buf: &[u8]) -> Result<ResponseHead, Reject> {
    let limit = buf.len().min(MAX_REQUEST_LINE + 2);
    let line_end = match line_end(&buf[..limit], 0) {
        Err(NO_END) if limit < buf.len() => {
            return Err(Reject::new(502, "status line longer than 8 KiB"))
        }
        r => r?,
    };
    let (minor, status, status_text) = status_line(&buf[..line_end])?;
    let mut fields = Fields::new();
    let mut length = None;
    let mut has_length = false;
    let mut codings = Codings::default();
    let mut connection = ConnectionTokens::default();
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
        if fields.len() >= MAX_RESPONSE_FIELDS {
            return Err(TOO_MANY_FIELDS);
        }
        let value = f.value.of(buf);
        match fields::known(f.name.of(buf)) {
            Known::ContentLength => {
                has_length = true;
                fields::content_length(value, &mut length)?;
            }
            Known::TransferEncoding => codings.add(value),
            Known::Connection => connection.add(value),
            _ => {}
        }
        fields.push(f);
    }
    let mut keep_alive = !connection.close && (minor >= 1 || connection.keep_alive);
    let framing = if codings.present {
        if codings.malformed || codings.chunked > 1 {
            return Err(Reject::new(
                502,
                "malformed Transfer-Encoding in the response",
            ));
        }
        // HTTP/1.0 with Transfer-Encoding, or both framing fields: framed
        // by the coding, then the connection is not trusted again
        if minor == 0 || has_length {
            keep_alive = false;
        }
        if codings.chunked_last {
            Framing::Chunked
        } else {
            // a final coding other than chunked: until close (RFC 9112 §6.3)
            keep_alive = false;
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(ResponseHead {
        len: next,
        minor,
        status,
        status_text,
        fields,
        framing,
        keep_alive,
        drop_content_length: codings.present && has_length,
    })
}

/// `HTTP/1.x SP 3DIGIT [ SP reason ]`.
fn status_line(line: &[u8]) -> Result<(u8, u16, Span), Reject> {
    const BAD: Reject = Reject::new(502, "invalid status line in the response");
    let minor = match line.get(..9) {
        Some(b"HTTP/1.1 ") => 1,
        Some(b"HTTP/1.0 ") => 0,
        _ => return Err(BAD),
    };
    let code = match line.get(9..12) {
        Some(&[a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9']) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(BAD),
    };
    match line.get(12) {
        None => {}
        Some(b' ') if line[13..].iter().all(|&b| super::is_field_byte(b)) => {}
        Some(_) => return Err(BAD),
    }
    Ok((minor, code, Span::new(9, line.len())))
}
