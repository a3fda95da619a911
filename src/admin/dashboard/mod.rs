//! The QA dashboard on the admin listener: server-rendered HTML pages (maud)
//! for lanes (list, lane page, create, extend, delete), instances and rules,
//! with the stylesheet and a little script embedded in the binary. Every
//! page reads without JS; forms POST and answer 303. Control plane only:
//! it reads the serving snapshot and changes lanes through the same code
//! as the JSON API.
//!
//! maud because its templates are Rust, checked when laneway compiles,
//! escaped by default, and need no template files or Node build.

mod lane_page;
mod lanes;
mod pages;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::admin::Caller;
use crate::control::Control;

const CSS: &str = include_str!("laneway.css");
const JS: &str = include_str!("laneway.js");

/// The dashboard's routes (merged into the admin router).
pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/", get(lanes::list))
        .route("/lanes/new", get(lanes::new_form).post(lanes::create))
        .route("/lanes/:name", get(lane_page::show))
        .route("/lanes/:name/extend", post(lane_page::extend))
        .route("/lanes/:name/delete", post(lane_page::delete))
        .route("/instances", get(pages::instances))
        .route("/rules", get(pages::rules))
        .route("/audit", get(pages::audit))
        .route("/assets/laneway.css", get(css))
        .route("/assets/laneway.js", get(js))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Which page the navigation marks as current.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Lanes,
    New,
    Instances,
    Rules,
    Audit,
}

/// A whole page: head, navigation, `body`.
fn page(title: &str, nav: Nav, body: Markup) -> Markup {
    let item = |to: Nav, href: &str, label: &str| {
        html! {
            a href=(href) class=[(nav == to).then_some("current")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · laneway" }
                link rel="stylesheet" href="/assets/laneway.css";
                script src="/assets/laneway.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "laneway" }
                    nav {
                        (item(Nav::Lanes, "/", "Lanes"))
                        (item(Nav::New, "/lanes/new", "New lane"))
                        (item(Nav::Instances, "/instances", "Instances"))
                        (item(Nav::Rules, "/rules", "Rules"))
                        (item(Nav::Audit, "/audit", "Audit"))
                        a href="/api/v1/status" { "API" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An HTML page with a status.
fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// A page that only says what went wrong (unknown lane, refused form).
fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    respond(
        status,
        page(
            title,
            Nav::Lanes,
            html! {
                h1 { (title) }
                p.error { (message) }
                p { a href="/" { "Back to the lanes" } }
            },
        ),
    )
}

/// The hidden CSRF field every dashboard form carries (the session's
/// token, checked by [`crate::admin::access::check`]).
fn csrf_field(caller: Option<&Caller>) -> Markup {
    html! {
        @if let Some(t) = caller.and_then(|c| c.csrf.as_deref()) {
            input type="hidden" name="csrf" value=(t);
        }
    }
}

/// A copy button for the text of element `#target` (JS only; the text is
/// selectable without it).
fn copy_button(target: &str) -> Markup {
    html! {
        button.copy type="button" data-copy=(target) hidden { "Copy" }
    }
}

/// `2026-12-07T22:52:33Z` for Unix seconds.
fn when(secs: u64) -> String {
    crate::allocation::pools::format_unix(secs)
}

#[cfg(test)]
mod tests;
