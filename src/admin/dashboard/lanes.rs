//! The dashboard's lanes list (`GET /`, `?q=` filter) and create form
//! (`GET`/`POST /lanes/new`, through the API's own create). Control plane.

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::{csrf_field, page, respond, when, Nav};
use crate::admin::lanes::{create_lane, LaneJson};
use crate::admin::Caller;
use crate::allocation::lanes::{Lane, BASELINE};
use crate::control::Control;

/// `GET /[?q=text]`: every lane with its entries as links.
pub async fn list(
    State(c): State<Arc<Control>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Markup {
    let q = params
        .iter()
        .find(|(k, _)| k == "q")
        .map_or("", |(_, v)| v.as_str())
        .trim()
        .to_lowercase();
    let deleted = params
        .iter()
        .find(|(k, _)| k == "deleted")
        .map(|(_, v)| v.clone());
    let lanes = c.lanes.lock().await.list();
    // a deleted note only for a lane name that really is gone (the query
    // string is anyone's to write)
    let deleted = deleted.filter(|d| {
        d.len() <= 63
            && d.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !lanes.iter().any(|l| &l.name == d)
    });
    let view = LaneJson::new(&c);
    let shown: Vec<&Lane> = lanes
        .iter()
        .filter(|l| q.is_empty() || search_text(l).contains(&q))
        .collect();
    page(
        "Lanes",
        Nav::Lanes,
        html! {
            div.title-row {
                h1 { "Lanes" }
                a.button href="/lanes/new" { "New lane" }
            }
            @if let Some(d) = deleted {
                p.notice { "Lane " strong { (d) } " deleted; its entries are in quarantine." }
            }
            form.filter method="get" action="/" {
                label for="filter" { "Filter" }
                input #filter type="search" name="q" value=(q)
                    placeholder="name, owner, label, service…" autocomplete="off";
                button type="submit" { "Filter" }
                @if !q.is_empty() { a href="/" { "clear" } }
            }
            p.count { (shown.len()) " of " (lanes.len()) " lanes" }
            table #lanes {
                thead {
                    tr {
                        th { "Lane" }
                        th { "Overrides" }
                        th { "Parent" }
                        th { "Owner" }
                        th { "Expires" }
                        th { "Open it at" }
                    }
                }
                tbody {
                    @for lane in &shown {
                        (row(&view, lane))
                    }
                }
            }
        },
    )
}

/// The lowercase text the filter searches (also the row's `data-search`).
fn search_text(lane: &Lane) -> String {
    let mut parts = vec![lane.name.clone()];
    parts.extend(lane.parent.clone());
    parts.extend(lane.owner.clone());
    parts.extend(lane.description.clone());
    parts.extend(lane.labels.iter().map(|(k, v)| format!("{k}={v}")));
    parts.extend(lane.services.iter().map(|(k, v)| format!("{k}={v}")));
    if lane.strict {
        parts.push("strict".into());
    }
    if lane.auto {
        parts.push("auto".into());
    }
    parts.join(" ").to_lowercase()
}

fn row(view: &LaneJson, lane: &Lane) -> Markup {
    let links = view.links(lane);
    let href = format!("/lanes/{}", lane.name);
    html! {
        tr data-lane=(lane.name) data-search=(search_text(lane)) {
            td.lane {
                a.lane-name href=(href) { (lane.name) }
                @if lane.strict { " " span.badge.strict title="a missing version answers 503" { "strict" } }
                @if lane.auto { " " span.badge.auto title="created by a registration; released when its instances are gone" { "auto" } }
                @if lane.name == BASELINE { " " span.badge { "baseline" } }
                @if let Some(d) = &lane.description { div.description { (d) } }
                @if !lane.labels.is_empty() {
                    div.labels {
                        @for (k, v) in &lane.labels { span.label { (k) "=" (v) } " " }
                    }
                }
            }
            td.services {
                @if lane.services.is_empty() { span.muted { "none" } }
                @for (s, v) in &lane.services {
                    div { span.service { (s) } " → " span.version { (v) } }
                }
            }
            td { @match &lane.parent {
                Some(p) => a href=(format!("/lanes/{p}")) { (p) },
                None => span.muted { "—" },
            } }
            td { (lane.owner.as_deref().unwrap_or("—")) }
            td { @match lane.expires_at {
                Some(at) => time datetime=(when(at)) { (when(at)) },
                None => span.muted { "never" },
            } }
            td.urls {
                @if lane.name != BASELINE {
                    (url_item("hostname", &links.hostname_url))
                    @for (_, u) in &links.production_urls { (url_item("", u)) }
                    @if let Some(u) = &links.vip_url { (url_item("VIP", u)) }
                    @if let Some(u) = &links.port_url { (url_item("port", u)) }
                }
            }
        }
    }
}

fn url_item(kind: &str, url: &str) -> Markup {
    html! {
        div {
            @if !kind.is_empty() { span.kind { (kind) } " " }
            a.lane-url href=(url) { (url) }
        }
    }
}

/// `GET /lanes/new`.
pub async fn new_form(State(c): State<Arc<Control>>, caller: Option<Extension<Caller>>) -> Markup {
    form_page(&c, &[], None, caller.as_deref()).await
}

/// `POST /lanes/new`: the form turned into the API's JSON body and created
/// through the API's code path; errors come back next to the form, with
/// the values as typed.
pub async fn create(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let body = spec_json(&fields);
    match create_lane(
        &c,
        body.to_string().as_bytes(),
        crate::admin::lanes::who(&caller),
    )
    .await
    {
        Ok((_, lane)) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/lanes/{}", lane.name))],
        )
            .into_response(),
        Err(e) => respond(
            e.status,
            form_page(&c, &fields, Some(&e.message), caller.as_deref()).await,
        ),
    }
}

