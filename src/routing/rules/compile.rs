//! Compiles a parsed `routes.toml` into a [`RuleSet`] (control plane only):
//! checks every value, compiles every regex and template, builds the host
//! and location lookup structures. Every error is collected, each with its
//! file, line and column, so `laneway check` can list them all at once.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use regex::bytes::RegexSet;
use toml::Spanned;

use crate::config::error::ConfigError;
use crate::config::routes::{DefaultDef, LocationDef, OrderedTable, RoutesFile, ServerDef};

use super::errpage::{self, ErrorPage, ErrorPages};
use super::host::{parse_name, HostTable, HostTableBuilder, NameKind};
use super::location::{parse_match, LocationKind, LocationTableBuilder};
use super::pattern::{build_set, set_pattern, Rx, SET_THRESHOLD};
use super::script::{self as sc, Engine, Level, ScriptCompiler};
use super::template::{RewriteTarget, Scope, Template, TemplateError};
use super::{
    Action, DefaultOn, LocExt, Location, PortHosts, Rewrite, RuleSet, Server, StaticInstance,
    TryLast,
};

pub(super) fn compile(source: &str, file: &Path) -> Result<RuleSet, Vec<ConfigError>> {
    let parsed =
        RoutesFile::parse(source).map_err(|e| vec![ConfigError::from_toml(file, source, &e)])?;
    let mut c = Compiler {
        file,
        source,
        newlines: newlines(source),
        file_arc: Arc::from(file),
        errors: Vec::new(),
        services: Vec::new(),
        service_ids: HashMap::new(),
        regexes: HashMap::new(),
        slots: None,
        upstreams: HashMap::new(),
        host_rx_slots: Vec::new(),
        host_regexes: 0,
        named_targets: Vec::new(),
    };
    let mut parsed = parsed;
    let engine_parts = if uses_engine(&parsed) {
        Some(c.engine_prelude(&mut parsed))
    } else {
        None
    };
    let mut pre = precompile(&parsed);
    c.regexes = std::mem::take(&mut pre.regexes);
    let mut server_lines = Vec::with_capacity(parsed.server.len());
    let mut servers = Vec::with_capacity(parsed.server.len());
    let mut names = Vec::with_capacity(parsed.server.len());
    let mut default_spans = Vec::with_capacity(parsed.server.len());
    for (si, def) in parsed.server.into_iter().enumerate() {
        let line = c.line(def.span().start);
        server_lines.push(line);
        default_spans.push(def.get_ref().default.as_ref().map(|d| d.span()));
        let set = pre.location_sets.remove(&si);
        let (server, server_names) = c.server(line, def.into_inner(), set);
        servers.push(server);
        names.push(server_names);
    }
    let (hosts, ports) =
        c.host_tables(&servers, names, &server_lines, &default_spans, pre.host_set);
    if !c.errors.is_empty() {
        // file order, for `laneway check`
        c.errors.sort_by_key(|e| (e.line, e.column));
        return Err(c.errors);
    }
    let (engine, static_instances) = match engine_parts {
        Some((maps, slot_map, statics)) => (
            Some(Box::new(Engine {
                slots: c.slots.clone().unwrap_or_default(),
                slot_map,
                maps,
                upstreams: std::mem::take(&mut c.upstreams),
                host_rx_slots: std::mem::take(&mut c.host_rx_slots).into_boxed_slice(),
            })),
            statics,
        ),
        None => (None, Vec::new()),
    };
    Ok(RuleSet {
        file: c.file_arc,
        servers: servers.into_boxed_slice(),
        hosts,
        ports: ports.into_boxed_slice(),
        services: c.services.into_boxed_slice(),
        engine,
        static_instances: static_instances.into_boxed_slice(),
    })
}

/// True when the rules use nginx features that need the rewrite engine.
fn uses_engine(f: &RoutesFile) -> bool {
    fn loc(l: &LocationDef) -> bool {
        l.proxy_pass.is_some()
            || l.script.is_some()
            || l.try_files.is_some()
            || l.internal.is_some()
            || !l.location.is_empty()
            || l.error_page.is_some()
            || l.proxy_intercept_errors.is_some()
            || l.recursive_error_pages.is_some()
            || l.pattern.get_ref().trim_start().starts_with('@')
    }
    !f.map.is_empty()
        || f.upstreams.is_some()
        || f.static_services.is_some()
        || f.server.iter().any(|s| {
            let s = s.get_ref();
            s.script.is_some()
                || s.error_page.is_some()
                || s.proxy_intercept_errors.is_some()
                || s.recursive_error_pages.is_some()
                || s.location.iter().any(|l| loc(l.get_ref()))
        })
}

/// Compiled maps, slot → map, and the static instances.
type EngineParts = (Box<[sc::Map]>, Box<[Option<usize>]>, Vec<StaticInstance>);

/// Built-in variable names a named capture may not take.
const BUILTINS: &[&str] = &[
    "host",
    "uri",
    "document_uri",
    "args",
    "query_string",
    "is_args",
    "request_uri",
    "scheme",
    "lane",
];

struct Compiler<'a> {
    file: &'a Path,
    source: &'a str,
    /// Byte offsets of every `\n` in `source`, for [`Compiler::line`].
    newlines: Vec<usize>,
    file_arc: Arc<Path>,
    errors: Vec<ConfigError>,
    services: Vec<Arc<str>>,
    service_ids: HashMap<String, Arc<str>>,
    /// Every regex compiled so far, by (caseless, pattern).
    regexes: HashMap<(bool, String), Rx>,
    /// The rewrite engine's variables, when the rules use it.
    slots: Option<Arc<[Box<str>]>>,
    /// `[upstreams]`: lowercased upstream name → service.
    upstreams: HashMap<Box<str>, Arc<str>>,
    /// Group → slot pairs of the server-name regexes, in host-table order.
    host_rx_slots: Vec<Box<[(usize, usize)]>>,
    /// Server-name regexes compiled so far (their index in the
    /// every-server host table).
    host_regexes: usize,
    /// `error_page @name` targets of the server being compiled, with the
    /// line naming each.
    named_targets: Vec<(Box<str>, usize)>,
}

/// One `names` entry of a server, for the host tables.
enum NameEntry {
    Plain(NameKind, Range<usize>),
    /// A regex and its index in the every-server table.
    Regex(Rx, usize),
}

/// The `error_page` settings in force at one level.
#[derive(Clone, Default)]
struct ErrCfg {
    pages: Option<Arc<ErrorPages>>,
    intercept: bool,
    recursive: bool,
}

/// What a location's templates can see, from the server's regex names.
struct ServerScope {
    names: Vec<Box<str>>,
    max_group: usize,
}

