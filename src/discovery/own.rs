//! laneway's own listeners as discovery sees them: an instance registered
//! at one of them would send laneway's traffic back into laneway, a loop
//! that only ends at `[proxy] max_hops` (508, [`crate::proxy::hops`]).
//! The embedded registry refuses such a registration (400); Consul mode
//! skips such an instance. Control plane only.
//!
//! What counts as laneway's own: the `[proxy] listen`, `[proxy] h2c_listen`,
//! `[tls] listen` and `[admin] listen` addresses; every VIP of `[lanes]
//! vip_pool` at the data listeners' ports (LVS sends a VIP's traffic to
//! laneway, wherever the VIP lives); every port of `[lanes] port_pool` at
//! the `[proxy] listen` addresses. A wildcard listener (`0.0.0.0`, `::`)
//! stands for every local address at its port: loopback (`127.x.y.z`,
//! `::1`), the unspecified address, and any address this host can bind.
//! An instance address that is a hostname is not resolved; `localhost` is
//! taken as loopback.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::allocation::pools::{PortPool, VipPool};
use crate::config::Config;

/// laneway's own listeners, from the configuration.
#[derive(Debug, Clone)]
pub struct OwnListeners {
    /// Each listener with how the configuration names it.
    listeners: Vec<(SocketAddr, &'static str)>,
    /// The VIP pool and the ports its VIPs are served on.
    vips: Option<(VipPool, Vec<u16>)>,
    /// The port pool and the addresses its ports are served on.
    ports: Option<(PortPool, Vec<IpAddr>)>,
    /// `[discovery] allowed_networks`; empty: any address.
    allowed: Vec<ipnet::IpNet>,
}

/// The listener an instance address stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnListener {
    /// How the configuration names it, e.g. `[proxy] listen 0.0.0.0:8080`.
    pub what: String,
}

impl std::fmt::Display for OwnListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl OwnListeners {
    pub fn from_config(cfg: &Config) -> OwnListeners {
        let mut listeners: Vec<(SocketAddr, &'static str)> = Vec::new();
        listeners.extend(cfg.proxy.listen.iter().map(|a| (*a, "[proxy] listen")));
        listeners.extend(
            cfg.proxy
                .h2c_listen
                .iter()
                .map(|a| (*a, "[proxy] h2c_listen")),
        );
        if let Some(tls) = &cfg.tls {
            listeners.extend(tls.listen.iter().map(|a| (*a, "[tls] listen")));
        }
        listeners.push((cfg.admin.listen, "[admin] listen"));
        let data_ports = listeners
            .iter()
            .filter(|(_, what)| *what != "[admin] listen")
            .map(|(a, _)| a.port());
        let mut ports: Vec<u16> = data_ports.collect();
        ports.sort_unstable();
        ports.dedup();
        OwnListeners {
            vips: cfg.lanes.vip_pool.clone().map(|pool| (pool, ports)),
            ports: cfg
                .lanes
                .port_pool
                .map(|pool| (pool, cfg.proxy.listen.iter().map(SocketAddr::ip).collect())),
            listeners,
            allowed: cfg.discovery.allowed_networks.clone(),
        }
    }

    /// Why an instance at `address:port` may not be registered: it is
    /// outside `[discovery] allowed_networks`, or it is one of laneway's
    /// own listeners. `None`: it may.
    pub fn refusal(&self, address: &str, port: u16) -> Option<String> {
        if !self.allowed.is_empty() {
            let ip = address.trim().trim_matches(['[', ']']).parse::<IpAddr>();
            let shown: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
            match ip {
                Ok(ip) if self.allowed.iter().any(|n| n.contains(&ip.to_canonical())) => {}
                Ok(_) => {
                    return Some(format!(
                        "{address} is outside [discovery] allowed_networks ({})",
                        shown.join(", ")
                    ))
                }
                Err(_) => {
                    return Some(format!(
                        "{address:?} is a host name; with [discovery] allowed_networks ({}) set, register an IP address",
                        shown.join(", ")
                    ))
                }
            }
        }
        self.find(address, port).map(|own| {
            format!(
                "it is laneway's own {own}: requests to it would come back to laneway in a loop; register the address the service itself listens on"
            )
        })
    }

    /// The listener of laneway's that `address:port` (an instance's
    /// registered address) reaches, if any.
    pub fn find(&self, address: &str, port: u16) -> Option<OwnListener> {
        let ip = match address.trim() {
            a if a.eq_ignore_ascii_case("localhost") => IpAddr::from([127, 0, 0, 1]),
            a => a.trim_matches(['[', ']']).parse::<IpAddr>().ok()?,
        };
        let ip = ip.to_canonical();
        for (addr, what) in &self.listeners {
            if addr.port() == port && reaches(addr.ip(), ip) {
                return Some(OwnListener {
                    what: format!("{what} {addr}"),
                });
            }
        }
        if let Some((pool, ports)) = &self.vips {
            if ports.contains(&port) && pool.ranges().iter().any(|r| r.contains(ip)) {
                return Some(OwnListener {
                    what: format!(
                        "lane entry {} ([lanes] vip_pool {pool})",
                        SocketAddr::new(ip, port)
                    ),
                });
            }
        }
        if let Some((pool, addrs)) = &self.ports {
            if pool.contains(port) && addrs.iter().any(|a| reaches(*a, ip)) {
                return Some(OwnListener {
                    what: format!(
                        "lane entry {} ([lanes] port_pool {}-{})",
                        SocketAddr::new(ip, port),
                        pool.first,
                        pool.last
                    ),
                });
            }
        }
        None
    }
}

/// A connection to `ip` reaches a listener bound to `bound` (same port).
fn reaches(bound: IpAddr, ip: IpAddr) -> bool {
    let bound = bound.to_canonical();
    if bound == ip {
        return true;
    }
    if !bound.is_unspecified() {
        return false;
    }
    // a v6 wildcard usually takes IPv4 too (dual stack)
    (bound.is_ipv4() == ip.is_ipv4() || bound.is_ipv6()) && is_local(ip)
}

/// `ip` is an address of this host: loopback, unspecified (a connection to
/// it goes to the host itself), or one it can bind.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_proxy: &str, extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("laneway.toml");
        std::fs::write(
            &path,
            format!(
                "[proxy]\nlisten = [\"127.0.0.1:8080\", \"0.0.0.0:8081\"]\n{extra_proxy}\n\
                 [admin]\nlisten = \"127.0.0.1:9901\"\n{extra}\n"
            ),
        )
        .unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_specific_listener_matches_its_address_only() {
        let own = OwnListeners::from_config(&config("", ""));
        let hit = own.find("127.0.0.1", 8080).expect("own listener");
        assert_eq!(hit.what, "[proxy] listen 127.0.0.1:8080");
        assert_eq!(own.find("127.0.0.2", 8080), None);
        assert_eq!(own.find("127.0.0.1", 8079), None);
        assert_eq!(
            own.find("localhost", 9901).map(|l| l.what),
            Some("[admin] listen 127.0.0.1:9901".into())
        );
    }

