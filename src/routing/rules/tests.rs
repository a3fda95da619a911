//! End-to-end tests of [`RuleSet`]: compile a rules text, route requests,
//! check nginx's precedence and variables, and every kind of config error.

use super::*;
use crate::config::error::ConfigErrors;

pub(super) fn rules(src: &str) -> RuleSet {
    match RuleSet::compile(src, Path::new("routes.toml")) {
        Ok(r) => r,
        Err(e) => panic!("{}", ConfigErrors(e)),
    }
}

pub(super) fn errors(src: &str) -> Vec<String> {
    match RuleSet::compile(src, Path::new("routes.toml")) {
        Ok(_) => panic!("rules must not compile:\n{src}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

struct Req<'a> {
    host: &'a str,
    target: &'a str,
    headers: HeaderMap,
}

fn req<'a>(host: &'a str, target: &'a str) -> Req<'a> {
    Req {
        host,
        target,
        headers: HeaderMap::new(),
    }
}

impl Req<'_> {
    fn route<'r>(&self, r: &'r RuleSet) -> Decision<'r> {
        r.route(&RequestInfo {
            host: self.host,
            target: self.target,
            scheme: "http",
            lane: "t-42",
            headers: &self.headers,
            port: 0,
            upstream_statuses: &[],
        })
    }
}

/// The `match` text of the chosen location, or a short description.
fn pick(r: &RuleSet, host: &str, target: &str) -> String {
    match req(host, target).route(r) {
        Decision::Proxy { location, .. } | Decision::Return { location, .. } => {
            location.pattern.clone()
        }
        Decision::Redirect { status, to, .. } => format!("{status} {to}"),
        Decision::NotFound { host, path } => format!("404 {host} {path}"),
        Decision::BadRequest(why) => format!("400 {why}"),
    }
}

/// The server line of the decision.
fn server_of(r: &RuleSet, host: &str) -> usize {
    match req(host, "/").route(r) {
        Decision::Proxy { server, .. }
        | Decision::Return { server, .. }
        | Decision::Redirect { server, .. } => server.names.len() * 1000 + server.line,
        other => panic!("{other:?}"),
    }
}

fn body(d: Decision<'_>) -> String {
    match d {
        Decision::Return { body, .. } => body,
        other => panic!("expected a return, got {other:?}"),
    }
}

fn proxy(d: Decision<'_>) -> (Option<String>, Vec<(String, String)>) {
    match d {
        Decision::Proxy {
            upstream_target,
            set_headers,
            ..
        } => (
            upstream_target,
            set_headers
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect(),
        ),
        other => panic!("expected a proxy, got {other:?}"),
    }
}

/// One server with the given locations (TOML bodies), all `return` their
/// own match text unless they say otherwise.
fn server(names: &str, locations: &[&str]) -> String {
    let mut s = format!("[[server]]\nnames = [{names}]\n");
    for l in locations {
        s.push_str("[[server.location]]\n");
        s.push_str(l);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------- locations

#[test]
fn exact_beats_noregex_prefix_and_regex() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"~ ^/x$\"\nreturn = { status = 200 }",
            "match = \"^~ /x\"\nreturn = { status = 200 }",
            "match = \"= /x\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/x"), "= /x");
    assert_eq!(pick(&r, "a", "/x?q=1"), "= /x");
    assert_eq!(pick(&r, "a", "/xy"), "^~ /x");
}

#[test]
fn noregex_prefix_beats_regex() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"~* \\\\.png$\"\nreturn = { status = 200 }",
            "match = \"^~ /static/\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/static/logo.png"), "^~ /static/");
    assert_eq!(pick(&r, "a", "/img/logo.PNG"), "~* \\.png$");
}

#[test]
fn regex_beats_plain_prefix_and_longest_prefix_is_the_fallback() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"/\"\nreturn = { status = 200 }",
            "match = \"/api/\"\nreturn = { status = 200 }",
            "match = \"/api/v1/\"\nreturn = { status = 200 }",
            "match = \"~ ^/api/.*\\\\.json$\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/api/v1/x.json"), "~ ^/api/.*\\.json$");
    assert_eq!(pick(&r, "a", "/api/v1/x"), "/api/v1/");
    assert_eq!(pick(&r, "a", "/api/v2/x"), "/api/");
    assert_eq!(pick(&r, "a", "/other"), "/");
}

#[test]
fn first_regex_in_file_order_wins_not_the_longest() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"~ /a\"\nreturn = { status = 200 }",
            "match = \"~ ^/a/b/c$\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/a/b/c"), "~ /a");
}

