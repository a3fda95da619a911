//! Where access-log lines go: standard error or `[log] access_file`,
//! written by one thread of its own. Request path for [`AccessWriter::send`]
//! (no system call, no lock, no allocation once warm); the writing itself is
//! off the request path.
//!
//! A line travels as one whole buffer through a bounded channel; the
//! writer thread copies what it finds into one large write and hands the
//! buffers back for reuse, so lines are never torn or interleaved (on
//! standard error it holds the stderr lock for the write, which the main
//! log takes too). After writing, the thread sleeps [`GATHER`] before
//! looking again, so under load a request never wakes it: one write per
//! [`GATHER`] instead of one per request. When idle it waits on the channel
//! and the next line wakes it. When the writer falls behind (more than
//! [`MAX_LINES`] lines or [`MAX_BYTES`] bytes waiting), new lines are
//! dropped and counted in `laneway_access_log_dropped_total`; a request
//! never waits for the log.
//!
//! Why not `tracing-appender`'s non-blocking writer: it copies every line
//! into a new `Vec`, and its worker waits on the channel, so at moderate
//! load each line wakes it (a futex call and a context switch paid on the
//! request's core); nor can it reopen a file.
//!
//! SIGUSR1 reopens the file (after logrotate moved it: `postrotate kill
//! -USR1`): the handler only sets a flag, and the writer opens the
//! configured path again before it writes the next lines. At exit (any
//! `exit`, the end of a SIGTERM drain included) what is queued is written
//! out first ([`AccessWriter::flush`], called from an `atexit` hook).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use prometheus::IntCounter;

/// Lines waiting to be written, at most.
pub const MAX_LINES: usize = 32 * 1024;
/// Bytes of lines waiting to be written, at most.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// How long the writer lets lines gather after a write.
pub const GATHER: Duration = Duration::from_millis(10);
/// Spare line buffers kept for reuse.
const SPARE: usize = 4096;
/// The capacity of a new line buffer.
const LINE_CAPACITY: usize = 512;
/// A buffer grown past this (a line with a very long URI) is not reused.
const MAX_REUSED: usize = 4096;
/// Bytes the writer gathers before one write.
const WRITE_CHUNK: usize = 64 * 1024;

/// Counts SIGUSR1s; a writer that has seen fewer reopens its file before
/// the next write.
static REOPENS: AtomicUsize = AtomicUsize::new(0);

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line sent before it is written out.
    Flush(mpsc::Sender<()>),
}

/// Shared by the request threads and the writer thread.
struct Shared {
    spare: ArrayQueue<Vec<u8>>,
    /// Bytes sent and not yet written.
    queued: AtomicUsize,
}

/// The sending side, shared by every request thread.
pub struct AccessWriter {
    lines: SyncSender<Msg>,
    shared: Arc<Shared>,
    dropped: IntCounter,
}

/// Where the writer writes.
pub enum Destination {
    Stderr,
    /// A file opened with [`open`], and its path for reopening.
    File {
        path: PathBuf,
        file: File,
    },
}

impl AccessWriter {
    /// Starts the writer thread. Lines dropped for want of room count in
    /// `dropped`.
    pub fn start(dest: Destination, dropped: IntCounter) -> io::Result<AccessWriter> {
        let out = match dest {
            Destination::Stderr => Out::Stderr,
            Destination::File { path, file } => Out::File { path, file },
        };
        let (lines, rx) = mpsc::sync_channel(MAX_LINES);
        let shared = Arc::new(Shared {
            spare: ArrayQueue::new(SPARE),
            queued: AtomicUsize::new(0),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("laneway-access".into())
            .spawn(move || {
                Writer {
                    out,
                    buf: Vec::with_capacity(WRITE_CHUNK * 2),
                    shared: thread_shared,
                    failing: false,
                    reopens: REOPENS.load(Ordering::Acquire),
                }
                .run(rx)
            })?;
        Ok(AccessWriter {
            lines,
            shared,
            dropped,
        })
    }

    /// An empty buffer for the next line (a reused one when there is one).
    pub fn buffer(&self) -> Vec<u8> {
        self.shared
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LINE_CAPACITY))
    }

