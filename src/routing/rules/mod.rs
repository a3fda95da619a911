//! The production route rules: `routes.toml` compiled into an immutable
//! [`RuleSet`] (control plane, [`RuleSet::compile`]) and matched with nginx's
//! exact semantics by [`RuleSet::route`] (request path: pure, synchronous,
//! no I/O, no lock).
//!
//! A request is routed in three steps, each as nginx does it:
//! 1. the target is split and its path normalised into `$uri` (`uri.rs`);
//! 2. the server is chosen by host (`host.rs`) among the servers of the
//!    nginx port the request arrived on (`ports = [...]`; when the rules
//!    name at most one port, among every server);
//! 3. the location is chosen by `$uri` (`location.rs`), then its action is
//!    rendered: templates (`template.rs`), and for a proxied location the
//!    optional `rewrite`, which behaves like `rewrite regex replacement break`.
//!
//! Deliberate differences from nginx, each for the test-environment use:
//! - the auto-redirect (`/user` → `/user/`) and a `redirect.to` written as a
//!   path carry a relative `Location` (nginx makes it absolute with its own
//!   listening port, which is not the port a client used to reach a lane);
//! - rendered header values and rewritten targets have control bytes
//!   `%XX`-escaped (nginx copies a decoded `%0d%0a` raw, a well-known
//!   header-injection trap);
//! - stricter checks at compile time: `$n` beyond the groups of the regex it
//!   reads, a named capture no regex in scope defines, duplicate or
//!   overlapping server names, and proxy-only keys on a `return` are errors
//!   rather than silently empty or ignored.

mod compile;
mod errpage;
mod exec;
mod explain;
mod host;
mod location;
mod names;
mod pattern;
mod script;
mod template;
mod uri;

#[cfg(test)]
mod errpage_tests;
#[cfg(test)]
mod port_tests;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use crate::config::error::ConfigError;

use host::{HostMatch, HostTable};
use location::{LocationMatch, LocationTable};
use pattern::Rx;
use template::{CaptureState, Ctx, RewriteTarget};
use uri::Escape;

pub use errpage::{ErrorCodes, ErrorPages};
pub use explain::{LocationBy, RuleMatch, ServerBy};
pub use location::LocationKind;
pub use names::ServedName;
pub use template::Template;

/// The compiled route rules of one file. Immutable, `Send + Sync`.
#[derive(Debug)]
pub struct RuleSet {
    file: Arc<Path>,
    servers: Box<[Server]>,
    /// Every server, for rules that name at most one port and for a port
    /// no server names.
    hosts: HostTable,
    /// One host table per nginx port, sorted by port, when the servers
    /// name two or more ports.
    ports: Box<[PortHosts]>,
    services: Box<[Arc<str>]>,
    /// The rewrite engine, when the rules use nginx features.
    engine: Option<Box<script::Engine>>,
    /// Instances fixed in the rules (`[static_services]`).
    static_instances: Box<[StaticInstance]>,
}

/// The servers of one nginx port.
#[derive(Debug)]
pub(crate) struct PortHosts {
    port: u16,
    hosts: HostTable,
    /// The index in the every-server table of each of this table's regex
    /// names (for the rewrite engine's capture slots).
    rx_global: Box<[usize]>,
}

/// Which ports a server is the default server of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultOn {
    No,
    /// Every port it listens on (`default = true`).
    All,
    /// These ports (`default = [443]`, nginx `listen 443 default_server`).
    Ports(Box<[u16]>),
}

impl DefaultOn {
    /// Default server of `port`, for a server listening on `ports`.
    pub fn covers(&self, port: u16) -> bool {
        match self {
            DefaultOn::No => false,
            DefaultOn::All => true,
            DefaultOn::Ports(p) => p.contains(&port),
        }
    }

    pub fn any(&self) -> bool {
        *self != DefaultOn::No
    }
}

