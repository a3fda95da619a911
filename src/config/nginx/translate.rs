//! Translates a parsed nginx configuration into laneway's route rules
//! (routes.toml text), with a report of what each directive became:
//! translated, ignored as irrelevant to routing, or not supported. Control
//! plane only.
//!
//! The output is ordinary routes.toml (what `laneway import-nginx` prints),
//! compiled by [`crate::routing::rules::RuleSet::compile`]; every generated
//! line remembers the nginx file:line it came from, so compile errors name
//! the nginx file. Inherited settings (`proxy_set_header`, `add_header`,
//! `proxy_*_timeout`) are resolved here, as nginx merges them: an array
//! directive at a level replaces the inherited ones. `error_page`,
//! `proxy_intercept_errors` and `recursive_error_pages` are written where
//! nginx sets them (http-level ones on each server) and routes.toml
//! inherits them the same way.
//!
//! `listen` becomes the server's `ports` (and `ssl_ports`, and `default`
//! for `default_server`); servers are then chosen by the nginx port a
//! laneway listener stands for (`[routes.nginx_listen]`) and by host. A
//! server without `listen` listens on port 80, as nginx run as root.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parse::{quote_word, Directive, NginxConfig};
use crate::config::error::ConfigError;
use crate::routing::rules::{check_template, regex_group_names, RuleSet};

/// What became of one directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Translated,
    /// Irrelevant to routing (logging, buffers, compression, TLS …).
    Ignored,
    /// Relevant, but laneway does not do it; the note says what it does.
    Unsupported,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Translated => "translated",
            Outcome::Ignored => "ignored",
            Outcome::Unsupported => "not supported",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct ReportEntry {
    pub file: Arc<Path>,
    pub line: usize,
    pub directive: String,
    pub outcome: Outcome,
    pub note: String,
}

impl std::fmt::Display for ReportEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.outcome.as_str(),
            self.directive
        )?;
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

/// The translation of one nginx configuration.
#[derive(Debug, Clone)]
pub struct Translation {
    /// routes.toml text.
    pub toml: String,
    /// The nginx file:line of each TOML line (index = line - 1).
    pub source_map: Vec<(Arc<Path>, usize)>,
    pub report: Vec<ReportEntry>,
    /// Every file the configuration was read from.
    pub files: Vec<PathBuf>,
}

/// Directives that do not change routing.
const IGNORED: &[&str] = &[
    "user",
    "worker_processes",
    "worker_connections",
    "worker_rlimit_nofile",
    "pid",
    "error_log",
    "access_log",
    "log_format",
    "events",
    "daemon",
    "master_process",
    "env",
    "load_module",
    "pcre_jit",
    "timer_resolution",
    "thread_pool",
    "lock_file",
    "use",
    "multi_accept",
    "accept_mutex",
    "sendfile",
    "tcp_nopush",
    "tcp_nodelay",
    "keepalive_timeout",
    "keepalive_requests",
    "types",
    "default_type",
    "types_hash_max_size",
    "types_hash_bucket_size",
    "server_tokens",
    "server_names_hash_bucket_size",
    "server_names_hash_max_size",
    "map_hash_bucket_size",
    "map_hash_max_size",
    "variables_hash_max_size",
    "variables_hash_bucket_size",
    "charset",
    "source_charset",
    "gzip",
    "gzip_types",
    "gzip_vary",
    "gzip_proxied",
    "gzip_comp_level",
    "gzip_min_length",
    "gzip_buffers",
    "gzip_http_version",
    "gzip_disable",
    "gzip_static",
    "client_max_body_size",
    "client_body_buffer_size",
    "client_header_buffer_size",
    "large_client_header_buffers",
    "client_body_timeout",
    "client_header_timeout",
    "send_timeout",
    "reset_timedout_connection",
    "proxy_buffering",
    "proxy_buffer_size",
    "proxy_buffers",
    "proxy_busy_buffers_size",
    "proxy_temp_path",
    "proxy_max_temp_file_size",
    "proxy_temp_file_write_size",
    "proxy_http_version",
    "proxy_request_buffering",
    "proxy_cache",
    "proxy_cache_path",
    "proxy_cache_valid",
    "proxy_cache_key",
    "proxy_cache_bypass",
    "proxy_no_cache",
    "proxy_ignore_client_abort",
    "proxy_next_upstream",
    "proxy_next_upstream_tries",
    "proxy_next_upstream_timeout",
    "root",
    "alias",
    "index",
    "autoindex",
    "expires",
    "etag",
    "if_modified_since",
    "open_file_cache",
    "open_file_cache_valid",
    "open_file_cache_min_uses",
    "open_file_cache_errors",
    "ssl_certificate",
    "ssl_certificate_key",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_prefer_server_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "ssl_stapling",
    "ssl_stapling_verify",
    "ssl_dhparam",
    "ssl_ecdh_curve",
    "ssl_trusted_certificate",
    "http2",
    "resolver",
    "resolver_timeout",
    "log_not_found",
    "log_subrequest",
    "rewrite_log",
    "uninitialized_variable_warn",
    "underscores_in_headers",
    "ignore_invalid_headers",
    "merge_slashes",
    "msie_padding",
    "port_in_redirect",
    "server_name_in_redirect",
    "absolute_redirect",
    "aio",
    "directio",
    "output_buffers",
    "postpone_output",
    "lingering_close",
    "lingering_time",
    "lingering_timeout",
    "chunked_transfer_encoding",
    "real_ip_header",
    "set_real_ip_from",
    "real_ip_recursive",
    "proxy_ssl_server_name",
    "proxy_ssl_verify",
    "proxy_socket_keepalive",
    "open_log_file_cache",
    "stub_status",
    "limit_req_zone",
    "limit_conn_zone",
    "client_body_temp_path",
    "fastcgi_temp_path",
    "uwsgi_temp_path",
    "scgi_temp_path",
    "keepalive",
    "keepalive_time",
];

