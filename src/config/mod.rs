//! The laneway configuration file (`laneway.toml`): schema, loading and
//! validation with file:line errors. Control plane only; nothing here runs on
//! the request path.

pub mod discovery;
pub mod error;
pub mod nginx;
pub mod protocols;
pub mod routes;
pub mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::allocation::pools::{HostnameTemplate, IpRange, PortPool, VipPool};

pub use discovery::{Consistency, ConsulConfig, DiscoveryConfig, DiscoveryMode, StartUnreachable};
pub use error::{ConfigError, ConfigErrors};
pub use protocols::{ServiceConfig, TlsConfig};
pub use services::{ActiveCheck, CheckKind, HealthChecksConfig, PassivePolicy};

/// The whole configuration, as read from `laneway.toml`, with relative paths
/// already resolved against the directory of that file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from.
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub lanes: LanesConfig,
    pub discovery: DiscoveryConfig,
    pub store: StoreConfig,
    pub routes: RoutesConfig,
    pub log: LogConfig,
    /// `[health_checks]` and the `check`/`passive` tables of `[services.*]`.
    pub health_checks: HealthChecksConfig,
    /// `[tls]`: HTTPS listeners; `None` without the section.
    pub tls: Option<TlsConfig>,
    /// `[services.<name>]`: upstream protocol per service (TLS, HTTP/2).
    pub services: std::collections::BTreeMap<String, ServiceConfig>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the data plane.
    pub threads: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive: usize,
    /// How many other instances a request may try after a connect failure.
    pub connect_retries: usize,
    /// How many times an idempotent request is sent again when the upstream
    /// closes or resets before answering (a location's `retries` overrides).
    pub read_retries: usize,
    /// Add `X-Laneway-Lane` and `X-Laneway-Version` to responses.
    pub response_headers: bool,
    /// Which HTTP engine serves the data plane.
    pub engine: Engine,
    /// How long an idle client connection is kept open.
    pub client_keepalive: Duration,
    /// Path answered with the instance's health on every data listener.
    pub health_path: String,
    /// After SIGTERM: how long health answers 503 while traffic is still
    /// served, so LVS takes the instance out first.
    pub drain: Duration,
    /// After the drain: how long requests in flight may take to finish.
    pub grace: Duration,
    /// Listen on every VIP and pool port (needed when `listen` names a
    /// specific address, e.g. a loopback VIP pool).
    pub bind_entries: bool,
    /// Listeners that speak HTTP/2 with prior knowledge (h2c) as well as HTTP/1.x.
    pub h2c_listen: Vec<SocketAddr>,
    /// Largest request body accepted (413 beyond); `None`: no limit.
    pub max_body_size: Option<u64>,
    /// How long a client may take to send a complete request head (408 and
    /// close beyond: slowloris).
    pub header_timeout: Duration,
    /// Open client connections per laneway process; beyond it new
    /// connections are closed at once (counted) rather than exhausting
    /// file descriptors.
    pub max_connections: usize,
    /// Hops through laneway instances a request may make (508 beyond).
    pub max_hops: u8,
}

/// Default of `[proxy] header_timeout`, in seconds (nginx's
/// `client_header_timeout` is 60 s; Pingora and HAProxy use less).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default of `[proxy] max_connections`: with an upstream connection per
/// client, it fits a common 20,000-descriptor limit without a warning.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8_192;
/// Default of `[proxy] max_hops`.
pub const DEFAULT_MAX_HOPS: u8 = 8;

/// The data plane's HTTP engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// laneway's lean HTTP/1.x loop (the default).
    H1,
    /// Pingora's `ProxyHttp` framework.
    Pingora,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `[admin] tokens_file`: the admin tokens and their scopes
    /// (`admin::auth`); `None`: no authentication.
    pub tokens_file: Option<PathBuf>,
    /// `[admin] anonymous`: scopes granted without a token when
    /// `tokens_file` is set (e.g. `["read"]`).
    pub anonymous: Vec<String>,
    /// `[admin] allow_unauthenticated`: serve a non-loopback admin listener
    /// without `tokens_file`.
    pub allow_unauthenticated: bool,
    /// `[admin] hostnames`: the names the admin listener answers to, beside
    /// its own address, `localhost` and loopback addresses (DNS rebinding).
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LanesConfig {
    /// Hostname entries are `<lane>.<domain>` and `<production-host>.<lane>.<domain>`.
    pub domain: String,
    pub header: http::HeaderName,
    pub cookie: String,
    /// Versions that make an instance part of the baseline when the baseline
    /// lane does not pin a version for its service.
    pub baseline_versions: Vec<String>,
    /// VIPs handed to lanes; `None`: lanes get no VIP.
    pub vip_pool: Option<VipPool>,
    /// Ports handed to lanes; `None`: lanes get no port.
    pub port_pool: Option<PortPool>,
    /// The hostname entry of a lane.
    pub hostname: HostnameTemplate,
    /// How long a released VIP/port stays reserved for its lane name.
    pub release_quarantine: Duration,
    /// The lease of a lane created without `ttl`; `None`: no lease.
    pub default_ttl: Option<Duration>,
    /// Create lanes named by registered instances' lane labels.
    pub auto_lanes: bool,
    /// How long an auto lane outlives its last instance.
    pub auto_lane_grace: Duration,
    /// The W3C `baggage` member naming the lane.
    pub baggage_key: String,
    /// `Max-Age` of the lane cookie set by `/__laneway/lane?use=`.
    pub cookie_max_age: Duration,
    /// Extra domains a lane's PAC file sends to the lane (beside the rules'
    /// server names), lowercased, without a leading dot.
    pub pac_domains: Vec<String>,
}

