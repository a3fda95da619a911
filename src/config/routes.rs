//! The schema of the route rules file (`routes.toml`), exactly as written by
//! hand: server blocks holding locations. Control plane only; the rules are
//! validated and compiled by [`crate::routing::rules::RuleSet::compile`].
//!
//! Every value that a later check may reject is kept [`Spanned`], so that an
//! error can name its file and line. Unknown keys are rejected by serde
//! (`deny_unknown_fields`), with the line of the offending key.
//!
//! ```toml
//! [[server]]
//! names = ["bj.example.com", "*.example.com", "~^(?<city>[a-z]+)\\.example\\.com$"]
//! default = true
//!
//! [[server.location]]
//! match = "/user/"
//! service = "user-api"
//! rewrite = ["^/user/(.*)$", "/u/$1"]
//! set_headers = { "X-City" = "$city" }
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole rules file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub server: Vec<Spanned<ServerDef>>,
    /// nginx `map` blocks: variables computed from other variables.
    #[serde(default)]
    pub map: Vec<Spanned<MapDef>>,
    /// nginx upstream names (as `proxy_pass` names them) → laneway service.
    #[serde(default)]
    pub upstreams: Option<OrderedTable>,
    /// Services with fixed instances (`"host:port"`), served to every lane
    /// as baseline instances: an nginx upstream's own `server` lines.
    #[serde(default)]
    pub static_services: Option<Spanned<toml::Table>>,
}