/// Directives that matter but that laneway does not do, and what it does.
fn unsupported(name: &str) -> Option<&'static str> {
    Some(match name {
        "proxy_hide_header" | "proxy_pass_header" => "laneway passes upstream headers unchanged",
        "limit_req" | "limit_conn" | "limit_rate" => "laneway does not rate-limit",
        "allow" | "deny" | "auth_basic" | "auth_basic_user_file" | "auth_request" | "satisfy" => {
            "laneway does not restrict access"
        }
        "limit_except" => "laneway proxies every method",
        "fastcgi_pass" | "uwsgi_pass" | "scgi_pass" | "grpc_pass" | "memcached_pass" => {
            "laneway proxies HTTP only; the location answers 404"
        }
        "stream" | "mail" => "laneway proxies HTTP only",
        "sub_filter" | "sub_filter_once" | "sub_filter_types" => "laneway does not rewrite bodies",
        "ssi" | "mirror" | "echo" | "js_content" | "perl" | "lua" => "not available in laneway",
        "proxy_set_body"
        | "proxy_method"
        | "proxy_pass_request_body"
        | "proxy_pass_request_headers" => "laneway forwards the request as it came",
        "proxy_cookie_path" => "laneway passes cookie paths unchanged",
        "return" | "rewrite" | "set" | "if" | "break" => "not allowed here",
        _ => return None,
    })
}

/// Settings inherited down http → server → location.
#[derive(Debug, Clone, Default)]
struct Inherit {
    set_headers: Option<Vec<(String, String, Directive)>>,
    add_headers: Option<Vec<(String, String, Directive)>>,
    connect: Option<String>,
    read: Option<String>,
    send: Option<String>,
    /// `error_page` arguments (one item per directive).
    error_pages: Option<Vec<(String, Directive)>>,
    intercept_errors: Option<(bool, Directive)>,
    recursive_error_pages: Option<(bool, Directive)>,
    /// `proxy_redirect` items of the nearest level that has any.
    redirect: Option<Vec<Replacement>>,
    /// `proxy_cookie_domain` items of the nearest level that has any.
    cookie_domain: Option<Vec<Replacement>>,
}

/// One `proxy_redirect` / `proxy_cookie_domain` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replacement {
    Off,
    /// `proxy_redirect default`: the `proxy_pass` URL becomes the location.
    Default,
    Pair(String, String),
}

struct Emitter {
    out: String,
    map: Vec<(Arc<Path>, usize)>,
}