/// `[lanes] cookie_max_age` when unset: a working week.
pub const DEFAULT_COOKIE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RoutesConfig {
    /// The route rules file; `None` means no rules (every request is a 404).
    pub file: Option<PathBuf>,
    /// Watch the rules file and hot-swap it when it changes.
    pub watch: bool,
    /// An nginx configuration to follow instead of a rules file.
    pub nginx: Option<PathBuf>,
    /// `[routes.nginx_upstreams]`: nginx upstream name → laneway service.
    pub nginx_upstreams: std::collections::BTreeMap<String, String>,
    /// laneway's own listeners (`[proxy] listen`, `[proxy] h2c_listen`,
    /// `[tls] listen`) and the nginx port each stands for: from
    /// `[routes.nginx_listen]`, else 443 for a TLS listener and 80 for the
    /// others. Servers are chosen among those of that port.
    pub listeners: Vec<Listener>,
    /// The laneway.toml these settings came from (errors name it).
    pub config_file: PathBuf,
}

/// One laneway listener and the nginx port it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// `"[proxy] listen"`, `"[proxy] h2c_listen"` or `"[tls] listen"`.
    pub kind: &'static str,
    pub port: u16,
    /// The line of its `[routes.nginx_listen]` entry; `None`: the default.
    pub line: Option<usize>,
}

impl RoutesConfig {
    /// The nginx port of listener `addr`, when `addr` is one.
    pub fn port_of(&self, addr: SocketAddr) -> Option<u16> {
        self.listeners
            .iter()
            .find(|l| l.addr == addr)
            .map(|l| l.port)
    }

