//! The rewrite engine's program, compiled on the control plane: nginx
//! rewrite-module directives (`rewrite`, `set`, `if`, `return`, `break`),
//! `map` variables and `proxy_pass` targets. Run by `exec.rs` on the
//! request path.
//!
//! Scripts are written in nginx syntax (routes.toml `script = [...]`, or
//! straight from an imported nginx.conf) and parsed with the nginx lexer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::error::ConfigError;
use crate::config::nginx::parse::{parse_str, Directive};

use super::host::{HostTable, HostTableBuilder, NameKind};
use super::pattern::{FirstMatch, Rx};
use super::template::{RewriteTarget, Scope, Template};

/// How a `rewrite` ends the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    /// No flag: the script goes on; the location is searched again after it.
    None,
    Last,
    Break,
    Redirect,
    Permanent,
}

/// Where a regex's named groups are stored: (group, slot) pairs.
pub(crate) type SlotGroups = Box<[(usize, usize)]>;

/// A map's key tables: exact, wildcard, regexes, and per regex its value
/// and slots.
pub(crate) type MapKeys = (
    HashMap<Box<[u8]>, usize>,
    Option<HostTable>,
    FirstMatch,
    Box<[(usize, SlotGroups)]>,
);

/// A regex and where its named groups are stored (group, slot).
#[derive(Debug)]
pub(crate) struct RegexRef {
    pub rx: Rx,
    pub slots: Box<[(usize, usize)]>,
}

#[derive(Debug)]
pub(crate) enum Step {
    Rewrite {
        re: RegexRef,
        target: RewriteTarget,
        /// The whole replacement, for redirects.
        whole: Template,
        flag: Flag,
        /// Answers a redirect with this status instead of changing the URI.
        redirect: Option<u16>,
    },
    Set {
        slot: usize,
        value: Template,
    },
    Return {
        status: u16,
        /// URL for redirect statuses, else the body.
        text: Option<Template>,
    },
    Break,
    If {
        cond: Cond,
        body: Box<[Step]>,
        /// `proxy_pass` inside the `if` block (location level only).
        proxy: Option<Arc<ProxyPass>>,
    },
}

#[derive(Debug)]
pub(crate) enum Cond {
    /// True unless empty or `"0"`.
    Var(Template),
    Eq(Template, Template, bool),
    Regex(Template, RegexRef, bool),
    /// `-f`/`-d`/`-e`/`-x` (negated with `!`): laneway serves no files, so
    /// every file test is false.
    File(bool),
}

/// A compiled `proxy_pass`.
#[derive(Debug)]
pub(crate) struct ProxyPass {
    pub source: String,
    pub kind: PassKind,
}

#[derive(Debug)]
pub(crate) enum PassKind {
    /// `http://name[/uri]`: the service, and the URI part when present.
    Fixed {
        service: Arc<str>,
        uri: Option<Box<[u8]>>,
    },
    /// With variables: rendered per request; the host names an upstream.
    Dynamic(Template),
}

/// A compiled `map`.
#[derive(Debug)]
pub(crate) struct Map {
    pub source: Template,
    pub slot: usize,
    pub hostnames: bool,
    /// Lowercased exact keys → value index.
    pub exact: HashMap<Box<[u8]>, usize>,
    /// Wildcard keys (`hostnames`) → value index.
    pub wild: Option<HostTable>,
    pub regexes: FirstMatch,
    /// Per regex: its value index and group → slot pairs.
    pub regex_values: Box<[(usize, SlotGroups)]>,
    pub values: Box<[Template]>,
    pub default: Option<usize>,
}

/// Everything the rewrite engine shares across servers.
#[derive(Debug, Default)]
pub(crate) struct Engine {
    pub slots: Arc<[Box<str>]>,
    /// Slot → the map that computes it.
    pub slot_map: Box<[Option<usize>]>,
    pub maps: Box<[Map]>,
    /// Upstream name (lowercased) → service.
    pub upstreams: HashMap<Box<str>, Arc<str>>,
    /// Group → slot pairs of each server-name regex, in host-table order.
    pub host_rx_slots: Box<[SlotGroups]>,
}

/// Named groups of a regex pattern, lowercased: `(?<n>`, `(?P<n>`.
pub(crate) fn group_names(pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = pattern.as_bytes();
    let mut i = 0;
    while i + 3 < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == b'(' && b[i + 1] == b'?' {
            let start = match (b[i + 2], b.get(i + 3)) {
                (b'<', Some(c)) if *c != b'=' && *c != b'!' => Some(i + 3),
                (b'P', Some(b'<')) => Some(i + 4),
                _ => None,
            };
            if let Some(s) = start {
                let len = b[s..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                if len > 0 {
                    out.push(pattern[s..s + len].to_ascii_lowercase());
                }
            }
        }
        i += 1;
    }
    out
}

