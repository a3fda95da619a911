//! The dashboard's lane page (`/lanes/<name>`): every routed service with
//! the version the lane resolves it to and why (as explain reports it, from
//! the serving snapshot), each version's instances with health and
//! hold-out reason, the lane's warnings, its links (use this lane, PAC,
//! hosts line), and the extend and delete forms. Control plane.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde_json::{json, Value};

use super::{copy_button, csrf_field, page, problem, respond, when, Nav};
use crate::admin::explain::{held_out_json, instances_json, version_json};
use crate::admin::lanes::{delete_lane, extend_lane, LaneJson, LaneLinks};
use crate::admin::warnings::lane_warnings;
use crate::admin::Caller;
use crate::allocation::lanes::{Lane, BASELINE};
use crate::control::Control;
use crate::routing::snapshot::{Choice, Snapshot, Target};

/// `GET /lanes/<name>`.
pub async fn show(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let notice = params
        .iter()
        .any(|(k, _)| k == "extended")
        .then_some("Lease extended.");
    render(&c, &name, StatusCode::OK, None, notice, caller.as_deref()).await
}

/// `POST /lanes/<name>/extend` (`ttl` optional): 303 back to the lane.
pub async fn extend(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let ttl = fields
        .iter()
        .find(|(k, _)| k == "ttl")
        .map_or("", |(_, v)| v.trim());
    let body = if ttl.is_empty() {
        String::new()
    } else {
        json!({ "ttl": ttl }).to_string()
    };
    match extend_lane(
        &c,
        &name,
        body.as_bytes(),
        crate::admin::lanes::who(&caller),
    )
    .await
    {
        Ok(lane) => see_other(&format!("/lanes/{}?extended=1", lane.name)),
        Err(e) => {
            render(
                &c,
                &name,
                e.status,
                Some(&e.message),
                None,
                caller.as_deref(),
            )
            .await
        }
    }
}

