//! Builds and runs the Pingora server that hosts the data plane.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{error, info};

use pingora_core::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;

use super::connect::Tunnels;
use super::front::Front;
use super::h1::H1App;
use super::limits::{ConnLimit, Limited};
use super::pingora_conn::{self, ConnTimeouts, PingoraConn};
use super::pingora_engine::PingoraProxy;
use super::tls::{CertStore, Terminator};
use super::ProxySettings;
use crate::config::Config;
use crate::config::Engine;
use crate::control::Control;
use crate::routing::lanes::LaneSettings;

/// Why the data plane cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error(transparent)]
    Service(#[from] super::services::ServiceError),
}

/// Loads the files the configuration names for the data plane (the `[tls]`
/// certificates, `[services]` CA files) as `laneway run` would, for
/// `laneway check`; every problem as an error naming the file.
pub fn check_files(cfg: &Config) -> Vec<crate::config::ConfigError> {
    let mut errors = Vec::new();
    let mut err = |msg: String| errors.push(crate::config::ConfigError::new(&cfg.path, 0, 0, msg));
    if let Some(tls) = &cfg.tls {
        for e in CertStore::check(tls) {
            err(e.to_string());
        }
    }
    if let Err(e) = super::services::compile(&cfg.services) {
        err(e.to_string());
    }
    errors
}

/// The data-plane settings derived from the configuration.
pub fn settings(control: &Control) -> ProxySettings {
    let cfg = &control.config;
    ProxySettings {
        lanes: LaneSettings {
            header: cfg.lanes.header.clone(),
            cookie: cfg.lanes.cookie.clone(),
            cookie_max_age: cfg.lanes.cookie_max_age,
            baggage_key: cfg.lanes.baggage_key.clone(),
            domain: cfg.lanes.domain.clone(),
            vip_pool: cfg.lanes.vip_pool.clone().map(Arc::new),
            port_pool: cfg.lanes.port_pool,
        },
        health_path: cfg.proxy.health_path.clone(),
        health: control.health.clone(),
        connect_timeout: cfg.proxy.connect_timeout,
        read_timeout: cfg.proxy.read_timeout,
        write_timeout: cfg.proxy.write_timeout,
        connect_retries: cfg.proxy.connect_retries,
        read_retries: cfg.proxy.read_retries,
        response_headers: cfg.proxy.response_headers,
        client_keepalive: cfg.proxy.client_keepalive,
        header_timeout: cfg.proxy.header_timeout,
        max_connections: cfg.proxy.max_connections,
        max_hops: cfg.proxy.max_hops,
        instance_id: super::hops::process_instance_id(),
        upstream_keepalive: (cfg.proxy.upstream_keepalive / cfg.proxy.threads).max(1),
        max_body_size: cfg.proxy.max_body_size,
        services: Arc::new(Default::default()),
        listen_ports: Arc::new(super::ports::ListenPorts::from_config(cfg)),
    }
}

