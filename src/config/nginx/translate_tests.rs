//! Translation of `error_page` (and its inheritance), `proxy_intercept_errors`,
//! `recursive_error_pages`, `listen` and `default_server`: the routes.toml
//! written, the report, and how the compiled rules route.

use std::collections::BTreeMap;
use std::path::Path;

use http::HeaderMap;

use super::parse::{parse_str, NginxConfig};
use super::translate::{listen_port, translate, Outcome, Translation};
use crate::config::error::ConfigErrors;
use crate::routing::rules::{Decision, RequestInfo, RuleSet};

/// Translates an nginx text given as `nginx.conf`.
fn translated(text: &str) -> Result<Translation, Vec<crate::config::error::ConfigError>> {
    let directives = parse_str(text, Path::new("nginx.conf"), 1).expect("nginx text parses");
    let cfg = NginxConfig {
        main: "nginx.conf".into(),
        directives,
        files: Vec::new(),
    };
    translate(&cfg, &BTreeMap::new())
}

fn tr(text: &str) -> Translation {
    translated(text).unwrap_or_else(|e| panic!("{}", ConfigErrors(e)))
}

fn tr_errors(text: &str) -> Vec<String> {
    match translated(text) {
        Ok(t) => panic!("must not translate:\n{}", t.toml),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn compiled(t: &Translation) -> RuleSet {
    RuleSet::compile(&t.toml, Path::new("nginx.conf"))
        .unwrap_or_else(|e| panic!("{}\n{}", ConfigErrors(e), t.toml))
}

/// `service upstream-target status` of a request (`-` for none), or the
/// local answer.
fn answer(r: &RuleSet, host: &str, target: &str, port: u16, upstream: &[u16]) -> String {
    let headers = HeaderMap::new();
    match r.route(&RequestInfo {
        host,
        target,
        scheme: "http",
        lane: "baseline",
        headers: &headers,
        port,
        upstream_statuses: upstream,
    }) {
        Decision::Proxy {
            service,
            upstream_target,
            status,
            ..
        } => format!(
            "{service} {} {}",
            upstream_target.as_deref().unwrap_or("-"),
            status.map_or("-".into(), |s| s.to_string())
        ),
        Decision::Return { status, .. } => format!("return {status}"),
        Decision::Redirect { status, to, .. } => format!("redirect {status} {to}"),
        Decision::NotFound { .. } => "404".into(),
        Decision::BadRequest(w) => format!("400 {w}"),
    }
}

fn report_line(t: &Translation, line: usize, directive: &str) -> (Outcome, String) {
    t.report
        .iter()
        .find(|r| r.line == line && r.directive == directive)
        .map(|r| (r.outcome, r.note.clone()))
        .unwrap_or_else(|| panic!("no report for {directive} at line {line}"))
}

const INHERIT: &str = r#"
http {
    upstream web { server 127.0.0.1:1; }
    upstream errors { server 127.0.0.1:2; }
    error_page 500 502 /http-50x;
    proxy_intercept_errors on;
    server {
        server_name a.test;
        location / { proxy_pass http://web; }
        location = /http-50x { proxy_pass http://errors; }
        location = /own-50x { proxy_pass http://errors; }
        location /own/ {
            error_page 502 /own-50x;
            proxy_pass http://web;
            location /own/nested/ { proxy_pass http://web; }
            location /own/off/ {
                proxy_intercept_errors off;
                proxy_pass http://web;
            }
        }
    }
    server {
        server_name b.test;
        error_page 404 /b-404;
        location / { proxy_pass http://web; }
        location = /b-404 { proxy_pass http://errors; }
    }
}
"#;

#[test]
fn error_pages_are_inherited_http_server_location_as_nginx_merges_them() {
    let t = tr(INHERIT);
    // the http level's settings are written on each server that has none
    assert!(
        t.toml
            .contains("names = [\"a.test\"]\nports = [80]\nerror_page = [\n  \"500 502 /http-50x\",\n]\nproxy_intercept_errors = true\n"),
        "{}",
        t.toml
    );
    // a server's own list replaces the http level's
    assert!(
        t.toml
            .contains("names = [\"b.test\"]\nports = [80]\nerror_page = [\n  \"404 /b-404\",\n]\nproxy_intercept_errors = true\n"),
        "{}",
        t.toml
    );
    let r = compiled(&t);
    // a.test /: the http level's page
    assert_eq!(
        answer(&r, "a.test", "/x", 0, &[502]),
        "errors /http-50x 502"
    );
    // the location's own list replaces it: 500 is no longer taken over
    assert_eq!(
        answer(&r, "a.test", "/own/x", 0, &[502]),
        "errors /own-50x 502"
    );
    // a nested location inherits its parent's list and switch
    assert_eq!(
        answer(&r, "a.test", "/own/nested/x", 0, &[502]),
        "errors /own-50x 502"
    );
    // proxy_intercept_errors off: statuses pass through
    assert!(matches!(
        r.route(&RequestInfo {
            host: "a.test",
            target: "/own/off/x",
            scheme: "http",
            lane: "baseline",
            headers: &HeaderMap::new(),
            port: 0,
            upstream_statuses: &[],
        }),
        Decision::Proxy {
            intercept: None,
            ..
        }
    ));
    // b.test: 502 has no page there; 404 has
    assert_eq!(answer(&r, "b.test", "/x", 0, &[404]), "errors /b-404 404");
}

#[test]
fn error_page_directives_are_reported_translated_with_their_line() {
    let t = tr(INHERIT);
    for (line, d) in [
        (5, "error_page"),
        (6, "proxy_intercept_errors"),
        (13, "error_page"),
        (17, "proxy_intercept_errors"),
    ] {
        assert_eq!(
            report_line(&t, line, d).0,
            Outcome::Translated,
            "{d} at {line}"
        );
    }
}

#[test]
fn recursive_error_pages_and_overwrites_are_written_as_nginx_reads_them() {
    let t = tr(r#"
http {
    upstream web { server 127.0.0.1:1; }
    server {
        server_name a.test;
        recursive_error_pages on;
        error_page 404 = @fallback;
        error_page 403 =200 "/public page";
        location / { proxy_pass http://web; }
        location @fallback { proxy_pass http://web; }
        location /public { return 200 "p"; }
    }
}
"#);
    assert!(t.toml.contains("  \"404 = @fallback\",\n"), "{}", t.toml);
    assert!(
        t.toml.contains("  \"403 =200 '/public page'\",\n"),
        "{}",
        t.toml
    );
    assert!(
        t.toml.contains("recursive_error_pages = true\n"),
        "{}",
        t.toml
    );
    compiled(&t);
}

#[test]
fn bad_error_page_arguments_name_the_nginx_line() {
    let t = tr("http {\n  server {\n    server_name a.test;\n    error_page 200 /x;\n    location / { return 404; }\n  }\n}\n");
    let e = match RuleSet::compile(&t.toml, Path::new("nginx.conf")) {
        Ok(_) => panic!("must not compile"),
        Err(e) => e,
    };
    // compile errors are mapped back to nginx lines by translate::load;
    // here the TOML line holds the item written for line 4
    let toml_line = e[0].line;
    assert_eq!(t.source_map[toml_line - 1].1, 4, "{e:?}");
    assert!(e[0].message.contains("between 300 and 599"), "{e:?}");
    let e = tr_errors("http {\n  server {\n    error_page 404;\n  }\n}\n");
    assert!(e[0].starts_with("nginx.conf:3:"), "{e:?}");
}

#[test]
fn listen_spellings_give_the_port_and_address() {
    assert_eq!(listen_port("8080"), Ok((None, 8080)));
    assert_eq!(listen_port("*:8080"), Ok((None, 8080)));
    assert_eq!(
        listen_port("127.0.0.1:8443"),
        Ok((Some("127.0.0.1".into()), 8443))
    );
    assert_eq!(listen_port("127.0.0.1"), Ok((Some("127.0.0.1".into()), 80)));
    assert_eq!(listen_port("[::]:443"), Ok((Some("::".into()), 443)));
    assert_eq!(listen_port("[::1]"), Ok((Some("::1".into()), 80)));
    assert_eq!(
        listen_port("localhost:81"),
        Ok((Some("localhost".into()), 81))
    );
    for bad in ["0", "70000", "127.0.0.1:x", "[::1", "[::1]x"] {
        assert!(listen_port(bad).is_err(), "{bad}");
    }
}

const PORTS: &str = r#"
http {
    upstream plain { server 127.0.0.1:1; }
    upstream secure { server 127.0.0.1:2; }
    upstream api { server 127.0.0.1:3; }
    server {
        listen 80 default_server;
        server_name www.example.test;
        location / { proxy_pass http://plain; }
    }
    server {
        listen 443 ssl default_server;
        server_name www.example.test;
        location / { proxy_pass http://secure; }
    }
    server {
        listen 127.0.0.1:80;
        listen [::]:443 ssl;
        server_name api.example.test;
        location / { proxy_pass http://api; }
    }
    server {
        server_name old.example.test;
        location / { proxy_pass http://api; }
    }
}
"#;

#[test]
fn listen_and_default_server_become_ports_and_per_port_defaults() {
    let t = tr(PORTS);
    assert!(
        t.toml.contains(
            "names = [\"www.example.test\"]\nports = [443]\nssl_ports = [443]\ndefault = true\n"
        ),
        "{}",
        t.toml
    );
    assert!(
        t.toml
            .contains("names = [\"api.example.test\"]\nports = [80, 443]\nssl_ports = [443]\n"),
        "{}",
        t.toml
    );
    // no listen: port 80
    assert!(
        t.toml
            .contains("names = [\"old.example.test\"]\nports = [80]\n"),
        "{}",
        t.toml
    );
    let (o, note) = report_line(&t, 7, "listen");
    assert_eq!(o, Outcome::Translated);
    assert!(
        note.contains("port 80") && note.contains("default_server of port 80"),
        "{note}"
    );
    let (_, note) = report_line(&t, 17, "listen");
    assert!(
        note.contains("the address 127.0.0.1 is not compared"),
        "{note}"
    );
    let (_, note) = report_line(&t, 18, "listen");
    assert!(note.contains("ssl"), "{note}");

    let r = compiled(&t);
    assert_eq!(answer(&r, "www.example.test", "/", 80, &[]), "plain - -");
    assert_eq!(answer(&r, "www.example.test", "/", 443, &[]), "secure - -");
    assert_eq!(answer(&r, "api.example.test", "/", 443, &[]), "api - -");
    assert_eq!(answer(&r, "old.example.test", "/", 80, &[]), "api - -");
    assert_eq!(answer(&r, "old.example.test", "/", 443, &[]), "secure - -");
    assert_eq!(answer(&r, "nowhere.test", "/", 443, &[]), "secure - -");
}

#[test]
fn a_second_default_server_for_one_address_is_an_error_and_for_another_is_reported() {
    let e = tr_errors(
        "http {\n  server { listen 8080 default_server; }\n  server { listen 8080 default_server; }\n}\n",
    );
    assert!(
        e.iter().any(|m| m.starts_with("nginx.conf:3:")
            && m.contains("a duplicate default server for 8080")
            && m.contains("nginx.conf:2")),
        "{e:?}"
    );
    let t = tr(
        "http {\n  server { listen 127.0.0.1:8080 default_server; }\n  server { listen 127.0.0.2:8080 default_server; }\n}\n",
    );
    let (o, note) = report_line(&t, 3, "listen");
    assert_eq!(o, Outcome::Unsupported);
    assert!(
        note.contains("port 8080 already has the default server at nginx.conf:2"),
        "{note}"
    );
    compiled(&t);
}

#[test]
fn bad_listen_ports_name_the_nginx_line() {
    let e = tr_errors("http {\n  server {\n    listen 127.0.0.1:99999;\n  }\n}\n");
    assert!(
        e[0].starts_with("nginx.conf:3:") && e[0].contains("invalid port"),
        "{e:?}"
    );
}

/// The location keys `proxy_redirect` / `proxy_cookie_domain` written for
/// the location whose `match` is `pattern`.
fn redirect_keys(t: &Translation, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in t.toml.lines() {
        if line.starts_with("match = ") {
            inside = line == format!("match = \"{pattern}\"");
        } else if inside
            && (line.starts_with("proxy_redirect") || line.starts_with("proxy_cookie_domain"))
        {
            out.push(line.to_string());
        }
    }
    out
}

#[test]
fn proxy_redirect_and_proxy_cookie_domain_become_location_keys() {
    let t = tr(r#"
http {
    upstream b { server 127.0.0.1:9; }
    server {
        server_name a.example.com;
        proxy_redirect http://x/ /;
        proxy_cookie_domain .backend example.com;
        location /one/ { proxy_pass http://b/two/; proxy_redirect default; proxy_redirect http://y/ /y/; }
        location /inherit/ { proxy_pass http://b; }
        location /off/ { proxy_pass http://b/two/; proxy_redirect off; proxy_cookie_domain off; }
        location ~ ^/rx/ { proxy_pass http://b; proxy_redirect ~*^http://(\w+)/ /$1/; }
        location /vars/ { proxy_pass http://b; proxy_redirect http://b/ http://$host/; }
    }
    server {
        server_name c.example.com;
        location /implicit/ { proxy_pass http://b/x/; }
        location /no-uri/ { proxy_pass http://b; }
    }
}
"#);
    assert_eq!(
        redirect_keys(&t, "/one/"),
        vec![
            r#"proxy_redirect = [["http://b/two/", "/one/"], ["http://y/", "/y/"]]"#,
            r#"proxy_cookie_domain = [[".backend", "example.com"]]"#,
        ]
    );
    assert_eq!(
        redirect_keys(&t, "/inherit/"),
        vec![
            r#"proxy_redirect = [["http://x/", "/"]]"#,
            r#"proxy_cookie_domain = [[".backend", "example.com"]]"#,
        ]
    );
    assert!(redirect_keys(&t, "/off/").is_empty());
    assert_eq!(
        redirect_keys(&t, "~ ^/rx/")[0],
        r#"proxy_redirect = [['~*^http://(\w+)/', "/$1/"]]"#
    );
    // nginx's implicit `proxy_redirect default`, and nothing without a URI
    assert_eq!(
        redirect_keys(&t, "/implicit/"),
        vec![r#"proxy_redirect = [["http://b/x/", "/implicit/"]]"#]
    );
    assert!(redirect_keys(&t, "/no-uri/").is_empty());
    // variables are reported, and the level's inherited ones stay
    let vars = t
        .report
        .iter()
        .find(|e| e.directive == "proxy_redirect" && e.outcome == Outcome::Unsupported)
        .expect("the variable form is reported");
    assert!(vars.note.contains("variables"), "{}", vars.note);
    compiled(&t);
}
