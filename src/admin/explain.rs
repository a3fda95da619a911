//! `GET /api/v1/explain?url=…&lane=…&header=Name:Value`: what laneway would
//! do with a request, without sending anything upstream. It runs the same
//! decision as the data plane ([`plan::decide`] on the serving snapshot) and
//! adds the reasons: which server block and location matched and by which
//! precedence rule (with file:line), how the lane was resolved, the version
//! chosen and the fallback chain walked, the rewritten upstream URI, and the
//! instances that would be tried, with their health; and the laneway
//! listener the request is taken to arrive on (`listener=ADDR`, else the
//! address in the URL, else the first `[proxy] listen`) with the nginx port
//! it stands for, which chooses among the servers. Control plane.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::ApiError;
use crate::control::Control;
use crate::discovery::Instance;
use crate::proxy::plan;
use crate::routing::lanes::{self, LaneSource};
use crate::routing::rules::{Action, Decision, RequestInfo};
use crate::routing::snapshot::{Choice, Snapshot, Target, BASELINE};

/// The explain endpoint.
pub async fn explain(
    State(c): State<Arc<Control>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let reject = |msg: String| {
        c.metrics
            .admin_rejects
            .with_label_values(&["explain"])
            .inc();
        ApiError::bad_request(msg)
    };
    let mut url = None;
    let mut lane = None;
    let mut listener: Option<String> = None;
    let mut extra: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "url" if url.is_none() => url = Some(v),
            "lane" if lane.is_none() => lane = Some(v),
            "listener" if listener.is_none() => listener = Some(v),
            "header" => {
                let (name, value) = v
                    .split_once(':')
                    .ok_or_else(|| reject(format!("header {v:?} is not Name:Value")))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| reject(format!("header name {:?} is invalid", name.trim())))?;
                let value = HeaderValue::from_str(value.trim())
                    .map_err(|_| reject(format!("header value {:?} is invalid", value.trim())))?;
                extra.push((name, value));
            }
            "url" | "lane" | "listener" => return Err(reject(format!("{k} given twice"))),
            other => {
                return Err(reject(format!(
                    "unknown parameter {other:?}; expected url, lane, header, listener"
                )))
            }
        }
    }
    let url = url.ok_or_else(|| reject("url is required: ?url=http://host/path".into()))?;
    let with_scheme = if url.contains("://") {
        url.clone()
    } else {
        format!("http://{url}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| reject(format!("url {url:?} is not a URL: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let authority = uri
        .authority()
        .ok_or_else(|| reject(format!("url {url:?} has no host")))?
        .clone();
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();

    let snap = c.snapshot();
    let settings = crate::proxy::server::settings(&c);
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority.as_str())
            .map_err(|_| reject(format!("host {:?} is invalid", authority.as_str())))?,
    );
    for (name, value) in extra {
        if name == http::header::HOST {
            headers.insert(name, value);
        } else {
            headers.append(name, value);
        }
    }
    if let Some(l) = &lane {
        if snap.lane(l).is_none() {
            return Err(ApiError::not_found(format!("lane {l:?} does not exist")));
        }
        let value = HeaderValue::from_str(l)
            .map_err(|_| reject(format!("lane {l:?} is not a valid header value")))?;
        headers.insert(settings.lanes.header.clone(), value);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    // The address the client would connect to: an IP in the URL can be a
    // VIP, a port can be a pool port.
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let dst = match authority
        .host()
        .trim_matches(|ch| ch == '[' || ch == ']')
        .parse::<IpAddr>()
    {
        Ok(ip) => Some(SocketAddr::new(ip, port)),
        Err(_) => authority
            .port_u16()
            .map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p)),
    };

    let listener = match &listener {
        Some(l) => Some(
            l.parse::<SocketAddr>()
                .map_err(|_| reject(format!("listener {l:?} is not an IP:port address")))?,
        ),
        None => None,
    };
    let (arrived, nginx_port, port_source) =
        arrival(&c, &settings, listener, dst).map_err(reject)?;

    let resolved = lanes::resolve(&snap, &settings.lanes, &headers, &host, dst);
    let lane_json = lane_json(&resolved, &settings.lanes, &headers, &host, dst);
    let rules_host = resolved.host.to_string();
    let decided = plan::decide(
        &snap,
        &settings,
        &plan::Incoming {
            host: &host,
            target: &target,
            scheme: &scheme,
            headers: &headers,
            dst,
            port: nginx_port,
            upstream_statuses: &[],
        },
    );
    let by_port = snap.rules.selects_by_port(nginx_port);
    let mut out = json!({
        "request": {
            "url": url,
            "host": host,
            "target": target,
            "headers": headers.iter().map(|(k, v)| json!([k.as_str(), v.to_str().unwrap_or("")])).collect::<Vec<_>>(),
            "destination": dst.map(|d| d.to_string()),
        },
        "listener": {
            "address": arrived.to_string(),
            "nginx_port": nginx_port,
            "source": port_source,
            "selects_servers": by_port,
        },
        "lane": lane_json,
    });
    if let Some(entry) = resolved.free_entry {
        out["outcome"] = json!({
            "status": 421,
            "reason": "free_entry",
            "detail": format!("{entry} is a lane entry that no lane holds"),
        });
        return Ok(Json(out));
    }

    // Server and location, with the precedence rule behind each.
    let matched = snap.rules.explain_match(&rules_host, &target, nginx_port);
    out["rules_host"] = json!(matched.host);
    out["path"] = json!(matched.path);
    out["server"] = match &matched.server {
        Some((s, by, name)) => json!({
            "file": s.file.display().to_string(),
            "line": s.line,
            "names": s.names,
            "matched_by": by.as_str(),
            "name": name,
            "port": by_port.then_some(nginx_port),
            "ports": s.ports,
        }),
        None => Value::Null,
    };
    out["location"] = match &matched.location {
        Some((l, by)) => json!({
            "file": l.file.display().to_string(),
            "line": l.line,
            "match": l.pattern,
            "matched_by": by.as_str(),
            "action": l.action.kind(),
            "service": match &l.action { Action::Proxy { service } => Some(service.to_string()), _ => None },
            "rewrite": l.rewrite.as_ref().map(|r| json!([r.pattern(), r.replacement()])),
        }),
        None => Value::Null,
    };
    let decision = snap.rules.route(&RequestInfo {
        host: &rules_host,
        target: &target,
        scheme: &scheme,
        lane: &decided.lane.name,
        headers: &headers,
        port: nginx_port,
        upstream_statuses: &[],
    });
    if let Decision::Proxy { service, .. } = &decision {
        out["service"] = json!(service.to_string());
    }
    drop(decision);

    if let Some(t) = &decided.target {
        out["version"] = version_json(&snap, &decided.lane.name, t);
        out["instances"] = instances_json(&c, &snap, t);
    }
    out["outcome"] = match &decided.action {
        Ok(p) => json!({
            "action": "proxy",
            "status": p.status,
            "intercept_errors": p.intercept.map(|c| c.iter().collect::<Vec<_>>()),
            "as_get": p.as_get,
            "upstream_uri": p.upstream_target.clone().unwrap_or_else(|| target.clone()),
            "host_header": p.production_host.clone().unwrap_or_else(|| host.clone()),
            "set_headers": p.set_headers.iter().map(|(k, v)| json!([k.as_str(), v])).collect::<Vec<_>>(),
            "read_retries": p.read_retries,
            "connect_timeout": humantime::format_duration(p.connect_timeout).to_string(),
            "read_timeout": humantime::format_duration(p.read_timeout).to_string(),
        }),
        Err(resp) => json!({
            "action": "local",
            "status": resp.status,
            "reason": resp.reason,
            "body": String::from_utf8_lossy(&resp.body),
            "headers": resp.headers.iter().map(|(k, v)| json!([k.as_str(), v])).collect::<Vec<_>>(),
        }),
    };
    Ok(Json(out))
}

