//! One laneway per data directory and per listen address, checked once at
//! start before any state is read; control plane only, never on the request
//! path.
//!
//! **The data directory** is owned through an exclusive `flock` on
//! `<data_dir>/.lock`, which holds the owner's PID as text. It is taken
//! before the stores are read and held for the life of the process (the
//! kernel drops it when the process dies, SIGKILL included, so a crash never
//! leaves a stale lock behind). A second laneway on the same directory exits
//! at once, naming the directory and the PID holding it.
//!
//! **Listen addresses.** laneway binds its data-plane and admin listeners
//! with `SO_REUSEPORT` (Pingora's workers each have their own socket, and a
//! graceful upgrade binds next to the running process), which would let an
//! unrelated second laneway on another data directory share the ports
//! silently, each getting part of the connections. So before binding, a
//! normal start binds every address once *without* `SO_REUSEPORT` and
//! closes it again: the kernel refuses that while any other socket listens
//! there, with or without `SO_REUSEPORT`, and laneway exits naming the
//! address. Checking the lock alone would not do (two directories, same
//! ports), nor would dropping `SO_REUSEPORT` (the workers and the upgrade
//! need it). Two laneways starting in the same instant can both pass the
//! probe; that race is accepted, a start is not a hot path.
//!
//! **Graceful upgrade** (`laneway run --upgrade`, then SIGQUIT to the old
//! process): the new process skips the probe (it inherits the sockets) and
//! waits for the lock. On SIGQUIT the old process calls [`hand_over`]: it
//! releases the lock and stops writing its stores (every later write is an
//! error), so the two processes never write the same files; it keeps
//! serving its requests in flight while it drains.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

/// The lock file inside the data directory.
pub const LOCK_NAME: &str = ".lock";

/// How long `--upgrade` waits for the running laneway to hand over.
pub const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// Why laneway may not start on this directory or address.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "data directory {} is in use by another laneway (PID {pid}); stop it, give this one another [store] data_dir, or replace it with `laneway run --upgrade` and SIGQUIT to PID {pid}",
        dir.display()
    )]
    Held { dir: PathBuf, pid: String },
    #[error(
        "waited {}s for laneway PID {pid} to hand over data directory {}; send it SIGQUIT after starting `laneway run --upgrade`",
        waited.as_secs(),
        dir.display()
    )]
    UpgradeTimeout {
        dir: PathBuf,
        pid: String,
        waited: Duration,
    },
    #[error("cannot lock data directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{what} {addr} is already in use by another process (another laneway?); stop it or choose another address (to replace a running laneway without dropping connections, use `laneway run --upgrade`)"
    )]
    AddressInUse { what: String, addr: SocketAddr },
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock of this process, kept here so that [`hand_over`] can release it.
static HELD: Mutex<Option<DataDirLock>> = Mutex::new(None);
/// Set by [`hand_over`]: the stores refuse every write from then on.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// Takes the data directory for this process (creating it if needed) and
/// keeps the lock until the process ends or [`hand_over`]. With `wait`
/// (graceful upgrade), polls until the current owner hands over, for at most
/// that long; without, fails at once when another laneway holds it.
pub fn claim_data_dir(dir: &Path, wait: Option<Duration>) -> Result<(), OwnerError> {
    let lock = lock_data_dir(dir, wait)?;
    if let Ok(mut held) = HELD.lock() {
        *held = Some(lock);
    }
    Ok(())
}