impl Emitter {
    fn line(&mut self, text: &str, d: &Directive) {
        for l in text.split('\n') {
            self.out.push_str(l);
            self.out.push('\n');
            self.map.push((d.file.clone(), d.line));
        }
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Serialises a directive back to nginx text on one line.
fn nginx_text(d: &Directive) -> String {
    let mut s = d.name.clone();
    for a in &d.args {
        s.push(' ');
        s.push_str(&quote_word(a));
    }
    match &d.block {
        None => s.push(';'),
        Some(b) => {
            s.push_str(" {");
            for c in b {
                s.push(' ');
                s.push_str(&nginx_text(c));
            }
            s.push_str(" }");
        }
    }
    s
}

struct Tr<'a> {
    report: Vec<ReportEntry>,
    errors: Vec<ConfigError>,
    /// Upstream name (lowercased) → service; from laneway.toml first.
    mapping: &'a BTreeMap<String, String>,
    upstreams: BTreeMap<String, String>,
    statics: BTreeMap<String, Vec<String>>,
    upstream_lines: Vec<(String, Directive)>,
    maps: Vec<Directive>,
    servers: Vec<(Directive, Inherit)>,
    /// Variables the rules define: map, set, named captures.
    known_vars: Vec<String>,
}

/// Translates a parsed configuration. `mapping` is laneway.toml's
/// `[routes.nginx_upstreams]` (upstream name → service).
pub fn translate(
    cfg: &NginxConfig,
    mapping: &BTreeMap<String, String>,
) -> Result<Translation, Vec<ConfigError>> {
    let mut tr = Tr {
        report: Vec::new(),
        errors: Vec::new(),
        mapping,
        upstreams: BTreeMap::new(),
        statics: BTreeMap::new(),
        upstream_lines: Vec::new(),
        maps: Vec::new(),
        servers: Vec::new(),
        known_vars: Vec::new(),
    };
    tr.collect_vars(&cfg.directives);
    let mut any_http = false;
    for d in &cfg.directives {
        if d.name == "http" {
            any_http = true;
            tr.done(d, Outcome::Translated, "");
            let mut inherit = Inherit::default();
            tr.http(d.block.as_deref().unwrap_or_default(), &mut inherit);
        } else {
            tr.other(d, "main");
        }
    }
    if !any_http {
        tr.errors.push(ConfigError::new(
            &cfg.main,
            0,
            0,
            "the nginx configuration has no http block: nothing to route",
        ));
    }
    let mut em = Emitter {
        out: String::new(),
        map: Vec::new(),
    };
    let top = Directive {
        name: String::new(),
        args: Vec::new(),
        file: Arc::from(cfg.main.as_path()),
        line: 1,
        block: None,
        notes: Vec::new(),
    };
    em.line(
        &format!(
            "# laneway route rules translated from {} (laneway import-nginx)",
            cfg.main.display()
        ),
        &top,
    );
    tr.emit_upstreams(&mut em, &top);
    let maps = std::mem::take(&mut tr.maps);
    for m in &maps {
        tr.emit_map(&mut em, m);
    }
    let servers = std::mem::take(&mut tr.servers);
    let mut seen_names: HashMap<(u16, String), String> = HashMap::new();
    let mut defaults: HashMap<u16, (Option<String>, String)> = HashMap::new();
    for (s, inherit) in &servers {
        tr.emit_server(&mut em, s, inherit.clone(), &mut seen_names, &mut defaults);
    }
    if !tr.errors.is_empty() {
        return Err(tr.errors);
    }
    Ok(Translation {
        toml: em.out,
        source_map: em.map,
        report: tr.report,
        files: cfg.files.clone(),
    })
}

/// Why a configuration did not load, and the files read until then.
pub type LoadError = (Vec<ConfigError>, Vec<PathBuf>);

/// Parses, translates and compiles an nginx configuration. Compile errors
/// are reported at the nginx file:line the rule came from.
pub fn load(
    main: &Path,
    mapping: &BTreeMap<String, String>,
) -> Result<(RuleSet, Translation), LoadError> {
    let (cfg, files) = super::parse::parse_file_tracking(main);
    let cfg = cfg.map_err(|e| (vec![e], files))?;
    let files = cfg.files.clone();
    let tr = translate(&cfg, mapping).map_err(|e| (e, files.clone()))?;
    match RuleSet::compile(&tr.toml, main) {
        Ok(mut rules) => {
            // servers and locations name the nginx file:line they came from
            let map = &tr.source_map;
            rules.map_sources(&|line| line.checked_sub(1).and_then(|i| map.get(i)).cloned());
            Ok((rules, tr))
        }
        Err(errors) => Err((
            errors
                .into_iter()
                .map(|mut e| {
                    if let Some((f, l)) = e.line.checked_sub(1).and_then(|i| tr.source_map.get(i)) {
                        e.file = f.to_path_buf();
                        e.line = *l;
                        e.column = 0;
                    }
                    e
                })
                .collect(),
            files,
        )),
    }
}

impl Tr<'_> {
    fn done(&mut self, d: &Directive, outcome: Outcome, note: &str) {
        self.report.push(ReportEntry {
            file: d.file.clone(),
            line: d.line,
            directive: d.name.clone(),
            outcome,
            note: note.to_string(),
        });
    }

    fn error(&mut self, d: &Directive, m: impl Into<String>) {
        self.errors.push(d.error(m));
    }

    /// Map, set and capture names anywhere in the configuration.
    fn collect_vars(&mut self, ds: &[Directive]) {
        for d in ds {
            match d.name.as_str() {
                "map" => {
                    if let Some(v) = d.args.get(1).and_then(|v| v.strip_prefix('$')) {
                        self.known_vars.push(v.to_ascii_lowercase());
                    }
                    for e in d.block.iter().flatten() {
                        if let Some(re) = e.name.strip_prefix('~') {
                            self.known_vars
                                .extend(regex_group_names(re.trim_start_matches('*')));
                        }
                    }
                    continue;
                }
                "set" => {
                    if let Some(v) = d.args.first().and_then(|v| v.strip_prefix('$')) {
                        self.known_vars.push(v.to_ascii_lowercase());
                    }
                }
                "server_name" | "location" | "rewrite" | "if" => {
                    for a in &d.args {
                        self.known_vars.extend(regex_group_names(a));
                    }
                }
                _ => {}
            }
            if let Some(b) = &d.block {
                self.collect_vars(b);
            }
        }
    }

    /// A directive outside what the level translates.
    fn other(&mut self, d: &Directive, level: &str) {
        if IGNORED.contains(&d.name.as_str()) || d.name.starts_with("ssl_") {
            self.done(d, Outcome::Ignored, "");
        } else if let Some(note) = unsupported(&d.name) {
            let note = if note == "not allowed here" {
                format!("not allowed at the {level} level")
            } else {
                note.to_string()
            };
            self.done(d, Outcome::Unsupported, &note);
        } else {
            self.done(d, Outcome::Unsupported, "unknown to laneway; ignored");
        }
    }

