//! Response header rewriting: keeping a browser in its lane (absolute
//! `Location`, `Content-Location` and `Refresh` URLs of production hosts,
//! and `Set-Cookie` `Domain=` of production domains, moved under the lane
//! hostname), and nginx's `proxy_redirect` / `proxy_cookie_domain`. Pure
//! functions over header values; on the request path only for requests
//! that need them (a request in a lane chosen by hostname, or a location
//! with one of the two directives): any other request carries no
//! [`ResponseRewrite`] and its headers are not looked at.

use std::sync::Arc;

use regex::Regex;

use super::rules::RuleSet;
use super::rules::ServedName;

/// What an nginx `proxy_redirect` / `proxy_cookie_domain` matches.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// `proxy_redirect`: a case-sensitive prefix of the URL;
    /// `proxy_cookie_domain`: the whole domain, any case, leading dot
    /// ignored.
    Text(String),
    /// `~` (or `~*`, case-insensitive): the replacement, with `$1` …
    /// captures, replaces the whole value.
    Regex(Regex),
}

/// One `proxy_redirect` / `proxy_cookie_domain` pair.
#[derive(Debug, Clone)]
pub struct Replace {
    pub pattern: Pattern,
    pub replacement: String,
}

impl Replace {
    /// `from` is text, or a regex after `~` / `~*`.
    pub fn parse(from: &str, to: &str) -> Result<Replace, String> {
        let pattern = if let Some(rx) = from.strip_prefix("~*") {
            Pattern::Regex(
                regex::RegexBuilder::new(rx)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("invalid regex {rx:?}: {e}"))?,
            )
        } else if let Some(rx) = from.strip_prefix('~') {
            Pattern::Regex(Regex::new(rx).map_err(|e| format!("invalid regex {rx:?}: {e}"))?)
        } else if from.is_empty() {
            return Err("the text to replace is empty".into());
        } else {
            Pattern::Text(from.to_string())
        };
        Ok(Replace {
            pattern,
            replacement: to.to_string(),
        })
    }
}

/// A location's `proxy_redirect` and `proxy_cookie_domain` pairs, tried in
/// order, the first match winning (as nginx does).
#[derive(Debug, Clone, Default)]
pub struct ProxyRewrites {
    pub redirect: Vec<Replace>,
    pub cookie_domain: Vec<Replace>,
}

impl ProxyRewrites {
    pub fn is_empty(&self) -> bool {
        self.redirect.is_empty() && self.cookie_domain.is_empty()
    }

    /// `proxy_redirect` on a `Location` or `Refresh` URL.
    pub fn redirect(&self, url: &str) -> Option<String> {
        self.redirect.iter().find_map(|r| match &r.pattern {
            Pattern::Text(prefix) => url
                .strip_prefix(prefix.as_str())
                .map(|rest| format!("{}{rest}", r.replacement)),
            Pattern::Regex(rx) => rx.captures(url).map(|c| {
                let mut out = String::new();
                c.expand(&r.replacement, &mut out);
                out
            }),
        })
    }

    /// `proxy_cookie_domain` on a `Domain=` value (a leading dot kept).
    pub fn cookie_domain(&self, domain: &str) -> Option<String> {
        let (dot, bare) = match domain.strip_prefix('.') {
            Some(b) => (".", b),
            None => ("", domain),
        };
        self.cookie_domain.iter().find_map(|r| match &r.pattern {
            Pattern::Text(want) => want
                .trim_start_matches('.')
                .eq_ignore_ascii_case(bare)
                .then(|| format!("{dot}{}", r.replacement)),
            Pattern::Regex(rx) => rx.captures(bare).map(|c| {
                let mut out = dot.to_string();
                c.expand(&r.replacement, &mut out);
                out
            }),
        })
    }
}

/// Where a request that came in through a lane hostname keeps its
/// browser: production host `h` becomes `<h>.<lane>.<domain>`, with
/// laneway's scheme and the port the client used.
#[derive(Debug, Clone)]
pub struct IntoLane {
    /// `<lane>.<domain>`.
    pub lane_host: String,
    /// `http` or `https`: the scheme the client used.
    pub scheme: &'static str,
    /// `:<port>` from the request's Host, or empty.
    pub port: String,
}