/// The listener the request is taken to arrive on, its nginx port and why:
/// `listener` when given (one of laneway's), else the URL's address when
/// it is one, else the first `[proxy] listen`.
fn arrival(
    c: &Control,
    settings: &crate::proxy::ProxySettings,
    listener: Option<SocketAddr>,
    dst: Option<SocketAddr>,
) -> Result<(SocketAddr, u16, String), String> {
    let routes = &c.config.routes;
    let own = |addr: SocketAddr| {
        routes.listeners.iter().find(|l| l.addr == addr).map(|l| {
            let why = match l.line {
                Some(line) => format!("[routes.nginx_listen] (laneway.toml line {line})"),
                None => format!("default for {} (443 for [tls] listen, else 80)", l.kind),
            };
            (l.addr, l.port, why)
        })
    };
    let entry = |addr: SocketAddr| match settings.listen_ports.port_of(Some(addr)) {
        0 => None,
        p => Some((addr, p, "the listener this entry is bound for".to_string())),
    };
    if let Some(l) = listener {
        return own(l).or_else(|| entry(l)).ok_or_else(|| {
            let known: Vec<String> = routes
                .listeners
                .iter()
                .map(|l| l.addr.to_string())
                .collect();
            format!(
                "listener {l} is not one of laneway's listeners ({})",
                known.join(", ")
            )
        });
    }
    if let Some(d) = dst {
        let found = if d.ip().is_unspecified() {
            routes
                .listeners
                .iter()
                .find(|l| l.addr.port() == d.port())
                .and_then(|l| own(l.addr))
        } else {
            own(d).or_else(|| entry(d))
        };
        if let Some(f) = found {
            return Ok(f);
        }
    }
    routes
        .listeners
        .first()
        .and_then(|l| own(l.addr))
        .ok_or_else(|| "laneway has no listener".to_string())
}

