//! `[discovery]`: where instances come from (the embedded registry or
//! Consul) and, in Consul mode, how laneway talks to Consul and shares its
//! lanes through Consul KV. Control plane only.
//!
//! ```toml
//! [discovery]
//! mode = "consul"
//! address = "http://127.0.0.1:8500"     # http or https
//! token_file = "/etc/laneway/consul-token" # or token = "…", or CONSUL_HTTP_TOKEN
//! ca_file = "/etc/laneway/consul-ca.pem"  # extra CA for https
//! datacenter = "dc1"
//! namespace = "qa"
//! consistency = "default"               # "stale" | "consistent"
//! services = ["user-api"]               # exact names (empty: every service)
//! service_prefixes = ["team-"]
//! tag = "http"                           # only instances with this tag
//! up = ["passing"]                       # or ["passing", "warning"]
//! version_key = "version"                # Meta key, or a "version=…" tag
//! lane_key = "lane"
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryMode {
    Embedded,
    Consul,
}

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub mode: DiscoveryMode,
    pub version_key: String,
    pub lane_key: String,
    /// Present exactly when `mode` is `Consul`.
    pub consul: Option<ConsulConfig>,
    /// `[discovery] allowed_networks`: the networks instance addresses must
    /// be in; empty: any address.
    pub allowed_networks: Vec<ipnet::IpNet>,
}

/// Which Consul servers may answer a read (Consul's consistency modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Default,
    Stale,
    Consistent,
}

impl Consistency {
    /// The query parameter that asks for this mode, if any.
    pub fn query(self) -> Option<&'static str> {
        match self {
            Consistency::Default => None,
            Consistency::Stale => Some("stale"),
            Consistency::Consistent => Some("consistent"),
        }
    }
}

/// What laneway does when Consul cannot be reached at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartUnreachable {
    /// Serve the last persisted catalog and lanes; report not-synced.
    ServeStale,
    /// Stay not-ready (LVS health 503) until the first sync.
    NotReady,
}

#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    pub address: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub datacenter: Option<String>,
    pub namespace: Option<String>,
    pub consistency: Consistency,
    /// Exact service names to watch; empty with no prefixes: every service.
    pub services: Vec<String>,
    pub service_prefixes: Vec<String>,
    /// Only instances carrying this tag.
    pub tag: Option<String>,
    /// Instances whose checks are `warning` still receive traffic.
    pub warning_is_up: bool,
    /// The blocking-query wait.
    pub wait: Duration,
    /// Services fetched at once after a change.
    pub concurrency: usize,
    /// Every service is fetched again this often (0: never), a safety net
    /// for instances registered without any check.
    pub resync: Duration,
    /// Requests per second each watch loop may send (token bucket).
    pub rate: f64,
    pub on_start_unreachable: StartUnreachable,
    /// KV prefix of the shared lane store (`<prefix>/lanes/…`).
    pub kv_prefix: String,
    /// Register this laneway instance as service `service_name`.
    pub register_self: bool,
    pub service_name: String,
    /// The address advertised for this instance; default: the first
    /// `[proxy] listen` IP.
    pub advertise: Option<IpAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    mode: Option<Spanned<String>>,
    version_key: Option<Spanned<String>>,
    lane_key: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    token: Option<String>,
    token_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    datacenter: Option<String>,
    namespace: Option<String>,
    consistency: Option<Spanned<String>>,
    services: Option<Vec<String>>,
    service_prefixes: Option<Vec<String>>,
    tag: Option<String>,
    up: Option<Spanned<Vec<String>>>,
    wait: Option<Spanned<String>>,
    concurrency: Option<Spanned<usize>>,
    resync: Option<Spanned<String>>,
    rate: Option<Spanned<f64>>,
    on_start_unreachable: Option<Spanned<String>>,
    kv_prefix: Option<Spanned<String>>,
    register_self: Option<bool>,
    service_name: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    allowed_networks: Option<Vec<Spanned<String>>>,
}

/// Keys that mean something only in Consul mode.
const CONSUL_ONLY: &str = "address, token, token_file, ca_file, datacenter, namespace, consistency, services, service_prefixes, tag, up, wait, concurrency, resync, rate, on_start_unreachable, kv_prefix, register_self, service_name, advertise";

