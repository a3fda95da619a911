//! The dashboard's instances page (service × version × instances, with
//! discovery health, laneway's hold-out reason and weights) and rules page
//! (the source files, servers and locations, and the errors of the last
//! rejected reload), and the audit page (the recent changes, who made
//! them, before and after). Control plane.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use maud::{html, Markup};

use super::{page, Nav};
use crate::control::Control;
use crate::discovery::{Health, Instance};
use crate::routing::rules::{Action, DefaultOn};

/// An instance and whether it comes from `[static_services]`.
struct Listed(Arc<Instance>, bool);

/// A service's instances by version (`""`: none).
type ByVersion<'a> = BTreeMap<&'a str, Vec<&'a Listed>>;

/// `GET /instances`.
pub async fn instances(State(c): State<Arc<Control>>) -> Markup {
    let catalog = c.catalog().await;
    let snap = c.snapshot();
    let mut all: Vec<Listed> = catalog
        .instances
        .iter()
        .map(|i| Listed(i.clone(), false))
        .collect();
    // `[static_services]` instances come from the rules, not discovery
    for service in snap.rules.services() {
        for m in snap.service_members(&service) {
            if catalog.get(&m.id).is_none() {
                all.push(Listed(m.clone(), true));
            }
        }
    }
    let mut by: BTreeMap<&str, ByVersion<'_>> = BTreeMap::new();
    for entry in &all {
        let i = &entry.0;
        by.entry(&i.service)
            .or_default()
            .entry(i.version.as_deref().unwrap_or(""))
            .or_default()
            .push(entry);
    }
    let routed = snap.rules.services();
    page(
        "Instances",
        Nav::Instances,
        html! {
            h1 { "Instances" }
            p.count { (all.len()) " instances of " (by.len()) " services" }
            @if by.is_empty() { p.muted { "No instance is registered." } }
            table #instances {
                thead { tr { th { "Service" } th { "Version" } th { "Instance" } th { "Address" } th { "Health" } th { "Weight" } th { "Laneway" } } }
                tbody {
                    @for (service, versions) in &by {
                        @for (v_index, (version, list)) in versions.iter().enumerate() {
                            @for (n, (i, is_static)) in list.iter().map(|e| (&e.0, e.1)).enumerate() {
                                @let held = c.upstream_health.get(&i.id).and_then(|s| s.out_reason());
                                @let health = if held.is_some() { Health::Critical } else { i.health };
                                tr class=(format!("health {}", health.as_str())) data-service=(service) data-version=(version) {
                                    td.service {
                                        @if n == 0 && v_index == 0 {
                                            (service)
                                            @if !routed.iter().any(|r| &**r == *service) {
                                                " " span.badge title="no rule routes to this service" { "not routed" }
                                            }
                                        }
                                    }
                                    td { @if n == 0 { span.version { @if version.is_empty() { span.muted { "(none: baseline)" } } @else { (version) } } } }
                                    td.id { (i.id) @if is_static { " " span.badge { "static" } } }
                                    td { code { (i.address) ":" (i.port) } }
                                    td { span.dot {} " " (i.health.as_str())
                                        @for ch in i.checks.iter().filter(|ch| ch.status != Health::Passing) {
                                            div.reason { (ch.id) ": " (ch.status.as_str())
                                                @if !ch.output.is_empty() { " (" (ch.output) ")" } }
                                        }
                                    }
                                    td { (i.weight()) span.muted { " (passing " (i.weight_passing) ", warning " (i.weight_warning) ")" } }
                                    td { @match &held {
                                        Some(r) => { span.reason { "held out: " (r) } },
                                        None if i.weight() == 0 => { span.reason { "no traffic: weight 0 at " (i.health.as_str()) } },
                                        None => { span.muted { "in service" } },
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /rules`.
pub async fn rules(State(c): State<Arc<Control>>) -> Markup {
    let snap = c.snapshot();
    let errors = c.rules_errors();
    let files = c.rules_files();
    let routes = &c.config.routes;
    page(
        "Rules",
        Nav::Rules,
        html! {
            h1 { "Rules" }
            dl.facts {
                dt { "Source" }
                dd {
                    @if let Some(f) = &routes.file { "rules file " code { (f.display()) } }
                    @if let Some(f) = &routes.nginx { "nginx configuration " code { (f.display()) } }
                }
                @if files.len() > 1 {
                    dt { "Files read" }
                    dd { @for f in &files { code { (f.display()) } br; } }
                }
                dt { "Status" }
                dd {
                    @if errors.is_empty() { span.badge.ok #rules-status { "ok" } " the files on disk are the rules serving" }
                    @else { span.badge.strict #rules-status { "rejected" } " the last reload failed: laneway serves the last good rules" }
                }
            }
            @if !errors.is_empty() {
                section #rule-errors {
                    h2 { "Errors of the last reload" }
                    ul {
                        @for e in &errors {
                            li.error { code { (e.file.display()) ":" (e.line) ":" (e.column) } " " (e.message) }
                        }
                    }
                }
            }
            h2 { "Servers" }
            @for s in snap.rules.servers() {
                section.server {
                    h3 {
                        @for (i, n) in s.names.iter().enumerate() { @if i > 0 { ", " } code { (n) } }
                        @match &s.default {
                            DefaultOn::No => {},
                            DefaultOn::All => { " " span.badge { "default" } },
                            DefaultOn::Ports(p) => { " " span.badge { "default on " (ports(p)) } },
                        }
                        @if !s.ports.is_empty() { " " span.badge { "port " (ports(&s.ports)) } }
                    }
                    p.where { code { (s.file.display()) ":" (s.line) } }
                    table.locations {
                        thead { tr { th { "Location" } th { "Does" } th { "Line" } } }
                        tbody {
                            @for l in &s.locations {
                                tr {
                                    td { code { (l.pattern) } }
                                    td { @match &l.action {
                                        Action::Proxy { service } => { "proxy to " span.service { (service) }
                                            @if let Some(r) = &l.rewrite { " rewriting " code { (r.pattern()) } " → " code { (r.replacement()) } } },
                                        Action::Return { status, .. } => { "return " (status) },
                                        Action::Redirect { status, .. } => { "redirect " (status) },
                                        Action::Engine => { "nginx directives" },
                                    } }
                                    td { (l.line) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn ports(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

/// `GET /audit`: the changes still in the audit ring, newest first.
pub async fn audit(State(c): State<Arc<Control>>) -> Markup {
    let (mut entries, truncated) = c.audit.since(0);
    entries.reverse();
    let compact = |v: &serde_json::Value| {
        if v.is_null() {
            String::from("–")
        } else {
            v.to_string()
        }
    };
    page(
        "Audit",
        Nav::Audit,
        html! {
            h1 { "Audit" }
            p { "Every change made through the admin API or the dashboard, every rules reload, and (in Consul mode) every change seen in Consul. The full history is in the log, target " code { "laneway::audit" } "." }
            @if truncated { p.notice { "Older entries have left this page; the log has them." } }
            @if entries.is_empty() {
                p #no-changes { "No changes since laneway started." }
            } @else {
                table #audit {
                    thead { tr { th { "#" } th { "When" } th { "Who" } th { "What" } th { "Target" } th { "Before → after" } } }
                    tbody {
                        @for e in &entries {
                            tr data-seq=(e.seq) {
                                td { (e.seq) }
                                td { (super::when(e.at_ms / 1000)) }
                                td.who { (e.who) }
                                td.action { (e.action) }
                                td.target { (e.target) }
                                td {
                                    details {
                                        summary { "show" }
                                        pre { (compact(&e.before)) }
                                        pre { (compact(&e.after)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