#[test]
fn caseless_and_case_sensitive_regexes() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"~ \\\\.GIF$\"\nreturn = { status = 200 }",
            "match = \"~* \\\\.jpg$\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/x.gif"), "404 a /x.gif");
    assert_eq!(pick(&r, "a", "/x.GIF"), "~ \\.GIF$");
    assert_eq!(pick(&r, "a", "/x.JpG"), "~* \\.jpg$");
}

#[test]
fn auto_redirect_adds_the_slash_keeps_args_and_beats_regexes() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"~ ^/user\"\nreturn = { status = 200 }",
            "match = \"/user/\"\nservice = \"user-api\"",
            "match = \"/a b/\"\nservice = \"user-api\"",
            "match = \"/static/\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/user"), "301 /user/");
    assert_eq!(pick(&r, "a", "/user?x=1&y"), "301 /user/?x=1&y");
    assert_eq!(pick(&r, "a", "/a%20b"), "301 /a%20b/");
    // the request for the location itself goes to the regex, as usual
    assert_eq!(pick(&r, "a", "/user/"), "~ ^/user");
    // not for a location that does not proxy
    assert_eq!(pick(&r, "a", "/static"), "404 a /static");
}

#[test]
fn an_exact_location_for_the_bare_path_beats_auto_redirect() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"/user/\"\nservice = \"user-api\"",
            "match = \"= /user\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/user"), "= /user");
}

#[test]
fn no_location_is_a_not_found_naming_host_and_path() {
    let r = rules(&server("\"a\"", &["match = \"/x/\"\nservice = \"s\""]));
    assert_eq!(pick(&r, "A:80", "/y%20z"), "404 a /y z");
    assert_eq!(pick(&RuleSet::empty(), "a", "/"), "404 a /");
}

// -------------------------------------------------------------- normalising

#[test]
fn locations_match_the_decoded_normalised_path() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"/a b/\"\nreturn = { status = 200 }",
            "match = \"/x/y\"\nreturn = { status = 200 }",
            "match = \"= /z\"\nreturn = { status = 200 }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/a%20b/c"), "/a b/");
    // an encoded slash is decoded for matching, as nginx does
    assert_eq!(pick(&r, "a", "/x%2Fy"), "/x/y");
    assert_eq!(pick(&r, "a", "//x//y"), "/x/y");
    assert_eq!(pick(&r, "a", "/q/../z"), "= /z");
    assert_eq!(pick(&r, "a", "/./z"), "= /z");
}

#[test]
fn bad_targets_and_hosts_are_bad_requests() {
    let r = rules(&server("\"a\"", &["match = \"/\"\nservice = \"s\""]));
    assert_eq!(
        pick(&r, "a", "/../etc/passwd"),
        "400 request path goes above the root"
    );
    assert_eq!(
        pick(&r, "a", "/%2e%2e/x"),
        "400 request path goes above the root"
    );
    assert_eq!(
        pick(&r, "a", "/%zz"),
        "400 invalid percent-encoding in request path"
    );
    assert_eq!(pick(&r, "a..b", "/"), "400 invalid host");
}

// -------------------------------------------------------------------- hosts

const HOSTS: &str = r#"
[[server]]
names = ["first.test"]
[[server.location]]
match = "/"
return = { status = 200, body = "first" }

[[server]]
names = ["a.example.com"]
[[server.location]]
match = "/"
return = { status = 200, body = "exact" }

[[server]]
names = ["*.example.com"]
[[server.location]]
match = "/"
return = { status = 200, body = "star" }

[[server]]
names = ["*.b.example.com"]
[[server.location]]
match = "/"
return = { status = 200, body = "longer star" }

[[server]]
names = ["www.example.*"]
[[server.location]]
match = "/"
return = { status = 200, body = "tail" }

[[server]]
names = ["~^(?<city>[a-z]+)\\.city\\.test$"]
[[server.location]]
match = "/"
return = { status = 200, body = "regex1 $city" }

[[server]]
names = ["~\\.test$"]
[[server.location]]
match = "/"
return = { status = 200, body = "regex2" }

[[server]]
names = [".example.org"]
[[server.location]]
match = "/"
return = { status = 200, body = "dot" }
"#;

fn host_body(r: &RuleSet, host: &str) -> String {
    body(req(host, "/").route(r))
}

