//! `GET /api/v1/explain`: how laneway would route a request, without
//! sending anything upstream. The same lane resolution and rule matching
//! the data plane runs, on the snapshot serving now, answered with where
//! each decision came from (file:line, lane source, version choice and the
//! lane chain walked, the instances that would be tried).
//!
//! Query: `url=http://host[:port]/path?query` (or `host=` plus a `url`
//! that is a path), `lane=NAME` (sent as the lane header), `header=Name:Value`
//! (repeatable), `cookie=name=value` (repeatable), `dst=IP:PORT` (the
//! address the client connected to: a VIP or a pool port).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::ApiError;
use crate::control::Control;
use crate::discovery::Health;
use crate::routing::lanes;
use crate::routing::rules::{Decision, Location, RequestInfo, Server};
use crate::routing::snapshot::{Choice, Target};

/// What the query asks about.
#[derive(Debug, Default, PartialEq)]
struct Ask {
    scheme: String,
    host: String,
    target: String,
    lane: Option<String>,
    headers: Vec<(String, String)>,
    cookies: Vec<String>,
    dst: Option<SocketAddr>,
}

impl Ask {
    fn parse(query: &str) -> Result<Ask, String> {
        let mut ask = Ask::default();
        let mut url = None;
        let mut host = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v)?;
            match decode(k)?.as_str() {
                "url" => url = Some(v),
                "host" => host = Some(v),
                "lane" => ask.lane = Some(v),
                "header" => {
                    let Some((name, value)) = v.split_once(':') else {
                        return Err(format!("header {v:?} must be Name:Value"));
                    };
                    ask.headers
                        .push((name.trim().to_string(), value.trim().to_string()));
                }
                "cookie" => ask.cookies.push(v),
                "dst" => {
                    ask.dst = Some(v.parse().map_err(|_| {
                        format!("dst {v:?} is not an IP:port (the address the client connected to)")
                    })?)
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; use url, host, lane, header, cookie, dst"
                    ))
                }
            }
        }
        let Some(url) = url else {
            return Err("url is required, e.g. url=http://shop.example.com/user/1".into());
        };
        if let Some((scheme, rest)) = url.split_once("://") {
            ask.scheme = scheme.to_ascii_lowercase();
            let (authority, target) = match rest.find('/') {
                Some(at) => (&rest[..at], &rest[at..]),
                None => match rest.find('?') {
                    Some(at) => (&rest[..at], &rest[at..]),
                    None => (rest, "/"),
                },
            };
            ask.host = host.unwrap_or_else(|| authority.to_string());
            ask.target = if target.starts_with('?') {
                format!("/{target}")
            } else {
                target.to_string()
            };
        } else if url.starts_with('/') {
            ask.scheme = "http".into();
            ask.host = host.ok_or("with a url that is a path, give host= too")?;
            ask.target = url;
        } else {
            return Err(format!(
                "url {url:?} must be http://host/path or a path starting with '/'"
            ));
        }
        if ask.host.is_empty() {
            return Err("the url has no host".into());
        }
        Ok(ask)
    }
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8"))
}

pub async fn explain(
    State(c): State<Arc<Control>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let ask = Ask::parse(query.as_deref().unwrap_or("")).map_err(|e| {
        c.metrics
            .admin_rejects
            .with_label_values(&["explain"])
            .inc();
        ApiError::bad_request(format!("explain: {e}"))
    })?;
    let lane_header = &c.config.lanes.header;
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| -> Result<(), ApiError> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::bad_request(format!("explain: bad header name {name:?}")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| ApiError::bad_request(format!("explain: bad header value {value:?}")))?;
        headers.append(n, v);
        Ok(())
    };
    if let Some(lane) = &ask.lane {
        put(lane_header.as_str(), lane)?;
    }
    for (n, v) in &ask.headers {
        put(n, v)?;
    }
    if !ask.cookies.is_empty() {
        put("cookie", &ask.cookies.join("; "))?;
    }
    put("host", &ask.host)?;

    let snap = c.snapshot();
    let settings = crate::proxy::server::settings(&c).lanes;
    let resolved = lanes::resolve(&snap, &settings, &headers, &ask.host, ask.dst);
    let lane = resolved.lane.clone();
    let chain: Vec<String> = c
        .lanes
        .lock()
        .await
        .chain(&lane.name)
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let mut out = json!({
        "request": {"scheme": ask.scheme, "host": ask.host, "target": ask.target, "dst": ask.dst.map(|d| d.to_string())},
        "snapshot": snap.generation,
        "lane": {
            "name": &*lane.name,
            "source": resolved.source.as_str(),
            "strict": lane.strict,
            "chain": chain,
        },
        "rules_host": resolved.host,
        "host_recovered": resolved.host_recovered,
    });
    if let Some(entry) = resolved.free_entry {
        out["action"] = json!("free_entry");
        out["status"] = json!(421);
        out["why"] = json!(format!("{entry} is a lane entry that no lane holds"));
        return Ok(Json(out));
    }
    let info = RequestInfo {
        host: resolved.host,
        target: &ask.target,
        scheme: &ask.scheme,
        lane: &lane.name,
        headers: &headers,
    };
    match snap.rules.route(&info) {
        Decision::Proxy {
            server,
            location,
            service,
            upstream_target,
            set_headers,
            ..
        } => {
            where_matched(&mut out, server, location);
            out["action"] = json!("proxy");
            out["service"] = json!(&**service);
            out["upstream_target"] = json!(upstream_target.as_deref().unwrap_or(&ask.target));
            out["set_headers"] = Value::Array(
                set_headers
                    .iter()
                    .map(|(n, v)| json!({"name": n.as_str(), "value": v}))
                    .collect(),
            );
            match snap.target(&lane, service) {
                None => {
                    out["status"] = json!(503);
                    out["why"] = json!(format!("service \"{service}\" has no registered instance"));
                }
                Some(t) => version(&mut out, &c, &lane.name, t).await,
            }
        }
        Decision::Return {
            server,
            location,
            status,
            ..
        } => {
            where_matched(&mut out, server, location);
            out["action"] = json!("return");
            out["status"] = json!(status);
        }
        Decision::Redirect {
            server,
            location,
            status,
            to,
        } => {
            where_matched(&mut out, server, location);
            out["action"] = json!("redirect");
            out["status"] = json!(status);
            out["redirect_to"] = json!(to);
        }
        Decision::NotFound { host, path } => {
            out["action"] = json!("not_found");
            out["status"] = json!(404);
            out["why"] = json!(format!("no route for host \"{host}\" and path \"{path}\""));
        }
        Decision::BadRequest(why) => {
            out["action"] = json!("bad_request");
            out["status"] = json!(400);
            out["why"] = json!(why);
        }
    }
    Ok(Json(out))
}

