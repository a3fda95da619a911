//! HTTP/1.x message framing for the lean engine: how a body ends
//! (length, chunked, close, none) and a chunked-encoding tracker that finds
//! the end of a chunked body without decoding it, so bodies are streamed
//! through unchanged. Request path.

use std::io;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Tracks chunked encoding byte by byte and reports where the message ends.
#[derive(Debug, Default)]
pub struct ChunkTracker {
    state: State,
    size: u64,
    done: bool,
    /// Chunk data bytes seen, and the most allowed (`[proxy] max_body_size`).
    data: u64,
    limit: Option<u64>,
}

/// The error [`ChunkTracker::feed`] returns past its limit.
#[derive(Debug)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body larger than [proxy] max_body_size")
    }
}

impl std::error::Error for TooLarge {}

/// Whether `e` is a chunked body over the size limit.
pub fn is_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<TooLarge>())
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    /// After the size: extensions up to CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

impl ChunkTracker {
    /// A tracker that fails once more than `limit` data bytes went by.
    pub fn with_limit(limit: Option<u64>) -> ChunkTracker {
        ChunkTracker {
            limit,
            ..ChunkTracker::default()
        }
    }

    /// Consumes bytes of a chunked body; returns how many of them belong to
    /// it (fewer than `buf.len()` only once the body has ended).
    pub fn feed(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bad =
            |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {m}"));
        let mut i = 0;
        while i < buf.len() && !self.done {
            let b = buf[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or_else(|| bad("chunk size overflows"))?;
                    }
                    b';' | b' ' | b'\t' => self.state = State::Ext,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(bad("invalid chunk size")),
                },
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(bad("expected LF after chunk size"));
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take =
                        (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    self.data += take as u64;
                    if self.limit.is_some_and(|l| self.data > l) {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, TooLarge));
                    }
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(bad("expected CRLF after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(bad("expected CRLF after chunk data"));
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::FinalLf
                    } else {
                        State::TrailerLine
                    };
                }
                State::TrailerLine => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(bad("expected LF after trailer"));
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(bad("expected LF at the end"));
                    }
                    self.done = true;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    pub fn done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_across_splits() {
        let body = b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut t = ChunkTracker::default();
            let a = t.feed(&body[..split]).unwrap();
            assert_eq!(a, split.min(end));
            let b = t.feed(&body[split..]).unwrap();
            assert_eq!(a + b, end, "split at {split}");
            assert!(t.done());
        }
    }

    #[test]
    fn counts_data_bytes_against_the_limit() {
        let body = b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert!(ChunkTracker::with_limit(Some(9)).feed(body).is_ok());
        let e = ChunkTracker::with_limit(Some(8)).feed(body).unwrap_err();
        assert!(is_too_large(&e));
    }

    #[test]
    fn rejects_garbage() {
        assert!(ChunkTracker::default().feed(b"zz\r\n").is_err());
        assert!(ChunkTracker::default().feed(b"1\r\nab").is_err());
        assert!(ChunkTracker::default()
            .feed(b"fffffffffffffffff\r\n")
            .is_err());
    }
}