#[test]
fn host_precedence_exact_wildcards_regex_first_server() {
    let r = rules(HOSTS);
    assert_eq!(host_body(&r, "a.example.com"), "exact");
    assert_eq!(host_body(&r, "z.example.com"), "star");
    assert_eq!(host_body(&r, "x.y.example.com"), "star");
    assert_eq!(host_body(&r, "a.b.example.com"), "longer star");
    assert_eq!(
        host_body(&r, "www.example.com"),
        "star",
        "leading beats trailing"
    );
    assert_eq!(host_body(&r, "www.example.net"), "tail");
    assert_eq!(host_body(&r, "bj.city.test"), "regex1 bj");
    assert_eq!(
        host_body(&r, "x.y.city.test"),
        "regex2",
        "second regex in file order"
    );
    assert_eq!(
        host_body(&r, "example.com"),
        "first",
        "*.example.com is not example.com"
    );
    assert_eq!(
        host_body(&r, "unknown.net"),
        "first",
        "no default: the first server"
    );
    assert_eq!(host_body(&r, ""), "first");
}

#[test]
fn dot_form_covers_the_domain_itself() {
    let r = rules(HOSTS);
    assert_eq!(host_body(&r, "example.org"), "dot");
    assert_eq!(host_body(&r, "a.b.example.org"), "dot");
}

#[test]
fn host_is_normalised_before_matching() {
    let r = rules(HOSTS);
    assert_eq!(host_body(&r, "A.Example.COM:8443"), "exact");
    assert_eq!(host_body(&r, "a.example.com."), "exact");
    assert_eq!(host_body(&r, "BJ.City.Test.:80"), "regex1 bj");
}

#[test]
fn the_default_flag_beats_the_first_server() {
    let src = format!(
        "{}\n[[server]]\nnames = [\"d\"]\ndefault = true\n[[server.location]]\nmatch = \"/\"\nreturn = {{ status = 200, body = \"default\" }}\n",
        HOSTS
    );
    let r = rules(&src);
    assert_eq!(host_body(&r, "unknown.net"), "default");
    assert_eq!(host_body(&r, "a.example.com"), "exact");
    assert_ne!(server_of(&r, "unknown.net"), server_of(&r, "first.test"));
}

// ---------------------------------------------------------------- templates

#[test]
fn every_variable_kind_renders() {
    let r = rules(&server(
        "\"~^(?<city>[a-z]+)\\\\.example\\\\.com$\"",
        &[r#"match = '~ ^/p/(?<id>\d+)/(\w+)$'
return = { status = 200, body = "$host|$uri|$args|$is_args|$request_uri|$scheme|$lane|$http_x_trace_id|$cookie_sid|$arg_b|$1|$2|$id|$city|${city}x" }"#],
    ));
    let mut q = req("BJ.example.com:8080", "/p/%34%32/name?a=1&b=2");
    q.headers.insert("x-trace-id", "t1".parse().unwrap());
    q.headers.insert("cookie", "x=1; sid=abc".parse().unwrap());
    assert_eq!(
        body(q.route(&r)),
        "bj.example.com|/p/42/name|a=1&b=2|?|/p/%34%32/name?a=1&b=2|http|t-42|t1|abc|2|42|name|42|bj|bjx"
    );
}

#[test]
fn host_regex_captures_reach_prefix_locations_numbered_and_named() {
    let r = rules(&server(
        "\"~^([a-z]+)-(?<env>[a-z]+)\\\\.test$\"",
        &[
            "match = \"/\"\nreturn = { status = 200, body = \"$1 $2 $env\" }",
            // a regex location replaces the numbered captures, even when its
            // group does not take part in the match
            "match = \"~ ^/r(x)?$\"\nreturn = { status = 200, body = \"[$1] $env\" }",
        ],
    ));
    assert_eq!(body(req("bj-prod.test", "/x").route(&r)), "bj prod prod");
    assert_eq!(body(req("bj-prod.test", "/r").route(&r)), "[] prod");
}

#[test]
fn redirect_renders_captures_and_escapes_control_bytes() {
    let r = rules(&server(
        "\"a\"",
        &[
            "match = \"~ ^/old/(.*)$\"\nredirect = { status = 301, to = \"https://$host/new/$1\" }",
            "match = \"/\"\nredirect = { to = \"https://$host$uri\" }",
        ],
    ));
    assert_eq!(pick(&r, "a", "/old/x/y"), "301 https://a/new/x/y");
    // nginx would write the decoded CR LF into the header (header injection)
    assert_eq!(
        pick(&r, "a", "/x%0D%0ASet-Cookie:%20a=1"),
        "302 https://a/x%0D%0ASet-Cookie: a=1"
    );
}

#[test]
fn host_without_a_host_header_is_the_first_server_name() {
    let r = rules(&server(
        "\"~^x$\", \"main.test\", \"other.test\"",
        &["match = \"/\"\nreturn = { status = 200, body = \"[$host]\" }"],
    ));
    assert_eq!(body(req("", "/").route(&r)), "[main.test]");
}

#[test]
fn rule_set_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RuleSet>();
    check::<Decision<'static>>();
}