    /// Settings that every level inherits; true when `d` was one.
    fn inheritable(&mut self, d: &Directive, inh: &mut Inherit, own: &mut Inherit) -> bool {
        match d.name.as_str() {
            "proxy_set_header" | "add_header" => {
                let (name, value) = match d.args.as_slice() {
                    [n, v] => (n.clone(), v.clone()),
                    [n, v, always] if always == "always" => (n.clone(), v.clone()),
                    _ => {
                        self.error(d, format!("\"{}\" takes a header name and a value", d.name));
                        return true;
                    }
                };
                if let Err(why) = check_template(&value, &self.known_vars) {
                    let note = if d.name == "proxy_set_header" {
                        format!("{why}; laneway leaves the header as the client sent it and adds X-Forwarded-For/-Proto itself")
                    } else {
                        format!("{why}; the header is not added")
                    };
                    self.done(d, Outcome::Unsupported, &note);
                    // the level still replaces what it inherits
                    let slot = if d.name == "proxy_set_header" {
                        &mut own.set_headers
                    } else {
                        &mut own.add_headers
                    };
                    slot.get_or_insert_with(Vec::new);
                    return true;
                }
                let slot = if d.name == "proxy_set_header" {
                    &mut own.set_headers
                } else {
                    &mut own.add_headers
                };
                slot.get_or_insert_with(Vec::new)
                    .push((name, value, d.clone()));
                self.done(d, Outcome::Translated, "");
                true
            }
            "error_page" => {
                if d.args.len() < 2 {
                    self.error(
                        d,
                        "\"error_page\" takes one or more codes and a target (URI, @name or URL)",
                    );
                    return true;
                }
                let item: Vec<String> = d.args.iter().map(|a| quote_word(a)).collect();
                own.error_pages
                    .get_or_insert_with(Vec::new)
                    .push((item.join(" "), d.clone()));
                self.done(d, Outcome::Translated, "");
                true
            }
            "proxy_intercept_errors" | "recursive_error_pages" => {
                let on = match d.args.as_slice() {
                    [v] if v == "on" => true,
                    [v] if v == "off" => false,
                    _ => {
                        self.error(d, format!("\"{}\" takes on or off", d.name));
                        return true;
                    }
                };
                let slot = if d.name == "proxy_intercept_errors" {
                    &mut own.intercept_errors
                } else {
                    &mut own.recursive_error_pages
                };
                *slot = Some((on, d.clone()));
                self.done(d, Outcome::Translated, "");
                true
            }
            "proxy_redirect" | "proxy_cookie_domain" => {
                let redirect = d.name == "proxy_redirect";
                let item = match d.args.as_slice() {
                    [w] if w == "off" || (redirect && w == "false") => Replacement::Off,
                    [w] if redirect && w == "default" => Replacement::Default,
                    [from, to] => {
                        if let Some(why) = replacement_variables(from, to) {
                            self.done(d, Outcome::Unsupported, &why);
                            return true;
                        }
                        if let Err(why) = crate::routing::rewrite::Replace::parse(from, to) {
                            self.error(d, format!("\"{}\": {why}", d.name));
                            return true;
                        }
                        Replacement::Pair(from.clone(), to.clone())
                    }
                    _ => {
                        let forms = if redirect {
                            "default, off, or a redirect and its replacement"
                        } else {
                            "off, or a domain and its replacement"
                        };
                        self.error(d, format!("\"{}\" takes {forms}", d.name));
                        return true;
                    }
                };
                let slot = if redirect {
                    &mut own.redirect
                } else {
                    &mut own.cookie_domain
                };
                slot.get_or_insert_with(Vec::new).push(item);
                self.done(d, Outcome::Translated, "");
                true
            }
            "proxy_connect_timeout" | "proxy_read_timeout" | "proxy_send_timeout" => {
                let Some(v) = d.args.first() else {
                    self.error(d, format!("\"{}\" takes a time", d.name));
                    return true;
                };
                let v = if v.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{v}s")
                } else {
                    v.clone()
                };
                if humantime::parse_duration(&v).is_err() {
                    self.error(d, format!("\"{}\": {v:?} is not a time", d.name));
                    return true;
                }
                match d.name.as_str() {
                    "proxy_connect_timeout" => inh.connect = Some(v),
                    "proxy_read_timeout" => inh.read = Some(v),
                    _ => inh.send = Some(v),
                }
                self.done(d, Outcome::Translated, "");
                true
            }
            _ => false,
        }
    }

    fn http(&mut self, ds: &[Directive], inherit: &mut Inherit) {
        let mut own = Inherit::default();
        let mut servers = Vec::new();
        for d in ds {
            if self.inheritable(d, inherit, &mut own) {
                continue;
            }
            match d.name.as_str() {
                "server" => servers.push(d.clone()),
                "upstream" => self.upstream(d),
                "map" => {
                    self.maps.push(d.clone());
                    self.done(d, Outcome::Translated, "");
                }
                _ => self.other(d, "http"),
            }
        }
        merge(inherit, own);
        for s in servers {
            self.servers.push((s, inherit.clone()));
        }
    }

    fn upstream(&mut self, d: &Directive) {
        let Some(name) = d.args.first() else {
            self.error(d, "\"upstream\" needs a name");
            return;
        };
        let key = name.to_ascii_lowercase();
        let note_service = d.all_notes().iter().find_map(|n| {
            n.split_whitespace()
                .find_map(|kv| kv.strip_prefix("service=").map(str::to_string))
        });
        let mapped = self
            .mapping
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone());
        let (service, how) = match (mapped, note_service) {
            (Some(s), _) => (s, "mapped by [routes.nginx_upstreams]"),
            (None, Some(s)) => (s, "mapped by its # laneway: comment"),
            (None, None) => (
                name.clone(),
                "static service from its server lines (baseline only)",
            ),
        };
        let is_static = how.starts_with("static");
        let mut servers = Vec::new();
        for s in d.block.iter().flatten() {
            match s.name.as_str() {
                "server" => {
                    let Some(addr) = s.args.first() else {
                        self.error(s, "\"server\" needs an address");
                        continue;
                    };
                    let flags: Vec<&str> = s.args[1..].iter().map(String::as_str).collect();
                    if flags.iter().any(|f| *f == "down" || *f == "backup") {
                        self.done(s, Outcome::Unsupported, "down/backup servers are left out");
                        continue;
                    }
                    if addr.starts_with("unix:") {
                        self.done(s, Outcome::Unsupported, "unix sockets are not supported");
                        continue;
                    }
                    let addr = if addr
                        .rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    {
                        addr.clone()
                    } else {
                        format!("{addr}:80")
                    };
                    servers.push(addr);
                    let note = if is_static {
                        "a baseline instance of the static service; weights and limits are not used"
                    } else {
                        "ignored: the service's instances come from the registry"
                    };
                    self.done(s, Outcome::Translated, note);
                }
                _ if IGNORED.contains(&s.name.as_str()) => self.done(s, Outcome::Ignored, ""),
                "least_conn" | "ip_hash" | "hash" | "random" | "zone" => self.done(
                    s,
                    Outcome::Unsupported,
                    "laneway balances with smooth weighted round-robin",
                ),
                _ => self.other(s, "upstream"),
            }
        }
        self.done(
            d,
            Outcome::Translated,
            &format!("service {service:?}: {how}"),
        );
        if is_static {
            if servers.is_empty() {
                self.error(
                    d,
                    format!("upstream {name:?} has no usable server and no service mapping"),
                );
                return;
            }
            self.statics.insert(service.clone(), servers);
        }
        self.upstreams.insert(key, service);
        self.upstream_lines.push((name.clone(), d.clone()));
    }

    /// A `proxy_pass` host that is no upstream block: an address becomes a
    /// static service of its own.
    fn implicit_upstream(&mut self, d: &Directive, url: &str) {
        if url.contains('$') {
            return;
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let key = host.to_ascii_lowercase();
        if host.is_empty() || self.upstreams.contains_key(&key) {
            return;
        }
        if let Some((_, svc)) = self
            .mapping
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(host))
        {
            self.upstreams.insert(key, svc.clone());
            return;
        }
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let service: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.statics.insert(service.clone(), vec![addr]);
        self.upstreams.insert(key, service);
        self.upstream_lines.push((host.to_string(), d.clone()));
    }

    fn emit_upstreams(&mut self, em: &mut Emitter, top: &Directive) {
        if self.upstreams.is_empty() {
            return;
        }
        em.line("", top);
        em.line("[upstreams]", top);
        let lines = self.upstream_lines.clone();
        for (name, d) in &lines {
            if let Some(svc) = self.upstreams.get(&name.to_ascii_lowercase()) {
                em.line(
                    &format!("{} = {}  # {}", toml_str(name), toml_str(svc), d.at()),
                    d,
                );
            }
        }
        if !self.statics.is_empty() {
            em.line("", top);
            em.line("[static_services]", top);
            let statics = self.statics.clone();
            for (svc, addrs) in &statics {
                let d = lines
                    .iter()
                    .find(|(n, _)| self.upstreams.get(&n.to_ascii_lowercase()) == Some(svc))
                    .map_or(top, |(_, d)| d);
                em.line(&format!("{} = {}", toml_str(svc), toml_list(addrs)), d);
            }
        }
    }

    fn emit_map(&mut self, em: &mut Emitter, d: &Directive) {
        let [source, variable] = d.args.as_slice() else {
            self.error(d, "\"map\" takes a source and a variable");
            return;
        };
        em.line("", d);
        em.line(&format!("[[map]]  # {}", d.at()), d);
        em.line(&format!("source = {}", toml_str(source)), d);
        em.line(&format!("variable = {}", toml_str(variable)), d);
        let mut entries = Vec::new();
        for e in d.block.iter().flatten() {
            match (e.name.as_str(), e.args.as_slice()) {
                ("hostnames", []) => em.line("hostnames = true", e),
                ("volatile", []) => self.done(
                    e,
                    Outcome::Unsupported,
                    "laneway evaluates a map once per request",
                ),
                ("default", [v]) => em.line(&format!("default = {}", toml_str(v)), e),
                (k, [v]) => entries.push((k.to_string(), v.clone(), e.clone())),
                _ => self.error(e, "a map entry is \"key value;\""),
            }
        }
        if !entries.is_empty() {
            em.line("entries = [", d);
            for (k, v, e) in &entries {
                em.line(&format!("  [{}, {}],", toml_str(k), toml_str(v)), e);
            }
            em.line("]", d);
        }
    }

    fn emit_server(
        &mut self,
        em: &mut Emitter,
        s: &Directive,
        inherit: Inherit,
        seen_names: &mut HashMap<(u16, String), String>,
        defaults: &mut HashMap<u16, (Option<String>, String)>,
    ) {
        self.done(s, Outcome::Translated, "");
        let ds = s.block.as_deref().unwrap_or_default();
        let listens = self.listens(ds, defaults);
        let mut names: Vec<String> = Vec::new();
        let mut script: Vec<(String, Directive)> = Vec::new();
        let mut own = Inherit::default();
        let mut inh = inherit;
        let mut locations = Vec::new();
        for d in ds {
            if self.inheritable(d, &mut inh, &mut own) {
                continue;
            }
            match d.name.as_str() {
                "listen" => {} // read above
                "server_name" => {
                    for n in &d.args {
                        let key = n.to_ascii_lowercase();
                        let taken: Vec<(u16, String)> = listens
                            .ports
                            .iter()
                            .filter_map(|p| {
                                seen_names.get(&(*p, key.clone())).map(|o| (*p, o.clone()))
                            })
                            .collect();
                        if let Some((port, other)) = taken.first() {
                            if taken.len() == listens.ports.len() {
                                self.done(
                                    d,
                                    Outcome::Ignored,
                                    &format!("conflicting server name {n:?} on port {port} (first at {other}); nginx ignores it too"),
                                );
                            } else {
                                self.done(
                                    d,
                                    Outcome::Unsupported,
                                    &format!("conflicting server name {n:?} on port {port} (first at {other}): laneway keeps one name list per server, so the name is left out on this server's other ports too"),
                                );
                            }
                            continue;
                        }
                        for p in &listens.ports {
                            seen_names.insert((*p, key.clone()), d.at());
                        }
                        names.push(n.clone());
                    }
                    self.done(d, Outcome::Translated, "");
                }
                "location" => locations.push(d.clone()),
                "rewrite" | "set" | "return" | "break" | "if" => {
                    if let Some(t) = self.script_item(d, false) {
                        script.push((t, d.clone()));
                    }
                }
                _ => self.other(d, "server"),
            }
        }
        merge(&mut inh, own);
        em.line("", s);
        em.line(&format!("[[server]]  # {}", s.at()), s);
        em.line(&format!("names = {}", toml_list(&names)), s);
        let ports: Vec<String> = listens.ports.iter().map(u16::to_string).collect();
        em.line(&format!("ports = [{}]", ports.join(", ")), s);
        if !listens.ssl.is_empty() {
            let ssl: Vec<String> = listens.ssl.iter().map(u16::to_string).collect();
            em.line(&format!("ssl_ports = [{}]", ssl.join(", ")), s);
        }
        if !listens.default.is_empty() {
            if listens.default == listens.ports {
                em.line("default = true", s);
            } else {
                let d: Vec<String> = listens.default.iter().map(u16::to_string).collect();
                em.line(&format!("default = [{}]", d.join(", ")), s);
            }
        }
        emit_script(em, &script);
        // the server's own settings, or its http level's
        emit_error_pages(em, &inh);
        for l in &locations {
            self.emit_location(em, l, &inh, "server.location", None);
        }
    }

    /// Reads a server's `listen` directives (port 80 without any) and
    /// reports each. `defaults`: the default server of each port so far.
    fn listens(
        &mut self,
        ds: &[Directive],
        defaults: &mut HashMap<u16, (Option<String>, String)>,
    ) -> Listens {
        let mut out = Listens::default();
        let mut any = false;
        for d in ds.iter().filter(|d| d.name == "listen") {
            any = true;
            let Some(arg) = d.args.first() else {
                self.error(d, "\"listen\" needs an address or a port");
                continue;
            };
            if arg.starts_with("unix:") {
                self.done(d, Outcome::Unsupported, "unix sockets are not supported");
                continue;
            }
            let (addr, port) = match listen_port(arg) {
                Ok(v) => v,
                Err(m) => {
                    self.error(d, m);
                    continue;
                }
            };
            let flags = &d.args[1..];
            let ssl = flags.iter().any(|f| f == "ssl");
            let default = flags
                .iter()
                .any(|f| f == "default_server" || f == "default");
            let mut notes = vec![format!("port {port}")];
            let mut outcome = Outcome::Translated;
            out.ports.push(port);
            if ssl {
                out.ssl.push(port);
                notes.push("ssl: laneway's [tls] listeners terminate TLS".to_string());
            }
            if let Some(a) = addr.as_deref().filter(|a| !matches!(*a, "0.0.0.0" | "::")) {
                notes.push(format!(
                    "the address {a} is not compared: laneway chooses servers by port"
                ));
            }
            if default {
                match defaults.get(&port) {
                    None => {
                        defaults.insert(port, (addr.clone(), d.at()));
                        out.default.push(port);
                        notes.push(format!("default_server of port {port}"));
                    }
                    Some((first_addr, at)) if *first_addr == addr => {
                        self.error(
                            d,
                            format!("a duplicate default server for {arg} (the first at {at})"),
                        );
                        continue;
                    }
                    Some((_, at)) => {
                        outcome = Outcome::Unsupported;
                        notes.push(format!(
                            "default_server left out: port {port} already has the default server at {at} (laneway chooses servers by port, not address)"
                        ));
                    }
                }
            }
            self.done(d, outcome, &notes.join("; "));
        }
        if !any {
            // nginx run as root listens on port 80
            out.ports.push(80);
        }
        for list in [&mut out.ports, &mut out.ssl, &mut out.default] {
            list.sort_unstable();
            list.dedup();
        }
        out
    }

    /// One script item (nginx text) for `d`, after checking an `if` body.
    fn script_item(&mut self, d: &Directive, in_location: bool) -> Option<String> {
        if d.name == "if" {
            let mut body = Vec::new();
            for b in d.block.iter().flatten() {
                match b.name.as_str() {
                    "rewrite" | "set" | "return" | "break" => {
                        self.done(b, Outcome::Translated, "");
                        body.push(b.clone());
                    }
                    "proxy_pass" if in_location => {
                        self.implicit_upstream(b, b.args.first().map_or("", String::as_str));
                        self.done(b, Outcome::Translated, "");
                        body.push(b.clone());
                    }
                    _ => self.done(
                        b,
                        Outcome::Unsupported,
                        "inside \"if\" laneway runs only rewrite, set, return, break and proxy_pass",
                    ),
                }
            }
            let mut copy = d.clone();
            copy.block = Some(body);
            self.done(d, Outcome::Translated, "");
            return Some(nginx_text(&copy));
        }
        self.done(d, Outcome::Translated, "");
        Some(nginx_text(d))
    }

    fn emit_location(
        &mut self,
        em: &mut Emitter,
        l: &Directive,
        parent: &Inherit,
        path: &str,
        _parent_kind: Option<&str>,
    ) {
        let pattern = match l.args.as_slice() {
            [p] => p.clone(),
            [m, p] if ["=", "^~", "~", "~*"].contains(&m.as_str()) => format!("{m} {p}"),
            _ => {
                self.error(l, "\"location\" takes an optional modifier and a pattern");
                return;
            }
        };
        self.done(l, Outcome::Translated, "");
        let mut inh = parent.clone();
        let mut own = Inherit::default();
        let mut script: Vec<(String, Directive)> = Vec::new();
        let mut proxy_pass: Option<(String, Directive)> = None;
        let mut try_files: Option<(Vec<String>, Directive)> = None;
        let mut internal = false;
        let mut nested = Vec::new();
        for d in l.block.iter().flatten() {
            if self.inheritable(d, &mut inh, &mut own) {
                continue;
            }
            match d.name.as_str() {
                "proxy_pass" => {
                    let url = d.args.first().cloned().unwrap_or_default();
                    self.implicit_upstream(d, &url);
                    self.done(d, Outcome::Translated, "");
                    proxy_pass = Some((url, d.clone()));
                }
                "rewrite" | "set" | "return" | "break" | "if" => {
                    if let Some(t) = self.script_item(d, true) {
                        script.push((t, d.clone()));
                    }
                }
                "try_files" => {
                    self.done(
                        d,
                        Outcome::Translated,
                        "laneway serves no files: the last item decides",
                    );
                    try_files = Some((d.args.clone(), d.clone()));
                }
                "internal" => {
                    self.done(d, Outcome::Translated, "");
                    internal = true;
                }
                "location" => nested.push(d.clone()),
                _ => self.other(d, "location"),
            }
        }
        let own_errors = Inherit {
            error_pages: own.error_pages.clone(),
            intercept_errors: own.intercept_errors.clone(),
            recursive_error_pages: own.recursive_error_pages.clone(),
            ..Inherit::default()
        };
        merge(&mut inh, own);
        let redirect = redirect_pairs(
            inh.redirect.as_deref(),
            proxy_pass.as_ref().map(|(u, _)| u.as_str()),
            &pattern,
        );
        em.line("", l);
        em.line(&format!("[[{path}]]  # {}", l.at()), l);
        em.line(&format!("match = {}", toml_str(&pattern)), l);
        if let Some((url, d)) = &proxy_pass {
            em.line(&format!("proxy_pass = {}", toml_str(url)), d);
        }
        if let Some((items, d)) = &try_files {
            em.line(&format!("try_files = {}", toml_list(items)), d);
        }
        if internal {
            em.line("internal = true", l);
        }
        emit_script(em, &script);
        for (key, v) in [
            ("connect_timeout", &inh.connect),
            ("read_timeout", &inh.read),
            ("write_timeout", &inh.send),
        ] {
            if let Some(v) = v {
                em.line(&format!("{key} = {}", toml_str(v)), l);
            }
        }
        // routes.toml inherits them from the enclosing level as nginx does
        emit_error_pages(em, &own_errors);
        let cookie_domain = inh
            .cookie_domain
            .as_deref()
            .map(|items| redirect_pairs(Some(items), None, &pattern))
            .unwrap_or_default();
        for (key, pairs) in [
            ("proxy_redirect", &redirect),
            ("proxy_cookie_domain", &cookie_domain),
        ] {
            if pairs.is_empty() {
                continue;
            }
            let items: Vec<String> = pairs
                .iter()
                .map(|(f, t)| format!("[{}, {}]", toml_str(f), toml_str(t)))
                .collect();
            em.line(&format!("{key} = [{}]", items.join(", ")), l);
        }
        for (key, list) in [
            ("set_headers", &inh.set_headers),
            ("add_response_headers", &inh.add_headers),
        ] {
            let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
                continue;
            };
            // later ones win, as nginx sends the last value of a header
            let mut seen = HashSet::new();
            let mut uniq: Vec<&(String, String, Directive)> = Vec::new();
            for h in list.iter().rev() {
                if seen.insert(h.0.to_ascii_lowercase()) {
                    uniq.push(h);
                }
            }
            uniq.reverse();
            em.line(&format!("[{path}.{key}]"), l);
            for (n, v, d) in uniq {
                em.line(&format!("{} = {}", toml_str(n), toml_str(v)), d);
            }
        }
        let child_path = format!("{path}.location");
        for n in &nested {
            self.emit_location(em, n, &inh, &child_path, Some(&pattern));
        }
    }
}

