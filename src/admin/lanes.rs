//! `/api/v1/lanes`: create (with entries and warnings), list (with
//! filters), show, patch, extend and delete lanes; the same operations for
//! the dashboard's forms. Control plane.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::{ApiError, Caller, PUBLISH_WAIT};
use crate::allocation::lanes::{
    parse_ttl, CreateOutcome, Lane, LanePatch, LaneSpec, LaneStore, Quarantined, BASELINE,
};
use crate::allocation::pools::{format_unix, unix_now_ms};
use crate::control::Control;
use crate::routing::snapshot::Snapshot;

/// What every lane's JSON needs from the configuration and the rules,
/// gathered once per response.
pub struct LaneJson {
    domain: String,
    header: String,
    cookie: String,
    /// Distinct `[proxy] listen` ports, in order.
    ports: Vec<u16>,
    /// The exact server names of the loaded rules (no wildcard, no regex),
    /// for the hosts-file line of a VIP and the lane's production URLs.
    production_hosts: Vec<String>,
    /// The serving snapshot, for each lane's warnings.
    snapshot: Arc<Snapshot>,
}

/// Where a lane can be opened, with the data port in every URL that needs
/// it (`:80` left out). Shared by the API's `entries` and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneLinks {
    /// The lane's entry hostname: `<lane>.<domain>` or the template's.
    pub hostname: String,
    /// `http://<lane>.<domain>:<port>/`.
    pub hostname_url: String,
    /// `(production host, http://<prod-host>.<lane>.<domain>:<port>/)` for
    /// every exact server name of the rules.
    pub production_urls: Vec<(String, String)>,
    /// `(production host, http://<prod-host>:<port>/__laneway/lane?use=<lane>)`:
    /// the switch link that sets the lane cookie for that host.
    pub switch_urls: Vec<(String, String)>,
    /// `http://<vip>:<port>/`.
    pub vip_url: Option<String>,
    /// `http://<hostname>:<pool port>/`.
    pub port_url: Option<String>,
    /// A valid `/etc/hosts` line (no port: the hosts file has none) mapping
    /// the production hosts to the VIP.
    pub hosts_line: Option<String>,
    /// `http://<prod-host>:<port>/`: what to open once the hosts line is in
    /// place (the names then lead to the VIP, the port still matters).
    pub hosts_urls: Vec<String>,
    /// `/api/v1/lanes/<name>/pac` on the admin listener.
    pub pac_path: String,
}

impl LaneJson {
    pub fn new(c: &Control) -> LaneJson {
        let mut ports = Vec::new();
        for a in &c.config.proxy.listen {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
        let snapshot = c.snapshot();
        LaneJson {
            domain: c.config.lanes.domain.clone(),
            header: c.config.lanes.header.to_string(),
            cookie: c.config.lanes.cookie.clone(),
            ports,
            production_hosts: snapshot.rules.exact_server_names(),
            snapshot,
        }
    }

    /// `http://<host>[:port]/` for every listen port (`:80` left out).
    fn urls(&self, host: &str) -> impl Iterator<Item = String> + '_ {
        let host = host.to_owned();
        self.ports.iter().map(move |&p| url_at(&host, p))
    }

    /// `http://<host>[:port]/` on the first listen port.
    fn url(&self, host: &str) -> String {
        url_at(host, self.ports.first().copied().unwrap_or(80))
    }

    /// The exact server names of the loaded rules.
    pub fn production_hosts(&self) -> &[String] {
        &self.production_hosts
    }