/// The API body (`LaneSpec` JSON) of the create form's fields. Nothing is
/// checked here: the API's validation answers.
fn spec_json(fields: &[(String, String)]) -> Value {
    let mut body = Map::new();
    body.insert("name".into(), json!(field(fields, "name").trim()));
    body.insert("services".into(), pairs(field(fields, "services")));
    body.insert("labels".into(), pairs(field(fields, "labels")));
    for key in ["parent", "ttl", "owner", "description", "vip"] {
        let v = field(fields, key).trim();
        if !v.is_empty() {
            body.insert(key.into(), json!(v));
        }
    }
    let port = field(fields, "port").trim();
    if !port.is_empty() {
        body.insert(
            "port".into(),
            port.parse::<u64>()
                .map_or_else(|_| json!(port), |p| json!(p)),
        );
    }
    let strict = field(fields, "strict");
    if !strict.is_empty() {
        body.insert("strict".into(), json!(strict == "true" || strict == "on"));
    }
    Value::Object(body)
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> &'f str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// `key=value` items, one a line or comma-separated, as a JSON object; an
/// item without `=` becomes a key with an empty value (which the API
/// rejects, naming it).
fn pairs(text: &str) -> Value {
    let mut out = Map::new();
    for item in text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        out.insert(k.trim().to_string(), json!(v.trim()));
    }
    Value::Object(out)
}

async fn form_page(
    c: &Control,
    fields: &[(String, String)],
    error: Option<&str>,
    caller: Option<&Caller>,
) -> Markup {
    let parents: Vec<String> = c
        .lanes
        .lock()
        .await
        .list()
        .into_iter()
        .map(|l| l.name)
        .collect();
    let services: Vec<String> = c
        .snapshot()
        .rules
        .services()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let value = |k: &str| field(fields, k).to_string();
    page(
        "New lane",
        Nav::New,
        html! {
            h1 { "New lane" }
            form #create-lane method="post" action="/lanes/new" {
                (csrf_field(caller))
                @if let Some(e) = error {
                    p.error #form-error role="alert" { (e) }
                }
                div.field {
                    label for="name" { "Name" }
                    input #name name="name" required value=(value("name"))
                        placeholder="t-42" autocomplete="off";
                    small { "Letters, digits and '-'; it becomes part of the lane's host names." }
                }
                div.field {
                    label for="services" { "Services" }
                    textarea #services name="services" rows="4"
                        placeholder="user-api=v7" { (value("services")) }
                    small {
                        "One service=version a line. Services the rules route to: "
                        @if services.is_empty() { "none" }
                        @for (i, s) in services.iter().enumerate() {
                            @if i > 0 { ", " }
                            code { (s) }
                        }
                    }
                }
                div.field {
                    label for="parent" { "Parent" }
                    input #parent name="parent" list="lane-names" value=(value("parent"))
                        placeholder=(BASELINE);
                    datalist #lane-names {
                        @for p in &parents { option value=(p) {} }
                    }
                }
                div.field.check {
                    label {
                        input type="checkbox" name="strict" value="true"
                            checked[field(fields, "strict") == "true"];
                        " Strict: a missing version answers 503 instead of falling back"
                    }
                }
                div.field {
                    label for="ttl" { "Lease" }
                    input #ttl name="ttl" value=(value("ttl")) placeholder="72h";
                    small { "Empty: the configured default." }
                }
                div.field {
                    label for="owner" { "Owner" }
                    input #owner name="owner" value=(value("owner"));
                }
                div.field {
                    label for="description" { "Description" }
                    input #description name="description" value=(value("description"));
                }
                div.field {
                    label for="labels" { "Labels" }
                    textarea #labels name="labels" rows="2" placeholder="team=payments" { (value("labels")) }
                    small { "One key=value a line." }
                }
                details {
                    summary { "Entries (optional)" }
                    div.field {
                        label for="vip" { "VIP" }
                        input #vip name="vip" value=(value("vip")) placeholder="lowest free";
                    }
                    div.field {
                        label for="port" { "Port" }
                        input #port name="port" value=(value("port")) placeholder="lowest free";
                    }
                }
                button.primary type="submit" { "Create lane" }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_form_becomes_the_api_body() {
        let body = spec_json(&fields(&[
            ("name", " t-1 "),
            ("services", "web=v2\r\nuser-api = v7, \n"),
            ("parent", ""),
            ("strict", "true"),
            ("ttl", "2h"),
            ("labels", "team=pay"),
            ("port", "8001"),
        ]));
        assert_eq!(
            body,
            json!({
                "name": "t-1",
                "services": {"web": "v2", "user-api": "v7"},
                "labels": {"team": "pay"},
                "strict": true,
                "ttl": "2h",
                "port": 8001,
            })
        );
        // not checked here: the API names the problem
        let body = spec_json(&fields(&[("services", "web"), ("port", "x")]));
        assert_eq!(body["services"], json!({"web": ""}));
        assert_eq!(body["port"], json!("x"));
    }

    #[test]
    fn the_filter_searches_names_owners_labels_and_services() {
        let lane = Lane {
            name: "t-7".into(),
            owner: Some("Ann".into()),
            labels: [("team".to_string(), "pay".to_string())].into(),
            services: [("web".to_string(), "v2".to_string())].into(),
            strict: true,
            ..Lane::default()
        };
        let text = search_text(&lane);
        for q in ["t-7", "ann", "team=pay", "web=v2", "strict"] {
            assert!(text.contains(q), "{q} in {text}");
        }
        assert!(!text.contains("auto"));
    }
}
