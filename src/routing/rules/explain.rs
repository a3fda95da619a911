//! Why a request lands where it does: which server block and location
//! match a host and target, and by which of nginx's precedence rules. For
//! the admin API's explain; not on the request path (it allocates freely).

use super::host::{self, NameKind};
use super::location::{LocationKind, LocationMatch};
use super::{uri, Chosen, Location, RuleSet, Server};

/// How the server block was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerBy {
    Exact,
    LeadingWildcard,
    TrailingWildcard,
    Regex,
    /// No name matched: the default server (of the request's nginx port
    /// when servers are chosen by port), or the first one.
    Default,
}

impl ServerBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerBy::Exact => "exact name",
            ServerBy::LeadingWildcard => "leading wildcard",
            ServerBy::TrailingWildcard => "trailing wildcard",
            ServerBy::Regex => "regex",
            ServerBy::Default => "default server",
        }
    }
}

/// How the location was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationBy {
    /// `= /p`
    Exact,
    /// The longest prefix is `^~`: regexes are not tried.
    PrefixNoRegex,
    /// The first regex in file order that matches.
    Regex,
    /// The longest prefix, no regex matching.
    LongestPrefix,
    /// A request for a proxied `/p/` without its slash: 301 to `/p/`.
    AutoRedirect,
}

impl LocationBy {
    pub fn as_str(self) -> &'static str {
        match self {
            LocationBy::Exact => "exact (=)",
            LocationBy::PrefixNoRegex => "longest prefix, ^~ (regexes skipped)",
            LocationBy::Regex => "first matching regex in file order",
            LocationBy::LongestPrefix => "longest prefix (no regex matched)",
            LocationBy::AutoRedirect => "prefix without its trailing slash (301 to it)",
        }
    }
}

/// Which rules a host and target match, and why.
#[derive(Debug)]
pub struct RuleMatch<'r> {
    /// The host as matched (lowercase, no port); `None` when invalid.
    pub host: Option<String>,
    /// The normalised, decoded path; `None` when the target is invalid.
    pub path: Option<String>,
    pub server: Option<(&'r Server, ServerBy, Option<String>)>,
    pub location: Option<(&'r Location, LocationBy)>,
}

impl RuleSet {
    /// The server and location `host` and `target` match on nginx port
    /// `port` (`0`: every server), with the precedence rule that chose
    /// each and the server name that matched.
    pub fn explain_match(&self, host: &str, target: &str, port: u16) -> RuleMatch<'_> {
        let mut out = RuleMatch {
            host: None,
            path: None,
            server: None,
            location: None,
        };
        let Ok(host) = host::normalise_host(host) else {
            return out;
        };
        out.host = Some(host.to_string());
        let Ok(target) = uri::parse_target(target) else {
            return out;
        };
        out.path = Some(String::from_utf8_lossy(&target.uri).into_owned());
        let (idx, by, name) = match self.choose_server(&host, port) {
            Chosen::None => return out,
            Chosen::Regex { server, rx, .. } => (
                server,
                ServerBy::Regex,
                Some(format!("~{}", rx.re.as_str())),
            ),
            Chosen::Server(s) => {
                let (by, name) = classify(&self.servers[s], &host);
                (s, by, name)
            }
        };
        let server = &self.servers[idx];
        out.server = Some((server, by, name));
        out.location = match server.table.find(&target.uri) {
            LocationMatch::None => None,
            LocationMatch::Exact(l) => Some((&server.locations[l], LocationBy::Exact)),
            LocationMatch::Prefix(l) => {
                let loc = &server.locations[l];
                let by = if loc.kind == LocationKind::PrefixNoRegex {
                    LocationBy::PrefixNoRegex
                } else {
                    LocationBy::LongestPrefix
                };
                Some((loc, by))
            }
            LocationMatch::Regex { location, .. } => {
                Some((&server.locations[location], LocationBy::Regex))
            }
            LocationMatch::AutoRedirect(l) => {
                Some((&server.locations[l], LocationBy::AutoRedirect))
            }
        };
        out
    }
}