/// One `"host:port"` of `[static_services]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticInstance {
    pub service: Arc<str>,
    pub host: String,
    pub port: u16,
}

/// One `[[server]]` block.
#[derive(Debug)]
pub struct Server {
    pub file: Arc<Path>,
    /// Line of the `[[server]]` header.
    pub line: usize,
    /// The names as written.
    pub names: Vec<String>,
    /// `default = true` or the ports it is the default server of.
    pub default: DefaultOn,
    /// The nginx ports it listens on (`ports`); empty: every port.
    pub ports: Box<[u16]>,
    /// The ports nginx serves with TLS (`ssl_ports`).
    pub ssl_ports: Box<[u16]>,
    /// The locations in file order.
    pub locations: Vec<Location>,
    table: LocationTable,
    /// `$host` when a request has none (nginx: the first server name).
    fallback_host: Box<str>,
    /// The server-level rewrite script (nginx features).
    script: Box<[script::Step]>,
    /// Stands for the server in decisions made before a location is chosen.
    context: Box<Location>,
    /// Named locations by name (`@x`), sorted, for `error_page @x`.
    named: Box<[(Box<str>, usize)]>,
}

impl Server {
    /// Listens on nginx port `port`.
    pub fn listens_on(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    fn named(&self, name: &str) -> Option<usize> {
        self.named
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| self.named[i].1)
    }
}

/// One `[[server.location]]` block.
#[derive(Debug)]
pub struct Location {
    pub file: Arc<Path>,
    /// Line of the `[[server.location]]` header.
    pub line: usize,
    /// The `match` text as written, e.g. `"^~ /static/"`.
    pub pattern: String,
    pub kind: LocationKind,
    /// The path or regex without its modifier.
    pub path: String,
    pub action: Action,
    pub rewrite: Option<Rewrite>,
    /// Request headers to set upstream; a value rendering to `""` removes the
    /// header (nginx `proxy_set_header`).
    pub set_headers: Vec<(HeaderName, Template)>,
    pub remove_headers: Vec<HeaderName>,
    pub add_response_headers: Vec<(HeaderName, Template)>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// `retries`: resends of an idempotent request after the upstream closed
    /// or reset before answering (`None`: `[proxy] read_retries`).
    pub retries: Option<usize>,
    /// nginx `proxy_redirect` / `proxy_cookie_domain` of the location.
    pub proxy_rewrites: Option<Arc<crate::routing::rewrite::ProxyRewrites>>,
    /// Some template reads a regex capture: run regexes for their groups.
    uses_captures: bool,
    /// nginx features of this location, run by the rewrite engine.
    nginx: Option<Box<LocExt>>,
}

/// What a location holds beyond routes.toml's basic keys.
#[derive(Debug, Default)]
pub(crate) struct LocExt {
    script: Box<[script::Step]>,
    proxy: Option<Arc<script::ProxyPass>>,
    try_files: Option<TryLast>,
    internal: bool,
    children: Option<LocationTable>,
    /// Group → slot pairs of the location regex.
    rx_slots: Box<[(usize, usize)]>,
    /// `error_page`s in force (own or inherited).
    errors: Option<std::sync::Arc<ErrorPages>>,
    /// `proxy_intercept_errors`.
    intercept: bool,
    /// `recursive_error_pages`.
    recursive: bool,
}

/// The item of `try_files` that decides (laneway serves no files).
#[derive(Debug)]
pub(crate) enum TryLast {
    Named(usize),
    Uri(Template),
    Code(u16),
}

/// What a location does.
#[derive(Debug)]
pub enum Action {
    Proxy {
        service: Arc<str>,
    },
    Return {
        status: u16,
        body: Template,
        headers: Vec<(HeaderName, Template)>,
    },
    Redirect {
        status: u16,
        to: Template,
    },
    /// Decided by the location's nginx directives (`proxy_pass`,
    /// `try_files`, its script); 404 when none answers.
    Engine,
}