/// Slot of each named group of `rx`.
pub(crate) fn slot_groups(rx: &Rx, slots: &[Box<str>]) -> Box<[(usize, usize)]> {
    rx.names()
        .filter_map(|n| {
            let g = rx.group_of(n)?;
            let s = slots.iter().position(|x| **x == *n)?;
            Some((g, s))
        })
        .collect()
}

/// Variable names a script defines (`set`) and the regexes it holds, for
/// the slot table; parse errors are reported by [`ScriptCompiler`] later.
pub(crate) fn script_names(src: &str, out: &mut Vec<String>) {
    fn walk(ds: &[Directive], out: &mut Vec<String>) {
        for d in ds {
            match d.name.as_str() {
                "set" => {
                    if let Some(v) = d.args.first().and_then(|a| a.strip_prefix('$')) {
                        out.push(v.to_ascii_lowercase());
                    }
                }
                "rewrite" => {
                    if let Some(r) = d.args.first() {
                        out.extend(group_names(r));
                    }
                }
                "if" => {
                    for a in &d.args {
                        out.extend(group_names(a));
                    }
                    walk(d.block.as_deref().unwrap_or_default(), out);
                }
                _ => {}
            }
        }
    }
    if let Ok(ds) = parse_str(src, Path::new(""), 1) {
        walk(&ds, out);
    }
}

/// Resolves a `proxy_pass` host to a service.
pub(crate) type UpstreamLookup<'a> = &'a dyn Fn(&str) -> Option<Arc<str>>;

/// Compiles scripts and `proxy_pass` against the engine's slots.
pub(crate) struct ScriptCompiler<'a> {
    pub slots: Arc<[Box<str>]>,
    pub errors: &'a mut Vec<ConfigError>,
    pub upstream: UpstreamLookup<'a>,
}

/// Where a script runs: `if` may hold `proxy_pass` only in a location.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Server,
    Location,
}