impl IntoLane {
    /// For a request whose Host was `request_host` (a port kept).
    pub fn new(lane: &str, domain: &str, scheme: &'static str, request_host: &str) -> IntoLane {
        let name = super::lanes::strip_port(request_host);
        IntoLane {
            lane_host: format!("{lane}.{domain}"),
            scheme,
            port: request_host[name.len()..].to_string(),
        }
    }

    /// An absolute (or scheme-relative) URL of a host the rules serve,
    /// moved into the lane; `None` for relative URLs and other hosts.
    pub fn url(&self, rules: &RuleSet, url: &str) -> Option<String> {
        let (after_scheme, relative) = if url.starts_with("//") {
            (2, true)
        } else {
            let colon = url.find("://")?;
            let scheme = &url[..colon];
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return None;
            }
            (colon + 3, false)
        };
        let rest = &url[after_scheme..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.contains('@') || authority.is_empty() {
            return None;
        }
        let host = super::lanes::strip_port(authority).trim_end_matches('.');
        if !rules.serves_host(host) {
            return None;
        }
        let scheme = if relative { "" } else { self.scheme };
        let colon = if relative { "" } else { ":" };
        Some(format!(
            "{scheme}{colon}//{}.{}{}{}",
            host.to_ascii_lowercase(),
            self.lane_host,
            self.port,
            &rest[end..]
        ))
    }

    /// A `Domain=` value naming a production domain (one the rules serve,
    /// or a parent of a served name), moved into the lane.
    pub fn cookie_domain(&self, rules: &RuleSet, domain: &str) -> Option<String> {
        let bare = domain.trim_start_matches('.').trim_end_matches('.');
        if bare.is_empty() || !is_production_domain(rules, bare) {
            return None;
        }
        Some(format!("{}.{}", bare.to_ascii_lowercase(), self.lane_host))
    }
}

/// `domain` is served by the rules, or a parent domain of a served name
/// (`example.com` for `bj.example.com` or `*.example.com`).
fn is_production_domain(rules: &RuleSet, domain: &str) -> bool {
    if rules.serves_host(domain) {
        return true;
    }
    let domain = domain.to_ascii_lowercase();
    let under = |name: &str| {
        name.len() > domain.len()
            && name.ends_with(domain.as_str())
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
    };
    rules.served_names().iter().any(|n| match n {
        ServedName::Exact { name } => under(name),
        ServedName::Suffix { suffix, .. } => *suffix == domain || under(suffix),
        ServedName::Regex {
            literal_suffix: Some(s),
            ..
        } => under(s),
        _ => false,
    })
}

/// The response header edits of one request.
pub struct ResponseRewrite {
    pub rules: Arc<RuleSet>,
    pub into_lane: Option<IntoLane>,
    pub nginx: Option<Arc<ProxyRewrites>>,
}

impl ResponseRewrite {
    /// The edits for a request; `None` (nothing to do) when neither applies.
    pub fn new(
        rules: &Arc<RuleSet>,
        into_lane: Option<IntoLane>,
        nginx: Option<Arc<ProxyRewrites>>,
    ) -> Option<Box<ResponseRewrite>> {
        (into_lane.is_some() || nginx.is_some()).then(|| {
            Box::new(ResponseRewrite {
                rules: rules.clone(),
                into_lane,
                nginx,
            })
        })
    }

