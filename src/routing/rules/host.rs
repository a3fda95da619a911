//! Server selection by host name, nginx `server_name` semantics. Built on the
//! control plane; [`HostTable::find`] and [`normalise_host`] run on the
//! request path.
//!
//! Precedence (nginx `ngx_http_find_virtual_server` + `ngx_hash_find_combined`):
//! 1. exact name;
//! 2. the longest leading wildcard: `*.example.com` matches `a.example.com`
//!    and `a.b.example.com` but not `example.com`; `.example.com` matches
//!    `example.com` and every name under it;
//! 3. the longest trailing wildcard: `www.example.*` matches `www.example.com`
//!    and `www.example.co.uk`, not `www.example`;
//! 4. the first regex (`~…`) in file order that matches;
//! 5. the default server (`default = true`, else the first server).
//!
//! A request without a host is looked up as the empty name (`""` in
//! `names`), then falls to the default server; wildcards and regexes are not
//! tried, as in nginx.

use std::borrow::Cow;

use regex::bytes::RegexSet;

use super::pattern::{FirstMatch, Rx};
use crate::routing::hash::FastMap;

/// Why a Host is refused (400), as nginx `ngx_http_validate_host`.
pub(crate) const BAD_HOST: &str = "invalid host";

/// Lowercases the host, strips the port and one trailing dot, and checks it
/// the way nginx does (allowed characters, no empty label, a valid port).
/// Borrows when nothing changes.
pub(crate) fn normalise_host(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    let b = raw.as_bytes();
    if b.is_empty() {
        return Ok(Cow::Borrowed(""));
    }
    let mut end = b.len();
    let mut upper = false;
    let mut prev_dot = false;
    let mut i = 0;
    if b[0] == b'[' {
        // IP literal: up to the closing bracket
        let close = b.iter().position(|&c| c == b']').ok_or(BAD_HOST)?;
        for &c in &b[1..close] {
            if !(c.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=".contains(&c)) {
                return Err(BAD_HOST);
            }
            upper |= c.is_ascii_uppercase();
        }
        i = close + 1;
        end = i;
        match b.get(i) {
            None => {}
            Some(b':') => check_port(&b[i + 1..])?,
            Some(_) => return Err(BAD_HOST),
        }
    } else {
        while i < b.len() {
            let c = b[i];
            match c {
                b'A'..=b'Z' => upper = true,
                b'.' if prev_dot => return Err(BAD_HOST),
                b':' => {
                    end = i;
                    check_port(&b[i + 1..])?;
                    break;
                }
                c if c.is_ascii_alphanumeric() || b".-_~!$&'()*+,;=%".contains(&c) => {}
                _ => return Err(BAD_HOST),
            }
            prev_dot = c == b'.';
            i += 1;
        }
    }
    let mut host = &raw[..end];
    if host.ends_with('.') {
        host = &host[..host.len() - 1];
    }
    if host.is_empty() {
        return Err(BAD_HOST);
    }
    Ok(if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn check_port(p: &[u8]) -> Result<(), &'static str> {
    // nginx accepts an empty port ("host:")
    let mut port: u32 = 0;
    for &c in p {
        if !c.is_ascii_digit() {
            return Err(BAD_HOST);
        }
        port = port * 10 + u32::from(c - b'0');
        if port > 65535 {
            return Err(BAD_HOST);
        }
    }
    Ok(())
}

/// The kind of one `names` entry, parsed from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameKind {
    /// Lowercased exact name (may be empty: requests without a host).
    Exact(String),
    /// `*.suffix` (matches_self = false) or `.suffix` (true); suffix lowercased.
    Head { suffix: String, matches_self: bool },
    /// `prefix.*`; prefix lowercased.
    Tail(String),
    /// `~regex`; the pattern without `~`.
    Regex(String),
}