    /// Queues a line (one whole line, `\n` included); drops and counts it
    /// when the writer is too far behind.
    pub fn send(&self, line: Vec<u8>) {
        let len = line.len();
        let before = self.shared.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > MAX_BYTES {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.lines.try_send(Msg::Line(line))
        {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Waits up to `timeout` until every line sent so far is written out;
    /// `false` when the writer did not answer in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack, done) = mpsc::channel();
        let mut msg = Msg::Flush(ack);
        loop {
            match self.lines.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// Asks the writer to reopen its file before the next write; safe to call
/// from a signal handler.
pub fn request_reopen() {
    REOPENS.fetch_add(1, Ordering::Release);
}

/// Opens (creates) an access-log file for appending.
pub fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

enum Out {
    Stderr,
    File { path: PathBuf, file: File },
}

struct Writer {
    out: Out,
    /// Lines gathered for the next write.
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// The last write failed (reported once until one succeeds).
    failing: bool,
    /// The reopen requests seen.
    reopens: usize,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut acks = Vec::new();
        // Waits while idle; after a write, lets lines gather for GATHER.
        while let Ok(first) = rx.recv() {
            let reopens = REOPENS.load(Ordering::Acquire);
            if reopens != self.reopens {
                self.reopens = reopens;
                self.reopen();
            }
            let mut next = Some(first);
            let mut wrote = 0;
            // bounded, so that a steady stream still gets its writes,
            // reopens and flushes
            let mut budget = MAX_LINES;
            while let Some(msg) = next {
                match msg {
                    Msg::Line(mut line) => {
                        self.buf.extend_from_slice(&line);
                        wrote += line.len();
                        if line.capacity() <= MAX_REUSED {
                            line.clear();
                            let _ = self.shared.spare.push(line); // full: freed
                        }
                        if self.buf.len() >= WRITE_CHUNK {
                            self.write_out();
                        }
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
                budget -= 1;
                next = if budget > 0 { rx.try_recv().ok() } else { None };
            }
            self.write_out();
            self.shared.queued.fetch_sub(wrote, Ordering::Relaxed);
            for ack in acks.drain(..) {
                let _ = ack.send(()); // the flusher gave up waiting
            }
            if wrote > 0 {
                std::thread::sleep(GATHER);
            }
        }
        self.write_out();
    }

    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let result = match &mut self.out {
            // the main log writes under the same lock: no interleaving
            Out::Stderr => io::stderr().lock().write_all(&self.buf),
            Out::File { file, .. } => file.write_all(&self.buf),
        };
        self.buf.clear();
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                let dest = match &self.out {
                    Out::Stderr => "standard error".to_string(),
                    Out::File { path, .. } => path.display().to_string(),
                };
                tracing::error!(
                    error = %e,
                    "cannot write the access log to {dest}; lines are lost until a write succeeds (check the disk and the file's permissions)"
                );
            }
            Err(_) => {}
        }
    }

    fn reopen(&mut self) {
        self.write_out();
        let Out::File { path, file } = &mut self.out else {
            return;
        };
        match open(path) {
            Ok(new) => {
                *file = new;
                tracing::info!(file = %path.display(), "access log reopened");
            }
            Err(e) => tracing::error!(
                file = %path.display(),
                error = %e,
                "cannot reopen the access log; still writing to the file open before (check the directory exists and is writable, then send SIGUSR1 again)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &Path) -> Destination {
        Destination::File {
            path: path.to_path_buf(),
            file: open(path).unwrap(),
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("dropped_total", "test").unwrap()
    }

    fn line(writer: &AccessWriter, text: &str) {
        let mut buf = writer.buffer();
        buf.extend_from_slice(text.as_bytes());
        writer.send(buf);
    }

    #[test]
    fn lines_reach_the_file_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let writer = AccessWriter::start(file(&path), counter()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let writer = &writer;
                s.spawn(move || {
                    for i in 0..2000 {
                        line(writer, &format!("t{t} n{i:05} {}\n", "x".repeat(i % 300)));
                    }
                });
            }
        });
        assert!(writer.flush(Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8000);
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .map(|l| {
                    let mut parts = l.split(' ');
                    let n: usize = parts.nth(1).unwrap()[1..].parse().unwrap();
                    assert_eq!(parts.next().unwrap_or(""), "x".repeat(n % 300), "{l}");
                    n
                })
                .collect();
            assert_eq!(mine, (0..2000).collect::<Vec<_>>(), "thread {t}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // a writer whose thread never runs: every line stays queued
        let (lines, rx) = mpsc::sync_channel(MAX_LINES);
        let writer = AccessWriter {
            lines,
            shared: Arc::new(Shared {
                spare: ArrayQueue::new(SPARE),
                queued: AtomicUsize::new(0),
            }),
            dropped: counter(),
        };
        for _ in 0..MAX_LINES + 10 {
            line(&writer, "short\n");
        }
        assert_eq!(writer.dropped.get(), 10);
        assert!(!writer.flush(Duration::from_millis(50)), "no writer thread");
        drop(rx);
        // and the byte bound holds before the line bound
        let (lines, _rx) = mpsc::sync_channel(MAX_LINES);
        let writer = AccessWriter {
            lines,
            shared: Arc::new(Shared {
                spare: ArrayQueue::new(SPARE),
                queued: AtomicUsize::new(0),
            }),
            dropped: counter(),
        };
        let big = "y".repeat(1024 * 1024);
        for _ in 0..20 {
            line(&writer, &big);
        }
        assert_eq!(writer.dropped.get(), (20 - MAX_BYTES / big.len()) as u64);
    }

    #[test]
    fn reopen_writes_to_a_new_file_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let writer = AccessWriter::start(file(&path), counter()).unwrap();
        line(&writer, "before\n");
        assert!(writer.flush(Duration::from_secs(5)));
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        line(&writer, "still old\n");
        assert!(writer.flush(Duration::from_secs(5)));
        request_reopen();
        line(&writer, "after\n");
        assert!(writer.flush(Duration::from_secs(5)));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\nstill old\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }
}
