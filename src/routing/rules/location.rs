//! Location selection inside one server, nginx `location` semantics. Built
//! on the control plane; [`LocationTable::find`] runs on the request path.
//!
//! As `ngx_http_core_find_location` with its static location tree:
//! 1. `= /p` equal to the URI wins outright;
//! 2. auto-redirect: when no location is named exactly like the URI but an
//!    `= /p/` or `/p/` location that proxies is named like the URI plus `/`,
//!    the answer is a 301 to that name (regexes are not tried);
//! 3. the longest matching prefix (`/p` or `^~ /p`) is remembered; if it is
//!    `^~`, it wins;
//! 4. regexes (`~`, `~*`) in file order: the first that matches wins;
//! 5. otherwise the remembered prefix.
//!
//! Prefixes are compared byte for byte (case-sensitive, as on Linux) with the
//! normalised URI. Lookup is a binary search over the sorted names plus a
//! walk up the chain of prefix-of relations, so it is logarithmic in the
//! number of locations.

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::bytes::RegexSet;

use super::pattern::{FirstMatch, Rx};

/// The modifier of a location, as written before its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocationKind {
    /// `= /p`
    Exact,
    /// `/p`
    Prefix,
    /// `^~ /p`: a prefix that, when longest, stops the regex search.
    PrefixNoRegex,
    /// `~ regex`
    Regex,
    /// `~* regex`
    RegexCaseless,
}

impl LocationKind {
    /// The modifier as written (`""` for a plain prefix).
    pub fn modifier(self) -> &'static str {
        match self {
            LocationKind::Exact => "=",
            LocationKind::Prefix => "",
            LocationKind::PrefixNoRegex => "^~",
            LocationKind::Regex => "~",
            LocationKind::RegexCaseless => "~*",
        }
    }

    pub fn is_regex(self) -> bool {
        matches!(self, LocationKind::Regex | LocationKind::RegexCaseless)
    }
}

/// Splits `match = "…"` into modifier and pattern. Accepts nginx's spellings
/// with or without a space after the modifier (`= /p`, `=/p`).
pub(crate) fn parse_match(text: &str) -> Result<(LocationKind, &str), String> {
    let t = text.trim_start();
    let (kind, rest) = if let Some(r) = t.strip_prefix("^~") {
        (LocationKind::PrefixNoRegex, r)
    } else if let Some(r) = t.strip_prefix("~*") {
        (LocationKind::RegexCaseless, r)
    } else if let Some(r) = t.strip_prefix('~') {
        (LocationKind::Regex, r)
    } else if let Some(r) = t.strip_prefix('=') {
        (LocationKind::Exact, r)
    } else if t.starts_with('@') {
        return Err(format!(
            "named location {t:?} can only be used with the nginx features \
             (proxy_pass, script, try_files)"
        ));
    } else {
        (LocationKind::Prefix, t)
    };
    let pattern = rest.trim_start();
    if pattern.is_empty() {
        return Err(format!("location {text:?} has no pattern"));
    }
    if !kind.is_regex() && !pattern.starts_with('/') {
        return Err(format!(
            "location {text:?}: a path pattern must start with \"/\" \
             (a regex is written \"~ regex\")"
        ));
    }
    Ok((kind, pattern))
}

/// One name of the static (non-regex) locations: an exact and/or a prefix
/// location share a name, like nginx's joined tree nodes.
#[derive(Debug)]
struct Static {
    name: Box<[u8]>,
    exact: Option<usize>,
    prefix: Option<usize>,
    /// The prefix location is `^~`.
    noregex: bool,
    /// A location of this name proxies and the name ends in `/`.
    auto_redirect: bool,
    /// The longest *other* static entry with a prefix location whose name
    /// is a proper prefix of this name.
    parent: Option<usize>,
}

/// What [`LocationTable::find`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocationMatch {
    None,
    Exact(usize),
    Prefix(usize),
    /// Location index and its index among the regexes (for captures).
    Regex {
        location: usize,
        rx: usize,
    },
    /// 301 to the name of this location (URI + "/").
    AutoRedirect(usize),
}