    /// Where `lane` can be opened (links on the first listen port).
    pub fn links(&self, lane: &Lane) -> LaneLinks {
        let host = format!("{}.{}", lane.name, self.domain);
        let hostname = if lane.entries.hostname.is_empty() {
            host.clone()
        } else {
            lane.entries.hostname.clone()
        };
        let vip_host = lane.entries.vip.map(|vip| match vip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
        let hosts_line = lane.entries.vip.map(|vip| {
            let mut names: Vec<&str> = self.production_hosts.iter().map(String::as_str).collect();
            if !names.contains(&hostname.as_str()) {
                names.push(&hostname);
            }
            format!("{vip} {}", names.join(" "))
        });
        let lane_name = percent_encoding::utf8_percent_encode(&lane.name, QUERY_VALUE);
        LaneLinks {
            hostname_url: self.url(&hostname),
            production_urls: self
                .production_hosts
                .iter()
                .map(|p| (p.clone(), self.url(&format!("{p}.{host}"))))
                .collect(),
            switch_urls: self
                .production_hosts
                .iter()
                .map(|p| {
                    let base = self.url(p);
                    (p.clone(), format!("{base}__laneway/lane?use={lane_name}"))
                })
                .collect(),
            vip_url: vip_host.as_deref().map(|h| self.url(h)),
            port_url: lane
                .entries
                .port
                .map(|port| format!("http://{hostname}:{port}/")),
            hosts_urls: match hosts_line {
                Some(_) => self.production_hosts.iter().map(|p| self.url(p)).collect(),
                None => Vec::new(),
            },
            hosts_line,
            pac_path: format!("/api/v1/lanes/{}/pac", lane.name),
            hostname,
        }
    }

    /// A lane with its entries and its current warnings, as the API shows it.
    pub fn lane_json(&self, lane: &Lane) -> Value {
        let host = format!("{}.{}", lane.name, self.domain);
        let links = self.links(lane);
        let hostname = &links.hostname;
        let mut urls: Vec<String> = Vec::new();
        if let Some(vip) = lane.entries.vip {
            let vip_host = match vip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            urls.extend(self.urls(&vip_host));
        }
        if let Some(port) = lane.entries.port {
            urls.push(format!("http://{hostname}:{port}/"));
        }
        urls.extend(self.urls(&host));
        if *hostname != host {
            urls.extend(self.urls(hostname));
        }
        json!({
            "name": lane.name,
            "services": lane.services,
            "parent": lane.parent,
            "strict": lane.strict,
            "created_at": lane.created_at,
            "updated_at": lane.updated_at,
            "owner": lane.owner,
            "description": lane.description,
            "labels": lane.labels,
            "ttl": lane.ttl_seconds.map(format_ttl),
            "ttl_seconds": lane.ttl_seconds,
            "expires_at": lane.expires_at,
            "expires": lane.expires_at.map(format_unix),
            "auto": lane.auto,
            "entries": {
                "vip": lane.entries.vip,
                "port": lane.entries.port,
                "hostname": hostname,
                "urls": urls,
                "hosts_line": links.hosts_line,
                "hosts_urls": links.hosts_urls,
                "production_hostnames": format!("<production-host>.{host}"),
                "production_urls": links.production_urls.iter().map(|(_, u)| u).collect::<Vec<_>>(),
                "header": format!("{}: {}", self.header, lane.name),
                "cookie": format!("{}={}", self.cookie, lane.name),
            },
            "warnings": super::warnings::lane_warnings(&self.snapshot, lane),
        })
    }
}

/// What a query value must escape.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `http://<host>[:port]/`, `:80` left out.
fn url_at(host: &str, port: u16) -> String {
    match port {
        80 => format!("http://{host}/"),
        p => format!("http://{host}:{p}/"),
    }
}

/// The pools and what holds their entries, for `/api/v1/status`.
pub fn pools_json(store: &LaneStore) -> Value {
    let now_ms = unix_now_ms();
    let lanes = store.list();
    let quarantine: Vec<&Quarantined> = store
        .quarantine()
        .iter()
        .filter(|q| q.until.saturating_mul(1000) > now_ms)
        .collect();
    let pools = store.pools();
    let count = |f: &dyn Fn(&Lane) -> bool| lanes.iter().filter(|l| f(l)).count();
    json!({
        "vip": {
            "pool": pools.vip.as_ref().map(ToString::to_string),
            "in_use": count(&|l| l.entries.vip.is_some()),
            "in_quarantine": quarantine.iter().filter(|q| q.vip.is_some()).count(),
        },
        "port": {
            "pool": pools.port.map(|p| p.to_string()),
            "in_use": count(&|l| l.entries.port.is_some()),
            "in_quarantine": quarantine.iter().filter(|q| q.port.is_some()).count(),
        },
        "quarantine": quarantine.iter().map(|q| json!({
            "lane": q.lane, "vip": q.vip, "port": q.port,
            "released_at": q.released_at, "until": q.until, "until_utc": format_unix(q.until),
        })).collect::<Vec<_>>(),
    })
}

/// A lease length as the largest whole unit: `72h`, `90m`, `45s`.
fn format_ttl(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn parse_body<T: DeserializeOwned>(c: &Control, body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        c.metrics.admin_rejects.with_label_values(&["lanes"]).inc();
        return Err(ApiError::bad_request(format!(
            "{what}: the body is empty; send a JSON object"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        c.metrics.admin_rejects.with_label_values(&["lanes"]).inc();
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

fn counted(c: &Control, e: ApiError) -> ApiError {
    if e.status.is_client_error() {
        c.metrics.admin_rejects.with_label_values(&["lanes"]).inc();
    }
    e
}

/// Creates a lane from a `POST /api/v1/lanes` body: the one code path of
/// the API and the dashboard's form. Answers 201 and the lane when created,
/// 200 when an identical lane already existed.
pub async fn create_lane(
    c: &Control,
    body: &[u8],
    who: &str,
) -> Result<(StatusCode, Lane), ApiError> {
    let spec: LaneSpec = parse_body(c, body, "invalid lane body")?;
    let outcome = c
        .mutate_lanes(|lanes| lanes.create(spec.clone()))
        .await
        .map_err(|e| counted(c, e.into()))?;
    Ok(match outcome {
        CreateOutcome::Created(lane) => {
            info!(lane = %lane.name, vip = ?lane.entries.vip, port = ?lane.entries.port, hostname = %lane.entries.hostname, owner = ?lane.owner, expires_at = ?lane.expires_at, "lane created");
            c.audit.record(
                who,
                "lane.create",
                &lane.name,
                Value::Null,
                audit_json(&lane),
            );
            let generation = c.changed();
            c.wait_built(generation, PUBLISH_WAIT).await;
            (StatusCode::CREATED, lane)
        }
        CreateOutcome::Existing(lane) => (StatusCode::OK, lane),
    })
}

pub async fn create(
    State(c): State<Arc<Control>>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (status, lane) = create_lane(&c, &body, who(&caller)).await?;
    Ok((status, Json(LaneJson::new(&c).lane_json(&lane))).into_response())
}

/// `GET /api/v1/lanes[?owner=o][&label=k=v]…[&auto=true|false]`: every
/// filter must match.
pub async fn list(
    State(c): State<Arc<Control>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let filter = Filter::parse(query.as_deref().unwrap_or("")).map_err(|e| counted(&c, e))?;
    let lanes = c.lanes.lock().await.list();
    let view = LaneJson::new(&c);
    Ok(Json(Value::Array(
        lanes
            .iter()
            .filter(|l| filter.matches(l))
            .map(|l| view.lane_json(l))
            .collect(),
    )))
}

/// The filters of `GET /api/v1/lanes`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filter {
    owner: Option<String>,
    labels: BTreeMap<String, String>,
    auto: Option<bool>,
}

impl Filter {
    fn parse(query: &str) -> Result<Filter, ApiError> {
        let mut f = Filter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value)?;
            match decode(key)?.as_str() {
                "owner" => f.owner = Some(value),
                "label" => {
                    let Some((k, v)) = value.split_once('=') else {
                        return Err(ApiError::bad_request(format!(
                            "label filter {value:?} must be key=value"
                        )));
                    };
                    f.labels.insert(k.to_owned(), v.to_owned());
                }
                "auto" => {
                    f.auto = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "auto filter {value:?} must be true or false"
                        ))
                    })?)
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown filter {other:?}; use owner=…, label=key=value or auto=true|false"
                    )))
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, lane: &Lane) -> bool {
        self.owner
            .as_ref()
            .is_none_or(|o| lane.owner.as_ref() == Some(o))
            && self.auto.is_none_or(|a| lane.auto == a)
            && self
                .labels
                .iter()
                .all(|(k, v)| lane.labels.get(k) == Some(v))
    }
}