/// `POST /lanes/<name>/delete`: 303 to the lanes list.
pub async fn delete(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Response {
    match delete_lane(&c, &name, crate::admin::lanes::who(&caller)).await {
        Ok(lane) => see_other(&format!("/?deleted={}", lane.name)),
        Err(e) => {
            render(
                &c,
                &name,
                e.status,
                Some(&e.message),
                None,
                caller.as_deref(),
            )
            .await
        }
    }
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The lane page with `status`, an error of the last form and a notice.
async fn render(
    c: &Control,
    name: &str,
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
    caller: Option<&Caller>,
) -> Response {
    let Some(lane) = c.lanes.lock().await.get(name).cloned() else {
        let status = if status.is_success() {
            StatusCode::NOT_FOUND
        } else {
            status
        };
        return problem(
            status,
            "No such lane",
            &error.map_or_else(|| format!("lane \"{name}\" does not exist"), str::to_string),
        );
    };
    let snap = c.snapshot();
    let view = LaneJson::new(c);
    let links = view.links(&lane);
    let services = services(c, &snap, &lane);
    let warnings = lane_warnings(&snap, &lane);
    respond(
        status,
        page(
            &lane.name,
            Nav::Lanes,
            html! {
                (summary(&lane))
                @if let Some(e) = error { p.error #action-error role="alert" { (e) } }
                @if let Some(n) = notice { p.notice { (n) } }
                @if !warnings.is_empty() {
                    section #warnings {
                        h2 { "Warnings" }
                        ul {
                            @for w in &warnings { li.warning { (w) } }
                        }
                    }
                }
                (services)
                @if lane.name != BASELINE { (use_links(&view, &links)) }
                (forms(&lane, caller))
            },
        ),
    )
}

fn summary(lane: &Lane) -> Markup {
    html! {
        div.title-row {
            h1 { "Lane " (lane.name) }
            @if lane.strict { span.badge.strict { "strict" } }
            @if lane.auto { span.badge.auto { "auto" } }
        }
        @if let Some(d) = &lane.description { p.description { (d) } }
        dl.facts {
            dt { "Parent" }
            dd { @match &lane.parent {
                Some(p) => { a href=(format!("/lanes/{p}")) { (p) } },
                None => { span.muted { "none (the root lane)" } },
            } }
            dt { "Overrides" }
            dd {
                @if lane.services.is_empty() { span.muted { "none" } }
                @for (s, v) in &lane.services { span.service { (s) } " → " span.version { (v) } br; }
            }
            dt { "Owner" }
            dd { (lane.owner.as_deref().unwrap_or("—")) }
            @if !lane.labels.is_empty() {
                dt { "Labels" }
                dd { @for (k, v) in &lane.labels { span.label { (k) "=" (v) } " " } }
            }
            dt { "Expires" }
            dd { @match lane.expires_at {
                Some(at) => { (when(at)) },
                None => { "never" },
            } }
            dt { "Created" }
            dd { (when(lane.created_at)) }
        }
    }
}

/// Every service the rules route to (and any the lane's chain overrides),
/// with the version served, why, and its instances.
fn services(c: &Control, snap: &Snapshot, lane: &Lane) -> Markup {
    let routed = snap.rules.services();
    let mut names: Vec<String> = routed.iter().map(|s| s.to_string()).collect();
    for l in snap.lane_chain(&lane.name) {
        for s in l.services.keys() {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
    }
    let view = snap.lane(&lane.name);
    html! {
        section #resolution {
            h2 { "Services in this lane" }
            @if view.is_none() {
                p.notice { "The serving snapshot does not hold this lane yet; reload in a moment." }
            }
            table #services {
                thead { tr { th { "Service" } th { "Version" } th { "Why" } th { "Instances" } } }
                tbody {
                    @for name in &names {
                        @let target = view.and_then(|v| snap.target(v, name));
                        @match target {
                            Some(t) => {
                                @let v = version_json(snap, &lane.name, t);
                                @let inst = instances_json(c, snap, t);
                                // only a strict lane refuses its own or an inherited
                                // override; any other 503 is no instance anywhere
                                @let choice = match (&t.pool, t.choice) {
                                    _ if !routed.iter().any(|r| **r == **name) => "unrouted",
                                    (Err(_), Choice::Override | Choice::Inherited) => "strict",
                                    (Err(_), _) => "unavailable",
                                    _ => v["choice"].as_str().unwrap_or(""),
                                };
                                @let why = match choice {
                                    "unrouted" => format!("no rule routes to {name}: no request through laneway reaches it"),
                                    _ => text(&v["why"]),
                                };
                                tr data-service=(name) class=(format!("choice-{choice}")) {
                                    td.service { (name) }
                                    td { @if choice == "unrouted" {
                                        span.muted { "—" }
                                    } @else {
                                        span.version { (text(&v["version"])) }
                                    } }
                                    td.why {
                                        span class=(format!("badge choice {choice}")) {
                                            @match choice {
                                                "strict" => { "strict 503" },
                                                "unavailable" => { "503" },
                                                "unrouted" => { "not routed" },
                                                c => { (c) },
                                            }
                                        }
                                        " " (why)
                                    }
                                    td {
                                        @if choice == "unrouted" {
                                            span.muted { "—" }
                                        } @else {
                                            (instances(&inst))
                                        }
                                        @if choice == "fallback" {
                                            @for (version, by, members) in passed_over(c, snap, &lane.name, t) {
                                                div.passed-over {
                                                    "version " span.version { (version) } " of lane " (by) ", not serving: "
                                                    (instances(&json!({ "held_out": members })))
                                                }
                                            }
                                        }
                                    }
                                }
                            },
                            None => {
                                tr data-service=(name) class="choice-none" {
                                    td.service { (name) }
                                    td { span.muted { "—" } }
                                    td.why {
                                        span class="badge choice none" { "none" }
                                        " no instance of " (name) " has ever registered: requests to it answer 503"
                                    }
                                    td {}
                                }
                            },
                        }
                    }
                }
            }
        }
    }
}

/// The versions the lane's chain pins for the target's service but that do
/// not serve (a fallback passed over them), each with the lane pinning it
/// and its instances as held out.
fn passed_over(
    c: &Control,
    snap: &Snapshot,
    lane: &str,
    t: &Target,
) -> Vec<(String, String, Vec<Value>)> {
    let mut out = Vec::new();
    for l in snap.lane_chain(lane) {
        if l.name == *t.served_by {
            break;
        }
        if let Some(v) = l.services.get(&*t.service) {
            let members = snap
                .service_members(&t.service)
                .iter()
                .filter(|i| i.version.as_deref() == Some(v.as_str()))
                .map(|i| held_out_json(c, i))
                .collect();
            out.push((v.clone(), l.name.clone(), members));
        }
    }
    out
}

/// The instances explain lists: those in the pool, then those held out.
fn instances(inst: &Value) -> Markup {
    let list = |k: &str| inst[k].as_array().cloned().unwrap_or_default();
    let (pool, held) = (list("would_try"), list("held_out"));
    html! {
        @if pool.is_empty() && held.is_empty() { span.muted { "none registered" } }
        ul.instances {
            @for i in &pool {
                @let out = i["health"] == "held out";
                li class=(if out { "health critical" } else { "health passing" }) {
                    span.dot {}
                    code { (text(&i["address"])) } " " span.id { (text(&i["id"])) }
                    " " span.weight { "weight " (text(&i["weight"])) }
                    @if let Some(r) = i["reason"].as_str() { " " span.reason { "held out: " (r) } }
                }
            }
            @for i in &held {
                li class=(format!("health {}", text(&i["health"]))) {
                    span.dot {}
                    code { (text(&i["address"])) } " " span.id { (text(&i["id"])) }
                    " " span.reason { (text(&i["health"])) ": " (text(&i["reason"])) }
                }
            }
        }
    }
}

/// A JSON scalar as text (`—` for null).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_string(),
        other => other.to_string(),
    }
}