/// What [`LocationTable::find_static`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaticMatch {
    None,
    Exact(usize),
    /// The longest prefix location, and whether it is `^~`.
    Prefix(usize, bool),
    AutoRedirect(usize),
}

/// The locations of one server.
#[derive(Debug, Default)]
pub(crate) struct LocationTable {
    statics: Box<[Static]>,
    regexes: FirstMatch,
    regex_location: Box<[usize]>,
    any_auto_redirect: bool,
}

/// Collects locations while compiling.
#[derive(Debug, Default)]
pub(crate) struct LocationTableBuilder {
    statics: Vec<Static>,
    by_name: HashMap<Box<[u8]>, usize>,
    regexes: Vec<Rx>,
    regex_location: Vec<usize>,
}

impl LocationTableBuilder {
    /// Adds an exact or prefix location. `Err` holds the location index of
    /// the duplicate (nginx: "duplicate location").
    pub fn add_static(
        &mut self,
        kind: LocationKind,
        name: &str,
        location: usize,
        proxies: bool,
    ) -> Result<(), usize> {
        let at = match self.by_name.get(name.as_bytes()) {
            Some(&at) => at,
            None => {
                self.statics.push(Static {
                    name: name.as_bytes().into(),
                    exact: None,
                    prefix: None,
                    noregex: false,
                    auto_redirect: false,
                    parent: None,
                });
                let at = self.statics.len() - 1;
                self.by_name.insert(name.as_bytes().into(), at);
                at
            }
        };
        let entry = &mut self.statics[at];
        let slot = if kind == LocationKind::Exact {
            &mut entry.exact
        } else {
            &mut entry.prefix
        };
        if let Some(other) = *slot {
            return Err(other);
        }
        *slot = Some(location);
        if kind == LocationKind::PrefixNoRegex {
            entry.noregex = true;
        }
        if proxies && name.ends_with('/') {
            entry.auto_redirect = true;
        }
        Ok(())
    }

    /// Adds a regex location after the ones added before.
    pub fn add_regex(&mut self, rx: Rx, location: usize) {
        self.regexes.push(rx);
        self.regex_location.push(location);
    }

    #[cfg(test)]
    pub fn build(self) -> LocationTable {
        self.build_with(None)
    }

    /// Builds the table, taking the regex set from `set` when it was built
    /// ahead for these regexes.
    pub fn build_with(mut self, set: Option<RegexSet>) -> LocationTable {
        self.statics.sort_by(|a, b| a.name.cmp(&b.name));
        // In sorted order every name comes after its prefixes, and all names
        // between a prefix and a name extending it also extend it: a stack
        // of open prefix locations gives each entry its parent.
        let mut stack: Vec<usize> = Vec::new();
        for i in 0..self.statics.len() {
            while let Some(&top) = stack.last() {
                if self.statics[i].name.starts_with(&self.statics[top].name) {
                    break;
                }
                stack.pop();
            }
            self.statics[i].parent = stack.last().copied();
            if self.statics[i].prefix.is_some() {
                stack.push(i);
            }
        }
        LocationTable {
            any_auto_redirect: self.statics.iter().any(|s| s.auto_redirect),
            statics: self.statics.into_boxed_slice(),
            regexes: FirstMatch::with_set(self.regexes, set),
            regex_location: self.regex_location.into_boxed_slice(),
        }
    }
}

impl LocationTable {
    /// Picks the location for a normalised URI.
    pub fn find(&self, uri: &[u8]) -> LocationMatch {
        let mut longest: Option<&Static> = None;
        match self.statics.binary_search_by(|s| (*s.name).cmp(uri)) {
            Ok(i) => {
                let s = &self.statics[i];
                if let Some(l) = s.exact {
                    return LocationMatch::Exact(l);
                }
                // a prefix location named exactly like the URI
                longest = Some(s);
            }
            Err(insert_at) => {
                if self.any_auto_redirect {
                    if let Some(l) = self.auto_redirect(uri, insert_at) {
                        return LocationMatch::AutoRedirect(l);
                    }
                }
                let mut at = insert_at.checked_sub(1);
                while let Some(i) = at {
                    let s = &self.statics[i];
                    if s.prefix.is_some() && uri.starts_with(&s.name) {
                        longest = Some(s);
                        break;
                    }
                    at = s.parent;
                }
            }
        }
        if let Some(s) = longest.filter(|s| s.noregex) {
            return s.prefix.map_or(LocationMatch::None, LocationMatch::Prefix);
        }
        if let Some(rx) = self.regexes.first(uri) {
            return LocationMatch::Regex {
                location: self.regex_location[rx],
                rx,
            };
        }
        longest
            .and_then(|s| s.prefix)
            .map_or(LocationMatch::None, LocationMatch::Prefix)
    }

