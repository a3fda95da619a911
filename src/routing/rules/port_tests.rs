//! Servers chosen by the nginx port a request arrived on (`ports`,
//! `default`), and the checks of those keys.

use super::tests::{errors, rules};
use super::*;

/// The service a host and port reach (`/`), or `404`.
fn service(r: &RuleSet, host: &str, port: u16) -> String {
    let headers = HeaderMap::new();
    match r.route(&RequestInfo {
        host,
        target: "/",
        scheme: "http",
        lane: "baseline",
        headers: &headers,
        port,
        upstream_statuses: &[],
    }) {
        Decision::Proxy { service, .. } => service.to_string(),
        Decision::NotFound { .. } => "404".to_string(),
        other => panic!("{other:?}"),
    }
}

fn server(names: &str, extra: &str, svc: &str) -> String {
    format!(
        "[[server]]\nnames = [{names}]\n{extra}\n[[server.location]]\nmatch = \"/\"\nservice = \"{svc}\"\n"
    )
}

#[test]
fn the_same_name_answers_per_port_with_a_default_per_port() {
    let src = [
        server(
            "\"www.example.test\"",
            "ports = [80]\ndefault = true",
            "plain-www",
        ),
        server(
            "\"www.example.test\"",
            "ports = [443]\nssl_ports = [443]",
            "secure-www",
        ),
        server(
            "\"api.example.test\"",
            "ports = [80, 443]\ndefault = [443]",
            "api",
        ),
        server("\"shop.example.test\"", "ports = [443]", "shop"),
    ]
    .concat();
    let r = rules(&src);
    assert_eq!(r.ports(), [80, 443]);
    assert_eq!(r.ssl_ports(), [443]);
    assert!(r.selects_by_port(80) && r.selects_by_port(443));
    assert!(!r.selects_by_port(8080));
    assert_eq!(service(&r, "www.example.test", 80), "plain-www");
    assert_eq!(service(&r, "www.example.test", 443), "secure-www");
    assert_eq!(service(&r, "api.example.test", 80), "api");
    assert_eq!(service(&r, "api.example.test", 443), "api");
    // shop listens on 443 only: on 80 the default server answers
    assert_eq!(service(&r, "shop.example.test", 80), "plain-www");
    assert_eq!(service(&r, "shop.example.test", 443), "shop");
    // default servers are per port
    assert_eq!(service(&r, "unknown.test", 80), "plain-www");
    assert_eq!(service(&r, "unknown.test", 443), "api");
    // a port no server names, or an unknown one: every server, first wins
    assert_eq!(service(&r, "www.example.test", 0), "plain-www");
    assert_eq!(service(&r, "shop.example.test", 8080), "shop");
}

#[test]
fn without_a_default_the_first_server_of_the_port_answers() {
    let src = [
        server("\"a.test\"", "ports = [80]", "a"),
        server("\"b.test\"", "ports = [8080]", "b"),
        server("\"c.test\"", "ports = [8080]", "c"),
    ]
    .concat();
    let r = rules(&src);
    assert_eq!(service(&r, "x.test", 80), "a");
    assert_eq!(service(&r, "x.test", 8080), "b");
}

#[test]
fn with_one_port_the_port_changes_nothing() {
    let src = [
        server("\"a.test\"", "ports = [8080]", "a"),
        server("\"b.test\"", "ports = [8080]\ndefault = true", "b"),
    ]
    .concat();
    let r = rules(&src);
    assert!(!r.selects_by_port(8080));
    for port in [0, 80, 8080] {
        assert_eq!(service(&r, "a.test", port), "a");
        assert_eq!(service(&r, "other.test", port), "b");
    }
}

#[test]
fn servers_without_ports_listen_on_every_port() {
    let src = [
        server("\"everywhere.test\"", "", "all"),
        server("\"a.test\"", "ports = [80]", "a"),
        server("\"b.test\"", "ports = [443]", "b"),
    ]
    .concat();
    let r = rules(&src);
    assert_eq!(service(&r, "everywhere.test", 80), "all");
    assert_eq!(service(&r, "everywhere.test", 443), "all");
    assert_eq!(
        service(&r, "b.test", 80),
        "all",
        "the first server of port 80"
    );
}

#[test]
fn a_name_two_servers_share_on_a_port_is_an_error_naming_the_port() {
    let e = errors(
        &[
            server("\"a.test\"", "ports = [80, 443]", "a"),
            server("\"a.test\"", "ports = [443]", "b"),
        ]
        .concat(),
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("duplicate server name \"a.test\"")
            && e[0].contains("the server at line 1 already has it on port 443"),
        "{e:?}"
    );
}

#[test]
fn two_defaults_on_one_port_are_an_error() {
    let e = errors(
        &[
            server("\"a.test\"", "ports = [80, 443]\ndefault = [443]", "a"),
            server("\"b.test\"", "ports = [443]\ndefault = true", "b"),
            server("\"c.test\"", "ports = [80]\ndefault = true", "c"),
        ]
        .concat(),
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("two default servers for port 443: this one and the server at line 1"),
        "{e:?}"
    );
}

#[test]
fn bad_ports_are_errors_at_their_line() {
    let e = errors(
        &[
            server("\"a.test\"", "ports = [0, 70000]", "a"),
            server("\"b.test\"", "ports = [80]\nssl_ports = [443]", "b"),
            server("\"c.test\"", "ssl_ports = [443]", "c"),
            server("\"d.test\"", "ports = [80]\ndefault = [81]", "d"),
        ]
        .concat(),
    );
    let has = |line: usize, what: &str| {
        e.iter()
            .any(|m| m.starts_with(&format!("routes.toml:{line}:")) && m.contains(what))
    };
    assert!(has(3, "ports: 0 is not a port"), "{e:?}");
    assert!(has(3, "ports: 70000 is not a port"), "{e:?}");
    assert!(
        has(10, "ssl_ports: 443 is not one of the server's ports"),
        "{e:?}"
    );
    assert!(
        has(
            16,
            "ssl_ports names some of the server's ports: set ports too"
        ),
        "{e:?}"
    );
    assert!(
        has(23, "default: port 81 is not one of the server's ports"),
        "{e:?}"
    );
}
