//! Chunked bodies (RFC 9112 §7.1), checked byte by byte as they stream:
//! chunk sizes, extensions and trailers against their grammar, CRLF only.
//! The engines forward only bytes the decoder has accepted, so an upstream
//! or a client never sees chunk framing that two parsers could read
//! differently. Request path.

use std::fmt;

use super::{is_field_byte, is_ows, is_tchar, MAX_FIELD_SECTION, MAX_REQUEST_FIELDS};

/// Most hex digits in a chunk size (leading zeros included): 16 fill a u64.
const MAX_SIZE_DIGITS: u8 = 16;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first hex digit of a chunk size.
    Size,
    SizeDigits,
    /// Whitespace after the size: only before `;`.
    SizeBws,
    /// Whitespace (or nothing yet) before an extension name.
    ExtNameStart,
    ExtName,
    /// Whitespace after a name: `=` or `;` follows.
    ExtNameBws,
    /// Whitespace (or nothing yet) before an extension value.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    /// Right after a value: CR, `;` or whitespace before `;`.
    ExtValueEnd,
    /// Whitespace after a value: `;` follows.
    ExtValueBws,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line, or the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Off the grammar: the message says where.
    Malformed(&'static str),
    /// More data bytes than the decoder's limit (`[proxy] max_body_size`).
    TooLarge(u64),
}

impl ChunkError {
    /// The status for a request body refused for this reason.
    pub fn status(&self) -> u16 {
        match self {
            ChunkError::Malformed(_) => 400,
            ChunkError::TooLarge(_) => 413,
        }
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Malformed(what) => write!(f, "malformed chunked body: {what}"),
            ChunkError::TooLarge(limit) => write!(
                f,
                "chunked body larger than [proxy] max_body_size ({limit} bytes)"
            ),
        }
    }
}

impl std::error::Error for ChunkError {}

/// Decodes chunked framing as the bytes arrive, in any split.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Data bytes left in the current chunk (its size while reading it).
    size: u64,
    digits: u8,
    /// Bytes of the current chunk-size line, or of the trailer section.
    line: u32,
    trailers: usize,
    /// Data bytes seen, and the most allowed.
    data: u64,
    limit: Option<u64>,
}