impl ScriptCompiler<'_> {
    pub fn scope(&self) -> Scope {
        Scope {
            names: Vec::new(),
            max_group: 9,
            what: "the last matching regex",
            slots: Some(self.slots.clone()),
        }
    }

    fn err(&mut self, d: &Directive, m: impl Into<String>) {
        self.errors.push(d.error(m));
    }

    pub fn template(&mut self, d: &Directive, text: &str, what: &str) -> Option<Template> {
        match Template::parse(text, &self.scope()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(d, format!("{what}: {}", e.message));
                None
            }
        }
    }

    pub fn regex(&mut self, d: &Directive, pattern: &str, caseless: bool) -> Option<RegexRef> {
        match Rx::new(pattern, caseless) {
            Ok(rx) => {
                let slots = slot_groups(&rx, &self.slots);
                Some(RegexRef { rx, slots })
            }
            Err(e) => {
                self.err(
                    d,
                    format!("regex {pattern:?} does not compile (laneway uses Rust regex syntax: no look-around or backreferences): {e}"),
                );
                None
            }
        }
    }

    fn slot(&mut self, d: &Directive, var: &str) -> Option<usize> {
        let Some(name) = var.strip_prefix('$') else {
            self.err(
                d,
                format!("invalid variable name {var:?}: it must start with \"$\""),
            );
            return None;
        };
        let lower = name.to_ascii_lowercase();
        self.slots.iter().position(|s| **s == *lower).or_else(|| {
            self.err(d, format!("variable {var:?} cannot be set here"));
            None
        })
    }

    /// Compiles every item of a `script` list; `line` is each item's line.
    pub fn script(
        &mut self,
        items: &[(String, std::path::PathBuf, usize)],
        level: Level,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        for (text, file, line) in items {
            match parse_str(text, file, *line) {
                Ok(ds) => steps.extend(self.steps(&ds, level, false)),
                Err(e) => self.errors.push(e),
            }
        }
        steps
    }

    /// Compiles directives into steps; `in_if`: inside an `if` block.
    pub fn steps(&mut self, ds: &[Directive], level: Level, in_if: bool) -> Vec<Step> {
        let mut out = Vec::new();
        for d in ds {
            if let Some(s) = self.step(d, level, in_if) {
                out.push(s);
            }
        }
        out
    }

    fn step(&mut self, d: &Directive, level: Level, in_if: bool) -> Option<Step> {
        let a = &d.args;
        match d.name.as_str() {
            "rewrite" => {
                if !(2..=3).contains(&a.len()) {
                    self.err(
                        d,
                        "\"rewrite\" takes a regex, a replacement and an optional flag",
                    );
                    return None;
                }
                let flag = match a.get(2).map(String::as_str) {
                    None => Flag::None,
                    Some("last") => Flag::Last,
                    Some("break") => Flag::Break,
                    Some("redirect") => Flag::Redirect,
                    Some("permanent") => Flag::Permanent,
                    Some(other) => {
                        self.err(d, format!("invalid rewrite flag {other:?}: use last, break, redirect or permanent"));
                        return None;
                    }
                };
                let (pattern, repl) = (&a[0], &a[1]);
                let re = self.regex(d, pattern, false);
                let absolute = repl.starts_with("http://")
                    || repl.starts_with("https://")
                    || repl.starts_with("$scheme");
                let redirect = match flag {
                    Flag::Permanent => Some(301),
                    Flag::Redirect => Some(302),
                    _ if absolute => Some(302),
                    _ => None,
                };
                let whole = self.template(d, repl, "rewrite replacement");
                let target = match RewriteTarget::parse(repl, &self.scope()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        if whole.is_some() {
                            self.err(d, format!("rewrite replacement: {}", e.message));
                        }
                        None
                    }
                };
                Some(Step::Rewrite {
                    re: re?,
                    target: target?,
                    whole: whole?,
                    flag,
                    redirect,
                })
            }
            "set" => {
                let [var, value] = a.as_slice() else {
                    self.err(d, "\"set\" takes a variable and a value");
                    return None;
                };
                let slot = self.slot(d, var);
                let value = self.template(d, value, "set value");
                Some(Step::Set {
                    slot: slot?,
                    value: value?,
                })
            }
            "return" => self.ret(d),
            "break" => {
                if !a.is_empty() {
                    self.err(d, "\"break\" takes no arguments");
                }
                Some(Step::Break)
            }
            "if" => {
                if in_if {
                    self.err(d, "\"if\" inside \"if\" is not allowed (nginx neither)");
                    return None;
                }
                let cond = self.cond(d);
                let Some(block) = &d.block else {
                    self.err(d, "\"if\" needs a block");
                    return None;
                };
                let mut proxy = None;
                let mut inner = Vec::new();
                for b in block {
                    if b.name == "proxy_pass" {
                        if level == Level::Server {
                            self.err(b, "\"proxy_pass\" is not allowed in a server-level \"if\"");
                            continue;
                        }
                        proxy = self.proxy_pass(b, true).map(Arc::new);
                    } else {
                        inner.push(b.clone());
                    }
                }
                let body = self.steps(&inner, level, true);
                Some(Step::If {
                    cond: cond?,
                    body: body.into_boxed_slice(),
                    proxy,
                })
            }
            other => {
                self.err(
                    d,
                    format!("\"{other}\" is not a rewrite directive (script items are rewrite, set, if, return, break)"),
                );
                None
            }
        }
    }

    fn ret(&mut self, d: &Directive) -> Option<Step> {
        let a = &d.args;
        let (status, text) = match a.as_slice() {
            [one] => match one.parse::<u16>() {
                Ok(code) => (code, None),
                Err(_) => {
                    if one.starts_with("http://")
                        || one.starts_with("https://")
                        || one.starts_with("$scheme")
                    {
                        (302, Some(one.as_str()))
                    } else {
                        self.err(d, format!("invalid return code {one:?}"));
                        return None;
                    }
                }
            },
            [code, text] => match code.parse::<u16>() {
                Ok(c) => (c, Some(text.as_str())),
                Err(_) => {
                    self.err(d, format!("invalid return code {code:?}"));
                    return None;
                }
            },
            _ => {
                self.err(d, "\"return\" takes a code and an optional text or URL");
                return None;
            }
        };
        if status > 999 {
            self.err(d, format!("invalid return code {status}"));
            return None;
        }
        let text = match text {
            Some(t) => Some(self.template(d, t, "return text")?),
            None => None,
        };
        Some(Step::Return { status, text })
    }

    fn cond(&mut self, d: &Directive) -> Option<Cond> {
        let mut args: Vec<String> = d.args.clone();
        let bad = |s: &mut Self, m: &str| {
            s.err(d, format!("invalid \"if\" condition: {m}"));
            None
        };
        match args.first_mut() {
            Some(first) if first == "(" => {
                args.remove(0);
            }
            Some(first) if first.starts_with('(') => {
                first.remove(0);
            }
            _ => return bad(self, "it must be in parentheses"),
        }
        match args.last_mut() {
            Some(last) if last == ")" => {
                args.pop();
            }
            Some(last) if last.ends_with(')') => {
                last.pop();
            }
            _ => return bad(self, "it must be in parentheses"),
        }
        match args.as_slice() {
            [v] if v.starts_with('$') => Some(Cond::Var(self.template(d, v, "if")?)),
            [op, _] if matches!(op.as_str(), "-f" | "-d" | "-e" | "-x") => Some(Cond::File(false)),
            [op, _] if matches!(op.as_str(), "!-f" | "!-d" | "!-e" | "!-x") => {
                Some(Cond::File(true))
            }
            [v, op, rhs] if v.starts_with('$') => {
                let lhs = self.template(d, v, "if")?;
                match op.as_str() {
                    "=" | "!=" => {
                        let r = self.template(d, rhs, "if")?;
                        Some(Cond::Eq(lhs, r, op == "!="))
                    }
                    "~" | "~*" | "!~" | "!~*" => {
                        let caseless = op.ends_with('*');
                        let re = self.regex(d, rhs, caseless)?;
                        Some(Cond::Regex(lhs, re, op.starts_with('!')))
                    }
                    other => bad(self, &format!("unknown operator {other:?}")),
                }
            }
            _ => bad(
                self,
                "expected ($var), ($var = value), ($var ~ regex) or a file test",
            ),
        }
    }

    /// Compiles a `proxy_pass` URL. `no_uri`: a URI part is not allowed
    /// (inside `if`, a regex or a named location, as nginx).
    pub fn proxy_pass(&mut self, d: &Directive, no_uri: bool) -> Option<ProxyPass> {
        let [url] = d.args.as_slice() else {
            self.err(d, "\"proxy_pass\" takes one URL");
            return None;
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let Some(rest) = rest else {
            self.err(
                d,
                format!("proxy_pass {url:?}: the URL must start with http:// or https://"),
            );
            return None;
        };
        if url.contains('$') {
            let t = self.template(d, url, "proxy_pass")?;
            return Some(ProxyPass {
                source: url.clone(),
                kind: PassKind::Dynamic(t),
            });
        }
        let (host, uri) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        if uri.is_some() && no_uri {
            self.err(
                d,
                format!("proxy_pass {url:?} cannot have a URI part in a regex location, a named location or inside \"if\""),
            );
            return None;
        }
        let Some(service) = (self.upstream)(host) else {
            self.err(
                d,
                format!("proxy_pass {url:?}: upstream {host:?} is not mapped to a service ([upstreams] {host} = \"service\")"),
            );
            return None;
        };
        let uri = uri.map(|u| {
            if u.starts_with('?') {
                format!("/{u}").into_bytes().into_boxed_slice()
            } else {
                u.as_bytes().into()
            }
        });
        Some(ProxyPass {
            source: url.clone(),
            kind: PassKind::Fixed { service, uri },
        })
    }
}

