//! The base-plus-journal file layout both durable stores use (the lane
//! store and the embedded registry): a base file holding the whole state as
//! of a sequence number, and an append-only journal of the changes since,
//! one JSON record per line. Control plane only: blocking file I/O, called
//! with the owning store's lock held; compaction runs on its own thread.
//!
//! A change costs one small append and one `fdatasync`, whatever the
//! store's size. When the journal outgrows the base (and `COMPACT_MIN`) it is
//! compacted off the change's path: the journal is sealed (renamed
//! `<journal>.sealed-<last seq>`), new changes go to a fresh journal, and a
//! background thread writes the state as of the seal as a new base
//! ([`persist`]: temp file, fsync, rename, directory fsync), then deletes the
//! sealed journals the base includes.
//!
//! Crash safety, as [`Journal::open`] reads it back: the base, then the
//! sealed journals (oldest first), then the journal; every complete line is
//! applied in order, records the base already includes (by `seq`) are
//! skipped. An unterminated last line is a write that was never
//! acknowledged (a crash in the middle of an append): it is dropped, logged
//! with the file and offset, and cut off. Anything else that does not parse
//! is an error naming the file and line, never a silent reset. A failed
//! append marks the journal unusable: the store's next change writes a whole
//! new base instead ([`Journal::rewrite`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::file::persist;
use super::StoreError;

/// The journal is folded into a new base once it is larger than the base
/// and than this.
pub const COMPACT_MIN: u64 = 1 << 20;

/// A journal record: applied as a whole, numbered from 1 upwards.
pub trait Sequenced {
    fn seq(&self) -> u64;
}

/// Where the next change goes.
#[derive(Debug)]
enum State {
    /// No journal file yet: the first append creates it.
    Absent,
    /// Open for appending.
    Open(File),
    /// An append failed or the file could not be repaired: the next change
    /// writes a whole new base and starts a new journal.
    Broken,
}

/// The journal of one store, with its base file and compaction.
#[derive(Debug)]
pub struct Journal {
    base: PathBuf,
    path: PathBuf,
    /// `<journal file name>.sealed-`
    sealed_prefix: String,
    /// Which store, for log lines ("lane store", "registry").
    what: &'static str,
    state: State,
    /// Bytes in the journal, and in the base when it was last written.
    len: u64,
    base_len: u64,
    /// Sequence number of the last change applied.
    seq: u64,
    /// Compaction threshold (tests lower it).
    compact_min: u64,
    /// A base being written by a background thread, if any.
    compaction: Option<std::thread::JoinHandle<Result<u64, StoreError>>>,
}

/// What [`Journal::open`] read.
pub struct Opened<S> {
    pub state: S,
    pub journal: Journal,
    /// Journal records applied on top of the base (0: the base alone).
    pub replayed: usize,
}