#[test]
fn redirect_status_defaults_to_302() {
    let r = rules(&server(
        "\"a\"",
        &["match = \"/\"\nredirect = { to = \"/x\" }"],
    ));
    assert_eq!(pick(&r, "a", "/"), "302 /x");
}

// ------------------------------------------------------------------ rewrite

const REWRITE: &str = r#"
[[server]]
names = ["~^(?<city>[a-z]+)\\.example\\.com$"]

[[server.location]]
match = "/user/"
service = "user-api"
rewrite = ["^/user/(?<rest>.*)$", "/u/$1"]
set_headers = { "X-City" = "$city", "X-Rest" = "$rest", "X-Uri" = "$uri?$args", "X-One" = "[$1]" }

[[server.location]]
match = "/q/"
service = "q-api"
rewrite = ["^/q/(.*)$", "/query?item=$1&city=$city"]

[[server.location]]
match = "/drop/"
service = "q-api"
rewrite = ["^/drop/(.*)$", "/d/$1?"]

[[server.location]]
match = "/new/"
service = "q-api"
rewrite = ["^/new/(.*)$", "/n?x=$1?"]

[[server.location]]
match = "~ ^/loc/(?<id>[0-9]+)"
service = "loc-api"
rewrite = ["^/loc/[0-9]+/(.*)$", "/items/$id/$1"]
set_headers = { "X-One" = "[$1]", "X-Id" = "$id" }
"#;

fn headers_of(d: Decision<'_>) -> (Option<String>, Vec<(String, String)>) {
    proxy(d)
}

#[test]
fn rewrite_uses_path_and_host_captures_and_keeps_args() {
    let r = rules(REWRITE);
    let (target, headers) = headers_of(req("bj.example.com", "/user/a/b?x=1").route(&r));
    assert_eq!(target.as_deref(), Some("/u/a/b?x=1"));
    assert_eq!(
        headers,
        [
            ("x-city".to_string(), "bj".to_string()),
            ("x-rest".to_string(), "a/b".to_string()),
            ("x-uri".to_string(), "/u/a/b?x=1".to_string()),
            ("x-one".to_string(), "[a/b]".to_string()),
        ]
    );
}

#[test]
fn rewrite_args_rules_follow_nginx() {
    let r = rules(REWRITE);
    // new args, the original appended after "&"
    let (t, _) = headers_of(req("bj.example.com", "/q/book?page=2").route(&r));
    assert_eq!(t.as_deref(), Some("/query?item=book&city=bj&page=2"));
    // a trailing "?" drops the original args
    let (t, _) = headers_of(req("bj.example.com", "/drop/x?page=2").route(&r));
    assert_eq!(t.as_deref(), Some("/d/x"));
    // new args and a trailing "?": only the new ones
    let (t, _) = headers_of(req("bj.example.com", "/new/7?page=2").route(&r));
    assert_eq!(t.as_deref(), Some("/n?x=7"));
}

#[test]
fn rewrite_escapes_the_path_and_args_captures_of_an_escaped_request() {
    let r = rules(REWRITE);
    // the path is re-escaped; in args, captures are escaped because the
    // request path held an escape (nginx quoted_uri)
    let (t, _) = headers_of(req("bj.example.com", "/user/a%20b").route(&r));
    assert_eq!(t.as_deref(), Some("/u/a%20b"));
    let (t, _) = headers_of(req("bj.example.com", "/q/a%26b").route(&r));
    assert_eq!(t.as_deref(), Some("/query?item=a%26b&city=bj"));
    // without an escape in the request, captures go into args raw
    let (t, _) = headers_of(req("bj.example.com", "/q/a;b").route(&r));
    assert_eq!(t.as_deref(), Some("/query?item=a;b&city=bj"));
}

