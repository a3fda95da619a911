//! `error_page`, `proxy_intercept_errors` and `recursive_error_pages` in
//! the rules: which statuses an error page takes over, its targets, the
//! status answered, inheritance, and the replay of upstream statuses.

use super::tests::rules;
use super::*;

fn route<'r>(r: &'r RuleSet, target: &str, upstream: &[u16]) -> Decision<'r> {
    let headers = HeaderMap::new();
    r.route(&RequestInfo {
        host: "shop.example.com",
        target,
        scheme: "http",
        lane: "baseline",
        headers: &headers,
        port: 0,
        upstream_statuses: upstream,
    })
}

/// `service target status-override as_get`, `return STATUS`, `redirect
/// STATUS TO` or `404`.
fn show(d: Decision<'_>) -> String {
    match d {
        Decision::Proxy {
            service,
            upstream_target,
            status,
            as_get,
            ..
        } => format!(
            "{service} {} {} {}",
            upstream_target.as_deref().unwrap_or("-"),
            status.map_or("-".to_string(), |s| s.to_string()),
            if as_get { "GET" } else { "-" }
        ),
        Decision::Return { status, .. } => format!("return {status}"),
        Decision::Redirect { status, to, .. } => format!("redirect {status} {to}"),
        Decision::NotFound { .. } => "404".to_string(),
        Decision::BadRequest(w) => format!("400 {w}"),
    }
}

const SITE: &str = r#"
[upstreams]
web = "web"
fallback = "fallback"
errors = "errors"

[[server]]
names = ["shop.example.com"]
error_page = ["404 = @fallback", "500 502 503 504 /50x.html"]

[[server.location]]
match = "/"
proxy_pass = "http://web"

[[server.location]]
match = "@fallback"
proxy_pass = "http://fallback"

[[server.location]]
match = "= /50x.html"
proxy_pass = "http://errors"
internal = true

[[server.location]]
match = "/gone/"
script = ["return 404;"]

[[server.location]]
match = "/text/"
script = ["return 404 \"not here\";"]

[[server.location]]
match = "/private/"
script = ["return 403;"]
error_page = ["403 =200 /public?from=private"]

[[server.location]]
match = "/public"
proxy_pass = "http://web"

[[server.location]]
match = "/missing/"
script = ["return 404;"]
error_page = ["404 https://www.example.com/notfound"]

[[server.location]]
match = "/moved/"
script = ["return 404;"]
error_page = ["404 =301 https://www.example.com/new$uri"]

[[server.location]]
match = "/loop/"
script = ["rewrite ^/loop/(.*)$ /loop/$1 last;"]

[[server.location]]
match = "/static/"

[[server.location]]
match = "/shop/"
proxy_pass = "http://web"
proxy_intercept_errors = true

[[server.location.location]]
match = "/shop/raw/"
proxy_pass = "http://web"
proxy_intercept_errors = false

[[server.location]]
match = "/api/"
proxy_pass = "http://web"
proxy_intercept_errors = true
error_page = ["404 /api-404?from=$uri"]

[[server.location.location]]
match = "/api/v1/"
proxy_pass = "http://web/v1/"

[[server.location]]
match = "= /api-404"
proxy_pass = "http://errors"
proxy_intercept_errors = true

[[server.location]]
match = "/chain/"
proxy_pass = "http://web"
proxy_intercept_errors = true
recursive_error_pages = true
error_page = ["404 /chain-404"]

[[server.location]]
match = "/chain2/"
proxy_pass = "http://web"
proxy_intercept_errors = true
error_page = ["404 /chain-404"]

[[server.location]]
match = "= /chain-404"
script = ["return 404;"]
"#;