impl Journal {
    /// Reads the store: `load_base` reads the base file (`(0, empty)` when
    /// it is missing) and returns the sequence number it includes; then the
    /// records of the sealed journals and the journal that the base does not
    /// include are decoded and handed to `apply` in order. An error from
    /// `apply` is reported as corruption at that line.
    pub fn open<S, R: DeserializeOwned + Sequenced>(
        base: &Path,
        journal: &Path,
        what: &'static str,
        mut load_base: impl FnMut() -> Result<(u64, S), StoreError>,
        mut apply: impl FnMut(&mut S, R) -> Result<(), String>,
    ) -> Result<Opened<S>, StoreError> {
        let sealed_prefix = sealed_prefix(journal);
        let dir = parent(journal);
        'again: loop {
            // Listed before the base is read: a compaction finishing
            // meanwhile writes a base that includes them (their records are
            // skipped) or deletes one before it is read (then everything is
            // read again).
            let sealed_list = sealed_journals(dir, &sealed_prefix)?;
            let base_len = std::fs::metadata(base).map_or(0, |m| m.len());
            let (base_seq, mut state) = load_base()?;
            let mut last_seq = 0;
            let mut replayed = 0;
            for sealed in sealed_list {
                let r = replay(&sealed, base_seq, last_seq, &mut state, &mut apply)?;
                if !r.exists {
                    continue 'again;
                }
                if r.torn.is_some() {
                    return Err(StoreError::Corrupt {
                        path: sealed,
                        detail: "a sealed journal ends in an unfinished record".into(),
                    });
                }
                last_seq = last_seq.max(r.last_seq);
                replayed += r.records;
            }
            let r = replay(journal, base_seq, last_seq, &mut state, &mut apply)?;
            replayed += r.records;
            let file = match r.torn {
                None if r.exists => match OpenOptions::new().append(true).open(journal) {
                    Ok(f) => State::Open(f),
                    Err(e) => {
                        tracing::warn!(store = what, path = %journal.display(), error = %e, "cannot open the journal; the next change rewrites the base");
                        State::Broken
                    }
                },
                None => State::Absent,
                Some(valid) => {
                    tracing::warn!(
                        store = what,
                        path = %journal.display(),
                        offset = valid,
                        bytes = r.len - valid,
                        "dropping an unfinished journal record at the end of the file (a crash during a write that was never acknowledged)"
                    );
                    match cut(journal, valid) {
                        Ok(f) => State::Open(f),
                        Err(e) => {
                            tracing::warn!(store = what, path = %journal.display(), error = %e, "cannot cut the unfinished record off the journal; the next change rewrites the base");
                            State::Broken
                        }
                    }
                }
            };
            let journal = Journal {
                base: base.to_owned(),
                path: journal.to_owned(),
                sealed_prefix,
                what,
                state: file,
                len: r.torn.unwrap_or(r.len),
                base_len,
                seq: base_seq.max(last_seq).max(r.last_seq),
                compact_min: COMPACT_MIN,
                compaction: None,
            };
            return Ok(Opened {
                state,
                journal,
                replayed,
            });
        }
    }

    /// The sequence number the next record must carry.
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the next change must go through [`rewrite`](Self::rewrite)
    /// (an append failed, or the journal could not be opened or repaired).
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken)
    }

    /// Appends `record` (numbered [`next_seq`](Self::next_seq)) and syncs
    /// it; only then is the change durable and may be applied. On error the
    /// journal is marked broken.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), StoreError> {
        self.refuse_after_hand_over()?;
        let mut line = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        if let Err(source) = self.write_line(&line) {
            self.state = State::Broken;
            return Err(StoreError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.seq += 1;
        self.finish_compaction(false);
        Ok(())
    }

    /// True when the journal has outgrown the base and no compaction is
    /// running: the store should call
    /// [`start_compaction`](Self::start_compaction).
    pub fn wants_compaction(&self) -> bool {
        self.compaction.is_none() && self.len > self.compact_min.max(self.base_len)
    }

    /// Seals the journal and has a background thread write the base that
    /// `encode` makes (called with the sequence number it must carry; it
    /// should own a copy of the state as of now). New changes go to a new
    /// journal meanwhile.
    pub fn start_compaction(
        &mut self,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, StoreError> + Send + 'static,
    ) {
        if super::owner::handed_over() {
            return;
        }
        let sealed = self
            .path
            .with_file_name(format!("{}{:020}", self.sealed_prefix, self.seq));
        let sealed_ok = std::fs::rename(&self.path, &sealed).and_then(|()| sync_dir(&sealed));
        if let Err(e) = sealed_ok {
            // The changes are safe in the journal; try again next time.
            tracing::warn!(store = self.what, path = %self.path.display(), error = %e, "cannot seal the journal for compaction");
            return;
        }
        self.state = State::Absent;
        self.len = 0;
        let (base, seq, prefix) = (self.base.clone(), self.seq, self.sealed_prefix.clone());
        let spawned = std::thread::Builder::new()
            .name("laneway-compact".into())
            .spawn(move || write_base(&base, &prefix, seq, &encode(seq)?));
        match spawned {
            Ok(handle) => self.compaction = Some(handle),
            Err(e) => {
                tracing::warn!(store = self.what, error = %e, "cannot start the compaction; the sealed journal is kept and replayed")
            }
        }
    }

    /// Writes the base that `encode` makes synchronously and empties the
    /// journal. With `advance`, the base stands for one more change (the
    /// caller applied it in memory and undoes it on error); without, it
    /// rewrites the current state (a migration). Clears a broken journal.
    pub fn rewrite(
        &mut self,
        advance: bool,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, StoreError>,
    ) -> Result<(), StoreError> {
        self.refuse_after_hand_over()?;
        self.finish_compaction(true);
        let seq = self.seq + u64::from(advance);
        self.base_len = write_base(&self.base, &self.sealed_prefix, seq, &encode(seq)?)?;
        self.seq = seq;
        // The base holds every record now; should emptying the journal
        // fail, its records are skipped at open (their seq is in the base).
        let emptied = (|| {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            file.set_len(0)?;
            file.sync_all()?;
            sync_dir(&self.path)?;
            Ok::<File, io::Error>(file)
        })();
        match emptied {
            Ok(file) => {
                self.state = State::Open(file);
                self.len = 0;
            }
            Err(e) => {
                tracing::warn!(store = self.what, path = %self.path.display(), error = %e, "cannot empty the journal; the next change rewrites the base");
                self.state = State::Broken;
            }
        }
        Ok(())
    }

    /// Lowers the compaction threshold (tests).
    #[cfg(test)]
    pub fn compact_above(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }

    /// Bytes in the journal (tests).
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Appends through `file` from now on (tests: a read-only handle makes
    /// every append fail).
    #[cfg(test)]
    pub fn replace_file(&mut self, file: File) {
        self.state = State::Open(file);
    }

    /// Forgets the open journal file, as after sealing it (tests).
    #[cfg(test)]
    pub fn forget_file(&mut self) {
        self.state = State::Absent;
        self.len = 0;
    }

    /// Waits for a running compaction (tests).
    #[cfg(test)]
    pub fn wait_compaction(&mut self) {
        self.finish_compaction(true);
    }

    /// After a graceful upgrade handed the data directory to a new process,
    /// only that process writes the files.
    fn refuse_after_hand_over(&self) -> Result<(), StoreError> {
        if !super::owner::handed_over() {
            return Ok(());
        }
        Err(StoreError::Io {
            path: self.path.clone(),
            source: io::Error::other(
                "this laneway handed its data directory to a new process (graceful upgrade) and no longer writes it; send the request to the new one",
            ),
        })
    }

    /// Collects a finished background compaction (waits for it with `wait`).
    fn finish_compaction(&mut self, wait: bool) {
        let done = self
            .compaction
            .as_ref()
            .is_some_and(|c| wait || c.is_finished());
        if !done {
            return;
        }
        let Some(handle) = self.compaction.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(len)) => self.base_len = len,
            Ok(Err(e)) => {
                tracing::warn!(store = self.what, error = %e, "compaction failed; the sealed journal is kept and replayed")
            }
            Err(_) => tracing::error!(store = self.what, "compaction thread panicked"),
        }
    }

    /// Appends one line and syncs it.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if matches!(self.state, State::Absent) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            sync_dir(&self.path)?;
            self.state = State::Open(file);
        }
        let State::Open(file) = &mut self.state else {
            return Err(io::Error::other("the journal is not open"));
        };
        file.write_all(line)?;
        file.sync_data()
    }
}