    /// A static entry named `uri + "/"` that auto-redirects; it sorts at or
    /// after `from` (where `uri` would be inserted).
    fn auto_redirect(&self, uri: &[u8], from: usize) -> Option<usize> {
        let tail = &self.statics[from..];
        let i = tail
            .binary_search_by(|s| cmp_with_slash(&s.name, uri))
            .ok()?;
        let s = &tail[i];
        if !s.auto_redirect {
            return None;
        }
        s.exact.or(s.prefix)
    }

    /// The static half of [`find`](Self::find), for nested lookups: exact
    /// match, auto-redirect, or the longest prefix and whether it is `^~`.
    pub fn find_static(&self, uri: &[u8]) -> StaticMatch {
        match self.statics.binary_search_by(|s| (*s.name).cmp(uri)) {
            Ok(i) => {
                let s = &self.statics[i];
                if let Some(l) = s.exact {
                    return StaticMatch::Exact(l);
                }
                if let Some(l) = s.prefix {
                    return StaticMatch::Prefix(l, s.noregex);
                }
                self.longest_before(uri, s.parent)
            }
            Err(insert_at) => {
                if self.any_auto_redirect {
                    if let Some(l) = self.auto_redirect(uri, insert_at) {
                        return StaticMatch::AutoRedirect(l);
                    }
                }
                self.longest_before(uri, insert_at.checked_sub(1))
            }
        }
    }

    fn longest_before(&self, uri: &[u8], mut at: Option<usize>) -> StaticMatch {
        while let Some(i) = at {
            let s = &self.statics[i];
            if let Some(l) = s.prefix.filter(|_| uri.starts_with(&s.name)) {
                return StaticMatch::Prefix(l, s.noregex);
            }
            at = s.parent;
        }
        StaticMatch::None
    }

    /// The first regex location (in file order) matching `uri`: its
    /// location index and its index among the regexes.
    pub fn find_regex(&self, uri: &[u8]) -> Option<(usize, usize)> {
        self.regexes
            .first(uri)
            .map(|rx| (self.regex_location[rx], rx))
    }

    /// The regex of regex location number `rx` (from [`LocationMatch::Regex`]).
    pub fn regex(&self, rx: usize) -> &Rx {
        self.regexes.get(rx)
    }
}