fn where_matched(out: &mut Value, server: &Server, location: &Location) {
    out["server"] = json!({
        "names": server.names,
        "default": server.default,
        "file": server.file.display().to_string(),
        "line": server.line,
    });
    out["location"] = json!({
        "match": location.pattern,
        "kind": format!("{:?}", location.kind),
        "file": location.file.display().to_string(),
        "line": location.line,
    });
}

/// The version chosen, why, and the instances that would be tried.
async fn version(out: &mut Value, c: &Control, lane: &str, t: &Target) {
    out["version"] = json!(&*t.version);
    out["choice"] = json!(t.choice.as_str());
    out["served_by"] = json!(&*t.served_by);
    let why = match t.choice {
        Choice::Override => format!("lane \"{lane}\" overrides {} with {}", t.service, t.version),
        Choice::Inherited => format!(
            "lane \"{lane}\" inherits {} {} from its ancestor \"{}\"",
            t.service, t.version, t.served_by
        ),
        Choice::Fallback => format!(
            "the version lane \"{lane}\" asks for has no healthy instance; falls back to \"{}\"'s {} {}",
            t.served_by, t.service, t.version
        ),
        Choice::Baseline => format!(
            "no lane in the chain overrides {}: the baseline's {}",
            t.service, t.version
        ),
    };
    match &t.pool {
        Ok(pool) => {
            out["status"] = json!("proxied");
            out["why"] = json!(why);
            out["instances"] = Value::Array(
                pool.instances
                    .iter()
                    .map(|u| json!({"id": &*u.id, "address": u.addr.to_string(), "weight": u.weight}))
                    .collect(),
            );
        }
        Err(msg) => {
            out["status"] = json!(503);
            out["why"] = json!(&**msg);
        }
    }
    // Instances of the service that take no traffic, and why.
    let catalog = c.catalog().await;
    let left_out: Vec<Value> = catalog
        .instances
        .iter()
        .filter(|i| *i.service == *t.service && i.weight() == 0)
        .map(|i| {
            json!({
                "id": i.id, "version": i.version, "health": i.health.as_str(),
                "reason": if i.health == Health::Critical { "critical" } else { "weight 0" },
            })
        })
        .collect();
    out["not_routed"] = Value::Array(left_out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse() {
        let a = Ask::parse("url=http%3A%2F%2Fbj.example.com%2Fuser%2F1%3Fx%3D1&lane=t-1&header=X-A:%201&cookie=a%3Db&dst=127.0.0.5:80").unwrap();
        assert_eq!(a.scheme, "http");
        assert_eq!(a.host, "bj.example.com");
        assert_eq!(a.target, "/user/1?x=1");
        assert_eq!(a.lane.as_deref(), Some("t-1"));
        assert_eq!(a.headers, vec![("X-A".to_string(), "1".to_string())]);
        assert_eq!(a.cookies, vec!["a=b".to_string()]);
        assert_eq!(a.dst, Some("127.0.0.5:80".parse().unwrap()));
        let a = Ask::parse("url=https://a.example.com").unwrap();
        assert_eq!((a.scheme.as_str(), a.target.as_str()), ("https", "/"));
        let a = Ask::parse("url=/p?q&host=h.example.com").unwrap();
        assert_eq!(
            (a.host.as_str(), a.target.as_str()),
            ("h.example.com", "/p?q")
        );
        for bad in [
            "",
            "url=ftp:x",
            "url=/p",
            "url=http://h/&header=nocolon",
            "url=http://h/&dst=x",
            "url=http://h/&bogus=1",
        ] {
            assert!(Ask::parse(bad).is_err(), "{bad}");
        }
    }
}