impl Action {
    /// `"proxy"`, `"return"`, `"redirect"` or `"nginx"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Proxy { .. } => "proxy",
            Action::Return { .. } => "return",
            Action::Redirect { .. } => "redirect",
            Action::Engine => "nginx",
        }
    }
}

/// `rewrite = [regex, replacement]` of a proxied location.
#[derive(Debug)]
pub struct Rewrite {
    regex: Rx,
    target: RewriteTarget,
    pattern: String,
    replacement: String,
}

impl Rewrite {
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn replacement(&self) -> &str {
        &self.replacement
    }
}

/// What the proxy knows about a request when it asks for a route.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Effective host, possibly with a port and uppercase; `""` when absent.
    pub host: &'a str,
    /// The raw request target as received: `"/user/a%20b?x=1"`.
    pub target: &'a str,
    pub scheme: &'a str,
    pub lane: &'a str,
    pub headers: &'a HeaderMap,
    /// The nginx port the request's listener stands for
    /// (`[routes.nginx_listen]`); `0`: unknown (every server is a candidate).
    pub port: u16,
    /// What the upstream answered each earlier proxy decision of this
    /// request with, when the proxy handed the status back to the rules
    /// (`proxy_intercept_errors`): routing replays the request and sends
    /// each to the `error_page` in force. Empty for a fresh request.
    pub upstream_statuses: &'a [u16],
}

/// The outcome of routing one request.
#[derive(Debug)]
pub enum Decision<'r> {
    Proxy {
        server: &'r Server,
        location: &'r Location,
        service: &'r Arc<str>,
        /// `Some("path?query")` when a rewrite applied; `None`: forward the
        /// original target unchanged.
        upstream_target: Option<String>,
        /// Rendered; an empty value means: remove the header.
        set_headers: Vec<(HeaderName, String)>,
        /// Rendered; empty values are already left out (nginx `add_header`).
        add_response_headers: Vec<(HeaderName, String)>,
        /// Answer the client with this status whatever the upstream's
        /// (the request is in an `error_page` without `=`).
        status: Option<u16>,
        /// Upstream statuses to hand back to the rules instead of passing
        /// them on (`proxy_intercept_errors` and the location's
        /// `error_page` codes): route again with the status appended to
        /// [`RequestInfo::upstream_statuses`].
        intercept: Option<&'r ErrorCodes>,
        /// An `error_page` redirected the request to a URI: send it as GET
        /// (a HEAD stays a HEAD).
        as_get: bool,
    },
    Return {
        server: &'r Server,
        location: &'r Location,
        status: u16,
        body: String,
        headers: Vec<(HeaderName, String)>,
    },
    Redirect {
        server: &'r Server,
        location: &'r Location,
        status: u16,
        /// The `Location` header value.
        to: String,
    },
    /// No server or no location matched: answer 404 naming them.
    NotFound { host: String, path: String },
    /// The request cannot be routed (bad host, bad path): answer 400.
    BadRequest(&'static str),
}

/// Checks that `text` is a template laneway can render: every variable is
/// built in, a capture, or one of `extra` (lowercased names without `$`,
/// such as `set` and `map` variables). The error names the problem.
pub fn check_template(text: &str, extra: &[String]) -> Result<(), String> {
    let scope = template::Scope {
        names: Vec::new(),
        max_group: 9,
        what: "a regex",
        slots: Some(extra.iter().map(|s| Box::from(s.as_str())).collect()),
    };
    Template::parse(text, &scope)
        .map(|_| ())
        .map_err(|e| e.message)
}

/// Named groups of a regex pattern, lowercased.
pub fn regex_group_names(pattern: &str) -> Vec<String> {
    script::group_names(pattern)
}

/// Body of the 500 answer when a rewrite leaves an empty path (nginx logs
/// "the rewritten URI has a zero length" and answers 500).
pub(crate) const EMPTY_REWRITE: &str = "the rewritten URI has a zero length\n";