fn emit_script(em: &mut Emitter, script: &[(String, Directive)]) {
    if script.is_empty() {
        return;
    }
    em.line("script = [", &script[0].1);
    for (t, d) in script {
        em.line(&format!("  {},", toml_str(t)), d);
    }
    em.line("]", &script[0].1);
}

/// Applies a level's own settings over what it inherited.
fn merge(inh: &mut Inherit, own: Inherit) {
    if own.set_headers.is_some() {
        inh.set_headers = own.set_headers;
    }
    if own.add_headers.is_some() {
        inh.add_headers = own.add_headers;
    }
    if own.error_pages.is_some() {
        inh.error_pages = own.error_pages;
    }
    if own.intercept_errors.is_some() {
        inh.intercept_errors = own.intercept_errors;
    }
    if own.recursive_error_pages.is_some() {
        inh.recursive_error_pages = own.recursive_error_pages;
    }
    if own.redirect.is_some() {
        inh.redirect = own.redirect;
    }
    if own.cookie_domain.is_some() {
        inh.cookie_domain = own.cookie_domain;
    }
}

/// Why a `proxy_redirect` / `proxy_cookie_domain` pair cannot be
/// translated: laneway takes literal text and regex captures (`$1`), not
/// nginx variables.
fn replacement_variables(from: &str, to: &str) -> Option<String> {
    let variable = |t: &str| {
        t.match_indices('$').any(|(i, _)| {
            let next = t[i + 1..].chars().next();
            !next.is_some_and(|c| c.is_ascii_digit() || c == '{')
        })
    };
    let from_var = !from.starts_with('~') && from.contains('$');
    (from_var || variable(to)).then(|| {
        "nginx variables in the redirect or replacement are not supported (literal text and regex captures are); the directive is ignored".to_string()
    })
}