/// Compares `name` with `uri` followed by `/`, without building the latter.
fn cmp_with_slash(name: &[u8], uri: &[u8]) -> Ordering {
    let n = name.len().min(uri.len());
    match name[..n].cmp(&uri[..n]) {
        Ordering::Equal => {}
        other => return other,
    }
    if name.len() <= uri.len() {
        // name is a prefix of uri (or equal), so shorter than uri + "/"
        return Ordering::Less;
    }
    match name[uri.len()].cmp(&b'/') {
        Ordering::Equal => name.len().cmp(&(uri.len() + 1)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a table from (match text, proxies) in file order.
    fn table(locs: &[(&str, bool)]) -> LocationTable {
        let mut b = LocationTableBuilder::default();
        for (i, (m, proxies)) in locs.iter().enumerate() {
            let (kind, pat) = parse_match(m).unwrap();
            if kind.is_regex() {
                b.add_regex(
                    Rx::new(pat, kind == LocationKind::RegexCaseless).unwrap(),
                    i,
                );
            } else {
                b.add_static(kind, pat, i, *proxies).unwrap();
            }
        }
        b.build()
    }

    fn find(t: &LocationTable, uri: &str) -> LocationMatch {
        t.find(uri.as_bytes())
    }

    #[test]
    fn match_syntax() {
        assert_eq!(parse_match("= /").unwrap(), (LocationKind::Exact, "/"));
        assert_eq!(parse_match("=/x").unwrap(), (LocationKind::Exact, "/x"));
        assert_eq!(
            parse_match("^~ /s/").unwrap(),
            (LocationKind::PrefixNoRegex, "/s/")
        );
        assert_eq!(
            parse_match("~* \\.PNG$").unwrap(),
            (LocationKind::RegexCaseless, "\\.PNG$")
        );
        assert_eq!(parse_match("~ ^/a").unwrap(), (LocationKind::Regex, "^/a"));
        assert_eq!(parse_match("/p").unwrap(), (LocationKind::Prefix, "/p"));
        for bad in ["", "=", "~ ", "p", "= p", "@named"] {
            assert!(parse_match(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_beats_noregex_prefix_and_regex() {
        let t = table(&[("~ ^/a$", false), ("^~ /a", false), ("= /a", false)]);
        assert_eq!(find(&t, "/a"), LocationMatch::Exact(2));
        assert_eq!(find(&t, "/ab"), LocationMatch::Prefix(1));
    }

    #[test]
    fn noregex_prefix_beats_regex() {
        let t = table(&[("~ \\.png$", false), ("^~ /static/", false), ("/", false)]);
        assert_eq!(find(&t, "/static/a.png"), LocationMatch::Prefix(1));
        assert_eq!(
            find(&t, "/img/a.png"),
            LocationMatch::Regex { location: 0, rx: 0 }
        );
    }

    #[test]
    fn noregex_only_counts_when_it_is_the_longest_prefix() {
        let t = table(&[
            ("~ \\.png$", false),
            ("^~ /static/", false),
            ("/static/img/", false),
        ]);
        assert_eq!(
            find(&t, "/static/img/a.png"),
            LocationMatch::Regex { location: 0, rx: 0 }
        );
        assert_eq!(find(&t, "/static/img/a.gif"), LocationMatch::Prefix(2));
    }

    #[test]
    fn regex_beats_plain_prefix_even_a_longer_one() {
        let t = table(&[("/user/profile/", false), ("~ ^/user", false)]);
        assert_eq!(
            find(&t, "/user/profile/x"),
            LocationMatch::Regex { location: 1, rx: 0 }
        );
    }

    #[test]
    fn longest_prefix_when_no_regex_matches() {
        let t = table(&[
            ("/", false),
            ("/a", false),
            ("/a/b", false),
            ("/a/bc", false),
            ("= /a/b/c", false),
            ("~ \\.php$", false),
        ]);
        assert_eq!(find(&t, "/a/b/c/d"), LocationMatch::Prefix(2));
        assert_eq!(find(&t, "/a/b/c"), LocationMatch::Exact(4));
        assert_eq!(find(&t, "/a/bd"), LocationMatch::Prefix(2));
        assert_eq!(find(&t, "/a/bcd"), LocationMatch::Prefix(3));
        assert_eq!(find(&t, "/a/a"), LocationMatch::Prefix(1));
        assert_eq!(find(&t, "/ab"), LocationMatch::Prefix(1));
        assert_eq!(find(&t, "/b"), LocationMatch::Prefix(0));
        assert_eq!(find(&t, "/a"), LocationMatch::Prefix(1));
    }

    #[test]
    fn no_location_matches() {
        let t = table(&[("/a", false), ("= /b", false)]);
        assert_eq!(find(&t, "/"), LocationMatch::None);
        assert_eq!(find(&t, "/b/c"), LocationMatch::None);
        assert_eq!(LocationTable::default().find(b"/"), LocationMatch::None);
    }

    #[test]
    fn first_regex_in_file_order_wins() {
        let t = table(&[("~ /a", false), ("~ ^/a/b", false)]);
        assert_eq!(
            find(&t, "/a/b"),
            LocationMatch::Regex { location: 0, rx: 0 }
        );
    }

    #[test]
    fn caseless_regex_vs_case_sensitive() {
        let t = table(&[("~ \\.JPG$", false), ("~* \\.png$", false)]);
        assert_eq!(find(&t, "/a.jpg"), LocationMatch::None);
        assert_eq!(
            find(&t, "/a.JPG"),
            LocationMatch::Regex { location: 0, rx: 0 }
        );
        assert_eq!(
            find(&t, "/a.PnG"),
            LocationMatch::Regex { location: 1, rx: 1 }
        );
    }

    #[test]
    fn prefix_matching_is_case_sensitive() {
        let t = table(&[("/User/", false)]);
        assert_eq!(find(&t, "/user/a"), LocationMatch::None);
    }

    #[test]
    fn auto_redirect_for_proxied_prefix_with_trailing_slash() {
        let t = table(&[("/user/", true), ("~ ^/user$", false), ("/", false)]);
        // beats the regex: nginx returns NGX_DONE before trying regexes
        assert_eq!(find(&t, "/user"), LocationMatch::AutoRedirect(0));
        assert_eq!(find(&t, "/user/"), LocationMatch::Prefix(0));
        assert_eq!(find(&t, "/users"), LocationMatch::Prefix(2));
    }

    #[test]
    fn auto_redirect_also_for_proxied_exact_location() {
        let t = table(&[("= /user/", true), ("/", false)]);
        assert_eq!(find(&t, "/user"), LocationMatch::AutoRedirect(0));
    }

    #[test]
    fn no_auto_redirect_when_not_proxied() {
        let t = table(&[("/user/", false), ("/", false)]);
        assert_eq!(find(&t, "/user"), LocationMatch::Prefix(1));
    }

    #[test]
    fn exact_or_prefix_named_like_the_uri_beats_auto_redirect() {
        let t = table(&[("/user/", true), ("= /user", false)]);
        assert_eq!(find(&t, "/user"), LocationMatch::Exact(1));
        let t = table(&[("/user/", true), ("/user", false), ("~ ^/user$", false)]);
        // the prefix /user matches; then regexes run as usual
        assert_eq!(
            find(&t, "/user"),
            LocationMatch::Regex { location: 2, rx: 0 }
        );
    }

    #[test]
    fn auto_redirect_with_neighbours_in_sort_order() {
        // "/user-x" and "/user.x" sort between "/user" and "/user/"
        let t = table(&[
            ("/user-x", false),
            ("/user.x", false),
            ("/user/", true),
            ("/", false),
        ]);
        assert_eq!(find(&t, "/user"), LocationMatch::AutoRedirect(2));
        assert_eq!(find(&t, "/user-x1"), LocationMatch::Prefix(0));
    }

    #[test]
    fn duplicates_are_refused() {
        let mut b = LocationTableBuilder::default();
        b.add_static(LocationKind::Prefix, "/a", 0, false).unwrap();
        b.add_static(LocationKind::Exact, "/a", 1, false).unwrap();
        assert_eq!(
            b.add_static(LocationKind::PrefixNoRegex, "/a", 2, false),
            Err(0)
        );
        assert_eq!(b.add_static(LocationKind::Exact, "/a", 3, false), Err(1));
    }

    #[test]
    fn many_locations_agree_with_a_linear_scan() {
        let mut locs: Vec<(String, bool)> = Vec::new();
        for a in ["a", "ab", "b", "user", "user-x"] {
            locs.push((format!("/{a}"), false));
            locs.push((format!("/{a}/"), false));
            locs.push((format!("/{a}/x/"), false));
        }
        let refs: Vec<(&str, bool)> = locs.iter().map(|(s, p)| (s.as_str(), *p)).collect();
        let t = table(&refs);
        for uri in [
            "/a",
            "/a/",
            "/a/x",
            "/a/x/y",
            "/ab/x/",
            "/abc",
            "/b/x/z",
            "/user-",
            "/user-x/x/q",
            "/c",
        ] {
            let expected = locs
                .iter()
                .enumerate()
                .filter(|(_, (p, _))| uri.starts_with(p.as_str()))
                .max_by_key(|(_, (p, _))| p.len())
                .map_or(LocationMatch::None, |(i, _)| LocationMatch::Prefix(i));
            assert_eq!(find(&t, uri), expected, "{uri}");
        }
    }
}