/// Classifies and checks one server name (nginx `server_name` rules).
pub(crate) fn parse_name(name: &str) -> Result<NameKind, String> {
    if let Some(re) = name.strip_prefix('~') {
        if re.is_empty() {
            return Err(format!("empty regex in server name {name:?}"));
        }
        return Ok(NameKind::Regex(re.to_string()));
    }
    let lower = name.to_ascii_lowercase();
    let invalid = |why: &str| format!("server name {name:?} is invalid: {why}");
    if lower.matches('*').count() > 1 {
        return Err(invalid("only one \"*\" is allowed"));
    }
    let kind = if let Some(s) = lower.strip_prefix("*.") {
        NameKind::Head {
            suffix: s.to_string(),
            matches_self: false,
        }
    } else if let Some(s) = lower.strip_prefix('.') {
        NameKind::Head {
            suffix: s.to_string(),
            matches_self: true,
        }
    } else if let Some(p) = lower.strip_suffix(".*") {
        NameKind::Tail(p.to_string())
    } else if lower.contains('*') {
        return Err(invalid(
            "a wildcard is \"*.example.com\", \".example.com\" or \"www.example.*\"",
        ));
    } else {
        // a request's trailing dot is stripped, so strip the name's too
        NameKind::Exact(lower.strip_suffix('.').unwrap_or(&lower).to_string())
    };
    let body = match &kind {
        NameKind::Exact(n) if n.is_empty() => return Ok(kind),
        NameKind::Exact(n) if n.starts_with('[') && n.ends_with(']') => return Ok(kind),
        NameKind::Exact(b) | NameKind::Head { suffix: b, .. } | NameKind::Tail(b) => b,
        NameKind::Regex(_) => return Ok(kind),
    };
    if body.is_empty() || body.split('.').any(str::is_empty) {
        return Err(invalid("empty label"));
    }
    if let Some(c) = body
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed (a host name never carries a port or a path)"
        )));
    }
    Ok(kind)
}

#[derive(Debug, Default, Clone, Copy)]
struct Head {
    /// `*.suffix`
    star: Option<usize>,
    /// `.suffix`
    dot: Option<usize>,
}

/// The result of a host lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// No server at all (empty rules).
    None,
    /// A server chosen by name, wildcard or as the default.
    Server(usize),
    /// A server chosen by its regex name number `rx` (for its captures).
    Regex { server: usize, rx: usize },
}

/// The lengths of a table's keys: a lookup of a length no key has is
/// skipped. A host has several candidate suffixes (`a.b.example.com`:
/// `b.example.com`, `example.com`, `com`) and prefixes; most are not keys.
#[derive(Debug, Default, Clone, Copy)]
struct Lengths([u64; 4]);

impl Lengths {
    fn add(&mut self, len: usize) {
        let len = len.min(255);
        self.0[len / 64] |= 1 << (len % 64);
    }

    /// Some key may have this length (lengths from 255 on share a bit).
    #[inline]
    fn has(&self, len: usize) -> bool {
        let len = len.min(255);
        self.0[len / 64] & (1 << (len % 64)) != 0
    }
}

/// Host name → server index, every structure built ahead of time.
#[derive(Debug, Default)]
pub(crate) struct HostTable {
    exact: FastMap<Box<str>, usize>,
    head: FastMap<Box<str>, Head>,
    head_lengths: Lengths,
    tail: FastMap<Box<str>, usize>,
    tail_lengths: Lengths,
    regexes: FirstMatch,
    regex_server: Vec<usize>,
    default: Option<usize>,
}

/// Collects names while compiling; reports conflicts by the server that
/// already holds the name.
#[derive(Debug, Default)]
pub(crate) struct HostTableBuilder {
    table: HostTable,
    regexes: Vec<Rx>,
}