/// Percent-decodes a query component (`+` is a space).
fn decode(s: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request(format!("query {s:?} is not UTF-8")))
}

pub async fn show(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lane = c
        .lanes
        .lock()
        .await
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("lane \"{name}\" does not exist")))?;
    Ok(Json(LaneJson::new(&c).lane_json(&lane)))
}

/// Applies a `PATCH /api/v1/lanes/<name>` body.
pub async fn patch_lane(c: &Control, name: &str, body: &[u8], who: &str) -> Result<Lane, ApiError> {
    let patch: LanePatch = parse_body(c, body, "invalid lane patch")?;
    let before = c.lanes.lock().await.get(name).map(audit_json);
    let lane = c
        .mutate_lanes(|lanes| lanes.patch(name, patch.clone()))
        .await
        .map_err(|e| counted(c, e.into()))?;
    let action = if name == BASELINE {
        "baseline.patch"
    } else {
        "lane.patch"
    };
    c.audit.record(
        who,
        action,
        name,
        before.unwrap_or(Value::Null),
        audit_json(&lane),
    );
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
    Ok(lane)
}

pub async fn patch(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let lane = patch_lane(&c, &name, &body, who(&caller)).await?;
    Ok(Json(LaneJson::new(&c).lane_json(&lane)))
}