/// The pairs a location applies: its (inherited) items, `default`
/// expanded, nothing after `off`. With no items at all nginx applies
/// `default`: a `proxy_pass` URL with a URI becomes the location's prefix
/// (`proxy_pass http://b/two/` in `location /one/`: `http://b/two/` →
/// `/one/`); without a URI, or in a regex or named location, it does
/// nothing.
fn redirect_pairs(
    items: Option<&[Replacement]>,
    proxy_pass: Option<&str>,
    pattern: &str,
) -> Vec<(String, String)> {
    let default = || {
        let url = proxy_pass?;
        let after = url.split_once("://")?.1;
        let uri = &after[after.find('/')?..];
        let prefix = pattern
            .strip_prefix("^~ ")
            .or_else(|| pattern.strip_prefix("= "));
        let location = prefix.unwrap_or(pattern);
        if url.contains('$') || uri.is_empty() || location.starts_with(['~', '@']) {
            return None;
        }
        Some((url.to_string(), location.to_string()))
    };
    match items {
        None => default().into_iter().collect(),
        Some(items) if items.contains(&Replacement::Off) => Vec::new(),
        Some(items) => items
            .iter()
            .filter_map(|i| match i {
                Replacement::Default => default(),
                Replacement::Pair(f, t) => Some((f.clone(), t.clone())),
                Replacement::Off => None,
            })
            .collect(),
    }
}