impl ChunkedDecoder {
    /// A decoder that fails once more than `limit` data bytes went by.
    pub fn new(limit: Option<u64>) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            data: 0,
            limit,
        }
    }

    /// The body has ended (its last CRLF was fed).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes seen so far.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Consumes bytes of a chunked body; returns how many of them belong to
    /// it (fewer than `buf.len()` only once the body has ended). On an
    /// error, none of `buf` is to be forwarded.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        use ChunkError::Malformed as Bad;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::Done => break,
                State::Data => {
                    let take =
                        (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    self.data += take as u64;
                    if let Some(limit) = self.limit.filter(|&l| self.data > l) {
                        return Err(ChunkError::TooLarge(limit));
                    }
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size => {
                    self.line = 0;
                    self.digits = 0;
                    self.size = 0;
                    if !b.is_ascii_hexdigit() {
                        return Err(Bad("chunk size is not a hex number"));
                    }
                    self.digit(b)?;
                    State::SizeDigits
                }
                State::SizeDigits => match b {
                    _ if b.is_ascii_hexdigit() => {
                        self.digit(b)?;
                        State::SizeDigits
                    }
                    b'\r' => State::SizeLf,
                    b';' => State::ExtNameStart,
                    _ if is_ows(b) => State::SizeBws,
                    _ => return Err(Bad("invalid byte after the chunk size")),
                },
                State::SizeBws => match b {
                    b';' => State::ExtNameStart,
                    _ if is_ows(b) => State::SizeBws,
                    _ => return Err(Bad("whitespace after the chunk size not before `;`")),
                },
                State::ExtNameStart => match b {
                    _ if is_tchar(b) => State::ExtName,
                    _ if is_ows(b) => State::ExtNameStart,
                    _ => return Err(Bad("invalid chunk extension name")),
                },
                State::ExtName => match b {
                    _ if is_tchar(b) => State::ExtName,
                    b'=' => State::ExtValueStart,
                    b';' => State::ExtNameStart,
                    b'\r' => State::SizeLf,
                    _ if is_ows(b) => State::ExtNameBws,
                    _ => return Err(Bad("invalid byte in a chunk extension name")),
                },
                State::ExtNameBws => match b {
                    b'=' => State::ExtValueStart,
                    b';' => State::ExtNameStart,
                    _ if is_ows(b) => State::ExtNameBws,
                    _ => return Err(Bad("invalid byte after a chunk extension name")),
                },
                State::ExtValueStart => match b {
                    b'"' => State::ExtQuoted,
                    _ if is_tchar(b) => State::ExtToken,
                    _ if is_ows(b) => State::ExtValueStart,
                    _ => return Err(Bad("invalid chunk extension value")),
                },
                State::ExtToken => match b {
                    _ if is_tchar(b) => State::ExtToken,
                    b';' => State::ExtNameStart,
                    b'\r' => State::SizeLf,
                    _ if is_ows(b) => State::ExtValueBws,
                    _ => return Err(Bad("invalid byte in a chunk extension value")),
                },
                State::ExtQuoted => match b {
                    b'"' => State::ExtValueEnd,
                    b'\\' => State::ExtQuotedPair,
                    _ if is_qdtext(b) => State::ExtQuoted,
                    _ => return Err(Bad("invalid byte in a quoted chunk extension value")),
                },
                State::ExtQuotedPair => match b {
                    _ if is_field_byte(b) => State::ExtQuoted,
                    _ => return Err(Bad("invalid escaped byte in a chunk extension value")),
                },
                State::ExtValueEnd => match b {
                    b';' => State::ExtNameStart,
                    b'\r' => State::SizeLf,
                    _ if is_ows(b) => State::ExtValueBws,
                    _ => return Err(Bad("invalid byte after a chunk extension value")),
                },
                State::ExtValueBws => match b {
                    b';' => State::ExtNameStart,
                    _ if is_ows(b) => State::ExtValueBws,
                    _ => return Err(Bad("whitespace after a chunk extension not before `;`")),
                },
                State::SizeLf => match b {
                    b'\n' if self.size == 0 => {
                        self.line = 0;
                        State::TrailerStart
                    }
                    b'\n' => State::Data,
                    _ => return Err(Bad("CR not followed by LF after the chunk size")),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(Bad("chunk data not followed by CRLF")),
                },
                State::DataLf => match b {
                    b'\n' => State::Size,
                    _ => return Err(Bad("chunk data not followed by CRLF")),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    _ if is_tchar(b) => {
                        self.trailers += 1;
                        if self.trailers > MAX_REQUEST_FIELDS {
                            return Err(Bad("more than 100 trailer fields"));
                        }
                        State::TrailerName
                    }
                    _ if is_ows(b) => return Err(Bad("obs-fold in the trailer section")),
                    _ => return Err(Bad("invalid trailer field name")),
                },
                State::TrailerName => match b {
                    _ if is_tchar(b) => State::TrailerName,
                    b':' => State::TrailerValue,
                    _ if is_ows(b) => return Err(Bad("whitespace before a trailer field's colon")),
                    _ => return Err(Bad("invalid byte in a trailer field name")),
                },
                State::TrailerValue => match b {
                    b'\r' => State::TrailerLf,
                    _ if is_field_byte(b) => State::TrailerValue,
                    _ => return Err(Bad("control byte (NUL, LF or another) in a trailer field")),
                },
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(Bad("CR not followed by LF in the trailer section")),
                },
                State::FinalLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(Bad("CR not followed by LF at the end of the body")),
                },
            };
            i += 1;
            match self.state {
                State::Size | State::Data | State::DataCr | State::DataLf | State::Done => {}
                State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::FinalLf => {
                    self.line += 1;
                    if self.line as usize > MAX_FIELD_SECTION {
                        return Err(Bad("trailer section larger than 64 KiB"));
                    }
                }
                _ => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(Bad("chunk size line longer than 4 KiB"));
                    }
                }
            }
        }
        Ok(i)
    }

    fn digit(&mut self, b: u8) -> Result<(), ChunkError> {
        self.digits += 1;
        if self.digits > MAX_SIZE_DIGITS {
            return Err(ChunkError::Malformed(
                "chunk size of more than 16 hex digits",
            ));
        }
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        // 16 digits fit in a u64
        self.size = (self.size << 4) | u64::from(d);
        Ok(())
    }
}

/// `qdtext` of RFC 9110 §5.6.4.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}