    /// Checks the listeners against the ports the rules' servers listen
    /// on: a `[routes.nginx_listen]` port no server listens on is an error,
    /// and so is a listener whose default port has no server when the
    /// servers listen on two or more ports (requests would be matched
    /// against every server, which nginx never does).
    pub fn check_ports(&self, rules_ports: &[u16], rules_file: &Path) -> Vec<ConfigError> {
        if rules_ports.is_empty() {
            return Vec::new(); // the servers name no port: they listen on every one
        }
        let list = rules_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = Vec::new();
        for l in &self.listeners {
            if rules_ports.contains(&l.port) {
                continue;
            }
            match l.line {
                Some(line) => out.push(ConfigError::new(
                    &self.config_file,
                    line,
                    0,
                    format!(
                        "[routes.nginx_listen] \"{}\" = {}: no server of {} listens on port {} (they listen on {list})",
                        l.addr,
                        l.port,
                        rules_file.display(),
                        l.port
                    ),
                )),
                None if rules_ports.len() > 1 => out.push(ConfigError::new(
                    &self.config_file,
                    0,
                    0,
                    format!(
                        "{} {} stands for nginx port {} by default, where no server of {} listens (they listen on {list}): map it in [routes.nginx_listen], e.g. \"{}\" = {}",
                        l.kind,
                        l.addr,
                        l.port,
                        rules_file.display(),
                        l.addr,
                        rules_ports[0]
                    ),
                )),
                None => {}
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `laneway=debug,info`.
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
    /// How access-log lines are written: through the main log (`Text`, the
    /// default) or as JSON lines of `access_fields`.
    pub access_format: LogFormat,
    /// The fields of a JSON access-log line, in order.
    pub access_fields: Vec<String>,
    /// Where access-log lines go: `None` is standard error with the main
    /// log; a file is appended to and reopened on SIGUSR1 (logrotate).
    pub access_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

// ---- raw schema, exactly as written in the file ----

/// One `[services.<name>]` table: its upstream protocol keys
/// ([`protocols`]) and its `check`/`passive` tables ([`services`]), read
/// together so that an unknown key is still an error with its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceTable {
    tls: Option<bool>,
    sni: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    verify: Option<bool>,
    h2: Option<bool>,
    check: Option<Spanned<services::RawCheck>>,
    passive: Option<services::RawPassive>,
}

type ServiceTables = std::collections::BTreeMap<String, RawServiceTable>;

/// Splits `[services.*]` into the health and the protocol halves.
#[allow(clippy::type_complexity)]
fn split_services(
    raw: ServiceTables,
) -> (
    std::collections::BTreeMap<String, services::RawService>,
    std::collections::BTreeMap<String, Spanned<protocols::RawService>>,
) {
    let mut health = std::collections::BTreeMap::new();
    let mut protocol = std::collections::BTreeMap::new();
    for (name, t) in raw {
        // A table made implicit by `[services.x.check]` has no span of its
        // own: point errors at the first key that has one.
        let span = t
            .sni
            .as_ref()
            .map(|s| s.span())
            .or_else(|| t.ca_file.as_ref().map(|s| s.span()))
            .or_else(|| t.check.as_ref().map(|s| s.span()))
            .unwrap_or(0..0);
        health.insert(
            name.clone(),
            services::RawService {
                check: t.check,
                passive: t.passive,
            },
        );
        protocol.insert(
            name,
            Spanned::new(
                span,
                protocols::RawService {
                    tls: t.tls,
                    sni: t.sni,
                    ca_file: t.ca_file,
                    verify: t.verify,
                    h2: t.h2,
                },
            ),
        );
    }
    (health, protocol)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    lanes: RawLanes,
    #[serde(default)]
    discovery: discovery::RawDiscovery,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    routes: RawRoutes,
    #[serde(default)]
    log: RawLog,
    health_checks: Option<services::RawHealthChecks>,
    tls: Option<Spanned<protocols::RawTls>>,
    #[serde(default)]
    services: std::collections::BTreeMap<String, RawServiceTable>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<Vec<Spanned<String>>>,
    threads: Option<Spanned<usize>>,
    connect_timeout: Option<Spanned<String>>,
    read_timeout: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    upstream_keepalive: Option<usize>,
    connect_retries: Option<usize>,
    read_retries: Option<usize>,
    response_headers: Option<bool>,
    engine: Option<Spanned<String>>,
    client_keepalive: Option<Spanned<String>>,
    health_path: Option<Spanned<String>>,
    drain_seconds: Option<u64>,
    grace_seconds: Option<u64>,
    bind_entries: Option<bool>,
    h2c_listen: Option<Vec<Spanned<String>>>,
    max_body_size: Option<Spanned<protocols::RawSize>>,
    header_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
    max_hops: Option<Spanned<u8>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    tokens_file: Option<String>,
    anonymous: Option<Vec<Spanned<String>>>,
    allow_unauthenticated: Option<bool>,
    hostnames: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLanes {
    domain: Option<Spanned<String>>,
    header: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
    baseline_versions: Option<Vec<String>>,
    vip_pool: Option<Vec<Spanned<String>>>,
    port_pool: Option<Spanned<String>>,
    hostname: Option<Spanned<String>>,
    release_quarantine: Option<Spanned<String>>,
    default_ttl: Option<Spanned<String>>,
    auto_lanes: Option<bool>,
    auto_lane_grace: Option<Spanned<String>>,
    baggage_key: Option<Spanned<String>>,
    cookie_max_age: Option<Spanned<String>>,
    pac_domains: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    data_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    file: Option<Spanned<String>>,
    watch: Option<bool>,
    nginx: Option<Spanned<String>>,
    #[serde(default)]
    nginx_upstreams: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    nginx_listen: std::collections::BTreeMap<Spanned<String>, Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<Spanned<String>>,
    access_log: Option<bool>,
    access_format: Option<Spanned<String>>,
    access_fields: Option<Vec<Spanned<String>>>,
    access_file: Option<String>,
}

impl Config {
    /// Reads and validates `path`. Every problem found is returned, each with
    /// its file and line.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, 0, 0, format!("cannot read configuration: {e}")))?;
        Self::parse(&source, path)
    }

    /// Parses configuration text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let mut raw: RawConfig =
            toml::from_str(source).map_err(|e| ConfigError::from_toml(path, source, &e))?;
        let mut v = Validator {
            path,
            source,
            errors: Vec::new(),
        };
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));

        let listen = match raw.proxy.listen {
            Some(list) if list.is_empty() => {
                v.err(0, "[proxy] listen must name at least one address");
                Vec::new()
            }
            Some(list) => list
                .iter()
                .filter_map(|a| v.socket_addr(a, "[proxy] listen"))
                .collect(),
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        };
        let threads = match raw.proxy.threads {
            Some(t) if *t.get_ref() == 0 => {
                v.err(t.span().start, "[proxy] threads must be at least 1");
                1
            }
            Some(t) => t.into_inner(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let proxy = ProxyConfig {
            listen,
            threads,
            connect_timeout: v.duration(raw.proxy.connect_timeout, "connect_timeout", 2),
            read_timeout: v.duration(raw.proxy.read_timeout, "read_timeout", 60),
            write_timeout: v.duration(raw.proxy.write_timeout, "write_timeout", 60),
            upstream_keepalive: raw.proxy.upstream_keepalive.unwrap_or(256),
            connect_retries: raw.proxy.connect_retries.unwrap_or(2),
            read_retries: raw.proxy.read_retries.unwrap_or(1),
            response_headers: raw.proxy.response_headers.unwrap_or(true),
            engine: match raw.proxy.engine {
                None => Engine::H1,
                Some(e) => match e.get_ref().as_str() {
                    "h1" => Engine::H1,
                    "pingora" => Engine::Pingora,
                    other => {
                        v.err(
                            e.span().start,
                            format!("[proxy] engine {other:?} is unknown; expected \"h1\" or \"pingora\""),
                        );
                        Engine::H1
                    }
                },
            },
            client_keepalive: v.duration(raw.proxy.client_keepalive, "client_keepalive", 60),
            health_path: match raw.proxy.health_path {
                None => "/__laneway/health".to_string(),
                Some(p)
                    if p.get_ref().starts_with('/')
                        && !p.get_ref().contains(char::is_whitespace) =>
                {
                    p.into_inner()
                }
                Some(p) => {
                    v.err(
                        p.span().start,
                        format!(
                            "[proxy] health_path {:?} must be a path starting with '/'",
                            p.get_ref()
                        ),
                    );
                    "/__laneway/health".to_string()
                }
            },
            drain: Duration::from_secs(raw.proxy.drain_seconds.unwrap_or(10)),
            grace: Duration::from_secs(raw.proxy.grace_seconds.unwrap_or(30)),
            bind_entries: raw.proxy.bind_entries.unwrap_or(true),
            h2c_listen: v.h2c_listen(raw.proxy.h2c_listen),
            max_body_size: v.max_body_size(raw.proxy.max_body_size),
            header_timeout: v.duration(
                raw.proxy.header_timeout,
                "header_timeout",
                DEFAULT_HEADER_TIMEOUT_SECS,
            ),
            max_connections: match raw.proxy.max_connections {
                None => DEFAULT_MAX_CONNECTIONS,
                Some(n) if *n.get_ref() > 0 => n.into_inner(),
                Some(n) => {
                    v.err(
                        n.span().start,
                        "[proxy] max_connections must be at least 1".to_string(),
                    );
                    DEFAULT_MAX_CONNECTIONS
                }
            },
            max_hops: match raw.proxy.max_hops {
                None => DEFAULT_MAX_HOPS,
                Some(n) if *n.get_ref() > 0 => n.into_inner(),
                Some(n) => {
                    v.err(
                        n.span().start,
                        "[proxy] max_hops must be at least 1".to_string(),
                    );
                    DEFAULT_MAX_HOPS
                }
            },
        };

        let admin = AdminConfig {
            listen: raw
                .admin
                .listen
                .as_ref()
                .and_then(|a| v.socket_addr(a, "[admin] listen"))
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9900))),
            tokens_file: raw.admin.tokens_file.as_ref().map(|f| base.join(f)),
            anonymous: v.admin_scopes(raw.admin.anonymous.take()),
            allow_unauthenticated: raw.admin.allow_unauthenticated.unwrap_or(false),
            hostnames: v.admin_hostnames(raw.admin.hostnames.take()),
        };
        if admin.tokens_file.is_none()
            && !admin.allow_unauthenticated
            && !admin.listen.ip().is_loopback()
        {
            v.err(
                raw.admin.listen.as_ref().map_or(0, |l| l.span().start),
                format!(
                    "[admin] listen {} is reachable from other machines but no tokens_file is set: \
                     anyone could change lanes and routing. Set [admin] tokens_file (see the README's \
                     \"Admin API\" section), listen on a loopback address, or set \
                     allow_unauthenticated = true to accept that risk",
                    admin.listen
                ),
            );
        }
        if admin.tokens_file.is_none() && !admin.anonymous.is_empty() {
            v.err(
                0,
                "[admin] anonymous only applies with tokens_file (without it every request is allowed)",
            );
        }