impl Compiler<'_> {
    /// Sets up the rewrite engine: the variable slots (every `set` and
    /// `map` variable and named capture), `[upstreams]`, the static
    /// services and the maps.
    fn engine_prelude(&mut self, parsed: &mut RoutesFile) -> EngineParts {
        let mut names: Vec<String> = Vec::new();
        for m in &parsed.map {
            let m = m.get_ref();
            names.push(
                m.variable
                    .get_ref()
                    .trim_start_matches('$')
                    .to_ascii_lowercase(),
            );
            for e in &m.entries {
                if let Some(k) = e.get_ref().first() {
                    if let Some(re) = k.get_ref().strip_prefix('~') {
                        names.extend(sc::group_names(re.trim_start_matches('*')));
                    }
                }
            }
        }
        fn loc_names(l: &LocationDef, names: &mut Vec<String>) {
            if let Ok((kind, p)) = parse_match(l.pattern.get_ref()) {
                if kind.is_regex() {
                    names.extend(sc::group_names(p));
                }
            }
            for item in l.script.iter().flatten() {
                sc::script_names(item.get_ref(), names);
            }
            for c in &l.location {
                loc_names(c.get_ref(), names);
            }
        }
        for srv in &parsed.server {
            let srv = srv.get_ref();
            for n in &srv.names {
                if let Some(re) = n.get_ref().strip_prefix('~') {
                    names.extend(sc::group_names(re));
                }
            }
            for item in srv.script.iter().flatten() {
                sc::script_names(item.get_ref(), &mut names);
            }
            for l in &srv.location {
                loc_names(l.get_ref(), &mut names);
            }
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
        for m in &parsed.map {
            let v = m.get_ref().variable.get_ref();
            let name = v.trim_start_matches('$').to_ascii_lowercase();
            if !v.starts_with('$') || name.is_empty() {
                self.err(
                    m.get_ref().variable.span(),
                    format!("map variable {v:?} must be written \"$name\""),
                );
            } else if BUILTINS.contains(&name.as_str())
                || ["http_", "cookie_", "arg_"]
                    .iter()
                    .any(|p| name.starts_with(p))
            {
                self.err(
                    m.get_ref().variable.span(),
                    format!("map variable {v:?} would hide a built-in variable; rename it"),
                );
            }
        }
        let slots: Arc<[Box<str>]> = names.iter().map(|n| Box::from(n.as_str())).collect();
        self.slots = Some(slots.clone());

        // upstreams and static services
        let mut statics = Vec::new();
        if let Some(t) = parsed.static_services.take() {
            let span = t.span();
            for (svc, v) in t.into_inner() {
                let Some(list) = v.as_array() else {
                    self.err(
                        span.clone(),
                        format!("static_services.{svc}: expected a list of \"host:port\""),
                    );
                    continue;
                };
                let Some(Action::Proxy { service }) =
                    self.service(&Spanned::new(span.clone(), svc.clone()))
                else {
                    continue;
                };
                for item in list {
                    let parsed_addr = item.as_str().and_then(|a| {
                        let (h, p) = a.rsplit_once(':')?;
                        Some((
                            h.trim_matches(['[', ']']).to_string(),
                            p.parse::<u16>().ok()?,
                        ))
                    });
                    match parsed_addr {
                        Some((host, port)) if !host.is_empty() && port > 0 => {
                            statics.push(StaticInstance {
                                service: service.clone(),
                                host,
                                port,
                            })
                        }
                        _ => self.err(
                            span.clone(),
                            format!("static_services.{svc}: {item} is not \"host:port\""),
                        ),
                    }
                }
                self.upstreams
                    .entry(svc.to_ascii_lowercase().into_boxed_str())
                    .or_insert(service);
            }
        }
        if let Some(t) = parsed.upstreams.take() {
            for (k, v) in t.0 {
                if let Some(Action::Proxy { service }) = self.service(&v) {
                    self.upstreams
                        .insert(k.get_ref().to_ascii_lowercase().into_boxed_str(), service);
                }
            }
        }

        // maps
        let scope = Scope {
            names: Vec::new(),
            max_group: 9,
            what: "the last matching regex",
            slots: Some(slots.clone()),
        };
        let mut maps = Vec::new();
        let mut slot_map: Vec<Option<usize>> = vec![None; slots.len()];
        for m in std::mem::take(&mut parsed.map) {
            let span = m.span();
            let m = m.into_inner();
            let name = m
                .variable
                .get_ref()
                .trim_start_matches('$')
                .to_ascii_lowercase();
            let Some(slot) = slots.iter().position(|s| **s == *name) else {
                continue;
            };
            if slot_map[slot].is_some() {
                self.err(
                    m.variable.span(),
                    format!("variable {:?} is defined by two maps", m.variable.get_ref()),
                );
                continue;
            }
            let source = self.template(&m.source, "map source", &scope);
            let mut values = Vec::new();
            let mut keys = Vec::new();
            for e in &m.entries {
                let [k, v] = e.get_ref().as_slice() else {
                    self.err(e.span(), "a map entry is [key, value]");
                    continue;
                };
                if let Some(t) = self.template(v, "map value", &scope) {
                    keys.push((k.get_ref().clone(), values.len()));
                    values.push(t);
                }
            }
            let default = match &m.default {
                Some(d) => self.template(d, "map default", &scope).map(|t| {
                    values.push(t);
                    values.len() - 1
                }),
                None => None,
            };
            let built = match sc::build_map_keys(&keys, m.hostnames, &slots) {
                Ok(b) => b,
                Err((i, msg)) => {
                    let at = m.entries.get(i).map_or(span.clone(), |e| e.span());
                    self.err(at, msg);
                    continue;
                }
            };
            let Some(source) = source else { continue };
            let (exact, wild, regexes, regex_values) = built;
            slot_map[slot] = Some(maps.len());
            maps.push(sc::Map {
                source,
                slot,
                hostnames: m.hostnames,
                exact,
                wild,
                regexes,
                regex_values,
                values: values.into_boxed_slice(),
                default,
            });
        }
        self.check_map_cycles(&maps, &slot_map);
        (
            maps.into_boxed_slice(),
            slot_map.into_boxed_slice(),
            statics,
        )
    }

    /// A map whose source reads (through other maps) its own variable would
    /// recurse forever; nginx reports such cycles too.
    fn check_map_cycles(&mut self, maps: &[sc::Map], slot_map: &[Option<usize>]) {
        let deps: Vec<Vec<usize>> = maps
            .iter()
            .map(|m| {
                m.source
                    .slots()
                    .filter_map(|s| slot_map.get(s).copied().flatten())
                    .collect()
            })
            .collect();
        for start in 0..maps.len() {
            let mut stack = deps[start].clone();
            let mut seen = vec![false; maps.len()];
            while let Some(n) = stack.pop() {
                if n == start {
                    let name = self
                        .slots
                        .as_ref()
                        .map_or("?".into(), |s| s[maps[start].slot].to_string());
                    self.errors.push(ConfigError::new(
                        self.file,
                        0,
                        0,
                        format!("map ${name} reads itself through its source: a cycle"),
                    ));
                    break;
                }
                if !std::mem::replace(&mut seen[n], true) {
                    stack.extend(deps[n].iter().copied());
                }
            }
        }
    }

    /// Runs `f` with a script compiler over this compiler's slots, upstreams
    /// and error list.
    fn with_script<T>(&mut self, f: impl FnOnce(&mut ScriptCompiler<'_>) -> T) -> T {
        let ups = &self.upstreams;
        let lookup = |h: &str| ups.get(h.to_ascii_lowercase().as_str()).cloned();
        let mut s = ScriptCompiler {
            slots: self.slots.clone().unwrap_or_default(),
            errors: &mut self.errors,
            upstream: &lookup,
        };
        f(&mut s)
    }

    /// Script items with their file and line.
    fn script_items(&self, items: &[Spanned<String>]) -> Vec<(String, std::path::PathBuf, usize)> {
        items
            .iter()
            .map(|i| {
                (
                    i.get_ref().clone(),
                    self.file.to_path_buf(),
                    self.line(i.span().start),
                )
            })
            .collect()
    }

    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(ConfigError::at_offset(
            self.file,
            self.source,
            span.start,
            message,
        ));
    }

    /// 1-based line of byte `offset` (as [`crate::config::error::line_col`],
    /// which scans the text: called for every block it made compiling
    /// quadratic in the file size).
    fn line(&self, offset: usize) -> usize {
        line_at(&self.newlines, offset)
    }

    /// Compiles one server; its names are returned for the host tables.
    fn server(
        &mut self,
        line: usize,
        def: ServerDef,
        location_set: Option<RegexSet>,
    ) -> (Server, Vec<NameEntry>) {
        let mut scope = ServerScope {
            names: Vec::new(),
            max_group: 0,
        };
        let mut fallback_host: Option<String> = None;
        let mut entries = Vec::with_capacity(def.names.len());
        for name in &def.names {
            match parse_name(name.get_ref()) {
                Err(m) => self.err(name.span(), m),
                Ok(NameKind::Regex(p)) => {
                    // nginx: a server name regex with an uppercase letter is caseless
                    let caseless = p.bytes().any(|b| b.is_ascii_uppercase());
                    match self.regex(&p, caseless, name.span(), "server name regex") {
                        Some(rx) => {
                            scope.names.extend(rx.names().map(Box::from));
                            scope.max_group = scope.max_group.max(rx.groups);
                            if let Some(slots) = &self.slots {
                                self.host_rx_slots.push(sc::slot_groups(&rx, slots));
                            }
                            entries.push(NameEntry::Regex(rx, self.host_regexes));
                            self.host_regexes += 1;
                        }
                        None => continue,
                    }
                }
                Ok(kind) => {
                    if let NameKind::Exact(e) = &kind {
                        fallback_host.get_or_insert_with(|| e.clone());
                    }
                    entries.push(NameEntry::Plain(kind, name.span()));
                }
            }
        }
        let (ports, ssl_ports, default) = self.server_ports(&def);

        let errs = ErrCfg {
            pages: def.error_page.as_ref().map(|items| self.error_pages(items)),
            intercept: def.proxy_intercept_errors.unwrap_or(false),
            recursive: def.recursive_error_pages.unwrap_or(false),
        };
        let mut locations: Vec<Location> = Vec::with_capacity(def.location.len());
        let mut named: HashMap<String, usize> = HashMap::new();
        let mut pending: Vec<(usize, String, usize)> = Vec::new();
        let table = self.location_level(
            def.location,
            &scope,
            &mut locations,
            &mut named,
            &mut pending,
            location_set,
            None,
            &errs,
        );
        for (li, name, tline) in pending {
            match named.get(&name) {
                Some(&n) => {
                    if let Some(e) = locations[li].nginx.as_mut() {
                        e.try_files = Some(TryLast::Named(n));
                    }
                }
                None => self.errors.push(ConfigError::new(
                    self.file,
                    tline,
                    0,
                    format!(
                        "try_files names the location {name:?}, which this server does not have"
                    ),
                )),
            }
        }
        for (name, tline) in std::mem::take(&mut self.named_targets) {
            if !named.contains_key(&*name) {
                self.errors.push(ConfigError::new(
                    self.file,
                    tline,
                    0,
                    format!(
                        "error_page names the location {name:?}, which this server does not have"
                    ),
                ));
            }
        }
        let script = match &def.script {
            Some(items) => {
                let items = self.script_items(items);
                self.with_script(|s| s.script(&items, Level::Server))
            }
            None => Vec::new(),
        };
        let mut context = Box::new(self.placeholder_location(line));
        if self.slots.is_some() {
            context.nginx = Some(Box::new(LocExt {
                errors: errs.pages.clone(),
                intercept: errs.intercept,
                recursive: errs.recursive,
                ..LocExt::default()
            }));
        }
        let mut named: Vec<(Box<str>, usize)> = named
            .into_iter()
            .map(|(n, i)| (n.into_boxed_str(), i))
            .collect();
        named.sort_unstable();
        let server = Server {
            file: self.file_arc.clone(),
            line,
            names: def.names.into_iter().map(Spanned::into_inner).collect(),
            default,
            ports,
            ssl_ports,
            locations,
            table,
            fallback_host: fallback_host.unwrap_or_default().into_boxed_str(),
            script: script.into_boxed_slice(),
            context,
            named: named.into_boxed_slice(),
        };
        (server, entries)
    }

    /// A server's `ports`, `ssl_ports` and `default`, checked.
    fn server_ports(&mut self, def: &ServerDef) -> (Box<[u16]>, Box<[u16]>, DefaultOn) {
        let mut list = |v: &Option<Spanned<Vec<Spanned<i64>>>>, key: &str| -> Vec<u16> {
            let mut out = Vec::new();
            for p in v.iter().flat_map(|l| l.get_ref().iter()) {
                match u16::try_from(*p.get_ref()) {
                    Ok(n) if n > 0 => out.push(n),
                    _ => self.err(
                        p.span(),
                        format!("{key}: {} is not a port (1–65535)", p.get_ref()),
                    ),
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        };
        let ports = list(&def.ports, "ports");
        let ssl = list(&def.ssl_ports, "ssl_ports");
        if let Some(sp) = &def.ssl_ports {
            if def.ports.is_none() {
                self.err(
                    sp.span(),
                    "ssl_ports names some of the server's ports: set ports too",
                );
            } else if let Some(p) = ssl.iter().find(|p| !ports.contains(p)) {
                self.err(
                    sp.span(),
                    format!("ssl_ports: {p} is not one of the server's ports"),
                );
            }
        }
        let default = match def.default.as_ref().map(|d| (d.get_ref(), d.span())) {
            None | Some((DefaultDef::Flag(false), _)) => DefaultOn::No,
            Some((DefaultDef::Flag(true), _)) => DefaultOn::All,
            Some((DefaultDef::Ports(list), span)) => {
                let mut out = Vec::new();
                for p in list {
                    match u16::try_from(*p) {
                        Ok(n) if n > 0 && (ports.is_empty() || ports.contains(&n)) => out.push(n),
                        Ok(n) if n > 0 => self.err(
                            span.clone(),
                            format!("default: port {n} is not one of the server's ports"),
                        ),
                        _ => self.err(
                            span.clone(),
                            format!("default: {p} is not a port (1–65535)"),
                        ),
                    }
                }
                out.sort_unstable();
                out.dedup();
                if out.is_empty() {
                    DefaultOn::No
                } else {
                    DefaultOn::Ports(out.into_boxed_slice())
                }
            }
        };
        (ports.into_boxed_slice(), ssl.into_boxed_slice(), default)
    }

    /// The host tables: every server's, and one per port when the servers
    /// name two or more ports. A name two servers share is an error when
    /// they share a port (with at most one port: always, as before ports).
    fn host_tables(
        &mut self,
        servers: &[Server],
        names: Vec<Vec<NameEntry>>,
        server_lines: &[usize],
        default_spans: &[Option<Range<usize>>],
        host_set: Option<RegexSet>,
    ) -> (HostTable, Vec<PortHosts>) {
        let mut all_ports: Vec<u16> = servers
            .iter()
            .flat_map(|s| s.ports.iter().copied())
            .collect();
        all_ports.sort_unstable();
        all_ports.dedup();
        let by_port = all_ports.len() > 1;
        let every: Vec<usize> = (0..servers.len()).collect();
        let mut reported = std::collections::HashSet::new();

        // every server: conflicts are errors unless servers are split by port
        let mut b = HostTableBuilder::default();
        self.fill_hosts(
            &mut b,
            &every,
            &names,
            server_lines,
            (!by_port).then_some(None),
            &mut reported,
        );
        let default = if by_port {
            servers.iter().position(|s| s.default.any())
        } else {
            self.one_default(servers, &every, default_spans, server_lines, None)
        };
        let default = default.or(if servers.is_empty() { None } else { Some(0) });
        let hosts = b.build_with(default, host_set);
        if !by_port {
            return (hosts, Vec::new());
        }
        let mut tables = Vec::with_capacity(all_ports.len());
        for port in all_ports {
            let on: Vec<usize> = every
                .iter()
                .copied()
                .filter(|&i| servers[i].listens_on(port))
                .collect();
            let mut b = HostTableBuilder::default();
            let rx_global = self.fill_hosts(
                &mut b,
                &on,
                &names,
                server_lines,
                Some(Some(port)),
                &mut reported,
            );
            let default = self
                .one_default(servers, &on, default_spans, server_lines, Some(port))
                .or(on.first().copied());
            tables.push(PortHosts {
                port,
                hosts: b.build_with(default, None),
                rx_global: rx_global.into_boxed_slice(),
            });
        }
        (hosts, tables)
    }

    /// Adds the names of servers `on` (in order) to `b`; returns the
    /// every-server index of each regex added. `conflicts`: report a name
    /// two servers share (`Some(port)` names the port), else the first
    /// server keeps it.
    fn fill_hosts(
        &mut self,
        b: &mut HostTableBuilder,
        on: &[usize],
        names: &[Vec<NameEntry>],
        server_lines: &[usize],
        conflicts: Option<Option<u16>>,
        reported: &mut std::collections::HashSet<usize>,
    ) -> Vec<usize> {
        let mut rx_global = Vec::new();
        for &si in on {
            for entry in &names[si] {
                match entry {
                    NameEntry::Regex(rx, global) => {
                        b.add_regex(rx.clone(), si);
                        rx_global.push(*global);
                    }
                    NameEntry::Plain(kind, span) => {
                        let Err((other, msg)) = b.add(kind, si) else {
                            continue;
                        };
                        let Some(port) = conflicts else { continue };
                        if !reported.insert(span.start) {
                            continue;
                        }
                        let holder = if other == si {
                            "this server already has it".to_string()
                        } else {
                            format!("the server at line {} already has it", server_lines[other])
                        };
                        let on_port = port.map(|p| format!(" on port {p}")).unwrap_or_default();
                        self.err(span.clone(), format!("{msg}: {holder}{on_port}"));
                    }
                }
            }
        }
        rx_global
    }

    /// The default server among `on` (of `port`, or of every port), and an
    /// error for each second one.
    fn one_default(
        &mut self,
        servers: &[Server],
        on: &[usize],
        default_spans: &[Option<Range<usize>>],
        server_lines: &[usize],
        port: Option<u16>,
    ) -> Option<usize> {
        let mut first: Option<usize> = None;
        for &si in on {
            let d = &servers[si].default;
            let is_default = match port {
                Some(p) => d.covers(p),
                None => d.any(),
            };
            if !is_default {
                continue;
            }
            match first {
                None => first = Some(si),
                Some(f) => {
                    let span = default_spans[si].clone().unwrap_or(0..0);
                    let what = match port {
                        Some(p) => format!("two default servers for port {p}"),
                        None => "two default servers".to_string(),
                    };
                    self.err(
                        span,
                        format!(
                            "{what}: this one and the server at line {}; keep one",
                            server_lines[f]
                        ),
                    );
                }
            }
        }
        first
    }

    /// Compiles a level's `error_page` items (nginx arguments, one
    /// directive per item).
    fn error_pages(&mut self, items: &[Spanned<String>]) -> Arc<ErrorPages> {
        let mut pages = Vec::new();
        for item in items {
            let line = self.line(item.span().start);
            let text = format!("error_page {};", item.get_ref());
            let args = match crate::config::nginx::parse::parse_str(&text, self.file, line) {
                Ok(ds) if ds.len() == 1 && ds[0].block.is_none() => ds[0].args.clone(),
                Ok(_) => {
                    self.err(
                        item.span(),
                        format!(
                            "error_page {:?}: one directive's arguments per item",
                            item.get_ref()
                        ),
                    );
                    continue;
                }
                Err(e) => {
                    self.errors.push(e);
                    continue;
                }
            };
            let spec = match errpage::parse_args(&args) {
                Ok(s) => s,
                Err(m) => {
                    self.err(item.span(), format!("error_page {:?}: {m}", item.get_ref()));
                    continue;
                }
            };
            let d = self.directive(
                "error_page",
                &Spanned::new(item.span(), spec.target.clone()),
            );
            let named: Option<Box<str>> = spec
                .target
                .starts_with('@')
                .then(|| spec.target.as_str().into());
            if let Some(n) = &named {
                self.named_targets.push((n.clone(), line));
            }
            for (status, overwrite) in spec.codes {
                let Some(target) =
                    self.with_script(|s| s.template(&d, &spec.target, "error_page target"))
                else {
                    break;
                };
                pages.push(ErrorPage {
                    status,
                    overwrite,
                    target,
                    named: named.clone(),
                });
            }
        }
        Arc::new(ErrorPages::new(pages))
    }

    /// Stands for a server in decisions taken before a location is chosen.
    fn placeholder_location(&self, line: usize) -> Location {
        Location {
            file: self.file_arc.clone(),
            line,
            pattern: "(server)".to_string(),
            kind: LocationKind::Prefix,
            path: String::new(),
            action: Action::Engine,
            rewrite: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            add_response_headers: Vec::new(),
            connect_timeout: None,
            read_timeout: None,
            write_timeout: None,
            retries: None,
            proxy_rewrites: None,
            uses_captures: false,
            nginx: None,
        }
    }

    /// Compiles one level of locations (a server's, or a location's nested
    /// ones) into `locations`, and returns the level's lookup table.
    #[allow(clippy::too_many_arguments)]
    fn location_level(
        &mut self,
        defs: Vec<Spanned<LocationDef>>,
        scope: &ServerScope,
        locations: &mut Vec<Location>,
        named: &mut HashMap<String, usize>,
        pending: &mut Vec<(usize, String, usize)>,
        location_set: Option<RegexSet>,
        parent: Option<(LocationKind, String, usize)>,
        inherited: &ErrCfg,
    ) -> super::location::LocationTable {
        let mut table = LocationTableBuilder::default();
        let mut regex_seen: HashMap<(bool, String), usize> = HashMap::new();
        for def in defs {
            let loc_line = self.line(def.span().start);
            let mut def = def.into_inner();
            let children = std::mem::take(&mut def.location);
            let try_named = def.try_files.as_ref().and_then(|t| {
                let last = t.get_ref().last()?;
                let name = last.get_ref().strip_prefix('@')?;
                Some((format!("@{name}"), self.line(last.span().start)))
            });
            let is_named =
                self.slots.is_some() && def.pattern.get_ref().trim_start().starts_with('@');
            if let (Some((pk, ppath, pline)), false) = (&parent, is_named) {
                if *pk == LocationKind::Exact {
                    self.errors.push(ConfigError::new(
                        self.file,
                        loc_line,
                        0,
                        format!(
                            "location inside the exact location at line {pline}: nginx allows none"
                        ),
                    ));
                    continue;
                }
                if let Ok((k, p)) = parse_match(def.pattern.get_ref()) {
                    if !k.is_regex() && !pk.is_regex() && !p.starts_with(ppath.as_str()) {
                        self.errors.push(ConfigError::new(
                            self.file,
                            loc_line,
                            0,
                            format!("location {p:?} is outside the location {ppath:?} (line {pline}) it is nested in"),
                        ));
                        continue;
                    }
                }
            }
            let errs = ErrCfg {
                pages: match &def.error_page {
                    Some(items) => Some(self.error_pages(items)),
                    None => inherited.pages.clone(),
                },
                intercept: def.proxy_intercept_errors.unwrap_or(inherited.intercept),
                recursive: def.recursive_error_pages.unwrap_or(inherited.recursive),
            };
            let Some((loc, span, rx)) = self.location(loc_line, def, scope, &errs) else {
                continue;
            };
            let li = locations.len();
            if is_named {
                if named.insert(loc.path.clone(), li).is_some() {
                    self.err(span, format!("duplicate named location {:?}", loc.path));
                }
                locations.push(loc);
                continue;
            }
            let dup = if loc.kind.is_regex() {
                regex_seen.insert(
                    (loc.kind == LocationKind::RegexCaseless, loc.path.clone()),
                    li,
                )
            } else {
                let proxies = matches!(loc.action, Action::Proxy { .. })
                    || loc.nginx.as_ref().is_some_and(|e| e.proxy.is_some());
                table.add_static(loc.kind, &loc.path, li, proxies).err()
            };
            if let Some(other) = dup {
                let what = match loc.kind {
                    LocationKind::Exact => "exact path",
                    LocationKind::Regex | LocationKind::RegexCaseless => "regex",
                    LocationKind::Prefix | LocationKind::PrefixNoRegex => {
                        "prefix (\"/p\" and \"^~ /p\" are the same prefix)"
                    }
                };
                self.err(
                    span,
                    format!(
                        "duplicate location {:?}: the location at line {} has the same {what}",
                        loc.pattern, locations[other].line
                    ),
                );
            }
            if let Some(rx) = rx {
                table.add_regex(rx, li);
            }
            let (kind, path) = (loc.kind, loc.path.clone());
            locations.push(loc);
            if let Some((name, tline)) = try_named {
                pending.push((li, name, tline));
            }
            if !children.is_empty() {
                let t = self.location_level(
                    children,
                    scope,
                    locations,
                    named,
                    pending,
                    None,
                    Some((kind, path, loc_line)),
                    &errs,
                );
                if let Some(e) = locations[li].nginx.as_mut() {
                    e.children = Some(t);
                }
            }
        }
        table.build_with(location_set)
    }

    /// Compiles a regex and checks its group names; `None` after an error.
    fn regex(
        &mut self,
        pattern: &str,
        caseless: bool,
        span: Range<usize>,
        what: &str,
    ) -> Option<Rx> {
        // Production rules repeat the same regex in many servers (static
        // files, health checks): compile each distinct one once and share it.
        let key = (caseless, pattern.to_string());
        let rx = match self.regexes.get(&key) {
            Some(rx) => rx.clone(),
            None => match Rx::new(pattern, caseless) {
                Ok(rx) => {
                    self.regexes.insert(key, rx.clone());
                    rx
                }
                Err(e) => {
                    self.err(span, format!("{what} {pattern:?} does not compile: {e}"));
                    return None;
                }
            },
        };
        let bad: Vec<String> = rx
            .names()
            .filter(|n| {
                BUILTINS.contains(n)
                    || ["http_", "cookie_", "arg_"]
                        .iter()
                        .any(|p| n.starts_with(p))
            })
            .map(str::to_string)
            .collect();
        if !bad.is_empty() {
            self.err(
                span,
                format!(
                    "{what} {pattern:?}: named capture {:?} would hide the variable ${}; rename it",
                    bad[0], bad[0]
                ),
            );
            return None;
        }
        Some(rx)
    }

    /// Checks and compiles one location. Returns the location, the span of
    /// its `match` (for duplicate errors) and its regex when it is one.
    fn location(
        &mut self,
        line: usize,
        def: LocationDef,
        server: &ServerScope,
        errs: &ErrCfg,
    ) -> Option<(Location, Range<usize>, Option<Rx>)> {
        let errors_before = self.errors.len();
        let pattern_span = def.pattern.span();
        let pattern = def.pattern.get_ref().clone();
        let engine = self.slots.is_some();
        let is_named = engine && pattern.trim_start().starts_with('@');
        let (kind, path) = if is_named {
            (LocationKind::Prefix, pattern.trim().to_string())
        } else {
            match parse_match(&pattern) {
                Ok((k, p)) => (k, p.to_string()),
                Err(m) => {
                    self.err(pattern_span.clone(), m);
                    (LocationKind::Prefix, String::new())
                }
            }
        };
        let loc_rx = if kind.is_regex() {
            let caseless = kind == LocationKind::RegexCaseless;
            self.regex(&path, caseless, pattern_span.clone(), "location regex")
        } else {
            None
        };
        self.check_one_action(&def, &pattern, &pattern_span);
        if def.service.is_none() && !engine {
            self.check_proxy_only_keys(&def);
        }
        let nginx = if engine {
            if let Some(rw) = &def.rewrite {
                self.err(
                    rw.span(),
                    "with nginx features in use, write rewrite = [re, repl] as script = [\"rewrite re repl break\"]",
                );
            }
            Some(Box::new(self.loc_ext(
                &def,
                kind,
                is_named,
                loc_rx.as_ref(),
                errs,
            )))
        } else {
            for (key, span) in [
                ("proxy_pass", def.proxy_pass.as_ref().map(|s| s.span())),
                ("try_files", def.try_files.as_ref().map(|s| s.span())),
            ] {
                if let Some(span) = span {
                    self.err(
                        span,
                        format!("{key} needs the nginx features (internal error)"),
                    );
                }
            }
            None
        };

        // The rewrite regex comes first: its groups are in scope for the
        // templates. Named captures of every regex in play are visible;
        // numbered ones come from the last regex that matched.
        let rewrite_rx = self.rewrite_regex(&def);
        let mut names = server.names.clone();
        for rx in [loc_rx.as_ref(), rewrite_rx.as_ref().map(|(rx, _)| rx)]
            .into_iter()
            .flatten()
        {
            names.extend(rx.names().map(Box::from));
        }
        let (max_group, what) = match (&rewrite_rx, &loc_rx) {
            (Some((rx, _)), _) => (rx.groups, "the rewrite regex"),
            (None, Some(rx)) => (rx.groups, "the location regex"),
            (None, None) => (server.max_group, "the server name regexes"),
        };
        let scope = match &self.slots {
            Some(slots) => Scope {
                names,
                max_group: 9,
                what: "the last matching regex",
                slots: Some(slots.clone()),
            },
            None => Scope {
                names,
                max_group,
                what,
                slots: None,
            },
        };
        let rewrite = rewrite_rx.and_then(|(rx, repl)| {
            let target = RewriteTarget::parse(repl.get_ref(), &scope)
                .map_err(|e| self.template_err(&repl, "rewrite replacement", e))
                .ok()?;
            Some(Rewrite {
                pattern: rx_source(&def, 0),
                replacement: repl.into_inner(),
                regex: rx,
                target,
            })
        });
        let action = self.action(&def, &scope);
        let set_headers = self.header_templates(def.set_headers.as_ref(), "set_headers", &scope);
        let add_response_headers = self.header_templates(
            def.add_response_headers.as_ref(),
            "add_response_headers",
            &scope,
        );
        let mut remove_headers = Vec::new();
        for h in def.remove_headers.iter().flatten() {
            if let Some(name) = self.header_name(h, "remove_headers") {
                remove_headers.push(name);
            }
        }
        let connect_timeout = self.duration(def.connect_timeout.as_ref(), "connect_timeout");
        let read_timeout = self.duration(def.read_timeout.as_ref(), "read_timeout");
        let write_timeout = self.duration(def.write_timeout.as_ref(), "write_timeout");
        let retries = def
            .retries
            .as_ref()
            .and_then(|r| match usize::try_from(*r.get_ref()) {
                Ok(n) if n <= 10 => Some(n),
                _ => {
                    self.err(
                        r.span(),
                        format!("retries {} must be between 0 and 10", r.get_ref()),
                    );
                    None
                }
            });
        let proxy_rewrites = self.proxy_rewrites(&def);

        if self.errors.len() != errors_before {
            return None;
        }
        let action = action?;
        let uses_captures = set_headers.iter().any(|(_, t)| t.uses_captures())
            || add_response_headers.iter().any(|(_, t)| t.uses_captures())
            || rewrite.as_ref().is_some_and(|r| r.target.uses_captures())
            || match &action {
                Action::Proxy { .. } => false,
                Action::Return { body, headers, .. } => {
                    body.uses_captures() || headers.iter().any(|(_, t)| t.uses_captures())
                }
                Action::Redirect { to, .. } => to.uses_captures(),
                Action::Engine => false,
            };
        Some((
            Location {
                file: self.file_arc.clone(),
                line,
                pattern,
                kind,
                path,
                action,
                rewrite,
                set_headers,
                remove_headers,
                add_response_headers,
                connect_timeout,
                read_timeout,
                write_timeout,
                retries,
                proxy_rewrites,
                uses_captures,
                nginx,
            },
            pattern_span,
            loc_rx,
        ))
    }

    /// The nginx features of one location (engine mode).
    fn loc_ext(
        &mut self,
        def: &LocationDef,
        kind: LocationKind,
        is_named: bool,
        loc_rx: Option<&Rx>,
        errs: &ErrCfg,
    ) -> LocExt {
        let proxy = def.proxy_pass.as_ref().and_then(|pp| {
            let d = self.directive("proxy_pass", pp);
            let no_uri = kind.is_regex() || is_named;
            self.with_script(|s| s.proxy_pass(&d, no_uri)).map(Arc::new)
        });
        let script = match &def.script {
            Some(items) => {
                let items = self.script_items(items);
                self.with_script(|s| s.script(&items, Level::Location))
            }
            None => Vec::new(),
        };
        let try_files = def.try_files.as_ref().and_then(|t| {
            let Some(last) = t.get_ref().last() else {
                self.err(t.span(), "try_files needs at least one item");
                return None;
            };
            let text = last.get_ref();
            if text.starts_with('@') {
                None // resolved once the server's named locations are known
            } else if let Some(code) = text.strip_prefix('=') {
                match code.parse::<u16>() {
                    Ok(c) if (100..=999).contains(&c) => Some(TryLast::Code(c)),
                    _ => {
                        self.err(
                            last.span(),
                            format!("try_files {text:?}: not a status code"),
                        );
                        None
                    }
                }
            } else {
                let d = self.directive("try_files", last);
                self.with_script(|s| s.template(&d, text, "try_files"))
                    .map(TryLast::Uri)
            }
        });
        let rx_slots = match (loc_rx, &self.slots) {
            (Some(rx), Some(slots)) => sc::slot_groups(rx, slots),
            _ => Box::default(),
        };
        LocExt {
            script: script.into_boxed_slice(),
            proxy,
            try_files,
            internal: def.internal.unwrap_or(false),
            children: None,
            rx_slots,
            errors: errs.pages.clone(),
            intercept: errs.intercept,
            recursive: errs.recursive,
        }
    }

    /// A one-argument nginx directive standing for a routes.toml value, so
    /// that script errors name its line.
    fn directive(&self, name: &str, v: &Spanned<String>) -> crate::config::nginx::parse::Directive {
        crate::config::nginx::parse::Directive {
            name: name.to_string(),
            args: vec![v.get_ref().clone()],
            file: self.file_arc.clone(),
            line: self.line(v.span().start),
            block: None,
            notes: Vec::new(),
        }
    }

    /// Exactly one of service, return and redirect.
    fn check_one_action(&mut self, def: &LocationDef, pattern: &str, pattern_span: &Range<usize>) {
        let present: Vec<(&str, Range<usize>)> = [
            ("service", def.service.as_ref().map(|s| s.span())),
            ("return", def.ret.as_ref().map(|s| s.span())),
            ("redirect", def.redirect.as_ref().map(|s| s.span())),
            ("proxy_pass", def.proxy_pass.as_ref().map(|s| s.span())),
        ]
        .into_iter()
        .filter_map(|(n, span)| span.map(|s| (n, s)))
        .collect();
        match present.as_slice() {
            [] if self.slots.is_some() => {}
            [] => self.err(
                pattern_span.clone(),
                format!(
                    "location {pattern:?} has no action: set one of service, return or redirect"
                ),
            ),
            [_] => {}
            [_, (_, second), ..] => {
                let names: Vec<&str> = present.iter().map(|(n, _)| *n).collect();
                self.err(
                    second.clone(),
                    format!(
                        "location {pattern:?} has {} actions ({}): keep exactly one",
                        present.len(),
                        names.join(", ")
                    ),
                );
            }
        }
    }

    /// `proxy_redirect` and `proxy_cookie_domain`: `None` when neither
    /// has a pair (absent or `"off"`).
    fn proxy_rewrites(
        &mut self,
        def: &LocationDef,
    ) -> Option<Arc<crate::routing::rewrite::ProxyRewrites>> {
        use crate::config::routes::ReplaceDef;
        use crate::routing::rewrite::{ProxyRewrites, Replace};
        let mut out = ProxyRewrites::default();
        for (key, def, slot) in [
            ("proxy_redirect", &def.proxy_redirect, &mut out.redirect),
            (
                "proxy_cookie_domain",
                &def.proxy_cookie_domain,
                &mut out.cookie_domain,
            ),
        ] {
            let Some(def) = def else { continue };
            match def.get_ref() {
                ReplaceDef::Word(w) if w == "off" => {}
                ReplaceDef::Word(w) => self.err(
                    def.span(),
                    format!("{key} = {w:?}: write \"off\" or a list of [from, to] pairs"),
                ),
                ReplaceDef::Pairs(pairs) => {
                    for pair in pairs {
                        let parsed = match pair.as_slice() {
                            [from, to] => Replace::parse(from, to),
                            _ => Err(format!("{pair:?} is not a [from, to] pair of two strings")),
                        };
                        match parsed {
                            Ok(r) => slot.push(r),
                            Err(e) => self.err(def.span(), format!("{key}: {e}")),
                        }
                    }
                }
            }
        }
        (!out.is_empty()).then(|| Arc::new(out))
    }

    /// Keys that only mean something when the location proxies.
    fn check_proxy_only_keys(&mut self, def: &LocationDef) {
        let first_key =
            |t: &Option<OrderedTable>| t.as_ref().and_then(|t| t.0.first()).map(|(k, _)| k.span());
        let keys = [
            ("set_headers", first_key(&def.set_headers)),
            (
                "remove_headers",
                def.remove_headers
                    .as_ref()
                    .and_then(|v| v.first())
                    .map(|s| s.span()),
            ),
            ("add_response_headers", first_key(&def.add_response_headers)),
            (
                "connect_timeout",
                def.connect_timeout.as_ref().map(|s| s.span()),
            ),
            ("read_timeout", def.read_timeout.as_ref().map(|s| s.span())),
            (
                "write_timeout",
                def.write_timeout.as_ref().map(|s| s.span()),
            ),
            ("retries", def.retries.as_ref().map(|s| s.span())),
        ];
        for (key, span) in keys {
            let Some(span) = span else { continue };
            let hint = if key == "add_response_headers" && def.ret.is_some() {
                "; put response headers in return = { headers = { … } }"
            } else {
                ""
            };
            self.err(
                span,
                format!("{key} applies only to a proxied location (service = …){hint}"),
            );
        }
    }

    /// The checked rewrite regex and replacement text, if any.
    fn rewrite_regex(&mut self, def: &LocationDef) -> Option<(Rx, Spanned<String>)> {
        let rw = def.rewrite.as_ref()?;
        let items = rw.get_ref();
        if def.service.is_none() {
            self.err(
                rw.span(),
                "rewrite applies to a proxied location (service = …); \
                 to answer with a redirect, use a regex match and redirect = { … }",
            );
            return None;
        }
        let [re, repl] = items.as_slice() else {
            self.err(
                rw.span(),
                format!(
                    "rewrite must be [regex, replacement], got {} item(s)",
                    items.len()
                ),
            );
            return None;
        };
        let rx = self.regex(re.get_ref(), false, re.span(), "rewrite regex");
        let r = repl.get_ref();
        if r.is_empty() || r == "?" {
            self.err(repl.span(), "rewrite replacement is empty");
            return None;
        }
        if r.starts_with("http://") || r.starts_with("https://") || r.starts_with("$scheme") {
            self.err(
                repl.span(),
                format!(
                    "rewrite replacement {r:?} would be a redirect in nginx; \
                     use a regex match with redirect = {{ to = … }} instead"
                ),
            );
            return None;
        }
        Some((rx?, repl.clone()))
    }

    /// The action (the first present one; [`Self::check_one_action`] reports extras).
    fn action(&mut self, def: &LocationDef, scope: &Scope) -> Option<Action> {
        if let Some(s) = &def.service {
            return self.service(s);
        }
        if let Some(r) = &def.ret {
            let r = r.get_ref();
            let status = *r.status.get_ref();
            if !(100..=599).contains(&status) {
                self.err(
                    r.status.span(),
                    format!("return status {status} is not an HTTP status (100..=599)"),
                );
            }
            let body = match &r.body {
                Some(b) => self.template(b, "return body", scope),
                None => Template::parse("", scope).ok(),
            };
            let headers = self.header_templates(r.headers.as_ref(), "return headers", scope);
            return Some(Action::Return {
                status: u16::try_from(status).ok()?,
                body: body?,
                headers,
            });
        }
        let Some(r) = def.redirect.as_ref() else {
            // proxy_pass, try_files or the script decide (engine mode)
            return self.slots.is_some().then_some(Action::Engine);
        };
        let r = r.get_ref();
        let status = r.status.as_ref().map_or(302, |s| *s.get_ref());
        if ![301, 302, 303, 307, 308].contains(&status) {
            let span = r.status.as_ref().map_or(r.to.span(), |s| s.span());
            self.err(
                span,
                format!(
                    "redirect status {status} is not a redirect: use 301, 302, 303, 307 or 308"
                ),
            );
        }
        if r.to.get_ref().is_empty() {
            self.err(r.to.span(), "redirect target is empty");
        }
        let to = self.template(&r.to, "redirect to", scope)?;
        Some(Action::Redirect {
            status: u16::try_from(status).ok()?,
            to,
        })
    }

    fn service(&mut self, s: &Spanned<String>) -> Option<Action> {
        let name = s.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            self.err(
                s.span(),
                format!("service {name:?} is not a service name (letters, digits, '-', '_', '.')"),
            );
            return None;
        }
        let id = match self.service_ids.get(name) {
            Some(id) => id.clone(),
            None => {
                let id: Arc<str> = Arc::from(name.as_str());
                self.service_ids.insert(name.clone(), id.clone());
                self.services.push(id.clone());
                id
            }
        };
        Some(Action::Proxy { service: id })
    }

    fn template(&mut self, t: &Spanned<String>, what: &str, scope: &Scope) -> Option<Template> {
        Template::parse(t.get_ref(), scope)
            .map_err(|e| self.template_err(t, what, e))
            .ok()
    }

    fn template_err(&mut self, t: &Spanned<String>, what: &str, e: TemplateError) {
        // point at the variable when the TOML string holds the text verbatim
        let span = t.span();
        let start = span.start + 1;
        let offset = match self.source.get(start..start + t.get_ref().len()) {
            Some(raw) if raw == t.get_ref() => start + e.offset,
            _ => span.start,
        };
        self.errors.push(ConfigError::at_offset(
            self.file,
            self.source,
            offset,
            format!("{what}: {}", e.message),
        ));
    }

    fn header_name(&mut self, h: &Spanned<String>, what: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(
                    h.span(),
                    format!("{what}: {:?} is not a valid HTTP header name", h.get_ref()),
                );
                None
            }
        }
    }

    fn header_templates(
        &mut self,
        table: Option<&OrderedTable>,
        what: &str,
        scope: &Scope,
    ) -> Vec<(HeaderName, Template)> {
        let mut out: Vec<(HeaderName, Template)> = Vec::new();
        for (k, v) in table.iter().flat_map(|t| t.0.iter()) {
            let name = self.header_name(k, what);
            let value = self.template(v, &format!("{what} {:?}", k.get_ref()), scope);
            if let Some(name) = &name {
                if out.iter().any(|(n, _)| n == name) {
                    self.err(
                        k.span(),
                        format!(
                            "{what}: header {:?} is set twice (names are case-insensitive)",
                            k.get_ref()
                        ),
                    );
                }
            }
            if let (Some(name), Some(value)) = (name, value) {
                out.push((name, value));
            }
        }
        out
    }

    fn duration(&mut self, d: Option<&Spanned<String>>, key: &str) -> Option<Duration> {
        let d = d?;
        match humantime::parse_duration(d.get_ref()) {
            Ok(v) if !v.is_zero() => Some(v),
            _ => {
                self.err(
                    d.span(),
                    format!(
                        "{key} {:?} is not a positive duration (e.g. \"1s\", \"250ms\")",
                        d.get_ref()
                    ),
                );
                None
            }
        }
    }
}