impl HostTableBuilder {
    /// Adds a non-regex name for `server`. On conflict returns the server
    /// that already has it and how the two names collide.
    pub fn add(&mut self, kind: &NameKind, server: usize) -> Result<(), (usize, String)> {
        let t = &mut self.table;
        match kind {
            NameKind::Exact(n) => {
                if let Some(&s) = t.exact.get(n.as_str()) {
                    return Err((s, format!("duplicate server name {n:?}")));
                }
                if let Some(s) = t.head.get(n.as_str()).and_then(|h| h.dot) {
                    return Err((s, format!("server name {n:?} conflicts with \".{n}\"")));
                }
                t.exact.insert(n.as_str().into(), server);
            }
            NameKind::Head {
                suffix,
                matches_self,
            } => {
                let h = t.head.entry(suffix.as_str().into()).or_default();
                let shown = if *matches_self {
                    format!(".{suffix}")
                } else {
                    format!("*.{suffix}")
                };
                if let Some(s) = if *matches_self { h.dot } else { h.star } {
                    return Err((s, format!("duplicate server name {shown:?}")));
                }
                if let Some(s) = if *matches_self { h.star } else { h.dot } {
                    return Err((
                        s,
                        format!(
                            "server name {shown:?} overlaps \"*.{suffix}\" / \".{suffix}\": \
                             \".{suffix}\" already covers every name under {suffix:?}"
                        ),
                    ));
                }
                if *matches_self {
                    if let Some(&s) = t.exact.get(suffix.as_str()) {
                        return Err((
                            s,
                            format!("server name {shown:?} conflicts with {suffix:?}"),
                        ));
                    }
                    h.dot = Some(server);
                } else {
                    h.star = Some(server);
                }
            }
            NameKind::Tail(p) => {
                if let Some(&s) = t.tail.get(p.as_str()) {
                    return Err((s, format!("duplicate server name \"{p}.*\"")));
                }
                t.tail.insert(p.as_str().into(), server);
            }
            NameKind::Regex(_) => {
                return Err((server, "regex names go through add_regex".to_string()));
            }
        }
        Ok(())
    }

    /// Adds a compiled regex name for `server`, after the ones added before.
    pub fn add_regex(&mut self, rx: Rx, server: usize) {
        self.regexes.push(rx);
        self.table.regex_server.push(server);
    }

    #[cfg(test)]
    pub fn build(self, default: Option<usize>) -> HostTable {
        self.build_with(default, None)
    }

    /// Builds the table, taking the regex set from `set` when it was built
    /// ahead for these regexes.
    pub fn build_with(mut self, default: Option<usize>, set: Option<RegexSet>) -> HostTable {
        let t = &mut self.table;
        for k in t.head.keys() {
            t.head_lengths.add(k.len());
        }
        for k in t.tail.keys() {
            t.tail_lengths.add(k.len());
        }
        self.table.regexes = FirstMatch::with_set(self.regexes, set);
        self.table.default = default;
        self.table
    }
}

impl HostTable {
    /// The server for a normalised host (see [`normalise_host`]).
    pub fn find(&self, host: &str) -> HostMatch {
        if let Some(&s) = self.exact.get(host) {
            return HostMatch::Server(s);
        }
        if !host.is_empty() {
            if let Some(m) = self.find_wildcard_or_regex(host) {
                return m;
            }
        }
        self.default.map_or(HostMatch::None, HostMatch::Server)
    }

    /// The server whose names match a normalised host, the default server
    /// left out: `None` when only the default server would take it.
    pub fn find_named(&self, host: &str) -> Option<usize> {
        if let Some(&s) = self.exact.get(host) {
            return Some(s);
        }
        if host.is_empty() {
            return None;
        }
        match self.find_wildcard_or_regex(host)? {
            HostMatch::Server(s) | HostMatch::Regex { server: s, .. } => Some(s),
            HostMatch::None => None,
        }
    }

