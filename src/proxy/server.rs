//! Builds and runs the Pingora server that hosts the data plane.

use std::sync::Arc;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;

use super::{Laneway, ProxySettings};
use crate::config::Config;
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
    }
}

/// Builds the Pingora server with laneway's proxy on every `[proxy] listen`
/// address. `run_forever` on the result blocks and handles SIGTERM (graceful
/// shutdown), SIGINT and SIGQUIT (graceful upgrade).
pub fn build(control: &Arc<Control>) -> Server {
    let cfg = &control.config;
    let conf = ServerConf {
        threads: cfg.proxy.threads,
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
    let proxy = Laneway::new(
        control.snapshot_handle(),
        settings(cfg),
        control.metrics.clone(),
    );
    let mut service =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, proxy, "laneway");
    for addr in &cfg.proxy.listen {
        service.add_tcp(&addr.to_string());
    }
    server.add_service(service);
    server
}