fn lane_json(
    r: &lanes::Resolved<'_, '_>,
    settings: &lanes::LaneSettings,
    headers: &HeaderMap,
    host: &str,
    dst: Option<SocketAddr>,
) -> Value {
    let detail = match r.source {
        LaneSource::Header => format!("header {}: {}", settings.header, r.lane.name),
        LaneSource::Baggage => format!("baggage member {}={}", settings.baggage_key, r.lane.name),
        LaneSource::Cookie => format!(
            "cookie {}={}",
            settings.cookie,
            lanes::cookie_value(headers, &settings.cookie).unwrap_or("")
        ),
        LaneSource::Hostname => format!("hostname {host}"),
        LaneSource::Port => format!("destination port {}", dst.map_or(0, |d| d.port())),
        LaneSource::Vip => format!(
            "destination address {} (VIP)",
            dst.map_or_else(|| "-".to_string(), |d| d.ip().to_string())
        ),
        LaneSource::Default => "nothing named a lane: the baseline".to_string(),
    };
    json!({
        "name": &*r.lane.name,
        "source": match r.source { LaneSource::Default => "baseline", s => s.as_str() },
        "detail": detail,
        "strict": r.lane.strict,
        "production_host": r.host_recovered.then(|| r.host.to_string()),
    })
}

/// The version served and the chain walked to find it.
pub(super) fn version_json(snap: &Snapshot, lane: &str, t: &Target) -> Value {
    let service = &*t.service;
    let mut chain = Vec::new();
    let mut skipped = Vec::new();
    for l in snap.lane_chain(lane) {
        let pinned = l.services.get(service);
        let available = pinned.map(|v| snap.version_available(service, v));
        chain.push(json!({
            "lane": l.name,
            "version": pinned,
            "healthy": available,
            "strict": l.strict,
        }));
        if let (Some(v), Some(false)) = (pinned, available) {
            if l.name != BASELINE {
                skipped.push(format!("{} of lane {}", v, l.name));
            }
        }
        if l.name == *t.served_by {
            break;
        }
    }
    let why = match (&t.pool, t.choice) {
        (Err(msg), _) => format!("answered 503: {msg}"),
        (Ok(_), Choice::Override) => {
            format!("lane {lane} overrides {service} with version {}", t.version)
        }
        (Ok(_), Choice::Inherited) => format!(
            "lane {lane} inherits version {} of {service} from lane {}",
            t.version, t.served_by
        ),
        (Ok(_), Choice::Fallback) => format!(
            "fell back: {} has no healthy instance; lane {} serves version {}",
            skipped.join(", "),
            t.served_by,
            t.version
        ),
        (Ok(_), Choice::Baseline) => format!(
            "no lane in the chain overrides {service}: the baseline's {}",
            if &*t.version == BASELINE {
                "unpinned versions".to_string()
            } else {
                format!("version {}", t.version)
            }
        ),
    };
    json!({
        "service": service,
        "version": &*t.version,
        "served_by": &*t.served_by,
        "choice": if t.pool.is_err() && t.choice != Choice::Fallback { "strict" } else { t.choice.as_str() },
        "why": why,
        "chain": chain,
        "error": t.pool.as_ref().err().map(|m| m.to_string()),
    })
}

/// The instances that would be tried (the version's pool, in order) and
/// those of the same version held out, with the reason.
pub(super) fn instances_json(c: &Control, snap: &Snapshot, t: &Target) -> Value {
    let mut would_try = Vec::new();
    let mut in_pool = Vec::new();
    if let Ok(pool) = &t.pool {
        for u in pool.instances.iter() {
            in_pool.push(u.id().clone());
            would_try.push(json!({
                "id": &**u.id(),
                "address": u.addr.to_string(),
                "weight": u.weight,
                "health": if u.state.is_out() { "held out" } else { "healthy" },
                "reason": u.state.out_reason(),
            }));
        }
    }
    let baseline_versions = snap.baseline_versions();
    let same_version = |v: Option<&str>| match v {
        _ if &*t.version == BASELINE => v.is_none_or(|v| baseline_versions.iter().any(|b| b == v)),
        Some(v) => v == &*t.version,
        None => false,
    };
    let held_out: Vec<Value> = snap
        .service_members(&t.service)
        .iter()
        .filter(|i| same_version(i.version.as_deref()))
        .filter(|i| !in_pool.iter().any(|id| **id == *i.id))
        .map(|i| held_out_json(c, i))
        .collect();
    json!({ "would_try": would_try, "held_out": held_out })
}

/// An instance that is not in its version's pool, with why: laneway's own
/// verdict (active check, passive ejection), else a critical discovery
/// check, else its weight of 0.
pub(super) fn held_out_json(c: &Control, i: &Instance) -> Value {
    let reason = c
        .upstream_health
        .get(&i.id)
        .and_then(|s| s.out_reason())
        .or_else(|| {
            i.checks
                .iter()
                .find(|ch| ch.status == crate::discovery::Health::Critical)
                .map(|ch| format!("discovery check {} is critical", ch.id))
        })
        .unwrap_or_else(|| "weight 0".to_string());
    json!({
        "id": i.id,
        "address": format!("{}:{}", i.address, i.port),
        "health": i.health.as_str(),
        "reason": reason,
    })
}