/// What replaying one journal file found.
struct Replayed {
    exists: bool,
    /// Bytes in the file.
    len: u64,
    /// Records applied (not skipped).
    records: usize,
    last_seq: u64,
    /// `Some(valid length)` when the file ends in an unterminated line.
    torn: Option<u64>,
}

/// Applies the records of `path` newer than `base_seq` to `state`.
fn replay<S, R: DeserializeOwned + Sequenced>(
    path: &Path,
    base_seq: u64,
    after_seq: u64,
    state: &mut S,
    apply: &mut impl FnMut(&mut S, R) -> Result<(), String>,
) -> Result<Replayed, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Replayed {
                exists: false,
                len: 0,
                records: 0,
                last_seq: 0,
                torn: None,
            })
        }
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |line: usize, detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail: format!("line {line}: {detail}"),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut out = Replayed {
        exists: true,
        len: bytes.len() as u64,
        records: 0,
        last_seq: after_seq,
        torn: (complete < bytes.len()).then_some(complete as u64),
    };
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        let number = n + 1;
        if line.is_empty() {
            continue;
        }
        let record: R = serde_json::from_slice(line).map_err(|e| corrupt(number, e.to_string()))?;
        let seq = record.seq();
        if seq <= out.last_seq {
            return Err(corrupt(
                number,
                format!(
                    "record {seq} follows record {}: sequence numbers must increase",
                    out.last_seq
                ),
            ));
        }
        out.last_seq = seq;
        if seq <= base_seq {
            continue; // already in the base (a crash during compaction)
        }
        out.records += 1;
        apply(state, record).map_err(|d| corrupt(number, d))?;
    }
    Ok(out)
}

/// Writes `bytes` as the base at `seq`, then deletes the sealed journals it
/// includes. Returns the base's size.
fn write_base(base: &Path, prefix: &str, seq: u64, bytes: &[u8]) -> Result<u64, StoreError> {
    persist(base, bytes)?;
    for sealed in sealed_journals(parent(base), prefix)? {
        if sealed_seq(&sealed, prefix).is_some_and(|s| s <= seq) {
            if let Err(e) = std::fs::remove_file(&sealed) {
                tracing::warn!(path = %sealed.display(), error = %e, "cannot delete a compacted journal; it is skipped at open");
            }
        }
    }
    Ok(bytes.len() as u64)
}

fn sealed_prefix(journal: &Path) -> String {
    let name = journal
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("{name}.sealed-")
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The sealed journals in `dir`, oldest first.
fn sealed_journals(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter_map(|p| sealed_seq(&p, prefix).map(|s| (s, p)))
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The last sequence number a sealed journal holds, from its name.
fn sealed_seq(path: &Path, prefix: &str) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix(prefix)?
        .parse()
        .ok()
}

/// Cuts an unterminated last line off the journal; returns it open for
/// appending.
fn cut(path: &Path, valid: u64) -> io::Result<File> {
    let file = OpenOptions::new().append(true).open(path)?;
    file.set_len(valid)?;
    file.sync_all()?;
    Ok(file)
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}
