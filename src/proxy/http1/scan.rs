//! Finding the end of a head while its bytes arrive, with the limits held
//! on the way: however the bytes are split (a 100 KB line in one write, or
//! one byte at a time), a request line over 8 KiB is refused as soon as its
//! 8 KiB + 1st byte is seen, a header section over 64 KiB or 100 fields
//! likewise, and bytes that cannot start an HTTP/1 request (a TLS
//! ClientHello, the HTTP/2 preface) at once. Each byte is looked at once,
//! whatever the number of reads. Request path.

use super::fields::{BARE_CR, BARE_LF};
use super::{first_ctl, is_tchar, Reject, MAX_FIELD_SECTION, MAX_REQUEST_FIELDS, MAX_REQUEST_LINE};

/// The HTTP/2 connection preface's first line.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the start line (empty lines before a request are skipped).
    Start,
    StartLine,
    Fields,
}

/// Scans a head as it arrives; one scanner per head.
#[derive(Debug, Clone)]
pub struct HeadScanner {
    response: bool,
    state: State,
    /// Bytes looked at so far.
    pos: usize,
    line_start: usize,
    section_start: usize,
    fields: usize,
}

impl HeadScanner {
    /// A scanner for a request head (limit failures are 400/414/431).
    pub fn request() -> HeadScanner {
        HeadScanner {
            response: false,
            state: State::Start,
            pos: 0,
            line_start: 0,
            section_start: 0,
            fields: 0,
        }
    }

    /// A scanner for a response head (every failure is 502).
    pub fn response() -> HeadScanner {
        HeadScanner {
            response: true,
            ..HeadScanner::request()
        }
    }

    /// Looks at the bytes of `buf` not seen yet (`buf` holds the head from
    /// its first byte and grows between calls). `Some(len)`: the head is
    /// `buf[..len]`, through its empty line.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Reject> {
        self.scan_inner(buf)
            .map_err(|r| if self.response { r.upstream() } else { r })
    }

    fn scan_inner(&mut self, buf: &[u8]) -> Result<Option<usize>, Reject> {
        loop {
            if self.state == State::Start {
                let Some(&b) = buf.get(self.pos) else {
                    return Ok(None);
                };
                if b == b'\r' && !self.response {
                    // an empty line before the request line (RFC 9112 §2.2)
                    match buf.get(self.pos + 1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            self.pos += 2;
                            if self.pos > MAX_REQUEST_LINE {
                                return Err(LINE_TOO_LONG);
                            }
                            continue;
                        }
                        Some(_) => return Err(BARE_CR),
                    }
                }
                self.first_byte(b)?;
                self.state = State::StartLine;
                self.line_start = self.pos;
            }
            // the next CR or LF (other control bytes are the parser's to refuse)
            loop {
                self.pos += first_ctl(buf.get(self.pos..).unwrap_or_default());
                match buf.get(self.pos) {
                    Some(b'\r' | b'\n') | None => break,
                    Some(_) => self.pos += 1,
                }
            }
            self.check_limits()?;
            match buf.get(self.pos) {
                None => return Ok(None),
                Some(b'\n') => return Err(BARE_LF),
                Some(_) => {}
            }
            match buf.get(self.pos + 1) {
                None => return Ok(None), // the CR is looked at again
                Some(b'\n') => {}
                Some(_) => return Err(BARE_CR),
            }
            let line = &buf[self.line_start..self.pos];
            self.pos += 2;
            self.line_start = self.pos;
            match self.state {
                State::StartLine => {
                    if !self.response && line == H2_PREFACE_LINE {
                        return Err(H2_PREFACE);
                    }
                    self.state = State::Fields;
                    self.section_start = self.pos;
                }
                _ if line.is_empty() => return Ok(Some(self.pos)),
                _ => {
                    self.fields += 1;
                    if self.fields > self.max_fields() {
                        return Err(TOO_MANY_FIELDS);
                    }
                }
            }
        }
    }

    fn max_fields(&self) -> usize {
        if self.response {
            super::MAX_RESPONSE_FIELDS
        } else {
            MAX_REQUEST_FIELDS
        }
    }

    /// The limit on the line being read, `self.pos` being its end so far.
    fn check_limits(&self) -> Result<(), Reject> {
        match self.state {
            State::StartLine if self.pos - self.line_start > MAX_REQUEST_LINE => Err(LINE_TOO_LONG),
            State::Fields if self.pos - self.section_start > MAX_FIELD_SECTION => {
                Err(SECTION_TOO_LARGE)
            }
            _ => Ok(()),
        }
    }

    fn first_byte(&self, b: u8) -> Result<(), Reject> {
        if self.response {
            return if b == b'H' {
                Ok(())
            } else {
                Err(Reject::new(502, "response does not start with HTTP/"))
            };
        }
        match b {
            0x16 => Err(Reject::new(
                400,
                "TLS handshake on a plain HTTP port: use https:// on the TLS listener",
            )),
            _ if is_tchar(b) => Ok(()),
            _ => Err(Reject::new(
                400,
                "not an HTTP/1 request: a request line starts with a method",
            )),
        }
    }
}

