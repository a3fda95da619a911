//! Idle upstream connections of the lean engine, kept per worker thread.
//!
//! Each data-plane worker is a single-threaded runtime, so its pool is a
//! thread-local: taking and returning a connection is a plain map operation,
//! with no lock and no cross-thread traffic (nginx's per-worker keepalive
//! cache, in the same spirit). Request path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::debug;

/// Idle connections older than this are closed rather than reused (most
/// upstreams close idle connections after 60 s or more).
const MAX_IDLE: Duration = Duration::from_secs(50);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

thread_local! {
    static POOL: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// The most recently used idle connection to `addr` that is still clean,
/// if any. Connections passed over are closed.
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < MAX_IDLE && is_clean(&conn.stream) {
                return Some(conn.stream);
            }
            debug!(upstream = %addr, "idle upstream connection closed or readable; not reused");
        }
        None
    })
}

/// Whether an idle connection has nothing to read and is not closed, asked
/// of the socket itself (one non-blocking `recv` with `MSG_PEEK`) rather
/// than of the runtime's readiness, which may not have seen a close or
/// late bytes yet. Bytes an upstream sent after its response (or before a
/// request) would otherwise be read as the next client's response.
fn is_clean(stream: &TcpStream) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(stream).peek(&mut probe) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        // bytes waiting, or the upstream closed (0)
        Ok(_) => false,
    }
}

/// Keeps `stream` for reuse unless `cap` connections to `addr` are idle.
pub fn put(addr: SocketAddr, stream: TcpStream, cap: usize) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(addr).or_default();
        if idle.len() < cap {
            idle.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    });
}
