//! The production host names a rule set serves, as data for the control
//! plane (dashboard links, PAC files) and as a check on the request path
//! ([`RuleSet::serves_host`]: Location/Set-Cookie rewriting into a lane,
//! CONNECT targets). Only names written in `server_name`s count: a host
//! that reaches the default server by fallback is not "served".

use super::host::{normalise_host, parse_name, NameKind};
use super::RuleSet;

/// One server name of the rules, classified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServedName {
    /// `bj.example.com`: lowercased.
    Exact { name: String },
    /// `*.example.com` (`matches_self` false) or `.example.com` (true).
    Suffix { suffix: String, matches_self: bool },
    /// `www.example.*`.
    Prefix { prefix: String },
    /// `~^(?<city>\w+)\.example\.com$`, with the literal suffix every match
    /// ends with when the pattern has one (`.example.com`).
    Regex {
        pattern: String,
        literal_suffix: Option<String>,
    },
}

impl RuleSet {
    /// Every server name of the rules, in file order, each once; the empty
    /// name (requests without a host) and IP literals left out.
    pub fn served_names(&self) -> Vec<ServedName> {
        let mut out: Vec<ServedName> = Vec::new();
        for server in self.servers() {
            for written in &server.names {
                let Ok(kind) = parse_name(written) else {
                    continue;
                };
                let name = match kind {
                    NameKind::Exact(n) if n.is_empty() || n.starts_with('[') => continue,
                    NameKind::Exact(n) if n.parse::<std::net::Ipv4Addr>().is_ok() => continue,
                    NameKind::Exact(name) => ServedName::Exact { name },
                    NameKind::Head {
                        suffix,
                        matches_self,
                    } => ServedName::Suffix {
                        suffix,
                        matches_self,
                    },
                    NameKind::Tail(prefix) => ServedName::Prefix { prefix },
                    NameKind::Regex(pattern) => ServedName::Regex {
                        literal_suffix: literal_suffix(&pattern),
                        pattern,
                    },
                };
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// The exact (non-wildcard, non-regex) server names, in file order.
    pub fn exact_server_names(&self) -> Vec<String> {
        self.served_names()
            .into_iter()
            .filter_map(|n| match n {
                ServedName::Exact { name } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// True when `host` (a Host value: any case, a port, a trailing dot)
    /// matches a server name of the rules: exact, wildcard or regex. A host
    /// that only the default server would take is not served.
    pub fn serves_host(&self, host: &str) -> bool {
        match normalise_host(host) {
            Ok(h) if !h.is_empty() => self.hosts.find_named(&h).is_some(),
            _ => false,
        }
    }
}

/// The literal text every match of an anchored regex ends with, when it
/// has one: `^(\w+)\.example\.com$` → `.example.com`. Only a plain tail
/// of escaped dots and name characters counts; anything else gives `None`.
pub(crate) fn literal_suffix(pattern: &str) -> Option<String> {
    let body = pattern.strip_suffix('$')?;
    let bytes = body.as_bytes();
    let mut out = Vec::new();
    let mut i = bytes.len();
    while i > 0 {
        let c = bytes[i - 1];
        if i >= 2 && bytes[i - 2] == b'\\' && c == b'.' {
            out.push(b'.');
            i -= 2;
        } else if c.is_ascii_alphanumeric() || c == b'-' {
            // a name character that is not itself escaped or quantified
            if i >= 2 && bytes[i - 2] == b'\\' {
                break;
            }
            out.push(c.to_ascii_lowercase());
            i -= 1;
        } else {
            break;
        }
    }
    // a quantifier or group right before the tail binds to its last char
    // only when that char is part of it: `a+\.b` – keep from the first dot
    out.reverse();
    let text = String::from_utf8(out).ok()?;
    let from_dot = text.find('.')?;
    let suffix = &text[from_dot..];
    (suffix.len() > 1 && !suffix.ends_with('.')).then(|| suffix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rules(src: &str) -> RuleSet {
        RuleSet::compile(src, Path::new("routes.toml")).unwrap()
    }

    const SRC: &str = r#"
[[server]]
names = ["bj.example.com", "BJ2.example.com."]
[[server.location]]
match = "/"
service = "web"

[[server]]
names = ["*.cities.example.com", ".example.org", "www.example.*", "~^(?<c>[a-z]+)\\.shop\\.example\\.com$"]
[[server.location]]
match = "/"
service = "web"

[[server]]
names = ["other.test"]
default = true
[[server.location]]
match = "/"
service = "web"
"#;

    #[test]
    fn names_are_classified_in_file_order() {
        let r = rules(SRC);
        assert_eq!(
            r.served_names(),
            vec![
                ServedName::Exact {
                    name: "bj.example.com".into()
                },
                ServedName::Exact {
                    name: "bj2.example.com".into()
                },
                ServedName::Suffix {
                    suffix: "cities.example.com".into(),
                    matches_self: false
                },
                ServedName::Suffix {
                    suffix: "example.org".into(),
                    matches_self: true
                },
                ServedName::Prefix {
                    prefix: "www.example".into()
                },
                ServedName::Regex {
                    pattern: "^(?<c>[a-z]+)\\.shop\\.example\\.com$".into(),
                    literal_suffix: Some(".shop.example.com".into()),
                },
                ServedName::Exact {
                    name: "other.test".into()
                },
            ]
        );
        assert_eq!(
            r.exact_server_names(),
            ["bj.example.com", "bj2.example.com", "other.test"]
        );
    }

    #[test]
    fn served_hosts_match_names_not_the_default_fallback() {
        let r = rules(SRC);
        for host in [
            "bj.example.com",
            "BJ.example.com:8080",
            "bj.example.com.",
            "sh.cities.example.com",
            "example.org",
            "a.example.org",
            "www.example.net",
            "paris.shop.example.com",
            "other.test",
        ] {
            assert!(r.serves_host(host), "{host}");
        }
        for host in [
            "",
            "cities.example.com",
            "evil.test",
            "1.shop.example.com",
            "bj.example.com.evil",
        ] {
            assert!(!r.serves_host(host), "{host}");
        }
    }

    #[test]
    fn literal_suffixes_of_regexes() {
        for (re, want) in [
            (r"^(\w+)\.example\.com$", Some(".example.com")),
            (r"^.+\.Example\.COM$", Some(".example.com")),
            (r"^api-\d+\.svc\.test$", Some(".svc.test")),
            (r"^(a|b)\.example\.(com|org)$", None),
            (r"^example\.com", None),
            (r"^x\.example\.com\.$", None),
            (r"^[a-z]+$", None),
        ] {
            assert_eq!(literal_suffix(re).as_deref(), want, "{re}");
        }
    }
}