    /// The new value of response header `name`, or `None` to keep it.
    pub fn header(&self, name: &[u8], value: &[u8]) -> Option<String> {
        let kind = HeaderKind::of(name)?;
        let value = std::str::from_utf8(value).ok()?;
        match kind {
            HeaderKind::Location | HeaderKind::ContentLocation => {
                let nginx = match kind {
                    HeaderKind::Location => self.nginx.as_ref().and_then(|n| n.redirect(value)),
                    _ => None,
                };
                let url = nginx.as_deref().unwrap_or(value);
                match self
                    .into_lane
                    .as_ref()
                    .and_then(|l| l.url(&self.rules, url))
                {
                    Some(moved) => Some(moved),
                    None => nginx,
                }
            }
            HeaderKind::Refresh => rewrite_refresh(value, |url| {
                let nginx = self.nginx.as_ref().and_then(|n| n.redirect(url));
                let url2 = nginx.as_deref().unwrap_or(url);
                self.into_lane
                    .as_ref()
                    .and_then(|l| l.url(&self.rules, url2))
                    .or(nginx)
            }),
            HeaderKind::SetCookie => rewrite_cookie_domain(value, |domain| {
                let nginx = self.nginx.as_ref().and_then(|n| n.cookie_domain(domain));
                let d = nginx.as_deref().unwrap_or(domain);
                self.into_lane
                    .as_ref()
                    .and_then(|l| l.cookie_domain(&self.rules, d))
                    .or(nginx)
            }),
        }
    }