/// Builds a [`Map`]'s lookup tables. `entries` are (key, value index).
pub(crate) fn build_map_keys(
    entries: &[(String, usize)],
    hostnames: bool,
    slots: &[Box<str>],
) -> Result<MapKeys, (usize, String)> {
    let mut exact = HashMap::new();
    let mut wild = HostTableBuilder::default();
    let mut any_wild = false;
    let mut rxs = Vec::new();
    let mut rvals = Vec::new();
    for (i, (key, v)) in entries.iter().enumerate() {
        if let Some(re) = key.strip_prefix('~') {
            let (re, caseless) = match re.strip_prefix('*') {
                Some(r) => (r, true),
                None => (re, false),
            };
            let rx = Rx::new(re, caseless)
                .map_err(|e| (i, format!("map regex {re:?} does not compile: {e}")))?;
            rvals.push((*v, slot_groups(&rx, slots)));
            rxs.push(rx);
            continue;
        }
        let key = key.strip_prefix('\\').unwrap_or(key);
        let lower = key.to_ascii_lowercase();
        if hostnames && (lower.starts_with('.') || lower.starts_with("*.") || lower.ends_with(".*"))
        {
            let kind = match super::host::parse_name(&lower) {
                Ok(k) => k,
                Err(e) => return Err((i, e)),
            };
            if let NameKind::Exact(_) = kind {
            } else {
                any_wild = true;
                if let Err((_, m)) = wild.add(&kind, *v) {
                    return Err((i, format!("map key {key:?}: {m}")));
                }
                continue;
            }
        }
        let lower = if hostnames {
            lower.strip_suffix('.').unwrap_or(&lower).to_string()
        } else {
            lower
        };
        if exact
            .insert(lower.into_bytes().into_boxed_slice(), *v)
            .is_some()
        {
            return Err((i, format!("duplicate map key {key:?}")));
        }
    }
    let wild = any_wild.then(|| wild.build_with(None, None));
    Ok((
        exact,
        wild,
        FirstMatch::with_set(rxs, None),
        rvals.into_boxed_slice(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_found() {
        assert_eq!(
            group_names(r"^(?<City>[a-z]+)\.(?P<x_1>\d)(?:a)(?=b)\(?<no>"),
            ["city", "x_1"]
        );
    }
}