/// Body of `POST /api/v1/lanes/<name>/extend` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    ttl: Option<String>,
}

/// Renews a lane's lease: it now ends `ttl` (or the lane's own lease
/// length) from now. `body` is empty or `{"ttl": "…"}`.
pub async fn extend_lane(
    c: &Control,
    name: &str,
    body: &[u8],
    who: &str,
) -> Result<Lane, ApiError> {
    let body: ExtendBody = if body.iter().all(u8::is_ascii_whitespace) {
        ExtendBody::default()
    } else {
        parse_body(c, body, "invalid extend body")?
    };
    let ttl = body
        .ttl
        .map(|t| parse_ttl(name, &t))
        .transpose()
        .map_err(|e| counted(c, e.into()))?;
    let now_ms = unix_now_ms();
    let before = c.lanes.lock().await.get(name).map(audit_json);
    let lane = c
        .mutate_lanes(|lanes| lanes.extend_at(name, ttl, now_ms))
        .await
        .map_err(|e| counted(c, e.into()))?;
    info!(lane = %lane.name, expires_at = ?lane.expires_at, "lane lease extended");
    c.audit.record(
        who,
        "lane.extend",
        name,
        before.unwrap_or(Value::Null),
        audit_json(&lane),
    );
    Ok(lane)
}

pub async fn extend(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let lane = extend_lane(&c, &name, &body, who(&caller)).await?;
    Ok(Json(LaneJson::new(&c).lane_json(&lane)))
}

/// Deletes a lane; its entries go into quarantine.
pub async fn delete_lane(c: &Control, name: &str, who: &str) -> Result<Lane, ApiError> {
    let lane = c
        .mutate_lanes(|lanes| lanes.delete(name))
        .await
        .map_err(|e| counted(c, e.into()))?;
    c.audit
        .record(who, "lane.delete", name, audit_json(&lane), Value::Null);
    info!(lane = %lane.name, vip = ?lane.entries.vip, port = ?lane.entries.port, "lane deleted; its entries are in quarantine");
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
    Ok(lane)
}

pub async fn delete(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<Value>, ApiError> {
    let lane = delete_lane(&c, &name, who(&caller)).await?;
    Ok(Json(json!({"deleted": LaneJson::new(&c).lane_json(&lane)})))
}

/// The caller's name for the audit log (`anonymous` without the access
/// middleware, as in-process tests call the router).
pub(crate) fn who(caller: &Option<Extension<Caller>>) -> &str {
    caller.as_ref().map_or("anonymous", |c| c.name.as_str())
}

/// A lane as the audit log records it.
fn audit_json(lane: &Lane) -> Value {
    serde_json::to_value(lane).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse("owner=ann+b&label=team%3Dpay=x&label=env=qa&auto=false").unwrap();
        assert_eq!(f.owner.as_deref(), Some("ann b"));
        assert_eq!(
            f.labels,
            BTreeMap::from([("team".into(), "pay=x".into()), ("env".into(), "qa".into())])
        );
        let mut lane = Lane {
            owner: Some("ann b".into()),
            labels: f.labels.clone(),
            ..Lane::default()
        };
        assert!(f.matches(&lane));
        lane.labels.insert("env".into(), "prod".into());
        assert!(!f.matches(&lane));
        assert!(Filter::parse("").unwrap().matches(&lane));
        for bad in ["colour=red", "label=novalue", "auto=maybe"] {
            assert_eq!(
                Filter::parse(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn ttl_shows_in_its_largest_whole_unit() {
        assert_eq!(format_ttl(72 * 3600), "72h");
        assert_eq!(format_ttl(90 * 60), "90m");
        assert_eq!(format_ttl(61), "61s");
    }
}