impl RuleSet {
    /// Parses and compiles a routes.toml text. `file` names it in errors.
    /// Every problem found is returned, each with file, line and column.
    pub fn compile(source: &str, file: &Path) -> Result<RuleSet, Vec<ConfigError>> {
        compile::compile(source, file)
    }

    /// Reads and compiles a rules file; an unreadable file is one error.
    pub fn load(file: &Path) -> Result<RuleSet, Vec<ConfigError>> {
        let source = std::fs::read_to_string(file).map_err(|e| {
            vec![ConfigError::new(
                file,
                0,
                0,
                format!("cannot read route rules: {e}"),
            )]
        })?;
        Self::compile(&source, file)
    }

    /// No servers: every request is [`Decision::NotFound`].
    pub fn empty() -> RuleSet {
        RuleSet {
            file: Arc::from(Path::new("")),
            servers: Box::default(),
            hosts: HostTable::default(),
            ports: Box::default(),
            services: Box::default(),
            engine: None,
            static_instances: Box::default(),
        }
    }

    /// Instances the rules fix themselves (an nginx upstream's `server`
    /// lines); they serve every lane as baseline instances.
    pub fn static_instances(&self) -> &[StaticInstance] {
        &self.static_instances
    }

    /// Points every server and location at its source through `map`
    /// (routes.toml line → file and line): rules translated from nginx
    /// then name the nginx file:line, for explain.
    pub fn map_sources(&mut self, map: &dyn Fn(usize) -> Option<(Arc<Path>, usize)>) {
        for server in self.servers.iter_mut() {
            if let Some((f, l)) = map(server.line) {
                server.file = f;
                server.line = l;
            }
            for loc in server
                .locations
                .iter_mut()
                .chain(std::iter::once(&mut *server.context))
            {
                if let Some((f, l)) = map(loc.line) {
                    loc.file = f;
                    loc.line = l;
                }
            }
        }
    }

    /// The file the rules came from (empty for [`RuleSet::empty`]).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The servers in file order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// Every service some location proxies to, each once, in file order.
    pub fn services(&self) -> Vec<Arc<str>> {
        self.services.to_vec()
    }

    /// The host table of the servers of nginx port `port`, when the rules
    /// select servers by port and name that port.
    fn port_hosts(&self, port: u16) -> Option<&PortHosts> {
        if self.ports.is_empty() {
            return None;
        }
        self.ports
            .binary_search_by_key(&port, |p| p.port)
            .ok()
            .map(|i| &self.ports[i])
    }