/// Writes the `error_page` settings of a level: `what` holds the ones to
/// write (a location's own; a server's own or its http level's).
fn emit_error_pages(em: &mut Emitter, what: &Inherit) {
    if let Some(items) = &what.error_pages {
        match items.first() {
            None => {}
            Some((_, d)) => {
                em.line("error_page = [", d);
                for (t, d) in items {
                    em.line(&format!("  {},", toml_str(t)), d);
                }
                em.line("]", d);
            }
        }
    }
    if let Some((on, d)) = &what.intercept_errors {
        em.line(&format!("proxy_intercept_errors = {on}"), d);
    }
    if let Some((on, d)) = &what.recursive_error_pages {
        em.line(&format!("recursive_error_pages = {on}"), d);
    }
}

/// One `listen`: the port and the address (`None`: every address),
/// nginx's spellings: `8080`, `127.0.0.1:8080`, `*:8080`, `[::1]:8080`,
/// `127.0.0.1` (port 80).
pub(super) fn listen_port(arg: &str) -> Result<(Option<String>, u16), String> {
    let bad = || format!("invalid port in {arg:?} of the \"listen\" directive");
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad()),
    };
    if let Some(rest) = arg.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((Some(ip.to_string()), port(p)?)),
            None if after.is_empty() => Ok((Some(ip.to_string()), 80)),
            None => Err(bad()),
        };
    }
    if arg.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((None, port(arg)?));
    }
    match arg.rsplit_once(':') {
        Some((host, p)) => {
            let addr = (host != "*").then(|| host.to_string());
            Ok((addr, port(p)?))
        }
        None => Ok((Some(arg.to_string()), 80)),
    }
}

/// What a server's `listen` directives say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listens {
    ports: Vec<u16>,
    ssl: Vec<u16>,
    /// Ports it is the `default_server` of.
    default: Vec<u16>,
}
