//! The admin listener as a shared service: tokens and scopes, the Host and
//! Origin checks, dashboard sessions with CSRF tokens, and the refusal to
//! serve an unauthenticated admin off loopback.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const TOKENS: &str = r#"
[[token]]
name = "deploy"
secret = "deploy-secret-0123456789"
scopes = ["register", "lanes"]

[[token]]
name = "ops"
secret = "ops-secret-0123456789abc"
scopes = ["admin"]

[[token]]
name = "viewer"
secret = "viewer-secret-0123456789"
scopes = ["read"]
"#;

fn start(admin_extra: &str) -> Laneway {
    Laneway::start_admin_files(
        SIMPLE_ROUTES,
        "",
        &format!("tokens_file = \"tokens.toml\"\n{admin_extra}"),
        "",
        "",
        &[("tokens.toml", TOKENS)],
    )
}

/// An admin call with extra request headers: status, body, response headers.
fn call(
    lw: &Laneway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, Vec<(String, String)>) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut req = agent
        .request(method, &format!("http://{}{path}", lw.admin))
        .timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let r = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = r.status();
    let hs = r
        .headers_names()
        .into_iter()
        .flat_map(|n| {
            r.all(&n)
                .into_iter()
                .map(|v| (n.clone(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    (status, r.into_string().unwrap_or_default(), hs)
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

#[test]
fn scopes_decide_who_changes_what() {
    let lw = start("");
    // no token: 401 naming the scope, with WWW-Authenticate
    let (s, body, hs) = call(
        &lw,
        "PATCH",
        "/api/v1/lanes/baseline",
        &[],
        Some(r#"{"services":{"web":"v9"}}"#),
    );
    assert_eq!(s, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["scope"], "admin", "{body}");
    assert!(hs
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("www-authenticate")));
    // reads need a token too unless [admin] anonymous grants them
    assert_eq!(call(&lw, "GET", "/api/v1/lanes", &[], None).0, 401);
    // health probes answer anyone
    assert_eq!(call(&lw, "GET", "/healthz", &[], None).0, 200);
    assert_eq!(call(&lw, "GET", "/lvs/health", &[], None).0, 200);

    let deploy = bearer("deploy-secret-0123456789");
    // lanes scope: a lane, but not the baseline
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/lanes",
        &[("authorization", &deploy)],
        Some(r#"{"name":"t-1","services":{"web":"v2"}}"#),
    );
    assert_eq!(s, 201, "{body}");
    let (s, body, _) = call(
        &lw,
        "PATCH",
        "/api/v1/lanes/baseline",
        &[("authorization", &deploy)],
        Some(r#"{"services":{"web":"v9"}}"#),
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("deploy") && body.contains("admin"), "{body}");
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/maintenance",
        &[("authorization", &deploy)],
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(s, 403, "{body}");
    // any scope grants read
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("authorization", &deploy)],
            None
        )
        .0,
        200
    );

    // register scope through Consul's token header and ?token=, as Consul clients send it
    let reg =
        r#"{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":1,"Meta":{"version":"v2"}}"#;
    let (s, body, _) = call(
        &lw,
        "PUT",
        "/v1/agent/service/register",
        &[("x-consul-token", "deploy-secret-0123456789")],
        Some(reg),
    );
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = call(
        &lw,
        "PUT",
        "/v1/agent/service/register?token=deploy-secret-0123456789",
        &[],
        Some(reg),
    );
    assert_eq!(s, 200, "{body}");
    let viewer = bearer("viewer-secret-0123456789");
    let (s, body, _) = call(
        &lw,
        "PUT",
        "/v1/agent/service/register",
        &[("authorization", &viewer)],
        Some(reg),
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("register"), "{body}");

    // admin: the baseline and maintenance
    let ops = bearer("ops-secret-0123456789abc");
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/maintenance",
        &[("x-laneway-token", "ops-secret-0123456789abc")],
        Some(r#"{"enabled":false}"#),
    );
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = call(
        &lw,
        "PATCH",
        "/api/v1/lanes/t-1",
        &[("authorization", &ops)],
        Some(r#"{"services":{"web":"v3"}}"#),
    );
    assert_eq!(s, 200, "{body}");

    // a wrong token is refused even where anonymous would do
    let (s, body, _) = call(
        &lw,
        "GET",
        "/healthz",
        &[("authorization", "Bearer nope-nope-nope-nope")],
        None,
    );
    assert_eq!(s, 401, "{body}");
}

#[test]
fn anonymous_read_is_opt_in() {
    let lw = start("anonymous = [\"read\"]");
    assert_eq!(call(&lw, "GET", "/api/v1/lanes", &[], None).0, 200);
    assert_eq!(call(&lw, "GET", "/metrics", &[], None).0, 200);
    let (s, body, _) = call(&lw, "POST", "/api/v1/lanes", &[], Some(r#"{"name":"t-1"}"#));
    assert_eq!(s, 401, "{body}");
}

#[test]
fn foreign_hosts_and_origins_are_refused() {
    // no tokens file: the loopback demo, where the browser checks matter most
    let lw = Laneway::start(SIMPLE_ROUTES, "");
    // DNS rebinding: a name the admin was not configured for
    let (s, body, _) = call(
        &lw,
        "GET",
        "/api/v1/lanes",
        &[("host", "attacker.example:9900")],
        None,
    );
    assert_eq!(s, 421, "{body}");
    assert!(body.contains("[admin] hostnames"), "{body}");
    // CSRF: a text/plain POST from another origin
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/maintenance",
        &[
            ("origin", "http://attacker.example"),
            ("content-type", "text/plain"),
        ],
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
    let (s, _, _) = call(
        &lw,
        "POST",
        "/api/v1/lanes",
        &[("referer", "http://attacker.example/x")],
        Some(r#"{"name":"t-9"}"#),
    );
    assert_eq!(s, 403);
    let (s, _, _) = call(
        &lw,
        "POST",
        "/api/v1/lanes",
        &[("sec-fetch-site", "cross-site")],
        Some(r#"{"name":"t-9"}"#),
    );
    assert_eq!(s, 403);
    // nothing changed
    let (_, body, _) = call(&lw, "GET", "/api/v1/maintenance", &[], None);
    assert!(body.contains("\"enabled\":false"), "{body}");
    assert_eq!(call(&lw, "GET", "/api/v1/lanes/t-9", &[], None).0, 404);
    // the admin's own origin passes
    let own = format!("http://{}", lw.admin);
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/lanes",
        &[("origin", &own)],
        Some(r#"{"name":"t-9"}"#),
    );
    assert_eq!(s, 201, "{body}");
    // health probes answer whatever Host they carry, or none (HTTP/1.0)
    for head in [
        "GET /lvs/health HTTP/1.0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: probe.example\r\nConnection: close\r\n\r\n",
    ] {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(lw.admin).unwrap();
        conn.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
            "{head:?}: {answer}"
        );
    }
    // but the API does not answer a foreign name
    let mut conn = std::net::TcpStream::connect(lw.admin).unwrap();
    {
        use std::io::{Read, Write};
        conn.write_all(b"GET /api/v1/lanes HTTP/1.0\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.contains(" 421 "), "{answer}");
    }
}

#[test]
fn a_configured_hostname_is_accepted() {
    let lw = start("hostnames = [\"laneway.qa.test\"]\nanonymous = [\"read\"]");
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("host", "laneway.qa.test")],
            None
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("host", "other.qa.test")],
            None
        )
        .0,
        421
    );
}

#[test]
fn dashboard_sessions_sign_in_and_need_csrf_tokens() {
    let lw = start("");
    // a browser without a session is sent to the sign-in page
    let (s, _, hs) = call(&lw, "GET", "/", &[("accept", "text/html")], None);
    assert_eq!(s, 303);
    let to = hs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("location"))
        .unwrap()
        .1
        .clone();
    assert!(to.starts_with("/login?next="), "{to}");
    let (s, body, _) = call(&lw, "GET", "/login", &[], None);
    assert_eq!(s, 200);
    assert!(body.contains("form id=\"login\""), "{body}");
    // a wrong token
    let (s, body, _) = call(
        &lw,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("token=wrong&next=%2F"),
    );
    assert_eq!(s, 401);
    assert!(body.contains("not valid"), "{body}");
    // the right one: a session cookie, HttpOnly and SameSite=Strict; an
    // off-site `next` is not followed
    let (s, _, hs) = call(
        &lw,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("token=ops-secret-0123456789abc&next=%2F%2Fevil.example"),
    );
    assert_eq!(s, 303);
    let get = |name: &str| {
        hs.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("location"), "/");
    let set_cookie = get("set-cookie");
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let session = set_cookie.split(';').next().unwrap().to_string();
    // the session reads
    let (s, _, _) = call(&lw, "GET", "/api/v1/lanes", &[("cookie", &session)], None);
    assert_eq!(s, 200);
    // but a state change with only the cookie needs the CSRF token
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/lanes",
        &[("cookie", &session)],
        Some(r#"{"name":"t-2"}"#),
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes/t-2",
            &[("cookie", &session)],
            None
        )
        .0,
        404
    );
    // signing out ends the session
    let (s, _, _) = call(&lw, "POST", "/logout", &[("cookie", &session)], None);
    assert_eq!(s, 303);
    assert_eq!(
        call(&lw, "GET", "/api/v1/lanes", &[("cookie", &session)], None).0,
        401
    );
}

#[test]
fn a_changed_tokens_file_takes_effect_and_a_broken_one_keeps_the_old() {
    let lw = start("");
    let old = bearer("viewer-secret-0123456789");
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("authorization", &old)],
            None
        )
        .0,
        200
    );
    let path = lw.path("tokens.toml");
    std::fs::write(
        &path,
        "[[token]]\nname = \"new\"\nsecret = \"new-secret-0123456789ab\"\nscopes = [\"read\"]\n",
    )
    .unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let new = bearer("new-secret-0123456789ab");
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("authorization", &new)],
            None
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("authorization", &old)],
            None
        )
        .0,
        401,
        "revoked"
    );
    std::fs::write(&path, "[[token]]\nname = 1\n").unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        call(
            &lw,
            "GET",
            "/api/v1/lanes",
            &[("authorization", &new)],
            None
        )
        .0,
        200
    );
    assert!(
        lw.log().contains("previous ones stay in force"),
        "{}",
        lw.log()
    );
}