/// Builds the Pingora server with laneway's proxy on every `[proxy] listen`
/// address, and (with `[proxy] bind_entries`) on every VIP of the pool at
/// each listen port and every port of the port pool at each listen address.
/// Run it with [`run`].
///
/// The data plane is `[proxy] threads` independent single-threaded services,
/// each with its own `SO_REUSEPORT` listener on every address and its own
/// upstream connection pool: the kernel spreads connections over them and a
/// request never moves between threads (no cross-thread wake-ups, which is
/// where a multi-threaded work-stealing runtime spent its time).
///
/// `[tls] listen` and `[proxy] h2c_listen` get a [`Front`] per worker in
/// the same way. Every listener's connections count against one
/// `[proxy] max_connections` ([`ConnLimit`]). Fails, naming the file, when
/// the default certificate or a `[services]` CA file cannot be loaded.
pub fn build(control: &Arc<Control>, upgrade: bool) -> Result<Server, ServerError> {
    let cfg = &control.config;
    let services = Arc::new(super::services::compile(&cfg.services)?);
    // The certificates serve the `[tls] listen` addresses and CONNECT
    // tunnels on lane entries (`[tls] listen = []`: tunnels only).
    let store = match &cfg.tls {
        None => None,
        Some(tls) => {
            let store = CertStore::open(tls, control.metrics.clone())?;
            store.watch()?;
            Some(store)
        }
    };
    let terminator = match &store {
        Some(store) => Some(Arc::new(Terminator::new(
            store.server_config()?,
            control.metrics.clone(),
        ))),
        None => None,
    };
    let tunnels = Arc::new(Tunnels::new(
        control.snapshot_handle(),
        store,
        control.metrics.clone(),
    )?);
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: cfg.proxy.upstream_keepalive,
        // In-flight requests are awaited by `DrainOnTerm`/`exit_when_idle`
        // before this grace period matters; it bounds the rest.
        grace_period_seconds: Some(cfg.proxy.grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: cfg
            .store
            .data_dir
            .join("laneway.pid")
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: cfg
            .store
            .data_dir
            .join("upgrade.sock")
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // one limit for every worker and listener of the process
    let limit = ConnLimit::new(
        cfg.proxy.max_connections,
        control.metrics.connections_shed.clone(),
    );
    info!(
        instance = %super::hops::process_instance_id(),
        max_connections = cfg.proxy.max_connections,
        "data plane instance (its id marks forwarded requests in x-laneway-via)"
    );
    for worker in 0..cfg.proxy.threads {
        let name = format!("laneway-{worker}");
        let (snapshot, mut settings, metrics) = (
            control.snapshot_handle(),
            settings(control),
            control.metrics.clone(),
        );
        settings.services = services.clone();
        let timeouts = ConnTimeouts::of(&settings);
        // Serves HTTP/2 and requests to TLS/HTTP/2 upstreams for the h1
        // engine and the fronts.
        let pingora = Arc::new(pingora_conn::proxy(
            &server.configuration,
            PingoraProxy::new(snapshot.clone(), settings.clone(), metrics.clone()),
            timeouts.idle,
        ));
        let h1 = || {
            H1App::new(
                snapshot.clone(),
                settings.clone(),
                metrics.clone(),
                tunnels.clone(),
            )
            .with_handoff(pingora.clone())
        };
        // TLS and h2c connections are shed without an answer: a plain
        // HTTP/1 503 means nothing to a TLS or HTTP/2 client.
        let front = |tls: Option<Arc<Terminator>>| {
            let front = Front {
                h1: Arc::new(h1()),
                pingora: pingora.clone(),
                engine: cfg.proxy.engine,
                tls,
                timeouts,
                metrics: metrics.clone(),
                tunnels: tunnels.clone(),
            };
            Limited::new(Arc::new(front), limit.clone(), false)
        };
        let tls_listen = cfg.tls.as_ref().filter(|t| !t.listen.is_empty());
        if let (Some(tls), Some(t)) = (tls_listen, &terminator) {
            let mut service = Service::new(format!("laneway-tls-{worker}"), front(Some(t.clone())));
            listen_on(&mut service, &vip_addresses(cfg, &tls.listen), worker);
            server.add_service(service);
        }
        if !cfg.proxy.h2c_listen.is_empty() {
            let mut service = Service::new(format!("laneway-h2c-{worker}"), front(None));
            listen_on(
                &mut service,
                &vip_addresses(cfg, &cfg.proxy.h2c_listen),
                worker,
            );
            server.add_service(service);
        }
        match cfg.proxy.engine {
            Engine::H1 => {
                let app = Limited::new(Arc::new(h1()), limit.clone(), true);
                let mut service = Service::new(name, app);
                // The engine buffers reads and coalesces writes itself: the
                // socket's own buffers would only add a copy each way.
                listen(&mut service, cfg, worker, L4BufferSettings::unbuffered());
                server.add_service(service);
            }
            Engine::Pingora => {
                let proxy = pingora_conn::proxy(
                    &server.configuration,
                    PingoraProxy::new(snapshot, settings, metrics.clone()),
                    timeouts.idle,
                );
                let app = PingoraConn {
                    proxy: Arc::new(proxy),
                    timeouts,
                    metrics,
                    tunnels: tunnels.clone(),
                };
                let app = Limited::new(Arc::new(app), limit.clone(), true);
                let mut service = Service::new(name, app);
                listen(&mut service, cfg, worker, L4BufferSettings::default());
                server.add_service(service);
            }
        }
    }
    Ok(server)
}

/// One single-threaded worker service on each of `addrs`.
fn listen_on<A>(service: &mut Service<A>, addrs: &[SocketAddr], worker: usize) {
    service.threads = Some(1);
    for addr in addrs {
        let mut opts = TcpSocketOptions::default();
        opts.so_reuseport = Some(true);
        service.add_tcp_with_settings(&worker_listen_key(addr, worker), opts);
    }
}

/// One single-threaded worker service on every listen address.
fn listen<A>(service: &mut Service<A>, cfg: &Config, worker: usize, buffers: L4BufferSettings) {
    service.threads = Some(1);
    for addr in listen_addresses(cfg) {
        let mut opts = TcpSocketOptions::default();
        opts.so_reuseport = Some(true);
        service.add_listener(
            ListenerConfig::tcp(worker_listen_key(&addr, worker))
                .tcp_socket_options(opts)
                .l4_buffer(buffers),
        );
    }
}

/// Every address the plain HTTP data plane listens on: `[proxy] listen`,
/// plus the entries when `[proxy] bind_entries` is on: every VIP of the pool
/// at each listen port and every port of the port pool at each listen
/// address. An unspecified listen address (`0.0.0.0:80`) already receives
/// every VIP's traffic on its port.
pub fn listen_addresses(cfg: &Config) -> Vec<SocketAddr> {
    let mut out = vip_addresses(cfg, &cfg.proxy.listen);
    out.extend(port_pool_entries(cfg).into_iter().map(|(entry, _)| entry));
    out.sort();
    out.dedup();
    out
}

/// `listen`, plus (with `[proxy] bind_entries`) every VIP of the pool at
/// each of its ports: a VIP names its lane on HTTPS and h2c listeners as it
/// does on plain ones. Port-pool entries are plain HTTP listeners only.
pub fn vip_addresses(cfg: &Config, listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = listen.to_vec();
    out.extend(vip_entries(cfg, listen).into_iter().map(|(entry, _)| entry));
    out.sort();
    out.dedup();
    out
}

/// The VIP entries bound for `listen` (with `[proxy] bind_entries`), each
/// with the listen address it is bound for.
fn vip_entries(cfg: &Config, listen: &[SocketAddr]) -> Vec<(SocketAddr, SocketAddr)> {
    let mut out = Vec::new();
    if let (true, Some(pool)) = (cfg.proxy.bind_entries, &cfg.lanes.vip_pool) {
        for l in listen.iter().filter(|l| !l.ip().is_unspecified()) {
            out.extend(
                pool.addresses()
                    .filter(|ip| ip.is_ipv4() == l.is_ipv4())
                    .map(|ip| (SocketAddr::new(ip, l.port()), *l)),
            );
        }
    }
    out
}

/// The port-pool entries (with `[proxy] bind_entries`): every pool port at
/// each `[proxy] listen` address, with that address.
fn port_pool_entries(cfg: &Config) -> Vec<(SocketAddr, SocketAddr)> {
    let mut out = Vec::new();
    if let (true, Some(ports)) = (cfg.proxy.bind_entries, &cfg.lanes.port_pool) {
        for l in &cfg.proxy.listen {
            out.extend((ports.first..=ports.last).map(|p| (SocketAddr::new(l.ip(), p), *l)));
        }
    }
    out
}

/// Every lane entry laneway listens on (VIPs at the `[proxy] listen`,
/// `[tls] listen` and `[proxy] h2c_listen` ports, pool ports at the
/// `[proxy] listen` addresses), each with the listener it is bound for.
pub fn entry_origins(cfg: &Config) -> Vec<(SocketAddr, SocketAddr)> {
    let mut out = vip_entries(cfg, &cfg.proxy.listen);
    if let Some(tls) = &cfg.tls {
        out.extend(vip_entries(cfg, &tls.listen));
    }
    out.extend(vip_entries(cfg, &cfg.proxy.h2c_listen));
    out.extend(port_pool_entries(cfg));
    out
}

/// Runs the server until shutdown. SIGTERM drains: LVS health turns 503 at
/// once, traffic is still served for `[proxy] drain_seconds`, then the
/// listeners close and requests in flight get up to `[proxy] grace_seconds`
/// to finish; the process exits as soon as none is left. SIGINT stops at
/// once; SIGQUIT hands the listeners to a new process (graceful upgrade).
pub fn run(server: Server, control: Arc<Control>, runtime: &tokio::runtime::Runtime) {
    let (terminated_tx, terminated_rx) = tokio::sync::oneshot::channel();
    let watch = DrainOnTerm {
        control: control.clone(),
        terminated: std::sync::Mutex::new(Some(terminated_tx)),
        phase: std::sync::Mutex::new(Some(server.watch_execution_phase())),
    };
    runtime.spawn(exit_when_idle(control, terminated_rx));
    server.run(RunArgs {
        shutdown_signal: Box::new(watch),
    });
}

struct DrainOnTerm {
    control: Arc<Control>,
    terminated: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Pingora's phases: on SIGQUIT, laneway exits only once the listening
    /// sockets went to the new process (which may still be opening its
    /// stores when the signal comes, so Pingora retries for a few seconds).
    phase: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            error!("cannot install signal handlers; SIGTERM will stop laneway at once");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {
                let drain = self.control.config.proxy.drain;
                self.control.health.start_draining();
                self.control.before_exit().await;
                info!(drain_seconds = drain.as_secs(), "SIGTERM: health is now 503; draining");
                tokio::time::sleep(drain).await;
                info!(in_flight = self.control.health.in_flight(), "drain over; closing listeners");
                if let Some(tx) = self.terminated.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(()); // the receiver lives as long as the process
                }
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                self.control.before_exit().await;
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                info!("SIGQUIT: handing the listeners over for a graceful upgrade");
                crate::allocation::owner::hand_over();
                self.control.health.start_draining();
                let tx = self.terminated.lock().ok().and_then(|mut t| t.take());
                let phase = self.phase.lock().ok().and_then(|mut p| p.take());
                tokio::spawn(async move {
                    if let Some(mut phase) = phase {
                        use tokio::sync::broadcast::error::RecvError;
                        loop {
                            match phase.recv().await {
                                Ok(ExecutionPhase::GracefulUpgradeCloseTimeout)
                                | Err(RecvError::Closed) => break,
                                Ok(_) | Err(RecvError::Lagged(_)) => {}
                            }
                        }
                    }
                    if let Some(tx) = tx {
                        let _ = tx.send(()); // the receiver lives as long as the process
                    }
                });
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// After the drain, exits once no request is in flight (or the grace ends),
/// rather than always sleeping the whole grace period.
async fn exit_when_idle(control: Arc<Control>, terminated: tokio::sync::oneshot::Receiver<()>) {
    if terminated.await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + control.config.proxy.grace;
    // Give the workers a moment to see the shutdown and stop accepting.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    while control.health.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    info!(in_flight = control.health.in_flight(), "laneway stopped");
    std::process::exit(0);
}

/// The listen string of `addr` for data-plane worker `worker`.
///
/// Pingora keeps one listening socket per listen *string* (its table of
/// inherited fds, also used for graceful upgrades, is keyed by it), so the
/// same string in two services would share one socket and one accept queue.
/// Each worker therefore spells the port with `worker` leading zeros
/// (`127.0.0.1:8080`, `127.0.0.1:08080`, …): the same address to the OS, a
/// distinct `SO_REUSEPORT` socket to Pingora, and the same key again after a
/// graceful upgrade.
fn worker_listen_key(addr: &std::net::SocketAddr, worker: usize) -> String {
    let ip = match addr {
        std::net::SocketAddr::V4(a) => a.ip().to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    format!("{ip}:{}{}", "0".repeat(worker), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, ToSocketAddrs};

    #[test]
    fn worker_keys_differ_but_resolve_to_the_same_address() {
        for addr in ["127.0.0.1:8080", "[::1]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let keys: Vec<String> = (0..4).map(|w| worker_listen_key(&addr, w)).collect();
            for (i, k) in keys.iter().enumerate() {
                assert!(!keys[..i].contains(k), "{k} repeats");
                let back = k.as_str().to_socket_addrs().unwrap().next().unwrap();
                assert_eq!(back, addr, "{k}");
            }
        }
    }
}
