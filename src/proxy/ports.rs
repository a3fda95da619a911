//! Which nginx port each data-plane listener stands for
//! (`[routes.nginx_listen]`), so that servers are chosen among those of
//! the port a request arrived on, as nginx chooses by listening address.
//! Built once when the data plane starts; a connection's port is one hash
//! probe on its local address (request path, no allocation).
//!
//! Lane entries bound for a listener (a VIP at its port, a pool port at a
//! `[proxy] listen` address) stand for that listener's nginx port: they
//! cannot be named in `[routes.nginx_listen]` themselves, and a VIP is the
//! production routing at another address.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::Config;

/// Local address → nginx port.
#[derive(Debug, Default, Clone)]
pub struct ListenPorts {
    exact: HashMap<SocketAddr, u16>,
    /// Listeners on an unspecified address (`0.0.0.0:8080`, `[::]:8080`),
    /// by port: they receive every address's connections on that port.
    any_ip: HashMap<u16, u16>,
}

impl ListenPorts {
    pub fn from_config(cfg: &Config) -> ListenPorts {
        let mut t = ListenPorts::default();
        let routes = &cfg.routes;
        for l in &routes.listeners {
            t.add(l.addr, l.port);
        }
        for (addr, origin) in super::server::entry_origins(cfg) {
            if let Some(port) = routes.port_of(origin) {
                t.add(addr, port);
            }
        }
        t
    }

    fn add(&mut self, addr: SocketAddr, port: u16) {
        if addr.ip().is_unspecified() {
            self.any_ip.entry(addr.port()).or_insert(port);
        } else {
            self.exact.entry(addr).or_insert(port);
        }
    }

    /// The nginx port of a connection that arrived at `local`; `0` when
    /// unknown (the servers of every port are then candidates).
    #[inline]
    pub fn port_of(&self, local: Option<SocketAddr>) -> u16 {
        let Some(local) = local else { return 0 };
        if let Some(p) = self.exact.get(&local) {
            return *p;
        }
        self.any_ip.get(&local.port()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("laneway.toml")).expect("valid configuration")
    }

    #[test]
    fn listeners_map_to_their_nginx_ports_and_entries_follow_their_listener() {
        let cfg = config(
            r#"
[proxy]
listen = ["127.0.0.1:18080", "0.0.0.0:18081"]
bind_entries = true
[lanes]
vip_pool = ["127.0.9.1-127.0.9.2"]
[tls]
listen = ["127.0.0.1:18443"]
[routes.nginx_listen]
"127.0.0.1:18080" = 8080
"0.0.0.0:18081" = 443
"#,
        );
        let t = ListenPorts::from_config(&cfg);
        let at = |s: &str| t.port_of(Some(s.parse().unwrap()));
        assert_eq!(at("127.0.0.1:18080"), 8080);
        // an unspecified address receives every address on its port
        assert_eq!(at("10.1.2.3:18081"), 443);
        // a VIP entry bound at the listener's port stands for its port
        assert_eq!(at("127.0.9.2:18080"), 8080);
        // and at a TLS listener's port, the TLS default
        assert_eq!(at("127.0.0.1:18443"), 443);
        assert_eq!(at("127.0.9.1:18443"), 443);
        assert_eq!(at("127.0.0.1:9"), 0);
        assert_eq!(t.port_of(None), 0);
    }

    #[test]
    fn defaults_are_80_and_443_for_tls() {
        let cfg = config(
            r#"
[proxy]
listen = ["127.0.0.1:18080"]
h2c_listen = ["127.0.0.1:18082"]
"#,
        );
        let t = ListenPorts::from_config(&cfg);
        assert_eq!(t.port_of(Some("127.0.0.1:18080".parse().unwrap())), 80);
        assert_eq!(t.port_of(Some("127.0.0.1:18082".parse().unwrap())), 80);
    }
}