    /// The server `host` (normalised) chooses among the servers of nginx
    /// port `port` (every server when the rules name at most one port, or
    /// none on `port`).
    pub(crate) fn choose_server(&self, host: &str, port: u16) -> Chosen<'_> {
        let (table, rx_global) = match self.port_hosts(port) {
            Some(p) => (&p.hosts, Some(&p.rx_global[..])),
            None => (&self.hosts, None),
        };
        match table.find(host) {
            HostMatch::None => Chosen::None,
            HostMatch::Server(s) => Chosen::Server(s),
            HostMatch::Regex { server, rx } => Chosen::Regex {
                server,
                rx: table.regex(rx),
                global: rx_global.and_then(|g| g.get(rx).copied()).unwrap_or(rx),
            },
        }
    }

    /// Servers are chosen among those of `port`: the rules name two or
    /// more ports and `port` is one of them.
    pub fn selects_by_port(&self, port: u16) -> bool {
        self.port_hosts(port).is_some()
    }

    /// Every nginx port the servers name (`ports`), sorted.
    pub fn ports(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .servers
            .iter()
            .flat_map(|s| s.ports.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Ports some server serves with TLS (`ssl_ports`), sorted.
    pub fn ssl_ports(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .servers
            .iter()
            .flat_map(|s| s.ssl_ports.iter().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Routes one request. Allocates only what the decision carries, plus a
    /// normalised copy of the path or host when they need changing and the
    /// capture groups when a template of the chosen location reads them.
    pub fn route<'r>(&'r self, req: &RequestInfo<'_>) -> Decision<'r> {
        if let Some(engine) = &self.engine {
            return exec::route(self, engine, req);
        }
        let target = match uri::parse_target(req.target) {
            Ok(t) => t,
            Err(e) => return Decision::BadRequest(e),
        };
        let host = match host::normalise_host(req.host) {
            Ok(h) => h,
            Err(e) => return Decision::BadRequest(e),
        };
        let (server_idx, host_rx) = match self.choose_server(&host, req.port) {
            Chosen::None => return not_found(&host, &target.uri),
            Chosen::Server(s) => (s, None),
            Chosen::Regex { server, rx, .. } => (server, Some(rx)),
        };
        let server = &self.servers[server_idx];
        let (loc_idx, loc_rx) = match server.table.find(&target.uri) {
            LocationMatch::None => return not_found(&host, &target.uri),
            LocationMatch::Exact(l) | LocationMatch::Prefix(l) => (l, None),
            LocationMatch::Regex { location, rx } => (location, Some(rx)),
            LocationMatch::AutoRedirect(l) => {
                let location = &server.locations[l];
                return Decision::Redirect {
                    server,
                    location,
                    status: 301,
                    to: auto_redirect_target(&location.path, target.args),
                };
            }
        };
        let location = &server.locations[loc_idx];

        // Regex groups, only when some template reads them.
        let need = location.uses_captures;
        let host_caps = host_rx
            .filter(|_| need)
            .and_then(|rx| rx.captures(host.as_bytes()));
        let loc_caps = loc_rx
            .filter(|_| need)
            .and_then(|i| server.table.regex(i).captures(&target.uri));
        let numbered = if loc_rx.is_some() {
            loc_caps.as_ref()
        } else {
            host_caps.as_ref()
        };
        let mut ctx = Ctx {
            host: if host.is_empty() {
                &server.fallback_host
            } else {
                &host
            },
            uri: &target.uri,
            args: target.args,
            request_uri: target.request_uri,
            scheme: req.scheme,
            lane: req.lane,
            headers: req.headers,
            caps: CaptureState {
                numbered,
                named: [None, loc_caps.as_ref(), host_caps.as_ref()],
            },
            ext: None,
        };

        match &location.action {
            Action::Return {
                status,
                body,
                headers,
            } => Decision::Return {
                server,
                location,
                status: *status,
                body: body.render(&ctx),
                headers: render_headers(headers, &ctx, false),
            },
            Action::Redirect { status, to } => Decision::Redirect {
                server,
                location,
                status: *status,
                to: to.render_header(&ctx),
            },
            Action::Engine => not_found(&host, &target.uri),
            Action::Proxy { service } => {
                let mut upstream_target = None;
                let rewritten;
                let rw_caps;
                if let Some(rw) = &location.rewrite {
                    let (matched, caps) = if need {
                        let c = rw.regex.captures(&target.uri);
                        (c.is_some(), c)
                    } else {
                        (rw.regex.re.is_match(&target.uri), None)
                    };
                    rw_caps = caps;
                    if matched {
                        // the replacement sees the rewrite regex's groups
                        ctx.caps.numbered = rw_caps.as_ref();
                        ctx.caps.named[0] = rw_caps.as_ref();
                        let (path, args) = apply_rewrite(rw, &ctx, target.quoted || target.plus);
                        if path.is_empty() {
                            return Decision::Return {
                                server,
                                location,
                                status: 500,
                                body: EMPTY_REWRITE.to_string(),
                                headers: Vec::new(),
                            };
                        }
                        upstream_target = Some(upstream_target_of(&path, &args));
                        rewritten = (path, args);
                        ctx.uri = &rewritten.0;
                        ctx.args = &rewritten.1;
                    } else {
                        // nginx: a rewrite that does not match clears $1..$9
                        ctx.caps.numbered = None;
                    }
                }
                Decision::Proxy {
                    server,
                    location,
                    service,
                    upstream_target,
                    set_headers: render_headers(&location.set_headers, &ctx, false),
                    add_response_headers: render_headers(
                        &location.add_response_headers,
                        &ctx,
                        true,
                    ),
                    status: None,
                    intercept: None,
                    as_get: false,
                }
            }
        }
    }
}

/// The server a host chose on a port.
pub(crate) enum Chosen<'r> {
    None,
    Server(usize),
    /// Chosen by a regex name: the regex, and its index in the
    /// every-server table (the engine's capture slots are by that index).
    Regex {
        server: usize,
        rx: &'r Rx,
        global: usize,
    },
}

pub(crate) fn not_found(host: &str, uri: &[u8]) -> Decision<'static> {
    Decision::NotFound {
        host: host.to_string(),
        path: String::from_utf8_lossy(uri).into_owned(),
    }
}

pub(crate) fn render_headers(
    list: &[(HeaderName, Template)],
    ctx: &Ctx<'_>,
    skip_empty: bool,
) -> Vec<(HeaderName, String)> {
    let mut out = Vec::with_capacity(list.len());
    for (name, t) in list {
        let v = t.render_header(ctx);
        if !(skip_empty && v.is_empty()) {
            out.push((name.clone(), v));
        }
    }
    out
}

/// nginx auto-redirect `Location`: the location name escaped, plus the args.
pub(crate) fn auto_redirect_target(name: &str, args: &str) -> String {
    let mut out = Vec::with_capacity(name.len() + args.len() + 1);
    uri::escape_into(&mut out, name.as_bytes(), Escape::Uri);
    if !args.is_empty() {
        out.push(b'?');
        escape_unsafe_query(&mut out, args.as_bytes());
    }
    uri::into_string(out)
}

/// Renders a matched rewrite into the new `$uri` (decoded) and `$args`,
/// nginx's `rewrite … break` rules: the replacement's first literal `?`
/// starts new args, to which the original args are appended after `&`
/// unless the replacement ends in `?`; without a `?`, the original args are
/// kept (or dropped, with a trailing `?`). In the args part, captures are
/// escaped when the request path held an escape or a `+`.
fn apply_rewrite(rw: &Rewrite, ctx: &Ctx<'_>, escape_captures: bool) -> (Vec<u8>, String) {
    let mut path = Vec::with_capacity(ctx.uri.len() + 16);
    rw.target.path.render_into(ctx, &mut path, false);
    let args = match &rw.target.args {
        Some(t) => {
            let mut a = Vec::with_capacity(ctx.args.len() + 16);
            t.render_into(ctx, &mut a, escape_captures);
            if rw.target.keep_args && !ctx.args.is_empty() {
                a.push(b'&');
                a.extend_from_slice(ctx.args.as_bytes());
            }
            uri::into_string(a)
        }
        None if rw.target.keep_args => ctx.args.to_string(),
        None => String::new(),
    };
    (path, args)
}

/// The upstream request target after a rewrite: the path escaped as nginx
/// escapes a rewritten `$uri`, then `?args` when there are args.
fn upstream_target_of(path: &[u8], args: &str) -> String {
    let mut out = Vec::with_capacity(path.len() + args.len() + 8);
    uri::escape_into(&mut out, path, Escape::Uri);
    if !args.is_empty() {
        out.push(b'?');
        escape_unsafe_query(&mut out, args.as_bytes());
    }
    uri::into_string(out)
}

/// Args are copied as nginx copies them, except bytes that cannot appear in
/// a request target at all (controls, space, `#`, non-ASCII from a header
/// variable): those are `%XX`-escaped so the upstream request stays valid.
pub(crate) fn escape_unsafe_query(out: &mut Vec<u8>, args: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in args {
        if c <= b' ' || c == b'#' || c >= 0x7f {
            out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
        } else {
            out.push(c);
        }
    }
}