    /// Rewrites the headers of a response laneway made itself.
    pub fn local_headers(&self, headers: &mut [(http::HeaderName, String)]) {
        for (name, value) in headers.iter_mut() {
            if let Some(new) = self.header(name.as_str().as_bytes(), value.as_bytes()) {
                *value = new;
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderKind {
    Location,
    ContentLocation,
    Refresh,
    SetCookie,
}

impl HeaderKind {
    fn of(name: &[u8]) -> Option<HeaderKind> {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            8 if is("location") => Some(HeaderKind::Location),
            16 if is("content-location") => Some(HeaderKind::ContentLocation),
            7 if is("refresh") => Some(HeaderKind::Refresh),
            10 if is("set-cookie") => Some(HeaderKind::SetCookie),
            _ => None,
        }
    }
}

/// `Refresh: 5; url=<url>` with `edit` applied to the URL (quotes kept).
pub fn rewrite_refresh(value: &str, edit: impl FnOnce(&str) -> Option<String>) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find("url=")? + 4;
    let rest = &value[at..];
    let trimmed = rest.trim_start();
    let start = at + (rest.len() - trimmed.len());
    let (quote, inner) = match trimmed.as_bytes().first() {
        Some(q @ (b'\'' | b'"')) => {
            let q = *q as char;
            let body = &trimmed[1..];
            (Some(q), &body[..body.find(q).unwrap_or(body.len())])
        }
        _ => (None, trimmed.trim_end()),
    };
    let new = edit(inner)?;
    let inner_start = start + usize::from(quote.is_some());
    let inner_end = inner_start + inner.len();
    Some(format!(
        "{}{new}{}",
        &value[..inner_start],
        &value[inner_end..]
    ))
}

/// A `Set-Cookie` value with `edit` applied to its `Domain=` attribute.
pub fn rewrite_cookie_domain(
    value: &str,
    edit: impl FnOnce(&str) -> Option<String>,
) -> Option<String> {
    let mut offset = 0;
    for (i, part) in value.split(';').enumerate() {
        let here = offset;
        offset += part.len() + 1;
        if i == 0 {
            continue; // name=value
        }
        let Some((name, domain)) = part.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("domain") {
            continue;
        }
        let domain_trimmed = domain.trim();
        let new = edit(domain_trimmed)?;
        let start = here + name.len() + 1 + (domain.len() - domain.trim_start().len());
        let end = start + domain_trimmed.len();
        return Some(format!("{}{new}{}", &value[..start], &value[end..]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Arc<RuleSet> {
        let toml = r#"
[[server]]
names = ["bj.example.com", "*.cities.example.com", "~^(?<c>[a-z]+)\\.shop\\.example\\.com$"]
[[server.location]]
match = "/"
service = "web"
"#;
        Arc::new(RuleSet::compile(toml, std::path::Path::new("routes.toml")).unwrap())
    }

    fn lane() -> IntoLane {
        IntoLane::new(
            "t-42",
            "lanes.test",
            "http",
            "bj.example.com.t-42.lanes.test:18080",
        )
    }

    #[test]
    fn urls_of_served_hosts_move_into_the_lane() {
        let r = rules();
        let l = lane();
        let cases: &[(&str, Option<&str>)] = &[
            (
                "http://bj.example.com/x?y#z",
                Some("http://bj.example.com.t-42.lanes.test:18080/x?y#z"),
            ),
            (
                "https://BJ.Example.com:443",
                Some("http://bj.example.com.t-42.lanes.test:18080"),
            ),
            (
                "http://sh.cities.example.com/a",
                Some("http://sh.cities.example.com.t-42.lanes.test:18080/a"),
            ),
            (
                "http://x.shop.example.com/",
                Some("http://x.shop.example.com.t-42.lanes.test:18080/"),
            ),
            (
                "//bj.example.com/p",
                Some("//bj.example.com.t-42.lanes.test:18080/p"),
            ),
            ("http://other.example.net/x", None),
            ("/relative", None),
            ("http://user@bj.example.com/", None),
            ("ftp://bj.example.com/", None),
            ("http:///nohost", None),
        ];
        for (input, want) in cases {
            assert_eq!(l.url(&r, input).as_deref(), *want, "{input}");
        }
        let no_port = IntoLane::new("t-1", "lanes.test", "https", "t-1.lanes.test");
        assert_eq!(
            no_port.url(&r, "http://bj.example.com/").as_deref(),
            Some("https://bj.example.com.t-1.lanes.test/")
        );
    }

    #[test]
    fn cookie_domains_of_production_move_into_the_lane() {
        let r = rules();
        let l = lane();
        let cases: &[(&str, Option<&str>)] = &[
            (".example.com", Some("example.com.t-42.lanes.test")),
            ("bj.example.com", Some("bj.example.com.t-42.lanes.test")),
            (
                "cities.example.com",
                Some("cities.example.com.t-42.lanes.test"),
            ),
            ("shop.example.com", Some("shop.example.com.t-42.lanes.test")),
            (".example.net", None),
            ("com.evil", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(l.cookie_domain(&r, input).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn set_cookie_and_refresh_values_are_edited_in_place() {
        let up = |s: &str| Some(s.to_uppercase());
        assert_eq!(
            rewrite_cookie_domain("a=b; Path=/; Domain=.x.com; HttpOnly", up).as_deref(),
            Some("a=b; Path=/; Domain=.X.COM; HttpOnly")
        );
        assert_eq!(
            rewrite_cookie_domain("a=b;domain = x.com", up).as_deref(),
            Some("a=b;domain = X.COM")
        );
        assert_eq!(rewrite_cookie_domain("domain=x; Path=/", up), None);
        assert_eq!(rewrite_cookie_domain("a=b; Path=/", up), None);
        assert_eq!(
            rewrite_refresh("0; url=http://a/b", up).as_deref(),
            Some("0; url=HTTP://A/B")
        );
        assert_eq!(
            rewrite_refresh("5;URL='http://a/' ", up).as_deref(),
            Some("5;URL='HTTP://A/' ")
        );
        assert_eq!(rewrite_refresh("5", up), None);
    }

    #[test]
    fn location_keys_are_checked_with_their_line() {
        let with = |key: &str| {
            let toml = format!(
                "[[server]]\nnames = [\"a.example.com\"]\n[[server.location]]\nmatch = \"/\"\nservice = \"web\"\n{key}\n"
            );
            RuleSet::compile(&toml, std::path::Path::new("routes.toml"))
        };
        let rules =
            with(r#"proxy_redirect = [["http://b/", "/"], ['~^http://(\w+)/', "/$1/"]]"#).unwrap();
        let loc = &rules.servers()[0].locations[0];
        let rw = loc.proxy_rewrites.as_ref().expect("pairs compiled");
        assert_eq!(rw.redirect("http://b/x").as_deref(), Some("/x"));
        // a regex match replaces the whole URL, as in nginx
        assert_eq!(rw.redirect("http://zz/y").as_deref(), Some("/zz/"));
        let off = with(r#"proxy_redirect = "off""#).unwrap();
        assert!(off.servers()[0].locations[0].proxy_rewrites.is_none());
        for (bad, why) in [
            (r#"proxy_redirect = "on""#, "write \"off\""),
            (
                r#"proxy_cookie_domain = [["only-one"]]"#,
                "not a [from, to] pair",
            ),
            (r#"proxy_redirect = [["~(", "x"]]"#, "invalid regex"),
        ] {
            let errors = with(bad).expect_err(bad);
            let text = errors[0].to_string();
            assert!(text.contains(why) && text.contains(":6"), "{bad}: {text}");
        }
    }

    #[test]
    fn hostile_values_never_panic() {
        // upstream header values are untrusted: any bytes, any shape
        let rw = ResponseRewrite::new(
            &rules(),
            Some(IntoLane::new("t", "d.test", "http", "[::1")),
            Some(Arc::new(ProxyRewrites {
                redirect: vec![Replace::parse("~^(.*)$", "$1$9${x}").unwrap()],
                cookie_domain: vec![Replace::parse("~(.)", "$1").unwrap()],
            })),
        )
        .unwrap();
        let pieces: [&str; 16] = [
            "url=",
            "'",
            "\"",
            ";",
            "domain",
            "=",
            ".",
            "//",
            "http://",
            "bj.example.com",
            ":",
            "[",
            "]",
            "@",
            "é",
            " ",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut v = String::new();
            for _ in 0..rng.usize(0..8) {
                v.push_str(pieces[rng.usize(..pieces.len())]);
            }
            for name in ["location", "content-location", "refresh", "set-cookie"] {
                let _ = rw.header(name.as_bytes(), v.as_bytes());
            }
        }
    }

    #[test]
    fn nginx_proxy_redirect_and_cookie_domain() {
        let p = ProxyRewrites {
            redirect: vec![
                Replace::parse("http://backend:8080/two/", "/one/").unwrap(),
                Replace::parse(
                    "~*^http://(\\w+)\\.internal(/.*)$",
                    "http://$1.example.com$2",
                )
                .unwrap(),
            ],
            cookie_domain: vec![
                Replace::parse("backend.local", "example.com").unwrap(),
                Replace::parse("~^(\\w+)\\.corp$", "$1.example.com").unwrap(),
            ],
        };
        assert_eq!(
            p.redirect("http://backend:8080/two/x").as_deref(),
            Some("/one/x")
        );
        assert_eq!(
            p.redirect("HTTP://backend:8080/two/x"),
            None,
            "prefix is case-sensitive"
        );
        assert_eq!(
            p.redirect("http://API.Internal/q").as_deref(),
            Some("http://API.example.com/q")
        );
        assert_eq!(p.redirect("/local"), None);
        assert_eq!(
            p.cookie_domain(".Backend.Local").as_deref(),
            Some(".example.com")
        );
        assert_eq!(
            p.cookie_domain("backend.local").as_deref(),
            Some("example.com")
        );
        assert_eq!(p.cookie_domain("a.backend.local"), None);
        assert_eq!(
            p.cookie_domain("hr.corp").as_deref(),
            Some("hr.example.com")
        );
        assert!(Replace::parse("~(", "x").is_err());
        assert!(Replace::parse("", "x").is_err());
    }

    #[test]
    fn both_edits_compose_nginx_first() {
        let nginx = ProxyRewrites {
            redirect: vec![Replace::parse("http://backend/", "http://bj.example.com/").unwrap()],
            cookie_domain: vec![Replace::parse("backend", "example.com").unwrap()],
        };
        let rw = ResponseRewrite::new(&rules(), Some(lane()), Some(Arc::new(nginx))).unwrap();
        assert_eq!(
            rw.header(b"Location", b"http://backend/x").as_deref(),
            Some("http://bj.example.com.t-42.lanes.test:18080/x")
        );
        assert_eq!(
            rw.header(b"content-location", b"http://backend/x"),
            None,
            "proxy_redirect is for Location and Refresh only"
        );
        assert_eq!(
            rw.header(b"refresh", b"0; url=http://bj.example.com/")
                .as_deref(),
            Some("0; url=http://bj.example.com.t-42.lanes.test:18080/")
        );
        assert_eq!(
            rw.header(b"set-cookie", b"s=1; Domain=.backend").as_deref(),
            Some("s=1; Domain=example.com.t-42.lanes.test")
        );
        assert_eq!(rw.header(b"x-other", b"http://bj.example.com/"), None);
        assert!(ResponseRewrite::new(&rules(), None, None).is_none());
    }
}