#[test]
fn rewrite_captures_replace_the_location_regex_numbers_but_names_survive() {
    let r = rules(REWRITE);
    let (t, h) = headers_of(req("bj.example.com", "/loc/42/photo").route(&r));
    assert_eq!(t.as_deref(), Some("/items/42/photo"));
    assert_eq!(h[0], ("x-one".to_string(), "[photo]".to_string()));
    assert_eq!(h[1], ("x-id".to_string(), "42".to_string()));
}

#[test]
fn rewrite_that_does_not_match_forwards_the_original_and_clears_numbers() {
    let r = rules(REWRITE);
    // "/loc/42" matches the location regex but not the rewrite regex
    let (t, h) = headers_of(req("bj.example.com", "/loc/42?x").route(&r));
    assert_eq!(t, None);
    assert_eq!(h[0], ("x-one".to_string(), "[]".to_string()));
    assert_eq!(h[1], ("x-id".to_string(), "42".to_string()));
}

#[test]
fn without_rewrite_the_original_target_is_forwarded() {
    let r = rules(&server(
        "\"a\"",
        &["match = \"/\"\nservice = \"s\"\nset_headers = { \"X-Debug\" = \"\" }\nadd_response_headers = { \"X-Empty\" = \"$arg_none\", \"X-By\" = \"laneway\" }"],
    ));
    match req("a", "/a%20b//c?x=1").route(&r) {
        Decision::Proxy {
            service,
            upstream_target,
            set_headers,
            add_response_headers,
            ..
        } => {
            assert_eq!(&**service, "s");
            assert_eq!(upstream_target, None);
            // an empty set value means: remove the header upstream
            assert_eq!(set_headers[0].1, "");
            assert_eq!(add_response_headers.len(), 1);
            assert_eq!(add_response_headers[0].1, "laneway");
        }
        other => panic!("{other:?}"),
    }
}

// ----------------------------------------------------------------- services

#[test]
fn services_are_listed_once_in_file_order() {
    let r = rules(REWRITE);
    let s: Vec<String> = r.services().iter().map(|s| s.to_string()).collect();
    assert_eq!(s, ["user-api", "q-api", "loc-api"]);
    assert!(RuleSet::empty().services().is_empty());
}

#[test]
fn example_rules_file_compiles_and_routes() {
    let src = include_str!("../../../config/routes.toml");
    let r = rules(src);
    assert_eq!(body(req("www.example.com", "/").route(&r)), "example.com\n");
    assert_eq!(body(req("bj.example.com", "/").route(&r)), "city bj\n");
    let (t, h) = proxy(req("bj.example.com", "/user/42?x=1").route(&r));
    assert_eq!(t.as_deref(), Some("/u/42?city=bj&x=1"));
    assert!(h.contains(&("x-city".to_string(), "bj".to_string())));
    assert_eq!(
        pick(&r, "example.com", "/old/a?b=1"),
        "301 https://example.com/new/a?b=1"
    );
    assert_eq!(pick(&r, "example.com", "/order"), "301 /order/");
    assert_eq!(pick(&r, "sh.example.com", "/order/1.png"), "^~ /order/");
    assert_eq!(
        pick(&r, "sh.example.com", "/a/1.PNG"),
        "~* \\.(png|jpe?g|gif)$"
    );
    assert_eq!(r.services().len(), 2);
}

#[test]
fn load_reports_an_unreadable_file() {
    let e = RuleSet::load(Path::new("/nonexistent/routes.toml")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].to_string()
            .starts_with("/nonexistent/routes.toml: cannot read"),
        "{}",
        e[0]
    );
}

#[test]
fn locations_expose_what_explain_needs() {
    let r = rules("\n[[server]]\nnames = [\"a\"]\n\n[[server.location]]\nmatch = \"^~ /s/\"\nservice = \"x\"\n");
    let s = &r.servers()[0];
    assert_eq!(s.line, 2);
    let l = &s.locations[0];
    assert_eq!(
        (l.line, l.kind, l.path.as_str(), l.action.kind()),
        (5, LocationKind::PrefixNoRegex, "/s/", "proxy")
    );
    assert_eq!(l.file.as_ref(), Path::new("routes.toml"));
}

// ------------------------------------------------------------ config errors

fn one_error(src: &str) -> String {
    let e = errors(src);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap_or_default()
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = one_error("[[server]]\nnames = [\"a\"]\n[[server.location]]\nmatch = \"/\"\nservice = \"s\"\nread_timout = \"1s\"\n");
    assert!(e.starts_with("routes.toml:6:"), "{e}");
    assert!(e.contains("read_timout"), "{e}");
}