impl Validator<'_> {
    pub(super) fn discovery(&mut self, mut raw: RawDiscovery, base: &Path) -> DiscoveryConfig {
        let mode = match &raw.mode {
            None => DiscoveryMode::Embedded,
            Some(m) => match m.get_ref().as_str() {
                "embedded" => DiscoveryMode::Embedded,
                "consul" => DiscoveryMode::Consul,
                other => {
                    self.err(
                        m.span().start,
                        format!(
                            "[discovery] mode {other:?} is unknown; expected \"embedded\" or \"consul\""
                        ),
                    );
                    DiscoveryMode::Embedded
                }
            },
        };
        let version_key = self.key(raw.version_key.clone(), "version_key", "version");
        let lane_key = self.key(raw.lane_key.clone(), "lane_key", "lane");
        let allowed_networks = self.networks(raw.allowed_networks.take());
        let consul = match mode {
            DiscoveryMode::Consul => Some(self.consul(raw, base)),
            DiscoveryMode::Embedded => {
                if raw.address.is_some() || raw.token.is_some() || raw.token_file.is_some() {
                    self.err(
                        raw.address
                            .as_ref()
                            .or(raw.token_file.as_ref())
                            .map_or(0, |a| a.span().start),
                        format!("[discovery] {CONSUL_ONLY} apply only with mode = \"consul\""),
                    );
                }
                None
            }
        };
        DiscoveryConfig {
            mode,
            version_key,
            lane_key,
            consul,
            allowed_networks,
        }
    }

    /// `[discovery] allowed_networks`: CIDRs (`10.0.0.0/8`) or single
    /// addresses.
    fn networks(&mut self, items: Option<Vec<Spanned<String>>>) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for item in items.unwrap_or_default() {
            let text = item.get_ref().trim();
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.err(
                    item.span().start,
                    format!(
                        "[discovery] allowed_networks: {text:?} is not a network (e.g. \"10.0.0.0/8\", \"127.0.0.1\")"
                    ),
                ),
            }
        }
        out
    }

    fn consul(&mut self, raw: RawDiscovery, base: &Path) -> ConsulConfig {
        let address = match &raw.address {
            None => "http://127.0.0.1:8500".to_string(),
            Some(a) => {
                let text = a.get_ref().trim().trim_end_matches('/');
                let ok = (text.starts_with("http://") || text.starts_with("https://"))
                    && text.split_once("://").is_some_and(|(_, rest)| {
                        !rest.is_empty() && !rest.contains('/') && !rest.contains(' ')
                    });
                if !ok {
                    self.err(
                        a.span().start,
                        format!(
                            "[discovery] address {:?} must be http://host:port or https://host:port",
                            a.get_ref()
                        ),
                    );
                }
                text.to_string()
            }
        };
        let token = match (&raw.token, &raw.token_file) {
            (Some(_), Some(f)) => {
                self.err(
                    f.span().start,
                    "[discovery] set token or token_file, not both",
                );
                None
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(f)) => {
                let path = base.join(f.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                    Ok(_) => {
                        self.err(
                            f.span().start,
                            format!("[discovery] token_file {} is empty", path.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(
                            f.span().start,
                            format!("[discovery] cannot read token_file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => std::env::var("CONSUL_HTTP_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        let ca_file = raw.ca_file.as_ref().and_then(|f| {
            let path = base.join(f.get_ref());
            if path.is_file() {
                Some(path)
            } else {
                self.err(
                    f.span().start,
                    format!("[discovery] ca_file {} does not exist", path.display()),
                );
                None
            }
        });
        let consistency = match &raw.consistency {
            None => Consistency::Default,
            Some(c) => match c.get_ref().as_str() {
                "default" => Consistency::Default,
                "stale" => Consistency::Stale,
                "consistent" => Consistency::Consistent,
                other => {
                    self.err(
                        c.span().start,
                        format!("[discovery] consistency {other:?} is unknown; expected \"default\", \"stale\" or \"consistent\""),
                    );
                    Consistency::Default
                }
            },
        };
        let warning_is_up = match &raw.up {
            None => false,
            Some(up) => {
                let states = up.get_ref();
                let mut bad = states
                    .iter()
                    .filter(|s| !matches!(s.as_str(), "passing" | "warning"));
                if let Some(s) = bad.next() {
                    self.err(
                        up.span().start,
                        format!("[discovery] up: {s:?} cannot count as up; use \"passing\" and optionally \"warning\""),
                    );
                } else if !states.iter().any(|s| s == "passing") {
                    self.err(up.span().start, "[discovery] up must contain \"passing\"");
                }
                states.iter().any(|s| s == "warning")
            }
        };
        let wait = match &raw.wait {
            None => Duration::from_secs(300),
            Some(w) => match humantime::parse_duration(w.get_ref().trim()) {
                Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(600) => d,
                _ => {
                    self.err(
                        w.span().start,
                        format!(
                            "[discovery] wait {:?} must be a duration from 1s to 10m (Consul caps it at 10m)",
                            w.get_ref()
                        ),
                    );
                    Duration::from_secs(300)
                }
            },
        };
        let concurrency = match &raw.concurrency {
            None => 8,
            Some(c) if (1..=64).contains(c.get_ref()) => *c.get_ref(),
            Some(c) => {
                self.err(
                    c.span().start,
                    "[discovery] concurrency must be from 1 to 64 (Consul allows 200 connections per client)",
                );
                8
            }
        };
        let resync = match &raw.resync {
            None => Duration::from_secs(300),
            Some(r) => match humantime::parse_duration(r.get_ref().trim()) {
                Ok(d) if d.is_zero() || d >= Duration::from_secs(10) => d,
                _ => {
                    self.err(
                        r.span().start,
                        format!(
                            "[discovery] resync {:?} must be 0s (off) or at least 10s",
                            r.get_ref()
                        ),
                    );
                    Duration::from_secs(300)
                }
            },
        };
        let rate = match &raw.rate {
            None => 10.0,
            Some(r) if *r.get_ref() >= 0.1 && *r.get_ref() <= 1000.0 => *r.get_ref(),
            Some(r) => {
                self.err(
                    r.span().start,
                    "[discovery] rate must be from 0.1 to 1000 requests per second",
                );
                10.0
            }
        };
        let on_start_unreachable = match &raw.on_start_unreachable {
            None => StartUnreachable::ServeStale,
            Some(s) => match s.get_ref().as_str() {
                "serve-stale" => StartUnreachable::ServeStale,
                "not-ready" => StartUnreachable::NotReady,
                other => {
                    self.err(
                        s.span().start,
                        format!("[discovery] on_start_unreachable {other:?} is unknown; expected \"serve-stale\" or \"not-ready\""),
                    );
                    StartUnreachable::ServeStale
                }
            },
        };
        let kv_prefix = match &raw.kv_prefix {
            None => "laneway".to_string(),
            Some(p) => {
                let text = p.get_ref().trim_matches('/');
                if text.is_empty()
                    || text
                        .split('/')
                        .any(|seg| seg.is_empty() || seg.contains(char::is_whitespace))
                {
                    self.err(
                        p.span().start,
                        format!(
                            "[discovery] kv_prefix {:?} must be a KV path such as \"laneway\" or \"qa/laneway\"",
                            p.get_ref()
                        ),
                    );
                }
                text.to_string()
            }
        };
        let service_name = match &raw.service_name {
            None => "laneway".to_string(),
            Some(n) if super::is_hostname(n.get_ref()) && !n.get_ref().contains('.') => {
                n.get_ref().clone()
            }
            Some(n) => {
                self.err(
                    n.span().start,
                    format!(
                        "[discovery] service_name {:?} must be letters, digits and hyphens",
                        n.get_ref()
                    ),
                );
                "laneway".to_string()
            }
        };
        let advertise = raw
            .advertise
            .as_ref()
            .and_then(|a| match a.get_ref().parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.err(
                        a.span().start,
                        format!(
                            "[discovery] advertise {:?} is not an IP address",
                            a.get_ref()
                        ),
                    );
                    None
                }
            });
        ConsulConfig {
            address,
            token,
            ca_file,
            datacenter: raw.datacenter.filter(|d| !d.is_empty()),
            namespace: raw.namespace.filter(|n| !n.is_empty()),
            consistency,
            services: raw.services.unwrap_or_default(),
            service_prefixes: raw.service_prefixes.unwrap_or_default(),
            tag: raw.tag.filter(|t| !t.is_empty()),
            warning_is_up,
            wait,
            concurrency,
            resync,
            rate,
            on_start_unreachable,
            kv_prefix,
            register_self: raw.register_self.unwrap_or(true),
            service_name,
            advertise,
        }
    }
}

impl ConsulConfig {
    /// Whether instances of `service` are watched, by name and prefix.
    pub fn watches(&self, service: &str) -> bool {
        if self.services.is_empty() && self.service_prefixes.is_empty() {
            return true;
        }
        self.services.iter().any(|s| s == service)
            || self
                .service_prefixes
                .iter()
                .any(|p| service.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(src: &str) -> Result<Config, String> {
        Config::parse(src, Path::new("/etc/laneway/laneway.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn consul_mode_defaults() {
        let c = parse("[discovery]\nmode = \"consul\"\n").expect("valid");
        let consul = c.discovery.consul.expect("consul settings");
        assert_eq!(consul.address, "http://127.0.0.1:8500");
        assert_eq!(consul.wait, Duration::from_secs(300));
        assert_eq!(consul.kv_prefix, "laneway");
        assert!(!consul.warning_is_up);
        assert!(consul.register_self);
        assert!(consul.watches("anything"));
    }

    #[test]
    fn consul_settings_parse() {
        let c = parse(
            "[discovery]\nmode = \"consul\"\naddress = \"https://consul.internal:8501/\"\ntoken = \"t\"\nconsistency = \"stale\"\nservices = [\"user-api\"]\nservice_prefixes = [\"team-\"]\nup = [\"passing\", \"warning\"]\nwait = \"30s\"\non_start_unreachable = \"not-ready\"\nkv_prefix = \"/qa/laneway/\"\n",
        )
        .expect("valid");
        let consul = c.discovery.consul.unwrap();
        assert_eq!(consul.address, "https://consul.internal:8501");
        assert_eq!(consul.token.as_deref(), Some("t"));
        assert_eq!(consul.consistency, Consistency::Stale);
        assert!(consul.warning_is_up);
        assert_eq!(consul.wait, Duration::from_secs(30));
        assert_eq!(consul.on_start_unreachable, StartUnreachable::NotReady);
        assert_eq!(consul.kv_prefix, "qa/laneway");
        assert!(consul.watches("user-api"));
        assert!(consul.watches("team-billing"));
        assert!(!consul.watches("user-api-2"));
    }

    #[test]
    fn bad_consul_settings_name_key_and_line() {
        let msg = parse(
            "[discovery]\nmode = \"consul\"\naddress = \"consul:8500\"\nconsistency = \"strong\"\nup = [\"critical\"]\nwait = \"1h\"\n",
        )
        .unwrap_err();
        assert!(
            msg.contains("laneway.toml:3:") && msg.contains("address"),
            "{msg}"
        );
        assert!(
            msg.contains("laneway.toml:4:") && msg.contains("strong"),
            "{msg}"
        );
        assert!(
            msg.contains("laneway.toml:5:") && msg.contains("critical"),
            "{msg}"
        );
        assert!(
            msg.contains("laneway.toml:6:") && msg.contains("10m"),
            "{msg}"
        );
    }

    #[test]
    fn consul_keys_without_consul_mode_are_an_error() {
        let msg = parse("[discovery]\naddress = \"http://127.0.0.1:8500\"\n").unwrap_err();
        assert!(msg.contains("only with mode = \"consul\""), "{msg}");
    }

    #[test]
    fn unreadable_token_file_is_an_error() {
        let msg = parse("[discovery]\nmode = \"consul\"\ntoken_file = \"/nonexistent/token\"\n")
            .unwrap_err();
        assert!(msg.contains("token_file"), "{msg}");
    }
}