    fn find_wildcard_or_regex(&self, host: &str) -> Option<HostMatch> {
        if !self.head.is_empty() {
            let head_lengths = self.head_lengths;
            if let Some(s) = head_lengths
                .has(host.len())
                .then(|| self.head.get(host).and_then(|h| h.dot))
                .flatten()
            {
                return Some(HostMatch::Server(s));
            }
            // longest suffix first
            for (i, _) in host.match_indices('.') {
                if !head_lengths.has(host.len() - i - 1) {
                    continue;
                }
                if let Some(h) = self.head.get(&host[i + 1..]) {
                    if let Some(s) = h.star.or(h.dot) {
                        return Some(HostMatch::Server(s));
                    }
                }
            }
        }
        if !self.tail.is_empty() {
            // longest prefix first
            for (i, _) in host.rmatch_indices('.') {
                if !self.tail_lengths.has(i) {
                    continue;
                }
                if let Some(&s) = self.tail.get(&host[..i]) {
                    return Some(HostMatch::Server(s));
                }
            }
        }
        if !self.regexes.is_empty() {
            if let Some(rx) = self.regexes.first(host.as_bytes()) {
                return Some(HostMatch::Regex {
                    server: self.regex_server[rx],
                    rx,
                });
            }
        }
        None
    }