#[test]
fn two_actions_is_an_error_at_the_second() {
    let e = one_error("[[server]]\n[[server.location]]\nmatch = \"/\"\nservice = \"s\"\nreturn = { status = 200 }\n");
    assert!(e.starts_with("routes.toml:5:"), "{e}");
    assert!(e.contains("2 actions (service, return)"), "{e}");
}

#[test]
fn no_action_is_an_error_at_the_match() {
    let e = one_error("[[server]]\n[[server.location]]\nmatch = \"/x\"\n");
    assert!(e.starts_with("routes.toml:3:"), "{e}");
    assert!(e.contains("no action"), "{e}");
}

#[test]
fn bad_regex_names_the_regex_and_line() {
    let e = errors("[[server]]\nnames = [\"~^(a\"]\n[[server.location]]\nmatch = \"~ ^/(x\"\nservice = \"s\"\nrewrite = [\"[z\", \"/\"]\n");
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("routes.toml:2:") && e[0].contains("\"^(a\""),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("routes.toml:4:") && e[1].contains("\"^/(x\""),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("routes.toml:6:") && e[2].contains("\"[z\""),
        "{}",
        e[2]
    );
}

#[test]
fn bad_statuses_are_errors() {
    let e = errors("[[server]]\n[[server.location]]\nmatch = \"/a\"\nreturn = { status = 600 }\n[[server.location]]\nmatch = \"/b\"\nredirect = { status = 200, to = \"/\" }\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("routes.toml:4:") && e[0].contains("600"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("routes.toml:7:") && e[1].contains("200"),
        "{}",
        e[1]
    );
}

#[test]
fn unknown_variable_points_at_it() {
    let e = one_error(
        "[[server]]\n[[server.location]]\nmatch = \"/\"\nredirect = { to = \"https://$hots/\" }\n",
    );
    // column of "$hots": after `redirect = { to = "https://`
    assert!(e.starts_with("routes.toml:4:28:"), "{e}");
    assert!(e.contains("unknown variable $hots"), "{e}");
}

#[test]
fn capture_out_of_range_and_unknown_name_are_errors() {
    let e = errors("[[server]]\n[[server.location]]\nmatch = \"~ ^/(a)$\"\nreturn = { status = 200, body = \"$2\" }\n[[server.location]]\nmatch = \"/\"\nreturn = { status = 200, body = \"$city\" }\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("routes.toml:4:")
            && e[0].contains("no capture group 2 in the location regex"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("routes.toml:7:") && e[1].contains("$city"),
        "{}",
        e[1]
    );
}

#[test]
fn duplicate_default_server_is_an_error() {
    let e = one_error("[[server]]\ndefault = true\n[[server]]\ndefault = true\n");
    assert!(e.starts_with("routes.toml:4:"), "{e}");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn duplicate_server_name_is_an_error() {
    let e = one_error("[[server]]\nnames = [\"a.test\"]\n[[server]]\nnames = [\"A.test\"]\n");
    assert!(e.starts_with("routes.toml:4:"), "{e}");
    assert!(
        e.contains("duplicate server name \"a.test\"") && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn duplicate_location_is_an_error() {
    let e = one_error("[[server]]\n[[server.location]]\nmatch = \"/a\"\nservice = \"s\"\n[[server.location]]\nmatch = \"^~ /a\"\nservice = \"s\"\n");
    assert!(e.starts_with("routes.toml:6:"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn every_error_is_collected() {
    let e = errors(
        r#"
[[server]]
names = ["a..b", "~(?<host>x)"]
[[server.location]]
match = "/"
service = "bad name"
connect_timeout = "soon"
set_headers = { "Bad Header" = "x" }
[[server.location]]
match = "/r"
return = { status = 200, body = "$nope" }
add_response_headers = { "X" = "y" }
[[server.location]]
match = "/w"
redirect = { to = "/" }
rewrite = ["^/w", "/v"]
"#,
    );
    let lines: Vec<&str> = e
        .iter()
        .map(|m| m.split(':').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(lines, ["3", "3", "6", "7", "8", "11", "12", "16"], "{e:#?}");
    assert!(e[1].contains("would hide the variable $host"), "{}", e[1]);
}

#[test]
fn rewrite_replacement_that_would_redirect_is_refused() {
    let e = one_error("[[server]]\n[[server.location]]\nmatch = \"/\"\nservice = \"s\"\nrewrite = [\"^/(.*)\", \"https://x/$1\"]\n");
    assert!(
        e.starts_with("routes.toml:5:") && e.contains("redirect"),
        "{e}"
    );
}