/// One `[[map]]`: nginx `map $source $variable { … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapDef {
    /// The value looked up, a template such as `"$host"`.
    pub source: Spanned<String>,
    /// The variable defined, e.g. `"$backend"`.
    pub variable: Spanned<String>,
    /// The value when no key matches (default `""`).
    #[serde(default)]
    pub default: Option<Spanned<String>>,
    /// Keys may be host wildcards (`*.example.com`, `www.example.*`).
    #[serde(default)]
    pub hostnames: bool,
    /// `[key, value]` pairs: exact keys (case-insensitive), `~regex` and
    /// `~*regex` (tried in order after the exact keys); values are templates.
    #[serde(default)]
    pub entries: Vec<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[server]]` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDef {
    /// Host patterns: exact (`a.example.com`), leading wildcard
    /// (`*.example.com`, `.example.com`), trailing wildcard (`www.example.*`)
    /// or regex (`~^(?<city>[a-z]+)\.example\.com$`).
    #[serde(default)]
    pub names: Vec<Spanned<String>>,
    /// Marks the server that answers hosts no other server names:
    /// `true` on every port it listens on, or a list of those ports (nginx
    /// `listen … default_server`).
    #[serde(default)]
    pub default: Option<Spanned<DefaultDef>>,
    /// nginx ports this server listens on (`listen`); absent: every port.
    /// A request is matched against the servers of the port its laneway
    /// listener stands for (`[routes.nginx_listen]`).
    #[serde(default)]
    pub ports: Option<Spanned<Vec<Spanned<i64>>>>,
    /// The ports of `ports` that nginx serves with TLS (`listen … ssl`).
    #[serde(default)]
    pub ssl_ports: Option<Spanned<Vec<Spanned<i64>>>>,
    #[serde(default)]
    pub location: Vec<Spanned<LocationDef>>,
    /// nginx rewrite-module directives run before a location is chosen
    /// (`rewrite`, `set`, `if`, `return`, `break`), one or more per item.
    #[serde(default)]
    pub script: Option<Vec<Spanned<String>>>,
    /// nginx `error_page` arguments, one directive per item
    /// (`"404 = @fallback"`, `"500 502 /50x.html"`); locations inherit them.
    #[serde(default)]
    pub error_page: Option<Vec<Spanned<String>>>,
    /// nginx `proxy_intercept_errors`: upstream statuses listed in
    /// `error_page` go to the error page (inherited by locations).
    #[serde(default)]
    pub proxy_intercept_errors: Option<bool>,
    /// nginx `recursive_error_pages` (inherited by locations).
    #[serde(default)]
    pub recursive_error_pages: Option<bool>,
}

/// `default = true` or `default = [443]`.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum DefaultDef {
    Flag(bool),
    Ports(Vec<i64>),
}

/// One `[[server.location]]` block. Exactly one of `service`, `return` and
/// `redirect` must be present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationDef {
    /// nginx location syntax: `/p`, `= /p`, `^~ /p`, `~ regex`, `~* regex`.
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    /// Proxy to this service.
    pub service: Option<Spanned<String>>,
    /// Answer directly with a status and a body.
    #[serde(rename = "return")]
    pub ret: Option<Spanned<ReturnDef>>,
    /// Answer with a redirect.
    pub redirect: Option<Spanned<RedirectDef>>,
    /// `[regex, replacement]`, like nginx `rewrite regex replacement break`.
    pub rewrite: Option<Spanned<Vec<Spanned<String>>>>,
    /// Request headers set (or, with an empty value, removed) upstream.
    pub set_headers: Option<OrderedTable>,
    /// Request headers removed before proxying.
    pub remove_headers: Option<Vec<Spanned<String>>>,
    /// Headers added to the response.
    pub add_response_headers: Option<OrderedTable>,
    /// humantime durations: "1s", "250ms".
    pub connect_timeout: Option<Spanned<String>>,
    pub read_timeout: Option<Spanned<String>>,
    pub write_timeout: Option<Spanned<String>>,
    /// Resends of an idempotent request whose upstream closed or reset
    /// before answering (default `[proxy] read_retries`).
    pub retries: Option<Spanned<i64>>,
    /// nginx `proxy_pass` URL (`http://upstream[/uri]`, variables allowed),
    /// with nginx's URI semantics; the upstream names a service through
    /// `[upstreams]`.
    pub proxy_pass: Option<Spanned<String>>,
    /// nginx rewrite-module directives run after this location is chosen
    /// (`rewrite … last|break|redirect|permanent`, `set`, `if`, `return`,
    /// `break`), in order.
    pub script: Option<Vec<Spanned<String>>>,
    /// nginx `try_files`: laneway serves no files, so the last item decides
    /// (`@named` location, a URI, or `=code`).
    pub try_files: Option<Spanned<Vec<Spanned<String>>>>,
    /// Reachable only through an internal redirect (nginx `internal`).
    pub internal: Option<bool>,
    /// nginx `error_page` arguments, one directive per item; replaces what
    /// the enclosing location or server defines.
    pub error_page: Option<Vec<Spanned<String>>>,
    /// nginx `proxy_intercept_errors` (default: the enclosing level's).
    pub proxy_intercept_errors: Option<bool>,
    /// nginx `recursive_error_pages` (default: the enclosing level's).
    pub recursive_error_pages: Option<bool>,
    /// nginx `proxy_redirect`: `"off"`, or `[from, to]` pairs applied to
    /// the upstream's `Location` and `Refresh` (`from` a prefix, or a regex
    /// after `~` / `~*` whose match is replaced whole, `$1` … allowed).
    pub proxy_redirect: Option<Spanned<ReplaceDef>>,
    /// nginx `proxy_cookie_domain`: `"off"`, or `[domain, replacement]`
    /// pairs applied to the upstream's `Set-Cookie` `Domain=`.
    pub proxy_cookie_domain: Option<Spanned<ReplaceDef>>,
    /// Nested locations.
    #[serde(default)]
    pub location: Vec<Spanned<LocationDef>>,
}

/// `"off"` or `[["from", "to"], …]` (`proxy_redirect`, `proxy_cookie_domain`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ReplaceDef {
    Word(String),
    Pairs(Vec<Vec<String>>),
}

/// `return = { status = 200, body = "home", headers = { … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnDef {
    pub status: Spanned<i64>,
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: Option<OrderedTable>,
}