/// [`claim_data_dir`] without keeping the lock in the process-wide slot.
pub fn lock_data_dir(dir: &Path, wait: Option<Duration>) -> Result<DataDirLock, OwnerError> {
    let path = dir.join(LOCK_NAME);
    let io_err = |source| OwnerError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    let started = Instant::now();
    let mut logged = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                let pid = holder_pid(&mut file);
                match wait {
                    Some(w) if started.elapsed() < w => {
                        if !logged {
                            tracing::info!(dir = %dir.display(), pid = %pid, "waiting for the running laneway to hand over the data directory (send it SIGQUIT)");
                            logged = true;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Some(waited) => {
                        return Err(OwnerError::UpgradeTimeout {
                            dir: dir.to_owned(),
                            pid,
                            waited,
                        })
                    }
                    None => {
                        return Err(OwnerError::Held {
                            dir: dir.to_owned(),
                            pid,
                        })
                    }
                }
            }
            Err(e) => return Err(io_err(e.into())),
        }
    }
    let written = (|| {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_data()
    })();
    written.map_err(io_err)?;
    Ok(DataDirLock { file, path })
}

/// The PID the holder wrote, or a note that it is unknown (the holder has
/// not written it yet, or the file is not laneway's).
fn holder_pid(file: &mut File) -> String {
    let mut text = String::new();
    let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match read {
        Ok(_) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// Graceful upgrade, in the old process: releases the data directory to
/// the new one and makes every later store write fail, so that only the new
/// process writes the files.
pub fn hand_over() {
    HANDED_OVER.store(true, Ordering::SeqCst);
    let released = HELD.lock().ok().and_then(|mut h| h.take());
    if let Some(lock) = released {
        // Closing the file releases the flock.
        tracing::info!(path = %lock.path.display(), "data directory handed over to the new process");
        drop(lock.file);
    }
}

/// True once this process has handed its data directory over.
pub fn handed_over() -> bool {
    HANDED_OVER.load(Ordering::SeqCst)
}

/// Fails, naming the address, if any other socket listens on one of
/// `addrs` (each with the setting it comes from). Port 0 is skipped.
pub fn check_addresses_free(addrs: &[(SocketAddr, String)]) -> Result<(), OwnerError> {
    for (addr, what) in addrs {
        if addr.port() == 0 {
            continue;
        }
        // std's bind sets SO_REUSEADDR (so TIME_WAIT does not count) but
        // not SO_REUSEPORT: any other listener there makes it fail.
        match TcpListener::bind(addr) {
            Ok(probe) => drop(probe),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(OwnerError::AddressInUse {
                    what: what.clone(),
                    addr: *addr,
                })
            }
            Err(source) => {
                return Err(OwnerError::Bind {
                    what: what.clone(),
                    addr: *addr,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_dir_and_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock_data_dir(dir.path(), None).expect("first");
        let text = std::fs::read_to_string(held.path()).expect("read");
        assert_eq!(text.trim(), std::process::id().to_string());
        // flock locks belong to the open file: a second open in the same
        // process conflicts as another process would.
        let msg = lock_data_dir(dir.path(), None)
            .expect_err("held")
            .to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        let msg = lock_data_dir(dir.path(), Some(Duration::from_millis(120)))
            .expect_err("still held")
            .to_string();
        assert!(msg.contains("waited 0s"), "{msg}");
        drop(held);
        lock_data_dir(dir.path(), None).expect("free again");
    }

    #[test]
    fn a_listening_address_is_refused_by_name() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let msg = check_addresses_free(&[(addr, "[admin] listen".into())])
            .expect_err("in use")
            .to_string();
        assert!(msg.contains(&format!("[admin] listen {addr}")), "{msg}");
        drop(taken);
        check_addresses_free(&[(addr, "[admin] listen".into())]).expect("free");
    }

    #[test]
    fn a_reuseport_listener_is_refused_too() {
        let socket = socket2_like_reuseport_listener();
        let addr = socket.local_addr().expect("addr");
        assert!(check_addresses_free(&[(addr, "[proxy] listen".into())]).is_err());
    }

    /// A listener with SO_REUSEPORT, as laneway's own are bound.
    fn socket2_like_reuseport_listener() -> std::net::TcpListener {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.set_reuseport(true).expect("reuseport");
            s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            s.listen(8).expect("listen").into_std().expect("std")
        })
    }
}