/// Which of `server`'s names matches `host` (not by regex), by nginx's
/// order: exact, longest leading wildcard, longest trailing wildcard; none
/// means the server was chosen as the default.
fn classify(server: &Server, host: &str) -> (ServerBy, Option<String>) {
    let kinds: Vec<(&String, NameKind)> = server
        .names
        .iter()
        .filter_map(|n| host::parse_name(n).ok().map(|k| (n, k)))
        .collect();
    if let Some((n, _)) = kinds
        .iter()
        .find(|(_, k)| matches!(k, NameKind::Exact(e) if e == host))
    {
        return (ServerBy::Exact, Some((*n).clone()));
    }
    let head = kinds
        .iter()
        .filter_map(|(n, k)| match k {
            NameKind::Head {
                suffix,
                matches_self,
            } => {
                let under = host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
                (under || (*matches_self && host == suffix)).then_some((suffix.len(), *n))
            }
            _ => None,
        })
        .max_by_key(|(len, _)| *len);
    if let Some((_, n)) = head {
        return (ServerBy::LeadingWildcard, Some(n.clone()));
    }
    let tail = kinds
        .iter()
        .filter_map(|(n, k)| match k {
            NameKind::Tail(prefix) => (host.len() > prefix.len() + 1
                && host.starts_with(prefix.as_str())
                && host.as_bytes()[prefix.len()] == b'.')
                .then_some((prefix.len(), *n)),
            _ => None,
        })
        .max_by_key(|(len, _)| *len);
    if let Some((_, n)) = tail {
        return (ServerBy::TrailingWildcard, Some(n.clone()));
    }
    (ServerBy::Default, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const RULES: &str = r#"
[[server]]
names = ["a.example.com", "*.example.com", "www.example.*"]

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "= /exact"
service = "web"

[[server.location]]
match = "^~ /static/"
service = "web"

[[server.location]]
match = "~ \\.php$"
service = "web"

[[server.location]]
match = "/app/"
service = "web"

[[server]]
names = ["~^(?<city>[a-z]+)\\.city\\.org$"]

[[server.location]]
match = "/"
service = "web"

[[server]]
names = ["fallback.test"]
default = true

[[server.location]]
match = "/"
service = "web"
"#;

    fn check(host: &str, target: &str) -> (ServerBy, Option<String>, Option<(usize, LocationBy)>) {
        let rules = RuleSet::compile(RULES, Path::new("routes.toml")).expect("valid rules");
        let m = rules.explain_match(host, target, 0);
        let (_, by, name) = m.server.expect("a server");
        (by, name, m.location.map(|(l, b)| (l.line, b)))
    }

    #[test]
    fn every_precedence_case_is_named() {
        assert_eq!(
            check("a.example.com", "/exact"),
            (
                ServerBy::Exact,
                Some("a.example.com".into()),
                Some((9, LocationBy::Exact))
            )
        );
        let (by, name, loc) = check("b.example.com", "/static/x.php");
        assert_eq!(
            (by, name.as_deref()),
            (ServerBy::LeadingWildcard, Some("*.example.com"))
        );
        assert_eq!(loc, Some((13, LocationBy::PrefixNoRegex)));
        let (by, _, loc) = check("www.example.org", "/app/x.php");
        assert_eq!(by, ServerBy::TrailingWildcard);
        assert_eq!(loc, Some((17, LocationBy::Regex)));
        assert_eq!(
            check("a.example.com", "/app/x").2,
            Some((21, LocationBy::LongestPrefix))
        );
        assert_eq!(
            check("a.example.com", "/app").2,
            Some((21, LocationBy::AutoRedirect))
        );
        let (by, name, _) = check("bj.city.org", "/");
        assert_eq!(by, ServerBy::Regex);
        assert!(name.unwrap().contains("city"));
        assert_eq!(check("nowhere.test", "/").0, ServerBy::Default);
    }
}
