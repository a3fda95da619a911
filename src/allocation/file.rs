//! Crash-safe persistence of the control plane's small JSON stores (lanes,
//! embedded registry): write-to-temp + fsync + rename + directory fsync, and
//! a reader that never turns a damaged file into an empty store. Control
//! plane only; blocking file I/O, called with the store's lock held.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a durable store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing, renaming or syncing `path` failed.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file exists but does not hold what laneway wrote. laneway refuses
    /// to start over from empty, which would silently drop lanes or instances.
    #[error(
        "{} is corrupt: {detail}; repair it or move it aside (laneway never resets a store silently)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The in-memory state could not be encoded (should not happen: every
    /// stored type has string keys).
    #[error("cannot encode {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The sibling temporary file `write_atomic` writes first: `<path>.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Replaces `path` with `bytes` so that a crash at any point leaves either the
/// old or the new content, never a mix: writes `<path>.tmp`, fsyncs it,
/// renames it over `path`, then fsyncs the directory so the rename itself is
/// durable.
///
/// If the directory fsync fails after the rename, the new content is in place
/// but may not survive a power loss; the error is still returned, and the
/// caller's next write (which rewrites the whole file) repairs any divergence.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        remove_leftover(&tmp);
        return Err(step(e, "writing", &tmp));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        remove_leftover(&tmp);
        return Err(step(e, "renaming", &tmp));
    }
    sync_dir(path).map_err(|e| step(e, "syncing the directory of", path))
}

/// Says which step of `write_atomic` failed, on which file.
fn step(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Best effort: a leftover temp file is harmless (the next write truncates
/// it), so failing to remove it is only worth a debug line.
fn remove_leftover(tmp: &Path) {
    if let Err(e) = fs::remove_file(tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %tmp.display(), error = %e, "cannot remove temporary file");
        }
    }
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync here; rename is durable enough.
    Ok(())
}

/// Reads and decodes `path`. `Ok(None)` when the file does not exist; any
/// other read failure is [`StoreError::Io`] and undecodable content is
/// [`StoreError::Corrupt`] carrying serde's line and column.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        })
}

/// Encodes nothing itself: writes already-encoded `bytes` to `path` with
/// [`write_atomic`], naming `path` in the error.
pub fn persist(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic(path, bytes).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"{\"a\":1}").expect("first write");
        write_atomic(&path, b"{\"a\":2}").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"{\"a\":2}");
        assert!(!tmp_path(&path).exists());
    }

    #[test]
    fn write_atomic_failure_keeps_old_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").expect("write");
        // A directory where the temp file goes makes the write fail, even as root.
        fs::create_dir(tmp_path(&path)).expect("mkdir");
        assert!(write_atomic(&path, b"new").is_err());
        assert_eq!(fs::read(&path).expect("read"), b"old");
    }

    #[test]
    fn read_json_missing_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got: Option<serde_json::Value> =
            read_json(&dir.path().join("nope.json")).expect("read");
        assert!(got.is_none());
    }

    #[test]
    fn read_json_corrupt_names_file_and_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        fs::write(&path, "{\n  \"a\": 1,\n  oops\n}").expect("write");
        let err = read_json::<serde_json::Value>(&path).expect_err("corrupt");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
        assert!(msg.contains("state.json"), "{msg}");
        assert!(msg.contains("line 3 column 3"), "{msg}");
    }

    #[test]
    fn persist_names_the_target_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        fs::write(&blocker, "x").expect("write");
        let path = blocker.join("state.json");
        let msg = persist(&path, b"{}")
            .expect_err("parent is a file")
            .to_string();
        assert!(msg.starts_with("cannot access "), "{msg}");
        assert!(msg.contains("file/state.json: writing "), "{msg}");
        assert!(msg.contains("file/state.json.tmp: "), "{msg}");
    }
}
