//! Sockets and threads. The double runs on its own thread with a
//! current-thread tokio runtime. Clients connect to the *front* listener on
//! `127.0.0.1:<port>`; each accepted connection is relayed to an internal
//! axum server on a second loopback port. The relay is where socket-level
//! behaviour lives: the per-client connection limit (Consul answers the
//! 201st connection with a bare 429 and closes it), the open/peak counts,
//! the `drop_connections` fault, and going unreachable and back on the
//! same port.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::checks;
use super::faults;
use super::http::router;
use super::shared::Shared;

pub struct Server {
    pub addr: SocketAddr,
    back: SocketAddr,
    sh: Arc<Shared>,
    /// Bumped to stop the current accept loop.
    listen_gen: watch::Sender<u64>,
    /// Bumped to cut every open client connection.
    cut_gen: watch::Sender<u64>,
    /// Present while listening; says when the accept loop let go of the port.
    accept_done: Mutex<Option<mpsc::Receiver<()>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds both listeners, starts the runtime thread and begins serving.
    pub fn start() -> (Server, Arc<Shared>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("consul double: build a tokio runtime");
        let sh = Arc::new(Shared::new(rt.handle().clone()));
        let front = bind(SocketAddr::from(([127, 0, 0, 1], 0)));
        let back_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = front.local_addr().expect("consul double: front address");
        let back = back_listener
            .local_addr()
            .expect("consul double: back address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = router(sh.clone());
        let chores = sh.clone();
        let thread = std::thread::Builder::new()
            .name(format!("consul-double-{}", addr.port()))
            .spawn(move || {
                rt.block_on(async move {
                    let back = match TcpListener::from_std(back_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("consul double: internal listener: {e}");
                            return;
                        }
                    };
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(back, app).await {
                            eprintln!("consul double: internal server stopped: {e}");
                        }
                    });
                    tokio::spawn(checks::housekeeping(chores));
                    // Either a shutdown message or the sender's drop ends it.
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("consul double: spawn its thread");
        let server = Server {
            addr,
            back,
            sh: sh.clone(),
            listen_gen: watch::Sender::new(0),
            cut_gen: watch::Sender::new(0),
            accept_done: Mutex::new(None),
            shutdown: Some(shutdown),
            thread: Some(thread),
        };
        server.listen(front);
        (server, sh)
    }

    fn listen(&self, listener: StdListener) {
        let (done_tx, done_rx) = mpsc::channel();
        let generation = *self.listen_gen.borrow();
        let stop = self.listen_gen.subscribe();
        let cut = self.cut_gen.subscribe();
        self.sh.rt.spawn(accept_loop(
            listener,
            generation,
            stop,
            cut,
            self.sh.clone(),
            self.back,
            done_tx,
        ));
        *self.accept_done.lock().unwrap_or_else(|p| p.into_inner()) = Some(done_rx);
    }

    /// Stops listening (connects are refused) and closes every open client
    /// connection, blocked queries included. Returns once the port is free
    /// and no connection is open.
    pub fn unreachable(&self) {
        let done = self
            .accept_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.listen_gen.send_modify(|g| *g += 1);
        self.cut_connections();
        if let Some(done) = done {
            if done.recv_timeout(Duration::from_secs(5)).is_err() {
                eprintln!("consul double: accept loop did not stop within 5 s");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.sh.stats.open() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Listens again on the same port (no-op while listening). Retries for
    /// a few seconds if the port is briefly taken; panics if it stays taken.
    pub fn reachable(&self) {
        if self
            .accept_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match StdListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => panic!(
                    "consul double: cannot listen on {} again: {e} (another process took the port)",
                    self.addr
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        listener
            .set_nonblocking(true)
            .expect("consul double: non-blocking listener");
        self.listen(listener);
    }

    /// Closes every open client connection (the listener stays).
    pub fn cut_connections(&self) {
        self.cut_gen.send_modify(|g| *g += 1);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The thread may have ended already; nothing to tell it then.
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("consul double: its thread panicked");
            }
        }
    }
}

fn bind(addr: SocketAddr) -> StdListener {
    let listener =
        StdListener::bind(addr).unwrap_or_else(|e| panic!("consul double: bind {addr}: {e}"));
    listener
        .set_nonblocking(true)
        .expect("consul double: non-blocking listener");
    listener
}

async fn accept_loop(
    listener: StdListener,
    generation: u64,
    mut stop: watch::Receiver<u64>,
    cut: watch::Receiver<u64>,
    sh: Arc<Shared>,
    back: SocketAddr,
    done: mpsc::Sender<()>,
) {
    match TcpListener::from_std(listener) {
        Ok(listener) => loop {
            tokio::select! {
                _ = moved_on(&mut stop, generation) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let ends = Ends {
                            listener: stop.clone(),
                            listener_generation: generation,
                            cut: cut.clone(),
                        };
                        tokio::spawn(serve_conn(stream, peer, ends, sh.clone(), back));
                    }
                    // Out of descriptors or similar: pause rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        },
        Err(e) => eprintln!("consul double: listener: {e}"),
    }
    // The listener is dropped by now; whoever waits may rebind the port.
    let _ = done.send(());
}

/// What ends a client connection besides either side closing it: the end
/// of the listener that accepted it (`unreachable`), or a cut of all open
/// connections (`drop_connections`).
struct Ends {
    listener: watch::Receiver<u64>,
    listener_generation: u64,
    cut: watch::Receiver<u64>,
}

async fn serve_conn(
    mut client: TcpStream,
    peer: SocketAddr,
    mut ends: Ends,
    sh: Arc<Shared>,
    back: SocketAddr,
) {
    let cut_generation = *ends.cut.borrow_and_update();
    if sh.faults.drop_connections() {
        faults::drop_after_request(client, &sh.stats).await;
        return;
    }
    let Some(_slot) = sh
        .stats
        .open_conn(peer.ip(), sh.faults.max_conns_per_client())
    else {
        refuse_over_limit(client).await;
        return;
    };
    let Ok(upstream) = TcpStream::connect(back).await else {
        return;
    };
    if client.set_nodelay(true).is_err() || upstream.set_nodelay(true).is_err() {
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut up_read, mut up_write) = upstream.into_split();
    // Whichever side ends first ends both: a client that goes away takes
    // its blocked query with it, as it does in Consul.
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut up_write) => {}
        _ = tokio::io::copy(&mut up_read, &mut client_write) => {}
        _ = moved_on(&mut ends.cut, cut_generation) => {}
        _ = moved_on(&mut ends.listener, ends.listener_generation) => {}
    }
}

/// Resolves once `rx` holds another generation than `generation` (or its
/// sender is gone): either way this generation is over.
async fn moved_on(rx: &mut watch::Receiver<u64>, generation: u64) {
    drop(rx.wait_for(|g| *g != generation).await);
}

/// What go-connlimit's default handler sends past the per-client limit.
async fn refuse_over_limit(mut client: TcpStream) {
    if client
        .write_all(b"HTTP/1.1 429 Too Many Requests\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if client.shutdown().await.is_err() {
        return;
    }
    // Drain what the client already sent so the close is not a reset.
    let mut sink = [0u8; 1024];
    let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
    // Out of time is fine too: the connection closes either way.
    tokio::time::timeout(Duration::from_secs(1), drain)
        .await
        .ok();
}