    #[test]
    fn a_wildcard_listener_matches_every_local_address() {
        let own = OwnListeners::from_config(&config("", ""));
        for local in ["127.0.0.1", "127.3.4.5", "0.0.0.0", "::ffff:127.0.0.9"] {
            let hit = own.find(local, 8081);
            assert_eq!(
                hit.map(|l| l.what),
                Some("[proxy] listen 0.0.0.0:8081".into()),
                "{local}"
            );
        }
        // an IPv4 wildcard takes no IPv6 connection
        assert_eq!(own.find("::1", 8081), None);
        // TEST-NET-3: never an address of this host
        assert_eq!(own.find("203.0.113.7", 8081), None);
        assert_eq!(own.find("db.example.com", 8081), None);
    }

    #[test]
    fn allowed_networks_limit_instance_addresses() {
        let own = OwnListeners::from_config(&config(
            "",
            "[discovery]\nallowed_networks = [\"10.20.0.0/16\", \"127.0.0.0/8\", \"fd00::/64\"]\n",
        ));
        assert_eq!(own.refusal("10.20.3.4", 80), None);
        assert_eq!(own.refusal("fd00::7", 80), None);
        let why = own.refusal("10.21.0.1", 80).unwrap();
        assert!(
            why.contains(
                "outside [discovery] allowed_networks (10.20.0.0/16, 127.0.0.0/8, fd00::/64)"
            ),
            "{why}"
        );
        assert!(own
            .refusal("db.example.com", 80)
            .unwrap()
            .contains("host name"));
        // inside the networks, laneway's own listeners are still refused
        let why = own.refusal("127.0.0.1", 8080).unwrap();
        assert!(why.contains("[proxy] listen 127.0.0.1:8080"), "{why}");
        // no networks: any address but laneway's own
        let any = OwnListeners::from_config(&config("", ""));
        assert_eq!(any.refusal("203.0.113.7", 80), None);
        assert!(any
            .refusal("127.0.0.1", 9901)
            .unwrap()
            .contains("[admin] listen"));
    }

    #[test]
    fn h2c_tls_and_entries_count() {
        let own = OwnListeners::from_config(&config(
            "h2c_listen = [\"127.0.0.1:8082\"]",
            "[lanes]\nvip_pool = [\"10.9.0.1-10.9.0.9\"]\nport_pool = \"20000-20009\"\n",
        ));
        assert_eq!(
            own.find("127.0.0.1", 8082).map(|l| l.what),
            Some("[proxy] h2c_listen 127.0.0.1:8082".into())
        );
        let vip = own.find("10.9.0.3", 8080).expect("a VIP at a data port");
        assert!(vip.what.contains("vip_pool"), "{}", vip.what);
        assert!(own.find("10.9.0.3", 8082).is_some());
        assert_eq!(
            own.find("10.9.0.3", 9901),
            None,
            "VIPs serve data ports only"
        );
        assert_eq!(own.find("10.9.0.10", 8080), None);
        let port = own.find("127.0.0.1", 20005).expect("a pool port");
        assert!(port.what.contains("port_pool"), "{}", port.what);
        assert!(own.find("127.0.0.1", 20010).is_none());
    }
}