#[test]
fn an_unauthenticated_admin_off_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("laneway.toml");
    std::fs::write(dir.path().join("routes.toml"), SIMPLE_ROUTES).unwrap();
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n[admin]\nlisten = \"0.0.0.0:{}\"\n[routes]\nfile = \"routes.toml\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens_file") && err.contains("allow_unauthenticated"),
        "{err}"
    );
}

#[test]
fn every_change_is_audited_with_who_before_and_after() {
    let lw = start("");
    let deploy = bearer("deploy-secret-0123456789");
    let ops = bearer("ops-secret-0123456789abc");
    let (s, body, _) = call(
        &lw,
        "POST",
        "/api/v1/lanes",
        &[("authorization", &deploy)],
        Some(r#"{"name":"t-1","services":{"web":"v2"}}"#),
    );
    assert_eq!(s, 201, "{body}");
    let (s, body, _) = call(
        &lw,
        "PATCH",
        "/api/v1/lanes/baseline",
        &[("authorization", &ops)],
        Some(r#"{"services":{"web":"v9"}}"#),
    );
    assert_eq!(s, 200, "{body}");
    let reg =
        r#"{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":1,"Meta":{"version":"v2"}}"#;
    assert_eq!(
        call(
            &lw,
            "PUT",
            "/v1/agent/service/register",
            &[("x-consul-token", "deploy-secret-0123456789")],
            Some(reg)
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &lw,
            "POST",
            "/api/v1/maintenance",
            &[("authorization", &ops)],
            Some(r#"{"enabled":true}"#)
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &lw,
            "DELETE",
            "/api/v1/lanes/t-1",
            &[("authorization", &deploy)],
            None
        )
        .0,
        200
    );
    // a rules edit is recorded too
    std::fs::write(
        lw.path("routes.toml"),
        format!("{SIMPLE_ROUTES}\n# edited\n"),
    )
    .unwrap();
    let viewer = bearer("viewer-secret-0123456789");
    let entries = |since: u64| -> Vec<Value> {
        let (s, body, _) = call(
            &lw,
            "GET",
            &format!("/api/v1/audit?since={since}"),
            &[("authorization", &viewer)],
            None,
        );
        assert_eq!(s, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["entries"]
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(
        eventually(Duration::from_secs(10), || entries(0)
            .iter()
            .any(|e| e["action"] == "rules.reload")),
        "{:?}",
        entries(0)
    );
    let all = entries(0);
    let find = |action: &str| {
        all.iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action}: {all:?}"))
            .clone()
    };
    let create = find("lane.create");
    assert_eq!(
        (create["who"].as_str(), create["target"].as_str()),
        (Some("deploy"), Some("t-1"))
    );
    assert!(create["before"].is_null());
    assert_eq!(create["after"]["services"]["web"], "v2");
    let baseline = find("baseline.patch");
    assert_eq!(baseline["who"], "ops");
    assert_eq!(baseline["after"]["services"]["web"], "v9");
    assert!(
        baseline["before"]["services"].get("web").is_none(),
        "{baseline}"
    );
    let register = find("instance.register");
    assert_eq!(
        (register["who"].as_str(), register["target"].as_str()),
        (Some("deploy"), Some("web-1"))
    );
    let maintenance = find("maintenance.set");
    assert_eq!(
        (
            maintenance["before"]["enabled"].as_bool(),
            maintenance["after"]["enabled"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let delete = find("lane.delete");
    assert_eq!(delete["before"]["name"], "t-1");
    assert_eq!(find("rules.reload")["who"], "rules file");
    // ?since= reads only what came after
    let last = all.last().unwrap()["seq"].as_u64().unwrap();
    assert!(entries(last).is_empty());
    assert_eq!(entries(last - 1).len(), 1);
    let (s, body, _) = call(
        &lw,
        "GET",
        "/api/v1/audit?since=x",
        &[("authorization", &viewer)],
        None,
    );
    assert_eq!(s, 400, "{body}");
    // the log target has it too, and the dashboard page lists it
    assert!(lw.log().contains("laneway::audit"), "{}", lw.log());
    let (s, page, _) = call(&lw, "GET", "/audit", &[("authorization", &viewer)], None);
    assert_eq!(s, 200);
    assert!(
        page.contains("baseline.patch") && page.contains("deploy"),
        "{page}"
    );
}