    /// The regex name number `rx` (from [`HostMatch::Regex`]).
    pub fn regex(&self, rx: usize) -> &Rx {
        self.regexes.get(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(servers: &[&[&str]], default: Option<usize>) -> HostTable {
        let mut b = HostTableBuilder::default();
        for (i, names) in servers.iter().enumerate() {
            for n in names.iter() {
                match parse_name(n).unwrap() {
                    NameKind::Regex(r) => b.add_regex(Rx::new(&r, false).unwrap(), i),
                    k => b.add(&k, i).unwrap(),
                }
            }
        }
        b.build(default.or(Some(0)))
    }

    fn server(t: &HostTable, host: &str) -> usize {
        match t.find(&normalise_host(host).unwrap()) {
            HostMatch::Server(s) | HostMatch::Regex { server: s, .. } => s,
            HostMatch::None => usize::MAX,
        }
    }

    #[test]
    fn host_is_lowercased_port_and_trailing_dot_stripped() {
        assert_eq!(normalise_host("Example.COM:8080").unwrap(), "example.com");
        assert_eq!(normalise_host("example.com.").unwrap(), "example.com");
        assert_eq!(normalise_host("example.com.:80").unwrap(), "example.com");
        assert_eq!(normalise_host("[::1]:8080").unwrap(), "[::1]");
        assert!(matches!(
            normalise_host("a.example.com").unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(normalise_host(""), Ok(Cow::Borrowed("")));
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for h in [
            "a..b", "a/b", "a b", "h:99999", "h:x", ".", "[::1", "[::1]x", ":80",
        ] {
            assert_eq!(normalise_host(h), Err(BAD_HOST), "{h}");
        }
    }

    #[test]
    fn exact_beats_every_wildcard_and_regex() {
        let t = table(
            &[
                &["default.test"],
                &["*.example.com"],
                &["a.example.com"],
                &["~^a\\."],
            ],
            None,
        );
        assert_eq!(server(&t, "a.example.com"), 2);
        assert_eq!(server(&t, "b.example.com"), 1);
    }

    #[test]
    fn wildcards_of_every_length_are_found() {
        // lookups skip lengths no key has; lengths from 255 on share a bit
        let long = format!("{}.example.com", "x".repeat(300));
        let star = format!("*.{long}");
        let tail = format!("{long}.*");
        let t = table(
            &[
                &["default.test"],
                &[star.as_str()],
                &[tail.as_str()],
                &["*.b.c"],
                &["a.*"],
            ],
            None,
        );
        assert_eq!(server(&t, &format!("a.{long}")), 1);
        assert_eq!(server(&t, &format!("{long}.org")), 2);
        assert_eq!(server(&t, &format!("y{long}.org")), 0);
        assert_eq!(server(&t, "z.b.c"), 3);
        assert_eq!(server(&t, "a.q"), 4);
        assert_eq!(server(&t, "b.c"), 0);
    }

    #[test]
    fn longest_leading_wildcard_wins() {
        let t = table(&[&["x"], &["*.example.com"], &["*.b.example.com"]], None);
        assert_eq!(server(&t, "a.b.example.com"), 2);
        assert_eq!(server(&t, "z.a.b.example.com"), 2);
        assert_eq!(server(&t, "a.c.example.com"), 1);
        assert_eq!(
            server(&t, "example.com"),
            0,
            "*.example.com does not match example.com"
        );
    }

    #[test]
    fn dot_form_matches_the_domain_and_everything_under_it() {
        let t = table(&[&["x"], &[".example.com"]], None);
        assert_eq!(server(&t, "example.com"), 1);
        assert_eq!(server(&t, "a.b.example.com"), 1);
        assert_eq!(server(&t, "badexample.com"), 0);
    }

    #[test]
    fn leading_wildcard_beats_trailing_and_trailing_beats_regex() {
        let t = table(
            &[
                &["x"],
                &["www.example.*"],
                &["*.example.com"],
                &["~^www\\."],
            ],
            None,
        );
        assert_eq!(server(&t, "www.example.com"), 2);
        assert_eq!(server(&t, "www.example.org"), 1);
        assert_eq!(server(&t, "www.example.co.uk"), 1);
        assert_eq!(
            server(&t, "www.example"),
            3,
            "trailing wildcard needs a label after it"
        );
        assert_eq!(server(&t, "www.other.org"), 3);
    }

    #[test]
    fn longest_trailing_wildcard_wins() {
        let t = table(&[&["x"], &["www.*"], &["www.example.*"]], None);
        assert_eq!(server(&t, "www.example.com"), 2);
        assert_eq!(server(&t, "www.other.com"), 1);
    }

    #[test]
    fn first_regex_in_file_order_then_default() {
        let t = table(&[&["x"], &["~^a"], &["~^ab"], &["y"]], Some(3));
        assert_eq!(server(&t, "abc"), 1);
        assert_eq!(server(&t, "zzz"), 3);
        assert!(matches!(
            t.find("abc"),
            HostMatch::Regex { server: 1, rx: 0 }
        ));
    }

    #[test]
    fn first_server_is_the_default_without_a_default_flag() {
        let t = table(&[&["a"], &["b"]], None);
        assert_eq!(server(&t, "zzz"), 0);
        assert_eq!(HostTable::default().find("a"), HostMatch::None);
    }

    #[test]
    fn empty_host_uses_the_empty_name_then_the_default() {
        let t = table(&[&["a"], &["", "b"]], None);
        assert_eq!(server(&t, ""), 1);
        let t = table(&[&["a"], &["~.*"]], None);
        assert_eq!(server(&t, ""), 0, "no regex for an empty host");
    }

    #[test]
    fn name_forms_are_classified_and_checked() {
        assert_eq!(
            parse_name("Bj.Example.com").unwrap(),
            NameKind::Exact("bj.example.com".into())
        );
        assert_eq!(
            parse_name("*.example.com").unwrap(),
            NameKind::Head {
                suffix: "example.com".into(),
                matches_self: false
            }
        );
        assert_eq!(
            parse_name("www.example.*").unwrap(),
            NameKind::Tail("www.example".into())
        );
        for bad in [
            "*",
            "a.*.com",
            "*.a.*",
            "a..b",
            "a:80",
            "a/b",
            "~",
            "*example.com",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conflicts_name_the_holder() {
        let mut b = HostTableBuilder::default();
        b.add(&parse_name("example.com").unwrap(), 0).unwrap();
        assert_eq!(
            b.add(&parse_name("example.com").unwrap(), 1).unwrap_err().0,
            0
        );
        assert_eq!(
            b.add(&parse_name(".example.com").unwrap(), 1)
                .unwrap_err()
                .0,
            0
        );
        b.add(&parse_name("*.a.com").unwrap(), 2).unwrap();
        assert_eq!(b.add(&parse_name(".a.com").unwrap(), 3).unwrap_err().0, 2);
    }
}
