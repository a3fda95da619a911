//! `/api/v1/lanes`: create (with entries), list (with filters), show,
//! patch, extend and delete lanes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::{ApiError, PUBLISH_WAIT};
use crate::allocation::lanes::{
    parse_ttl, CreateOutcome, Lane, LanePatch, LaneSpec, LaneStore, Quarantined,
};
use crate::allocation::pools::{format_unix, unix_now_ms};
use crate::control::Control;

/// What every lane's JSON needs from the configuration and the rules,
/// gathered once per response.
pub struct LaneJson {
    domain: String,
    header: String,
    cookie: String,
    /// Distinct `[proxy] listen` ports, in order.
    ports: Vec<u16>,
    /// The exact server names of the loaded rules (no wildcard, no regex),
    /// for the hosts-file line of a VIP.
    production_hosts: Vec<String>,
}

impl LaneJson {
    pub fn new(c: &Control) -> LaneJson {
        let mut ports = Vec::new();
        for a in &c.config.proxy.listen {
            if !ports.contains(&a.port()) {
                ports.push(a.port());
            }
        }
        let mut production_hosts: Vec<String> = Vec::new();
        for server in c.snapshot().rules.servers() {
            for name in &server.names {
                let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
                if crate::config::is_hostname(&name) && !production_hosts.contains(&name) {
                    production_hosts.push(name);
                }
            }
        }
        LaneJson {
            domain: c.config.lanes.domain.clone(),
            header: c.config.lanes.header.to_string(),
            cookie: c.config.lanes.cookie.clone(),
            ports,
            production_hosts,
        }
    }

    /// `http://<host>[:port]/` for every listen port (`:80` left out).
    fn urls(&self, host: &str) -> impl Iterator<Item = String> + '_ {
        let host = host.to_owned();
        self.ports.iter().map(move |p| match p {
            80 => format!("http://{host}/"),
            p => format!("http://{host}:{p}/"),
        })
    }

    /// A lane with its entries, as the API shows it.
    pub fn lane_json(&self, lane: &Lane) -> Value {
        let host = format!("{}.{}", lane.name, self.domain);
        let hostname = if lane.entries.hostname.is_empty() {
            host.clone()
        } else {
            lane.entries.hostname.clone()
        };
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
        if hostname != host {
            urls.extend(self.urls(&hostname));
        }
        let hosts_line = lane.entries.vip.map(|vip| {
            let mut names: Vec<&str> = self.production_hosts.iter().map(String::as_str).collect();
            if !names.contains(&hostname.as_str()) {
                names.push(&hostname);
            }
            format!("{vip} {}", names.join(" "))
        });
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
                "hosts_line": hosts_line,
                "production_hostnames": format!("<production-host>.{host}"),
                "header": format!("{}: {}", self.header, lane.name),
                "cookie": format!("{}={}", self.cookie, lane.name),
            },
        })
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

pub async fn create(State(c): State<Arc<Control>>, body: Bytes) -> Result<Response, ApiError> {
    let spec: LaneSpec = parse_body(&c, &body, "invalid lane body")?;
    let outcome = c
        .mutate_lanes(|lanes| lanes.create(spec.clone()))
        .await
        .map_err(|e| counted(&c, e.into()))?;
    let (status, lane) = match outcome {
        CreateOutcome::Created(lane) => {
            info!(lane = %lane.name, vip = ?lane.entries.vip, port = ?lane.entries.port, hostname = %lane.entries.hostname, owner = ?lane.owner, expires_at = ?lane.expires_at, "lane created");
            let generation = c.changed();
            c.wait_built(generation, PUBLISH_WAIT).await;
            (StatusCode::CREATED, lane)
        }
        CreateOutcome::Existing(lane) => (StatusCode::OK, lane),
    };
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

pub async fn patch(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: LanePatch = parse_body(&c, &body, "invalid lane patch")?;
    let lane = c
        .mutate_lanes(|lanes| lanes.patch(&name, patch.clone()))
        .await
        .map_err(|e| counted(&c, e.into()))?;
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
    Ok(Json(LaneJson::new(&c).lane_json(&lane)))
}

/// Body of `POST /api/v1/lanes/<name>/extend` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    ttl: Option<String>,
}

/// Renews a lane's lease: it now ends `ttl` (or the lane's own lease
/// length) from now.
pub async fn extend(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ExtendBody = if body.iter().all(u8::is_ascii_whitespace) {
        ExtendBody::default()
    } else {
        parse_body(&c, &body, "invalid extend body")?
    };
    let ttl = body
        .ttl
        .map(|t| parse_ttl(&name, &t))
        .transpose()
        .map_err(|e| counted(&c, e.into()))?;
    let now_ms = unix_now_ms();
    let lane = c
        .mutate_lanes(|lanes| lanes.extend_at(&name, ttl, now_ms))
        .await
        .map_err(|e| counted(&c, e.into()))?;
    info!(lane = %lane.name, expires_at = ?lane.expires_at, "lane lease extended");
    Ok(Json(LaneJson::new(&c).lane_json(&lane)))
}

pub async fn delete(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lane = c
        .mutate_lanes(|lanes| lanes.delete(&name))
        .await
        .map_err(|e| counted(&c, e.into()))?;
    info!(lane = %lane.name, vip = ?lane.entries.vip, port = ?lane.entries.port, "lane deleted; its entries are in quarantine");
    let generation = c.changed();
    c.wait_built(generation, PUBLISH_WAIT).await;
    Ok(Json(json!({"deleted": LaneJson::new(&c).lane_json(&lane)})))
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