/// `redirect = { status = 301, to = "https://$host/new/$1" }`; `status`
/// defaults to 302, as nginx's `rewrite … redirect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectDef {
    #[serde(default)]
    pub status: Option<Spanned<i64>>,
    pub to: Spanned<String>,
}

/// A table of string keys to string values, kept in file order (header
/// tables: the order they are written is the order they are applied).
#[derive(Debug, Default)]
pub struct OrderedTable(pub Vec<(Spanned<String>, Spanned<String>)>);

impl<'de> Deserialize<'de> for OrderedTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor(PhantomData<OrderedTable>);

        impl<'de> Visitor<'de> for TableVisitor {
            type Value = OrderedTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of header names to string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedTable, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<Spanned<String>, Spanned<String>>()? {
                    entries.push((k, v));
                }
                Ok(OrderedTable(entries))
            }
        }

        deserializer.deserialize_map(TableVisitor(PhantomData))
    }
}

impl RoutesFile {
    /// Parses the text of a rules file. Syntax errors and unknown keys stop
    /// here, with their location; semantic checks happen when compiling.
    pub fn parse(source: &str) -> Result<RoutesFile, toml::de::Error> {
        toml::from_str(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::ConfigError;
    use std::path::Path;

    fn err(src: &str) -> String {
        let e = RoutesFile::parse(src).expect_err("must fail");
        ConfigError::from_toml(Path::new("routes.toml"), src, &e).to_string()
    }

    #[test]
    fn full_location_parses_in_file_order() {
        let src = r#"
[[server]]
names = ["a.example.com"]
default = true

[[server.location]]
match = "/user/"
service = "user-api"
rewrite = ["^/user/(.*)$", "/u/$1"]
set_headers = { "X-B" = "2", "X-A" = "$host" }
remove_headers = ["X-Debug"]
add_response_headers = { "X-Served-By" = "laneway" }
connect_timeout = "1s"
read_timeout = "30s"
write_timeout = "30s"

[[server.location]]
match = "= /"
return = { status = 200, body = "home", headers = { "Content-Type" = "text/plain" } }

[[server.location]]
match = "~ ^/old/(.*)$"
redirect = { status = 301, to = "https://$host/new/$1" }
"#;
        let f = RoutesFile::parse(src).expect("valid");
        assert_eq!(f.server.len(), 1);
        let s = f.server[0].get_ref();
        assert_eq!(s.location.len(), 3);
        let l = s.location[0].get_ref();
        let keys: Vec<&str> = l
            .set_headers
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|(k, _)| k.get_ref().as_str())
            .collect();
        assert_eq!(keys, ["X-B", "X-A"]);
        assert_eq!(
            s.location[1]
                .get_ref()
                .ret
                .as_ref()
                .unwrap()
                .get_ref()
                .status
                .get_ref(),
            &200
        );
    }

    #[test]
    fn unknown_location_key_names_key_and_line() {
        let msg = err(
            "[[server]]\nnames = [\"a\"]\n[[server.location]]\nmatch = \"/\"\nservise = \"x\"\n",
        );
        assert!(msg.contains("servise"), "{msg}");
        assert!(msg.starts_with("routes.toml:5:"), "{msg}");
    }

    #[test]
    fn unknown_key_in_inline_return_names_key_and_line() {
        let msg = err("[[server]]\n[[server.location]]\nmatch = \"/\"\nreturn = { status = 200, bdy = \"x\" }\n");
        assert!(msg.contains("bdy"), "{msg}");
        assert!(msg.starts_with("routes.toml:4:"), "{msg}");
    }

    #[test]
    fn header_value_must_be_a_string() {
        let msg = err("[[server]]\n[[server.location]]\nmatch = \"/\"\nservice = \"a\"\nset_headers = { \"X\" = 1 }\n");
        assert!(msg.starts_with("routes.toml:5:"), "{msg}");
    }
}
