//! Field lines of a head (RFC 9112 §5): the syntax every field must follow,
//! where parsed fields are kept (offsets into the head, a fixed array: no
//! allocation), and the framing fields' values (Content-Length,
//! Transfer-Encoding, Connection). Request path.

use std::ops::Range;

use super::{first_ctl, is_ows, is_tchar, Reject};

/// Most fields a response head may carry (a request is held to
/// [`super::MAX_REQUEST_FIELDS`]).
pub(crate) const CAPACITY: usize = 128;

/// Bytes `start..end` of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        // a head is at most a few hundred KiB: offsets fit in u32
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(self) -> bool {
        self.end == self.start
    }

    /// These bytes of `buf` (the buffer the head was parsed from).
    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }
}

/// One field line: its name and its value without surrounding whitespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// Fields kept in place; a head with more spills into a `Vec` (rare: a
/// browser sends 10 to 20).
const INLINE: usize = 32;

/// The fields of a head, in the order received.
#[derive(Clone)]
pub struct Fields {
    len: usize,
    inline: [Field; INLINE],
    spill: Vec<Field>,
}

impl Fields {
    pub(crate) fn new() -> Fields {
        Fields {
            len: 0,
            inline: [Field::default(); INLINE],
            spill: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, f: Field) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = f,
            None => {
                if self.spill.is_empty() {
                    self.spill.reserve(CAPACITY - INLINE);
                    self.spill.extend_from_slice(&self.inline);
                }
                self.spill.push(f);
            }
        }
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[Field] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(name, value)` of each field, against `buf`.
    pub fn iter<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone + 'a {
        self.as_slice()
            .iter()
            .map(move |f| (f.name.of(buf), f.value.of(buf)))
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The end of the line starting at `at` (the index of its CR), every byte
/// before it being a field byte (HTAB, SP, VCHAR, obs-text). A CR not
/// followed by LF, or an LF not preceded by CR, is an error: lines end with
/// CRLF only. `NO_END` when `buf` ends first.
pub(crate) fn line_end(buf: &[u8], mut at: usize) -> Result<usize, Reject> {
    loop {
        at += first_ctl(buf.get(at..).unwrap_or_default());
        match buf.get(at) {
            Some(b'\t') => at += 1,
            Some(b'\r') => {
                return match buf.get(at + 1) {
                    Some(b'\n') => Ok(at),
                    Some(_) => Err(BARE_CR),
                    None => Err(NO_END),
                }
            }
            Some(b'\n') => return Err(BARE_LF),
            Some(_) => {
                return Err(Reject::new(
                    400,
                    "control byte (NUL, DEL or another) in the head",
                ))
            }
            None => return Err(NO_END),
        }
    }
}

pub(crate) const NO_END: Reject = Reject::new(400, "head does not end with an empty line");
pub(crate) const BARE_LF: Reject =
    Reject::new(400, "bare LF in the head: end every line with CRLF");
pub(crate) const BARE_CR: Reject = Reject::new(
    400,
    "CR not followed by LF in the head: end every line with CRLF",
);

/// One line of a field section, parsed.
pub(crate) struct Line {
    /// `None` for the empty line that ends the section.
    pub field: Option<Field>,
    /// The index of the line's CR.
    pub end: usize,
    /// Where the next line starts.
    pub next: usize,
}

/// Parses the field line (or the empty line) starting at `start`, in one
/// pass over its bytes.
pub(crate) fn field_line(buf: &[u8], start: usize) -> Result<Line, Reject> {
    let rest = buf.get(start..).unwrap_or_default();
    let name_len = rest
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(rest.len());
    match rest.get(name_len) {
        Some(b':') if name_len > 0 => {}
        Some(b'\r') if name_len == 0 => {
            let end = line_end(buf, start)?;
            return Ok(Line {
                field: None,
                end,
                next: end + 2,
            });
        }
        Some(b':') => return Err(Reject::new(400, "field line with an empty name")),
        Some(b) if is_ows(*b) && name_len == 0 => {
            return Err(Reject::new(
                400,
                "obs-fold (a field line starting with whitespace): send each field on one line",
            ))
        }
        Some(b) if is_ows(*b) => {
            return Err(Reject::new(
                400,
                "whitespace between a field name and its colon",
            ))
        }
        Some(b'\n') => return Err(BARE_LF),
        Some(b'\r') => return Err(Reject::new(400, "field line without a colon")),
        Some(_) => return Err(Reject::new(400, "invalid byte in a field name")),
        None => return Err(NO_END),
    }
    let mut v = start + name_len + 1;
    while buf.get(v).is_some_and(|&b| is_ows(b)) {
        v += 1;
    }
    let end = line_end(buf, v)?;
    let mut e = end;
    while e > v && is_ows(buf[e - 1]) {
        e -= 1;
    }
    Ok(Line {
        field: Some(Field {
            name: Span::new(start, start + name_len),
            value: Span::new(v, e),
        }),
        end,
        next: end + 2,
    })
}

/// Which framing field a name is, compared without case and without
/// allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    ContentLength,
    TransferEncoding,
    Connection,
    Host,
    Expect,
    Upgrade,
    Other,
}

pub(crate) fn known(name: &[u8]) -> Known {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 if is(b"host") => Known::Host,
        6 if is(b"expect") => Known::Expect,
        7 if is(b"upgrade") => Known::Upgrade,
        10 if is(b"connection") => Known::Connection,
        14 if is(b"content-length") => Known::ContentLength,
        17 if is(b"transfer-encoding") => Known::TransferEncoding,
        _ => Known::Other,
    }
}

/// The elements of a comma-separated list, each without surrounding
/// whitespace (empty elements included).
pub(crate) fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|e| e.trim_ascii())
}

/// Folds one Content-Length field into `length`: each list element must be
/// `1*DIGIT` and every value the same (RFC 9110 §8.6; `5, 5` is `5`).
pub(crate) fn content_length(value: &[u8], length: &mut Option<u64>) -> Result<(), Reject> {
    for e in elements(value) {
        if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
            return Err(Reject::new(
                400,
                "Content-Length is not a number (1*DIGIT, nothing else)",
            ));
        }
        let n = e
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(Reject::new(400, "Content-Length too large"))?;
        match *length {
            Some(m) if m != n => {
                return Err(Reject::new(
                    400,
                    "Content-Length values differ: send one length",
                ))
            }
            _ => *length = Some(n),
        }
    }
    Ok(())
}

/// What the Transfer-Encoding fields of a message name, together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Codings {
    pub present: bool,
    /// A list element that is not a coding (empty, not a token, `chunked`
    /// with parameters).
    pub malformed: bool,
    /// A coding other than `chunked`.
    pub unknown: bool,
    pub chunked: u8,
    /// The last element seen is `chunked`.
    pub chunked_last: bool,
}

impl Codings {
    /// Folds one Transfer-Encoding field in.
    pub fn add(&mut self, value: &[u8]) {
        self.present = true;
        for e in elements(value) {
            let (name, params) = match e.iter().position(|&b| b == b';') {
                Some(i) => (e[..i].trim_ascii_end(), true),
                None => (e, false),
            };
            self.chunked_last = false;
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                self.malformed = true;
            } else if name.eq_ignore_ascii_case(b"chunked") {
                if params {
                    self.malformed = true;
                } else {
                    self.chunked = self.chunked.saturating_add(1);
                    self.chunked_last = true;
                }
            } else {
                self.unknown = true;
            }
        }
    }
}

/// What a Connection field says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl ConnectionTokens {
    pub fn add(&mut self, value: &[u8]) {
        for t in elements(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        let table: &[(&[u8], Result<u64, ()>)] = &[
            (b"0", Ok(0)),
            (b"42", Ok(42)),
            (b"007", Ok(7)),
            (b"5, 5", Ok(5)),
            (b"5,5", Ok(5)),
            (b"+5", Err(())),
            (b"-5", Err(())),
            (b"5 5", Err(())),
            (b"5,", Err(())),
            (b"", Err(())),
            (b"0x10", Err(())),
            (b"5\xc2\x85", Err(())),
            (b"5, 6", Err(())),
            (b"99999999999999999999", Err(())),
        ];
        for (value, want) in table {
            let mut n = None;
            let got = content_length(value, &mut n).map(|()| n.unwrap_or(u64::MAX));
            assert_eq!(got.map_err(|_| ()), *want, "{:?}", value.escape_ascii());
        }
    }

    #[test]
    fn transfer_codings() {
        let c = |v: &[u8]| {
            let mut c = Codings::default();
            c.add(v);
            (c.malformed, c.unknown, c.chunked, c.chunked_last)
        };
        assert_eq!(c(b"chunked"), (false, false, 1, true));
        assert_eq!(c(b"CHUNKED"), (false, false, 1, true));
        assert_eq!(c(b"gzip, chunked"), (false, true, 1, true));
        assert_eq!(c(b"chunked, gzip"), (false, true, 1, false));
        assert_eq!(c(b"chunked, chunked"), (false, false, 2, true));
        assert_eq!(c(b"chunked,"), (true, false, 1, false));
        assert_eq!(c(b"chunked;q=1"), (true, false, 0, false));
        assert_eq!(c(b"chun ked"), (true, false, 0, false));
        assert_eq!(c(b"\"chunked\""), (true, false, 0, false));
        assert_eq!(c(b"gzip;level=1"), (false, true, 0, false));
    }

    #[test]
    fn known_names() {
        assert_eq!(known(b"Content-Length"), Known::ContentLength);
        assert_eq!(known(b"TRANSFER-ENCODING"), Known::TransferEncoding);
        assert_eq!(known(b"host"), Known::Host);
        assert_eq!(known(b"hostx"), Known::Other);
    }
}