        let domain = match raw.lanes.domain {
            Some(d) => {
                let name = d
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if !is_hostname(&name) {
                    v.err(
                        d.span().start,
                        format!("[lanes] domain {:?} is not a valid DNS name", d.get_ref()),
                    );
                }
                name
            }
            None => "lanes.test".to_string(),
        };
        let header = match raw.lanes.header {
            Some(h) => match http::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => name,
                Err(_) => {
                    v.err(
                        h.span().start,
                        format!(
                            "[lanes] header {:?} is not a valid header name",
                            h.get_ref()
                        ),
                    );
                    http::HeaderName::from_static("x-laneway-lane")
                }
            },
            None => http::HeaderName::from_static("x-laneway-lane"),
        };
        let cookie = match raw.lanes.cookie {
            Some(c) => {
                let name = c.get_ref();
                if name.is_empty() || !name.bytes().all(is_cookie_name_byte) {
                    v.err(
                        c.span().start,
                        format!("[lanes] cookie {name:?} is not a valid cookie name"),
                    );
                }
                c.into_inner()
            }
            None => "laneway_lane".to_string(),
        };
        let vip_pool = raw
            .lanes
            .vip_pool
            .as_ref()
            .and_then(|items| v.vip_pool(items, &proxy.listen));
        let port_pool = raw
            .lanes
            .port_pool
            .as_ref()
            .and_then(|p| v.port_pool(p, &proxy.listen, admin.listen));
        let hostname = match raw.lanes.hostname {
            None => HostnameTemplate::default(),
            Some(h) => HostnameTemplate::parse(h.get_ref(), &domain).unwrap_or_else(|e| {
                v.err(h.span().start, format!("[lanes] hostname {e}"));
                HostnameTemplate::default()
            }),
        };
        let lanes = LanesConfig {
            hostname,
            domain,
            header,
            cookie,
            baseline_versions: raw
                .lanes
                .baseline_versions
                .unwrap_or_else(|| vec!["stable".to_string()]),
            vip_pool,
            port_pool,
            release_quarantine: v
                .lanes_duration(raw.lanes.release_quarantine, "release_quarantine", true)
                .unwrap_or(Duration::from_secs(600)),
            default_ttl: v.lanes_duration(raw.lanes.default_ttl, "default_ttl", false),
            auto_lanes: raw.lanes.auto_lanes.unwrap_or(true),
            auto_lane_grace: v
                .lanes_duration(raw.lanes.auto_lane_grace, "auto_lane_grace", true)
                .unwrap_or(Duration::from_secs(600)),
            baggage_key: v.baggage_key(raw.lanes.baggage_key),
            cookie_max_age: v
                .lanes_duration(raw.lanes.cookie_max_age, "cookie_max_age", false)
                .unwrap_or(DEFAULT_COOKIE_MAX_AGE),
            pac_domains: v.pac_domains(raw.lanes.pac_domains),
        };

        let discovery = v.discovery(raw.discovery, base);

        let store = StoreConfig {
            data_dir: base.join(raw.store.data_dir.as_deref().unwrap_or("data")),
        };
        if let (Some(_), Some(n)) = (&raw.routes.file, &raw.routes.nginx) {
            v.err(
                n.span().start,
                "[routes] file and nginx are alternatives: keep one",
            );
        }
        let mut routes = RoutesConfig {
            file: raw.routes.file.map(|f| base.join(f.into_inner())),
            watch: raw.routes.watch.unwrap_or(true),
            nginx: raw.routes.nginx.map(|f| base.join(f.into_inner())),
            nginx_upstreams: raw.routes.nginx_upstreams,
            listeners: Vec::new(),
            config_file: path.to_path_buf(),
        };
        let nginx_listen = raw.routes.nginx_listen;
        let log = LogConfig {
            level: raw.log.level.unwrap_or_else(|| "info".to_string()),
            format: match raw.log.format {
                None => LogFormat::Text,
                Some(f) => {
                    match f.get_ref().as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        other => {
                            v.err(
                            f.span().start,
                            format!("[log] format {other:?} is unknown; expected \"text\" or \"json\""),
                        );
                            LogFormat::Text
                        }
                    }
                }
            },
            access_log: raw.log.access_log.unwrap_or(true),
            access_format: match raw.log.access_format {
                None => LogFormat::Text,
                Some(f) => match f.get_ref().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        v.err(
                            f.span().start,
                            format!("[log] access_format {other:?} is unknown; expected \"text\" or \"json\""),
                        );
                        LogFormat::Text
                    }
                },
            },
            access_fields: match raw.log.access_fields {
                None => crate::telemetry::ACCESS_FIELDS_DEFAULT
                    .iter()
                    .map(|f| f.to_string())
                    .collect(),
                Some(list) => {
                    let mut out = Vec::new();
                    for f in list {
                        if crate::telemetry::ACCESS_FIELDS.contains(&f.get_ref().as_str()) {
                            out.push(f.into_inner());
                        } else {
                            v.err(
                                f.span().start,
                                format!(
                                    "[log] access_fields: {:?} is not an access-log field; known: {}",
                                    f.get_ref(),
                                    crate::telemetry::ACCESS_FIELDS.join(", ")
                                ),
                            );
                        }
                    }
                    out
                }
            },
            access_file: raw.log.access_file.map(|f| base.join(f)),
        };
        let (health_services, protocol_services) = split_services(raw.services);
        let health_checks = v.health_checks(raw.health_checks, health_services);
        let taken: Vec<(SocketAddr, &str)> = proxy
            .listen
            .iter()
            .map(|a| (*a, "[proxy] listen"))
            .chain(proxy.h2c_listen.iter().map(|a| (*a, "[proxy] h2c_listen")))
            .chain(std::iter::once((admin.listen, "[admin] listen")))
            .collect();
        let tls = v.tls(raw.tls, base, &taken);
        let services = v.services(protocol_services, base);
        routes.listeners = v.listeners(nginx_listen, &proxy, tls.as_ref());

        // In file order, whichever key was checked first.
        v.errors.sort_by_key(|e| (e.line, e.column));
        if v.errors.is_empty() {
            Ok(Config {
                path: path.to_path_buf(),
                proxy,
                admin,
                lanes,
                discovery,
                store,
                routes,
                log,
                health_checks,
                tls,
                services,
            })
        } else {
            Err(ConfigErrors(v.errors))
        }
    }
}

struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, offset: usize, message: impl Into<String>) {
        let e = if offset == 0 {
            ConfigError::new(self.path, 0, 0, message)
        } else {
            ConfigError::at_offset(self.path, self.source, offset, message)
        };
        self.errors.push(e);
    }

    /// laneway's listeners and their nginx ports, from `[routes.nginx_listen]`
    /// (every key must be one of the listeners) and the defaults.
    fn listeners(
        &mut self,
        table: std::collections::BTreeMap<Spanned<String>, Spanned<i64>>,
        proxy: &ProxyConfig,
        tls: Option<&TlsConfig>,
    ) -> Vec<Listener> {
        let mut out: Vec<Listener> = Vec::new();
        let own = proxy
            .listen
            .iter()
            .map(|a| (*a, "[proxy] listen", 80))
            .chain(
                proxy
                    .h2c_listen
                    .iter()
                    .map(|a| (*a, "[proxy] h2c_listen", 80)),
            )
            .chain(
                tls.iter()
                    .flat_map(|t| t.listen.iter().map(|a| (*a, "[tls] listen", 443))),
            );
        for (addr, kind, port) in own {
            if !out.iter().any(|l| l.addr == addr) {
                out.push(Listener {
                    addr,
                    kind,
                    port,
                    line: None,
                });
            }
        }
        let mut entries: Vec<_> = table.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            let Ok(addr) = key.get_ref().parse::<SocketAddr>() else {
                self.err(
                    key.span().start,
                    format!(
                        "[routes.nginx_listen] {:?} is not an IP:port address; keys are laneway listen addresses, e.g. \"127.0.0.1:8080\" = 80",
                        key.get_ref()
                    ),
                );
                continue;
            };
            let port = match u16::try_from(*value.get_ref()) {
                Ok(p) if p > 0 => p,
                _ => {
                    self.err(
                        value.span().start,
                        format!(
                            "[routes.nginx_listen] {:?} = {}: not an nginx port (1–65535)",
                            key.get_ref(),
                            value.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let line = error::line_col(self.source, key.span().start).0;
            match out.iter_mut().find(|l| l.addr == addr) {
                Some(l) => {
                    l.port = port;
                    l.line = Some(line);
                }
                None => {
                    let known: Vec<String> = out.iter().map(|l| l.addr.to_string()).collect();
                    self.err(
                        key.span().start,
                        format!(
                            "[routes.nginx_listen] {:?}: laneway does not listen there (its listeners: {})",
                            key.get_ref(),
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        out
    }

    fn socket_addr(&mut self, a: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match a.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.err(
                    a.span().start,
                    format!(
                        "{what}: {:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                        a.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, d: Option<Spanned<String>>, key: &str, default_secs: u64) -> Duration {
        match d {
            None => Duration::from_secs(default_secs),
            Some(d) => match humantime::parse_duration(d.get_ref()) {
                Ok(v) if !v.is_zero() => v,
                _ => {
                    self.err(
                        d.span().start,
                        format!(
                            "[proxy] {key} {:?} is not a positive duration (e.g. \"2s\", \"500ms\")",
                            d.get_ref()
                        ),
                    );
                    Duration::from_secs(default_secs)
                }
            },
        }
    }

    /// A `[lanes]` duration; `zero_ok` allows `"0s"`. `None` when absent or
    /// invalid (the error is recorded).
    fn lanes_duration(
        &mut self,
        d: Option<Spanned<String>>,
        key: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
        let d = d?;
        match humantime::parse_duration(d.get_ref().trim()) {
            Ok(v) if zero_ok || v >= Duration::from_secs(1) => Some(v),
            _ => {
                let least = if zero_ok { "0s or more" } else { "at least 1s" };
                self.err(
                    d.span().start,
                    format!(
                        "[lanes] {key} {:?} is not a duration of {least} (e.g. \"10m\", \"72h\")",
                        d.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// `[admin] anonymous`: scope names.
    fn admin_scopes(&mut self, items: Option<Vec<Spanned<String>>>) -> Vec<String> {
        let mut out = Vec::new();
        for item in items.unwrap_or_default() {
            let s = item.get_ref().trim();
            if ["read", "register", "lanes", "admin"].contains(&s) {
                out.push(s.to_string());
            } else {
                self.err(
                    item.span().start,
                    format!(
                        "[admin] anonymous: unknown scope {:?} (scopes: read, register, lanes, admin)",
                        item.get_ref()
                    ),
                );
            }
        }
        out
    }

    /// `[admin] hostnames`: host names or addresses, lowercased.
    fn admin_hostnames(&mut self, items: Option<Vec<Spanned<String>>>) -> Vec<String> {
        let mut out = Vec::new();
        for item in items.unwrap_or_default() {
            let h = item
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if is_hostname(&h) || h.parse::<std::net::IpAddr>().is_ok() {
                out.push(h);
            } else {
                self.err(
                    item.span().start,
                    format!(
                        "[admin] hostnames: {:?} is not a host name or address (no port, no scheme)",
                        item.get_ref()
                    ),
                );
            }
        }
        out
    }

    /// `[lanes] pac_domains`: domain names (`example.com`, `.example.com`),
    /// lowercased and without the leading dot.
    fn pac_domains(&mut self, items: Option<Vec<Spanned<String>>>) -> Vec<String> {
        let mut out = Vec::new();
        for item in items.unwrap_or_default() {
            let d = item
                .get_ref()
                .trim()
                .trim_start_matches('.')
                .to_ascii_lowercase();
            let valid = !d.is_empty()
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if valid {
                out.push(d);
            } else {
                self.err(
                    item.span().start,
                    format!(
                        "[lanes] pac_domains: {:?} is not a domain name (e.g. \"example.com\")",
                        item.get_ref()
                    ),
                );
            }
        }
        out
    }

    /// `[lanes] vip_pool`: every entry valid, no two overlapping, and no
    /// address laneway itself listens on (a VIP equal to a listen address
    /// would put every request to that listener in one lane).
    fn vip_pool(&mut self, items: &[Spanned<String>], listen: &[SocketAddr]) -> Option<VipPool> {
        if items.is_empty() {
            self.errors.push(ConfigError::new(
                self.path,
                0,
                0,
                "[lanes] vip_pool is empty; leave it out to allocate no VIPs",
            ));
            return None;
        }
        let mut ok = true;
        for item in items {
            let Ok(range) = IpRange::parse(item.get_ref()) else {
                continue; // reported by VipPool::parse below
            };
            for addr in listen.iter().filter(|a| range.contains(a.ip())) {
                self.err(
                    item.span().start,
                    format!(
                        "[lanes] vip_pool {:?} contains {}, which [proxy] listen uses; leave laneway's own addresses out of the pool",
                        item.get_ref(),
                        addr.ip()
                    ),
                );
                ok = false;
            }
        }
        let texts: Vec<&str> = items.iter().map(|i| i.get_ref().as_str()).collect();
        match VipPool::parse(&texts) {
            Ok(pool) => ok.then_some(pool),
            Err(errors) => {
                for (i, e) in errors {
                    let at = items.get(i).map_or(0, |s| s.span().start);
                    self.err(at, format!("[lanes] vip_pool: {e}"));
                }
                None
            }
        }
    }

    /// `[lanes] port_pool`: a valid range holding no `[proxy] listen` or
    /// `[admin] listen` port.
    fn port_pool(
        &mut self,
        p: &Spanned<String>,
        listen: &[SocketAddr],
        admin: SocketAddr,
    ) -> Option<PortPool> {
        match PortPool::parse(p.get_ref()) {
            Ok(pool) => {
                let own = listen
                    .iter()
                    .map(|a| (a, "[proxy] listen"))
                    .chain(std::iter::once((&admin, "[admin] listen")))
                    .find(|(a, _)| pool.contains(a.port()));
                if let Some((addr, what)) = own {
                    self.err(
                        p.span().start,
                        format!(
                            "[lanes] port_pool {pool} contains port {} of {what}; the pool's ports are lane entries",
                            addr.port()
                        ),
                    );
                    return None;
                }
                Some(pool)
            }
            Err(e) => {
                self.err(p.span().start, format!("[lanes] port_pool {e}"));
                None
            }
        }
    }

    fn key(&mut self, k: Option<Spanned<String>>, name: &str, default: &str) -> String {
        match k {
            None => default.to_string(),
            Some(k) if k.get_ref().trim().is_empty() || k.get_ref().contains('=') => {
                self.err(
                    k.span().start,
                    format!("[discovery] {name} must be a non-empty key without '='"),
                );
                default.to_string()
            }
            Some(k) => k.into_inner(),
        }
    }
}

/// A DNS name of letters, digits, hyphens and dots, no empty label.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigErrors> {
        Config::parse(src, Path::new("/etc/laneway/laneway.toml"))
    }

    #[test]
    fn full_example_parses() {
        let c = parse(
            r#"
[proxy]
listen = ["127.0.0.1:8080", "127.0.0.1:8081"]
threads = 2
[admin]
listen = "127.0.0.1:9900"
[lanes]
domain = "Lanes.Test"
header = "X-Laneway-Lane"
cookie = "laneway_lane"
[discovery]
mode = "embedded"
version_key = "version"
[store]
data_dir = "./data"
[routes]
file = "routes.toml"
"#,
        )
        .expect("valid config");
        assert_eq!(c.proxy.listen.len(), 2);
        assert_eq!(c.proxy.threads, 2);
        assert_eq!(c.lanes.domain, "lanes.test");
        assert_eq!(c.store.data_dir, Path::new("/etc/laneway/./data"));
        assert_eq!(
            c.routes.file.as_deref(),
            Some(Path::new("/etc/laneway/routes.toml"))
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[proxy]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("laneway.toml:3:"), "{msg}");
        assert!(msg.contains("lisen"), "{msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let msg = parse("[proxi]\nlisten = []\n").unwrap_err().to_string();
        assert!(msg.contains("proxi") && msg.contains(":1:"), "{msg}");
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_line() {
        let err = parse(
            "[proxy]\nlisten = [\"nonsense\"]\nconnect_timeout = \"soon\"\n[lanes]\ndomain = \"bad domain\"\n[discovery]\nmode = \"zookeeper\"\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 5, 7], "{err}");
        assert!(err.to_string().contains("zookeeper"));
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_tokens() {
        let msg = parse("[admin]\nlisten = \"0.0.0.0:9900\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":2:") && msg.contains("tokens_file"), "{msg}");
        let c =
            parse("[admin]\nlisten = \"0.0.0.0:9900\"\nallow_unauthenticated = true\n").unwrap();
        assert!(c.admin.allow_unauthenticated && c.admin.tokens_file.is_none());
        let c = parse(
            "[admin]\nlisten = \"0.0.0.0:9900\"\ntokens_file = \"tokens.toml\"\nanonymous = [\"read\"]\nhostnames = [\"Laneway.QA.corp.\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.admin.tokens_file.as_deref(),
            Some(Path::new("/etc/laneway/tokens.toml"))
        );
        assert_eq!(c.admin.anonymous, ["read"]);
        assert_eq!(c.admin.hostnames, ["laneway.qa.corp"]);
        // loopback without tokens: the embedded demo
        assert!(parse("").unwrap().admin.tokens_file.is_none());
        let msg =
            parse("[admin]\ntokens_file = \"t\"\nanonymous = [\"root\"]\nhostnames = [\"a:80\"]\n")
                .unwrap_err()
                .to_string();
        assert!(msg.contains("root") && msg.contains("a:80"), "{msg}");
    }

    #[test]
    fn lane_cookie_age_and_pac_domains() {
        let c = parse(
            "[lanes]\ncookie_max_age = \"12h\"\npac_domains = [\".Example.COM\", \"cdn.test\"]\n",
        )
        .expect("valid config");
        assert_eq!(c.lanes.cookie_max_age, Duration::from_secs(12 * 3600));
        assert_eq!(c.lanes.pac_domains, ["example.com", "cdn.test"]);
        let d = parse("").expect("valid config");
        assert_eq!(d.lanes.cookie_max_age, DEFAULT_COOKIE_MAX_AGE);
        assert!(d.lanes.pac_domains.is_empty());
        let err =
            parse("[lanes]\ncookie_max_age = \"never\"\npac_domains = [\"a b\"]\n").unwrap_err();
        let lines: Vec<usize> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3], "{err}");
        assert!(err.to_string().contains("pac_domains"), "{err}");
    }

    #[test]
    fn lane_pools_parse() {
        let c = parse(
            r#"
[lanes]
vip_pool = ["127.0.0.2-127.0.0.254", "10.20.0.0/24", "fd00::/120"]
port_pool = "20000-20999"
hostname = "{lane}.qa.{domain}"
release_quarantine = "1s"
default_ttl = "72h"
auto_lanes = false
auto_lane_grace = "0s"
"#,
        )
        .expect("valid config");
        let l = &c.lanes;
        assert_eq!(l.vip_pool.as_ref().map(|p| p.ranges().len()), Some(3));
        assert_eq!(l.port_pool.map(|p| (p.first, p.last)), Some((20000, 20999)));
        assert_eq!(l.hostname.render("t-1", &l.domain), "t-1.qa.lanes.test");
        assert_eq!(l.release_quarantine, Duration::from_secs(1));
        assert_eq!(l.default_ttl, Some(Duration::from_secs(72 * 3600)));
        assert!(!l.auto_lanes);
        assert_eq!(l.auto_lane_grace, Duration::ZERO);
        let d = parse("").unwrap().lanes;
        assert!(d.vip_pool.is_none() && d.port_pool.is_none() && d.default_ttl.is_none());
        assert_eq!(
            (d.release_quarantine, d.auto_lanes),
            (Duration::from_secs(600), true)
        );
    }

    #[test]
    fn bad_lane_pools_are_errors_with_their_line() {
        let err = parse(
            "[proxy]\nlisten = [\"127.0.0.1:8080\"]\n[lanes]\nvip_pool = [\n  \"10.0.0.0/24\",\n  \"10.0.0.9-10.0.1.3\",\n  \"nonsense\",\n  \"127.0.0.1\",\n]\nport_pool = \"8000-9000\"\nhostname = \"lanes.{domain}\"\ndefault_ttl = \"0s\"\nrelease_quarantine = \"later\"\n",
        )
        .unwrap_err();
        let got: Vec<(usize, bool)> = err
            .0
            .iter()
            .map(|e| (e.line, e.message.starts_with("[lanes]")))
            .collect();
        let lines: Vec<usize> = got.iter().map(|g| g.0).collect();
        assert_eq!(lines, vec![6, 7, 8, 10, 11, 12, 13], "{err}");
        let msg = err.to_string();
        for part in [
            "\"10.0.0.9-10.0.1.3\" overlaps \"10.0.0.0/24\"",
            "\"nonsense\" is not an IP address",
            "contains 127.0.0.1, which [proxy] listen uses",
            "port_pool 8000-9000 contains port 8080 of [proxy] listen",
            "must contain \"{lane}\"",
            "default_ttl \"0s\" is not a duration of at least 1s",
            "release_quarantine \"later\"",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        let msg = parse("[lanes]\nport_pool = \"9900\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("laneway.toml:2:") && msg.contains("[admin] listen"),
            "{msg}"
        );
    }

    #[test]
    fn defaults_apply_when_sections_are_missing() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.proxy.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.lanes.header.as_str(), "x-laneway-lane");
        assert_eq!(c.lanes.baseline_versions, vec!["stable".to_string()]);
        assert!(c.routes.file.is_none());
    }

    #[test]
    fn nginx_listen_maps_listeners_and_defaults_the_rest() {
        let c = parse(
            r#"
[proxy]
listen = ["127.0.0.1:8080", "127.0.0.1:8081"]
h2c_listen = ["127.0.0.1:8082"]
[routes]
nginx = "nginx.conf"
[routes.nginx_listen]
"127.0.0.1:8081" = 443
"#,
        )
        .expect("valid config");
        let ports: Vec<(String, u16, Option<usize>)> = c
            .routes
            .listeners
            .iter()
            .map(|l| (l.addr.to_string(), l.port, l.line))
            .collect();
        assert_eq!(
            ports,
            [
                ("127.0.0.1:8080".to_string(), 80, None),
                ("127.0.0.1:8081".to_string(), 443, Some(8)),
                ("127.0.0.1:8082".to_string(), 80, None),
            ]
        );
    }

    #[test]
    fn nginx_listen_key_laneway_does_not_listen_on_is_an_error_naming_it() {
        let e = parse(
            "[proxy]\nlisten = [\"127.0.0.1:8080\"]\n[routes]\nnginx = \"nginx.conf\"\n[routes.nginx_listen]\n\"127.0.0.1:9999\" = 80\n\"localhost:8080\" = 80\n\"127.0.0.1:8080\" = 0\n",
        )
        .expect_err("must fail")
        .0;
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(
            text[0].starts_with("/etc/laneway/laneway.toml:6:")
                && text[0].contains("\"127.0.0.1:9999\": laneway does not listen there (its listeners: 127.0.0.1:8080)"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("/etc/laneway/laneway.toml:7:")
                && text[1].contains("\"localhost:8080\" is not an IP:port address"),
            "{text:?}"
        );
        assert!(
            text[2].starts_with("/etc/laneway/laneway.toml:8:")
                && text[2].contains("not an nginx port"),
            "{text:?}"
        );
    }

    #[test]
    fn listener_ports_are_checked_against_the_servers_ports() {
        let c = parse(
            "[proxy]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8081\"]\n[routes]\nnginx = \"nginx.conf\"\n[routes.nginx_listen]\n\"127.0.0.1:8080\" = 8443\n",
        )
        .expect("valid config");
        let rules = Path::new("nginx.conf");
        // servers name no port: nothing to check
        assert!(c.routes.check_ports(&[], rules).is_empty());
        // one port: only an explicit mapping must name it
        let e = c.routes.check_ports(&[8080], rules);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].to_string().starts_with("/etc/laneway/laneway.toml:6:")
                && e[0].to_string().contains("\"127.0.0.1:8080\" = 8443: no server of nginx.conf listens on port 8443 (they listen on 8080)"),
            "{e:?}"
        );
        // two ports: a listener left at its default port must find servers there
        let e = c.routes.check_ports(&[443, 8443], rules);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].to_string()
                .contains("[proxy] listen 127.0.0.1:8081 stands for nginx port 80 by default")
                && e[0].to_string().contains("\"127.0.0.1:8081\" = 443"),
            "{e:?}"
        );
        assert!(c.routes.check_ports(&[80, 8443], rules).is_empty());
    }
}
