//! Idle upstream connections of the lean engine, kept per worker thread.
//!
//! Each data-plane worker is a single-threaded runtime, so its pool is a
//! thread-local: taking and returning a connection is a plain map operation,
//! with no lock and no cross-thread traffic (nginx's per-worker keepalive
//! cache, in the same spirit). Request path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

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

/// The most recently used idle connection to `addr`, if any.
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < MAX_IDLE {
                return Some(conn.stream);
            }
        }
        None
    })
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
