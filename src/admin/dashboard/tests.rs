//! The dashboard's handlers through the admin router, in-process: a real
//! [`Control`] on a temporary data directory, requests by `oneshot`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::Config;
use crate::control::Control;
use crate::telemetry::Metrics;

const ROUTES: &str = r#"
[[server]]
names = ["shop.example.com", "*.example.com"]
default = true

[[server.location]]
match = "/"
service = "web"

[[server.location]]
match = "/user/"
service = "user-api"
"#;

struct World {
    _tmp: tempfile::TempDir,
    router: Router,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("routes.toml"), ROUTES).expect("write rules");
    let config = Config::parse(
        "[proxy]\nlisten = [\"127.0.0.1:18080\"]\n[admin]\nlisten = \"127.0.0.1:19900\"\n\
         [lanes]\ndomain = \"lanes.test\"\nvip_pool = [\"127.0.9.2-127.0.9.9\"]\n\
         [store]\ndata_dir = \"data\"\n[routes]\nfile = \"routes.toml\"\n",
        &tmp.path().join("laneway.toml"),
    )
    .expect("config parses");
    let control = Control::open(config, Arc::new(Metrics::new())).expect("control opens");
    tokio::spawn(control.clone().run_compiler());
    let ready = control.clone();
    tokio::time::timeout(Duration::from_secs(10), async move {
        while !ready.ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first snapshot is built");
    let access = crate::admin::Access::new(&control.config.admin).expect("admin access");
    World {
        _tmp: tmp,
        // the whole admin application, behind its access checks
        router: crate::admin::access::app(control, Arc::new(access)),
    }
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl World {
    async fn call(&self, method: &str, uri: &str, body: Option<(&str, String)>) -> Answer {
        self.call_with(method, uri, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        uri: &str,
        body: Option<(&str, String)>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:19900");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some((content_type, b)) => req.header("content-type", content_type).body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let res = self.router.clone().oneshot(req).await.expect("answer");
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        Answer {
            status,
            location,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn api(&self, method: &str, uri: &str, body: Value) -> Answer {
        self.call(method, uri, Some(("application/json", body.to_string())))
            .await
    }

    async fn form(&self, uri: &str, body: &str) -> Answer {
        self.call(
            "POST",
            uri,
            Some(("application/x-www-form-urlencoded", body.to_string())),
        )
        .await
    }

    async fn register(&self, id: &str, service: &str, version: &str, port: u16, status: &str) {
        let body = json!({
            "ID": id, "Name": service, "Address": "127.0.0.1", "Port": port,
            "Meta": {"version": version},
            "Check": {"CheckID": format!("service:{id}"), "TTL": "10m", "Status": status},
        });
        let a = self.api("PUT", "/v1/agent/service/register", body).await;
        assert_eq!(a.status, StatusCode::OK, "register {id}: {}", a.body);
    }
}

/// What maud makes of text inside an element or attribute.
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test]
async fn the_lanes_list_shows_each_lane_with_its_urls_and_filters() {
    let w = world().await;
    let a = w
        .api(
            "POST",
            "/api/v1/lanes",
            json!({"name": "t-1", "services": {"web": "v2"}, "owner": "ann", "labels": {"team": "pay"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = w
        .api(
            "POST",
            "/api/v1/lanes",
            json!({"name": "t-2", "owner": "bob"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);

    let page = w.call("GET", "/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.starts_with("<!DOCTYPE html>"), "{}", page.body);
    for expected in [
        r#"<table id="lanes">"#,
        r#"data-lane="t-1""#,
        r#"data-lane="t-2""#,
        r#"class="lane-url" href="http://t-1.lanes.test:18080/""#,
        r#"class="lane-url" href="http://shop.example.com.t-1.lanes.test:18080/""#,
        r#"class="lane-url" href="http://127.0.9.2:18080/""#,
        "team=pay",
    ] {
        assert!(page.body.contains(expected), "{expected} in\n{}", page.body);
    }
    // the server-side filter, for browsers without JS
    let filtered = w.call("GET", "/?q=BOB", None).await;
    assert!(
        filtered.body.contains(r#"data-lane="t-2""#),
        "{}",
        filtered.body
    );
    assert!(
        !filtered.body.contains(r#"data-lane="t-1""#),
        "{}",
        filtered.body
    );
    // the JSON API is unchanged
    let api = w.call("GET", "/api/v1/lanes", None).await;
    assert!(api.json().is_array(), "{}", api.body);
}

#[tokio::test]
async fn the_create_form_creates_or_shows_the_apis_error_with_the_values_kept() {
    let w = world().await;
    let form = w.call("GET", "/lanes/new", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body.contains(r#"<form id="create-lane""#),
        "{}",
        form.body
    );
    for field in [
        "name",
        "services",
        "parent",
        "strict",
        "ttl",
        "owner",
        "description",
        "labels",
    ] {
        assert!(
            form.body.contains(&format!(r#"name="{field}""#)),
            "{field} in {}",
            form.body
        );
    }

    let api_error = w
        .api(
            "POST",
            "/api/v1/lanes",
            json!({"name": "Bad Name!", "services": {"web": "v2"}}),
        )
        .await;
    assert_eq!(api_error.status, StatusCode::BAD_REQUEST);
    let message = api_error.json()["error"].as_str().unwrap().to_string();
    let bad = w
        .form("/lanes/new", "name=Bad+Name%21&services=web%3Dv2&owner=ann")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains(r#"id="form-error""#), "{}", bad.body);
    assert!(
        bad.body.contains(&escaped(&message)),
        "{message} in {}",
        bad.body
    );
    assert!(bad.body.contains(r#"value="Bad Name!""#), "{}", bad.body);
    assert!(bad.body.contains(r#"value="ann""#), "{}", bad.body);
    assert!(bad.body.contains(">web=v2</textarea>"), "{}", bad.body);

    let ok = w
        .form(
            "/lanes/new",
            "name=t-9&services=web%3Dv2%0D%0Auser-api%3Dv7&strict=true&ttl=2h",
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(ok.location.as_deref(), Some("/lanes/t-9"));
    let lane = w.call("GET", "/api/v1/lanes/t-9", None).await.json();
    assert_eq!(lane["services"], json!({"web": "v2", "user-api": "v7"}));
    assert_eq!(lane["strict"], true);
    assert_eq!(lane["ttl"], "2h");

    let foreign = w
        .call_with(
            "POST",
            "/lanes/new",
            Some(("application/x-www-form-urlencoded", "name=t-10".into())),
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.body);
    assert_eq!(
        w.call("GET", "/api/v1/lanes/t-10", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_lane_page_says_why_each_service_gets_its_version() {
    let w = world().await;
    w.register("web-1", "web", "stable", 18001, "passing").await;
    w.register("web-2", "web", "v2", 18002, "passing").await;
    w.register("web-3", "web", "v3", 18003, "critical").await;
    for body in [
        json!({"name": "t-1", "services": {"web": "v2"}}),
        json!({"name": "t-child", "parent": "t-1"}),
        json!({"name": "t-down", "services": {"web": "v3"}}),
        json!({"name": "t-strict", "services": {"web": "v9"}, "strict": true}),
    ] {
        let a = w.api("POST", "/api/v1/lanes", body.clone()).await;
        assert_eq!(a.status, StatusCode::CREATED, "{body}: {}", a.body);
    }
    let row = |page: &str, service: &str| -> String {
        let start = page
            .find(&format!(r#"<tr data-service="{service}""#))
            .unwrap_or_else(|| panic!("row of {service} in {page}"));
        let end = page[start..]
            .find("</tr>")
            .map_or(page.len(), |e| start + e);
        page[start..end].to_string()
    };

    let page = w.call("GET", "/lanes/t-1", None).await;
    assert_eq!(page.status, StatusCode::OK);
    let web = row(&page.body, "web");
    assert!(
        web.contains("choice-override") && web.contains("lane t-1 overrides web with version v2"),
        "{web}"
    );
    assert!(
        web.contains("127.0.0.1:18002") && web.contains("health passing"),
        "{web}"
    );
    let user = row(&page.body, "user-api");
    assert!(
        user.contains("choice-unavailable") && user.contains("no healthy baseline instance"),
        "{user}"
    );
    assert!(
        page.body
            .contains(r#"id="pac-url" href="/api/v1/lanes/t-1/pac""#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"id="hosts-line">127.0.9.2 shop.example.com t-1.lanes.test<"#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"href="http://shop.example.com:18080/__laneway/lane?use=t-1""#),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains(r#"class="lane-url" href="http://shop.example.com.t-1.lanes.test:18080/""#),
        "{}",
        page.body
    );

    let web = row(&w.call("GET", "/lanes/t-child", None).await.body, "web");
    assert!(
        web.contains("choice-inherited")
            && web.contains("inherits version v2 of web from lane t-1"),
        "{web}"
    );

    let page = w.call("GET", "/lanes/t-down", None).await.body;
    let web = row(&page, "web");
    assert!(
        web.contains("choice-fallback") && web.contains("v3 of lane t-down"),
        "{web}"
    );
    // the version passed over, with its instance and why it does not serve
    assert!(web.contains(r#"class="passed-over""#), "{web}");
    assert!(
        web.contains("127.0.0.1:18003")
            && web.contains("discovery check service:web-3 is critical"),
        "{web}"
    );
    assert!(
        page.contains(r#"class="warning""#) && page.contains("has 1 instance but none is healthy"),
        "{page}"
    );

    let web = row(&w.call("GET", "/lanes/t-strict", None).await.body, "web");
    assert!(
        web.contains("choice-strict") && web.contains("answered 503"),
        "{web}"
    );

    assert_eq!(
        w.call("GET", "/lanes/nope", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn extend_and_delete_forms_answer_303_or_show_the_error() {
    let w = world().await;
    let a = w
        .api("POST", "/api/v1/lanes", json!({"name": "t-1", "ttl": "1h"}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let before = a.json()["expires_at"].as_u64().unwrap();

    let bad = w.form("/lanes/t-1/extend", "ttl=soon").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.body.contains(r#"id="action-error""#), "{}", bad.body);

    let ok = w.form("/lanes/t-1/extend", "ttl=48h").await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(ok.location.as_deref(), Some("/lanes/t-1?extended=1"));
    let after = w.call("GET", "/api/v1/lanes/t-1", None).await.json()["expires_at"]
        .as_u64()
        .unwrap();
    assert!(after > before + 40 * 3600, "{before} → {after}");

    let gone = w.form("/lanes/t-1/delete", "").await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER, "{}", gone.body);
    assert_eq!(gone.location.as_deref(), Some("/?deleted=t-1"));
    assert_eq!(
        w.call("GET", "/api/v1/lanes/t-1", None).await.status,
        StatusCode::NOT_FOUND
    );
    let again = w.form("/lanes/t-1/delete", "").await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.body);
}

#[tokio::test]
async fn create_and_patch_answer_warnings() {
    let w = world().await;
    w.register("web-2", "web", "v2", 18002, "passing").await;
    w.register("web-3", "web", "v3", 18003, "critical").await;
    let a = w
        .api(
            "POST",
            "/api/v1/lanes",
            json!({"name": "t-1", "services": {"web": "v2"}}),
        )
        .await;
    assert_eq!(a.json()["warnings"], json!([]), "{}", a.body);

    let a = w
        .api(
            "POST",
            "/api/v1/lanes",
            json!({"name": "t-2", "services": {"payments": "v1", "user-api": "v7", "web": "v3"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let warnings: Vec<String> = serde_json::from_value(a.json()["warnings"].clone()).unwrap();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].contains("service \"payments\"")
            && warnings[0].contains("no rule routes to it"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("version \"v7\" of service \"user-api\" has no registered instance"),
        "{warnings:?}"
    );
    assert!(
        warnings[2]
            .contains("version \"v3\" of service \"web\" has 1 instance but none is healthy"),
        "{warnings:?}"
    );

    // the lane page shows the same warnings, and the override no rule reaches
    let page = w.call("GET", "/lanes/t-2", None).await.body;
    for warning in &warnings {
        assert!(page.contains(&escaped(warning)), "{warning} in {page}");
    }
    assert!(
        page.contains(r#"<tr data-service="payments" class="choice-unrouted">"#),
        "{page}"
    );

    let a = w
        .api(
            "PATCH",
            "/api/v1/lanes/t-1",
            json!({"services": {"web": "v4"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.json()["warnings"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn instances_rules_and_assets() {
    let w = world().await;
    w.register("web-2", "web", "v2", 18002, "passing").await;
    w.register("web-3", "web", "v3", 18003, "critical").await;
    let page = w.call("GET", "/instances", None).await.body;
    assert!(
        page.contains(r#"<tr class="health passing" data-service="web" data-version="v2">"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<tr class="health critical" data-service="web" data-version="v3">"#),
        "{page}"
    );
    assert!(page.contains("127.0.0.1:18003"), "{page}");

    let page = w.call("GET", "/rules", None).await.body;
    assert!(page.contains("routes.toml"), "{page}");
    assert!(page.contains(r#"id="rules-status">ok<"#), "{page}");
    assert!(
        page.contains("shop.example.com") && page.contains("proxy to"),
        "{page}"
    );

    let css = w.call("GET", "/assets/laneway.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.body.contains("--ok"));
    assert!(w
        .call("GET", "/assets/laneway.js", None)
        .await
        .body
        .contains("data-copy"));
    let missing = w.call("GET", "/no-such-page", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forms_carry_the_sessions_csrf_token_and_need_it() {
    let w = world().await;
    // a browser opening the form gets a session and a CSRF field
    let req = Request::builder()
        .uri("/lanes/new")
        .header("host", "127.0.0.1:19900")
        .header("accept", "text/html")
        .body(Body::empty())
        .unwrap();
    let res = w.router.clone().oneshot(req).await.unwrap();
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page);
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf field in the form")
        .to_string();
    assert_eq!(csrf.len(), 48, "{csrf}");
    let post = |body: String| {
        Request::builder()
            .method("POST")
            .uri("/lanes/new")
            .header("host", "127.0.0.1:19900")
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    let refused = w
        .router
        .clone()
        .oneshot(post("name=t-20".into()))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let wrong = w
        .router
        .clone()
        .oneshot(post(format!("name=t-20&csrf={}", "0".repeat(48))))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        w.call("GET", "/api/v1/lanes/t-20", None).await.status,
        StatusCode::NOT_FOUND
    );
    let ok = w
        .router
        .clone()
        .oneshot(post(format!("name=t-20&csrf={csrf}")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        w.call("GET", "/api/v1/lanes/t-20", None).await.status,
        StatusCode::OK
    );
}