fn use_links(view: &LaneJson, links: &LaneLinks) -> Markup {
    html! {
        section #use {
            h2 { "Use this lane" }
            @if view.production_hosts().is_empty() {
                p.muted { "The rules name no exact server name to open." }
            } @else {
                table #use-links {
                    thead { tr { th { "Production host" } th { "Lane hostname" } th { "Switch link (sets the lane cookie)" } } }
                    tbody {
                        @for ((host, url), (_, switch)) in links.production_urls.iter().zip(&links.switch_urls) {
                            tr {
                                td { code { (host) } }
                                td { a.lane-url href=(url) { (url) } }
                                td { a.switch-url href=(switch) { (switch) } }
                            }
                        }
                    }
                }
            }
            dl.facts {
                dt { "Lane hostname" }
                dd { a.lane-url href=(links.hostname_url) { (links.hostname_url) } }
                @if let Some(u) = &links.vip_url {
                    dt { "VIP" }
                    dd { a.lane-url href=(u) { (u) } }
                }
                @if let Some(u) = &links.port_url {
                    dt { "Port" }
                    dd { a.lane-url href=(u) { (u) } }
                }
                dt { "PAC file" }
                dd {
                    a #pac-url href=(links.pac_path) { (links.pac_path) }
                    " " (copy_button("pac-url"))
                }
                @if let Some(line) = &links.hosts_line {
                    dt { "Hosts line" }
                    dd {
                        code #hosts-line { (line) } " " (copy_button("hosts-line"))
                        div.hint {
                            "With this line in /etc/hosts, open the production names with laneway's port: "
                            @for (i, u) in links.hosts_urls.iter().enumerate() {
                                @if i > 0 { ", " }
                                a.lane-url href=(u) { (u) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn forms(lane: &Lane, caller: Option<&Caller>) -> Markup {
    if lane.name == BASELINE {
        return html! {};
    }
    html! {
        section #manage {
            h2 { "Manage" }
            form #extend-lane method="post" action=(format!("/lanes/{}/extend", lane.name)) {
                (csrf_field(caller))
                label for="ttl" { "Extend the lease by" }
                input #ttl name="ttl" placeholder="the lane's own lease" autocomplete="off";
                button type="submit" { "Extend" }
            }
            form #delete-lane method="post" action=(format!("/lanes/{}/delete", lane.name))
                data-confirm=(format!("Delete lane {}?", lane.name)) {
                (csrf_field(caller))
                button.danger type="submit" { "Delete lane" }
            }
        }
    }
}