/// Scans a whole buffer at once: `Some(len)` when it holds a complete
/// request head (`buf[..len]`), `None` when more bytes are needed.
pub fn scan_head(buf: &[u8]) -> Result<Option<usize>, Reject> {
    HeadScanner::request().scan(buf)
}

pub(crate) const LINE_TOO_LONG: Reject =
    Reject::new(414, "request line longer than 8 KiB: shorten the URI");
pub(crate) const SECTION_TOO_LARGE: Reject = Reject::new(431, "header section larger than 64 KiB");
pub(crate) const TOO_MANY_FIELDS: Reject = Reject::new(431, "more than 100 header fields");
pub(crate) const H2_PREFACE: Reject = Reject::new(
    400,
    "HTTP/2 connection preface on an HTTP/1 port: use h2 over TLS or the h2c listener",
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` to a request scanner split at `split`, then one byte at
    /// a time; every way must give the same answer.
    fn all_ways(bytes: &[u8]) -> Result<Option<usize>, u16> {
        let whole = scan_head(bytes).map_err(|r| r.status());
        for split in 0..bytes.len() {
            let mut s = HeadScanner::request();
            let mut got = s.scan(&bytes[..split]);
            if matches!(got, Ok(None)) {
                got = s.scan(bytes);
            }
            assert_eq!(got.map_err(|r| r.status()), whole, "split at {split}");
        }
        let mut s = HeadScanner::request();
        let mut got = Ok(None);
        for end in 1..=bytes.len() {
            got = s.scan(&bytes[..end]);
            if !matches!(got, Ok(None)) {
                break;
            }
        }
        assert_eq!(got.map_err(|r| r.status()), whole, "byte by byte");
        whole
    }

    #[test]
    fn finds_the_end_however_split() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
        assert_eq!(all_ways(head), Ok(Some(head.len() - 4)));
        assert_eq!(all_ways(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let lead = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(all_ways(lead), Ok(Some(lead.len())));
    }

    #[test]
    fn refuses_as_early_as_it_can() {
        let table: &[(&[u8], u16)] = &[
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"GET / HTTP/1.1\nHost: a\n\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
            (b"\x00GET / HTTP/1.1\r\n", 400),
        ];
        for (bytes, status) in table {
            assert_eq!(all_ways(bytes), Err(*status), "{:?}", bytes.escape_ascii());
        }
    }

    #[test]
    fn long_request_line_is_414_however_it_arrives() {
        let mut line = b"GET /".to_vec();
        line.resize(100_000, b'a');
        // no line end: refused before the client finishes
        assert_eq!(scan_head(&line).map_err(|r| r.status()), Err(414));
        let mut s = HeadScanner::request();
        let mut refused_at = None;
        for end in 1..=line.len() {
            if let Err(r) = s.scan(&line[..end]) {
                refused_at = Some((end, r.status()));
                break;
            }
        }
        assert_eq!(refused_at, Some((MAX_REQUEST_LINE + 1, 414)));
        // exactly 8 KiB is accepted
        let mut ok = b"GET /".to_vec();
        ok.resize(MAX_REQUEST_LINE - " HTTP/1.1".len(), b'a');
        ok.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(scan_head(&ok), Ok(Some(_))));
    }

    #[test]
    fn header_section_and_field_count_limits() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(MAX_FIELD_SECTION + 100, b'v');
        assert_eq!(scan_head(&big).map_err(|r| r.status()), Err(431));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_REQUEST_FIELDS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut ok = many.clone();
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(scan_head(&ok), Ok(Some(_))));
        many.extend_from_slice(b"X-last: v\r\n");
        assert_eq!(all_ways(&many), Err(431));
    }

    #[test]
    fn response_failures_are_502() {
        let mut s = HeadScanner::response();
        assert_eq!(
            s.scan(b"\r\nHTTP/1.1 200 OK\r\n").map_err(|r| r.status()),
            Err(502)
        );
        let mut s = HeadScanner::response();
        assert_eq!(
            s.scan(b"HTTP/1.1 200 OK\n\n").map_err(|r| r.status()),
            Err(502)
        );
        let mut s = HeadScanner::response();
        let head = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n";
        assert_eq!(s.scan(head), Ok(Some(head.len())));
    }
}
