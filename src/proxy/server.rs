//! Builds and runs the Pingora server that hosts the data plane.

use std::sync::Arc;

use pingora_core::listeners::TcpSocketOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;

use super::h1::H1App;
use super::pingora_engine::Laneway;
use super::ProxySettings;
use crate::config::Config;
use crate::config::Engine;
use crate::control::Control;
use crate::routing::lanes::LaneSettings;

/// The data-plane settings derived from the configuration.
pub fn settings(cfg: &Config) -> ProxySettings {
    ProxySettings {
        lanes: LaneSettings {
            header: cfg.lanes.header.clone(),
            cookie: cfg.lanes.cookie.clone(),
            domain: cfg.lanes.domain.clone(),
        },
        connect_timeout: cfg.proxy.connect_timeout,
        read_timeout: cfg.proxy.read_timeout,
        write_timeout: cfg.proxy.write_timeout,
        connect_retries: cfg.proxy.connect_retries,
        response_headers: cfg.proxy.response_headers,
        client_keepalive: cfg.proxy.client_keepalive,
        upstream_keepalive: (cfg.proxy.upstream_keepalive / cfg.proxy.threads).max(1),
    }
}

/// Builds the Pingora server with laneway's proxy on every `[proxy] listen`
/// address. `run_forever` on the result blocks and handles SIGTERM (graceful
/// shutdown), SIGINT and SIGQUIT (graceful upgrade).
///
/// The data plane is `[proxy] threads` independent single-threaded services,
/// each with its own `SO_REUSEPORT` listener on every address and its own
/// upstream connection pool: the kernel spreads connections over them and a
/// request never moves between threads (no cross-thread wake-ups, which is
/// where a multi-threaded work-stealing runtime spent its time).
pub fn build(control: &Arc<Control>) -> Server {
    let cfg = &control.config;
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: cfg.proxy.upstream_keepalive,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(10),
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
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    for worker in 0..cfg.proxy.threads {
        let name = format!("laneway-{worker}");
        let (snapshot, settings, metrics) = (
            control.snapshot_handle(),
            settings(cfg),
            control.metrics.clone(),
        );
        match cfg.proxy.engine {
            Engine::H1 => {
                let mut service = Service::new(name, H1App::new(snapshot, settings, metrics));
                listen(&mut service, cfg, worker);
                server.add_service(service);
            }
            Engine::Pingora => {
                let proxy = Laneway::new(snapshot, settings, metrics);
                let mut service = pingora_proxy::http_proxy_service_with_name(
                    &server.configuration,
                    proxy,
                    &name,
                );
                listen(&mut service, cfg, worker);
                server.add_service(service);
            }
        }
    }
    server
}

/// One single-threaded worker service on every listen address.
fn listen<A>(service: &mut Service<A>, cfg: &Config, worker: usize) {
    service.threads = Some(1);
    for addr in &cfg.proxy.listen {
        let mut opts = TcpSocketOptions::default();
        opts.so_reuseport = Some(true);
        service.add_tcp_with_settings(&worker_listen_key(addr, worker), opts);
    }
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