#[test]
fn statuses_laneway_finalizes_go_to_the_error_page() {
    let r = rules(SITE);
    // `return 404;` → the named location, the target's status (`=`)
    assert_eq!(show(route(&r, "/gone/x?a=1", &[])), "fallback - - -");
    // a location without content (nginx serves files: 404)
    assert_eq!(show(route(&r, "/static/a.css", &[])), "fallback - - -");
    // `return 404 "text"` is sent as it is
    assert_eq!(show(route(&r, "/text/x", &[])), "return 404");
    // the location's own list replaces the server's; `=200` and the args
    assert_eq!(
        show(route(&r, "/private/a", &[])),
        "web /public?from=private 200 GET"
    );
    // a URL target: 302, or the `=` status when it is a redirect
    assert_eq!(
        show(route(&r, "/missing/x", &[])),
        "redirect 302 https://www.example.com/notfound"
    );
    assert_eq!(
        show(route(&r, "/moved/x", &[])),
        "redirect 301 https://www.example.com/new/moved/x"
    );
}

#[test]
fn an_internal_redirect_cycle_is_never_taken_over() {
    let r = rules(SITE);
    assert_eq!(show(route(&r, "/loop/a", &[])), "return 500");
}

#[test]
fn upstream_statuses_are_handed_back_only_where_intercepted() {
    let r = rules(SITE);
    let codes = |t: &str| match route(&r, t, &[]) {
        Decision::Proxy { intercept, .. } => intercept.map(|c| c.iter().collect::<Vec<_>>()),
        other => panic!("{other:?}"),
    };
    assert_eq!(codes("/"), None, "proxy_intercept_errors is off");
    assert_eq!(codes("/shop/a"), Some(vec![404, 500, 502, 503, 504]));
    // nested: the parent's switch is turned off again
    assert_eq!(codes("/shop/raw/a"), None);
    // nested: inherits the parent's switch and list
    assert_eq!(codes("/api/v1/x"), Some(vec![404]));
}

#[test]
fn a_replayed_upstream_status_goes_to_the_page_in_force() {
    let r = rules(SITE);
    // 503 from /shop/: the server's /50x.html, answered with 503
    assert_eq!(
        show(route(&r, "/shop/a", &[503])),
        "errors /50x.html 503 GET"
    );
    // 404 from /shop/: the named location, the fallback's own status
    assert_eq!(show(route(&r, "/shop/a?q=1", &[404])), "fallback - - -");
    // a dynamic target: args split when rendered
    assert_eq!(
        show(route(&r, "/api/v1/x", &[404])),
        "errors /api-404?from=/api/v1/x 404 GET"
    );
    // the error page's upstream answers 404 too: no second page (recursive
    // off), laneway answers the status itself
    assert_eq!(show(route(&r, "/api/x", &[404, 404])), "return 404");
}

#[test]
fn recursive_error_pages_lets_an_error_page_fail_into_another() {
    let r = rules(SITE);
    // /chain/ is recursive: /chain-404's `return 404` goes on to @fallback
    assert_eq!(
        show(route(&r, "/chain/x", &[404])),
        "fallback /chain-404 - GET"
    );
    // /chain2/ is not: the second 404 is final
    assert_eq!(show(route(&r, "/chain2/x", &[404])), "return 404");
}

#[test]
fn no_location_uses_the_server_pages() {
    let r = rules(
        r#"
[upstreams]
errors = "errors"
[[server]]
names = ["shop.example.com"]
error_page = ["404 /err"]
[[server.location]]
match = "/only/"
script = ["return 200 \"x\";"]
[[server.location]]
match = "= /err"
proxy_pass = "http://errors"
"#,
    );
    assert_eq!(show(route(&r, "/elsewhere", &[])), "errors /err 404 GET");
}

#[test]
fn bad_error_pages_are_errors_with_their_line() {
    let errs = match RuleSet::compile(
        r#"
[[server]]
names = ["a"]
error_page = ["200 /x"]
[[server.location]]
match = "/"
error_page = ["404 @nowhere"]
script = ["return 404;"]
"#,
        Path::new("routes.toml"),
    ) {
        Ok(_) => panic!("must not compile"),
        Err(e) => e.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes.toml:4:") && e.contains("between 300 and 599")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes.toml:7:") && e.contains("\"@nowhere\"")),
        "{errs:?}"
    );
}