/// Jobs per thread below which [`precompile`] does not use more threads.
const JOBS_PER_THREAD: usize = 64;

/// What [`precompile`] built: every regex that compiles, by
/// (caseless, pattern), and the regex sets of the host table and of each
/// server's locations (by server index).
#[derive(Default)]
struct Precompiled {
    regexes: HashMap<(bool, String), Rx>,
    host_set: Option<RegexSet>,
    location_sets: HashMap<usize, RegexSet>,
}

/// One piece of [`precompile`] work.
enum Job {
    Regex(bool, String),
    /// A set: `None` for the host table, else the server's locations.
    Set(Option<usize>, Vec<String>),
}

enum Built {
    Regex((bool, String), Rx),
    Set(Option<usize>, RegexSet),
}

/// Compiles every distinct regex of the file (server names, location
/// matches, rewrites) and every regex set the tables will use, ahead of the
/// checking pass and on every core: that is most of a large file's compile
/// time, and each piece is independent. Only what compiles is kept; the
/// checking pass compiles anything missing itself (and reports its errors in
/// file order), and a table uses a set only if its patterns are exactly the
/// table's regexes.
fn precompile(parsed: &RoutesFile) -> Precompiled {
    let mut keys: Vec<(bool, String)> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut host_set: Vec<String> = Vec::new();
    for (si, server) in parsed.server.iter().enumerate() {
        let server = server.get_ref();
        for name in &server.names {
            if let Ok(NameKind::Regex(p)) = parse_name(name.get_ref()) {
                // as Compiler::server: an uppercase letter makes it caseless
                let caseless = p.bytes().any(|b| b.is_ascii_uppercase());
                host_set.push(set_pattern(&p, caseless));
                keys.push((caseless, p));
            }
        }
        let mut location_set = Vec::new();
        for loc in &server.location {
            let loc = loc.get_ref();
            if let Ok((kind, path)) = parse_match(loc.pattern.get_ref()) {
                if kind.is_regex() {
                    let caseless = kind == LocationKind::RegexCaseless;
                    location_set.push(set_pattern(path, caseless));
                    keys.push((caseless, path.to_string()));
                }
            }
            if let Some([re, _]) = loc.rewrite.as_ref().map(|r| r.get_ref().as_slice()) {
                keys.push((false, re.get_ref().clone()));
            }
        }
        if location_set.len() >= SET_THRESHOLD {
            jobs.push(Job::Set(Some(si), location_set));
        }
    }
    if host_set.len() >= SET_THRESHOLD {
        jobs.push(Job::Set(None, host_set));
    }
    // the largest sets first, so that no thread ends with a long one alone
    jobs.sort_by_key(|j| match j {
        Job::Set(_, p) => std::cmp::Reverse(p.len()),
        Job::Regex(..) => std::cmp::Reverse(0),
    });
    keys.sort_unstable();
    keys.dedup();
    jobs.extend(keys.into_iter().map(|(ci, p)| Job::Regex(ci, p)));

    let run = |job: &Job| match job {
        Job::Regex(ci, p) => Rx::new(p, *ci)
            .ok()
            .map(|rx| Built::Regex((*ci, p.clone()), rx)),
        Job::Set(at, patterns) => build_set(patterns).map(|set| Built::Set(*at, set)),
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len() / JOBS_PER_THREAD)
        .max(1);
    let built: Vec<Built> = if threads == 1 {
        jobs.iter().filter_map(run).collect()
    } else {
        let next = AtomicUsize::new(0);
        let work = || {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break out };
                out.extend(run(job));
            }
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut all = work();
            // a helper cannot panic (errors are values); if one did, its
            // jobs are simply done again by the checking pass
            all.extend(helpers.into_iter().filter_map(|h| h.join().ok()).flatten());
            all
        })
    };
    let mut out = Precompiled::default();
    for b in built {
        match b {
            Built::Regex(key, rx) => {
                out.regexes.insert(key, rx);
            }
            Built::Set(None, set) => out.host_set = Some(set),
            Built::Set(Some(si), set) => {
                out.location_sets.insert(si, set);
            }
        }
    }
    out
}

/// Offsets of the line breaks of `source`.
fn newlines(source: &str) -> Vec<usize> {
    source
        .bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'\n').then_some(i))
        .collect()
}

/// 1-based line of byte `offset`, given the offsets of the line breaks.
fn line_at(newlines: &[usize], offset: usize) -> usize {
    newlines.partition_point(|&nl| nl < offset) + 1
}

/// The text of rewrite item `i`.
fn rx_source(def: &LocationDef, i: usize) -> String {
    def.rewrite
        .as_ref()
        .and_then(|r| r.get_ref().get(i))
        .map(|s| s.get_ref().clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::line_col;

    #[test]
    fn line_index_agrees_with_line_col() {
        for text in ["", "a", "\n", "ab\ncd\n\nü\n", "[[server]]\nnames = []\n"] {
            let nl = newlines(text);
            // spans start at char boundaries; past the end is clamped
            let offsets =
                (0..=text.len() + 2).filter(|&o| o > text.len() || text.is_char_boundary(o));
            for offset in offsets {
                assert_eq!(
                    line_at(&nl, offset),
                    line_col(text, offset).0,
                    "{text:?} at {offset}"
                );
            }
        }
    }
}
