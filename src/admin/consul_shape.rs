//! Consul's JSON shapes, errors and query parameters for the embedded
//! registry's agent, catalog and health endpoints: `AgentService`,
//! `HealthCheck`, `CatalogService`, the `{Node, Service, Checks}` health
//! entry, plain-text errors, the `?filter=` subset and blocking-query
//! parameters. Control plane only (admin API).
//!
//! Embedded mode has one node, this laneway: its name is the host name,
//! its address the admin listener's, its datacenter `dc1`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::discovery::{CheckState, Health, Instance};

/// The one datacenter of the embedded agent.
pub const DATACENTER: &str = "dc1";
/// The Consul version laneway's agent API follows (`/v1/agent/self`).
pub const CONSUL_VERSION: &str = "1.20.0";
/// Blocking queries: the wait when none is given, and its cap.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// A Consul-style error: a status and a plain-text body.
#[derive(Debug)]
pub struct ConsulError(pub StatusCode, pub String);

impl ConsulError {
    pub fn bad_request(msg: impl Into<String>) -> ConsulError {
        ConsulError(StatusCode::BAD_REQUEST, msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> ConsulError {
        ConsulError(StatusCode::NOT_FOUND, msg.into())
    }
}

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        (
            self.0,
            [("content-type", "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response()
    }
}

/// The agent's node, as the endpoints render it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub id: String,
    pub address: String,
}

impl Node {
    /// This laneway as a Consul node: host name, admin address.
    pub fn local(admin: std::net::SocketAddr) -> Node {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "laneway".to_owned());
        let ip = match admin.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            ip => ip.to_string(),
        };
        Node {
            id: node_id(&name),
            name,
            address: ip,
        }
    }

    fn json(&self, index: u64) -> Value {
        json!({
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": self.tagged(),
            "Meta": { "consul-network-segment": "" },
            "CreateIndex": index,
            "ModifyIndex": index,
        })
    }

    fn tagged(&self) -> Value {
        json!({ "lan": self.address, "lan_ipv4": self.address, "wan": self.address, "wan_ipv4": self.address })
    }
}

/// A UUID-shaped id derived from the node name (stable for a host).
fn node_id(name: &str) -> String {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    ("laneway-node", name).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (name, "laneway-node").hash(&mut b);
    let hex = format!("{:016x}{:016x}", a.finish(), b.finish());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn weights(i: &Instance) -> Value {
    json!({ "Passing": i.weight_passing, "Warning": i.weight_warning })
}

/// `/v1/agent/services` values and `/v1/agent/service/<id>`.
pub fn agent_service(i: &Instance) -> Value {
    json!({
        "ID": i.id,
        "Service": i.service,
        "Tags": i.tags,
        "Meta": i.meta,
        "Port": i.port,
        "Address": i.address,
        "Weights": weights(i),
        "EnableTagOverride": false,
        "Datacenter": DATACENTER,
    })
}

/// A Go duration as Consul prints it (`10s`, `1m30s`, `500ms`).
pub fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (secs, frac) = (ms / 1000, ms % 1000);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let f = format!("{frac:03}");
        out.push_str(&format!("{s}.{}s", f.trim_end_matches('0')));
    }
    out
}

/// A `HealthCheck` of instance `i`.
pub fn health_check(node: &Node, i: &Instance, c: &CheckState, indexes: (u64, u64)) -> Value {
    let (interval, timeout) = match &c.spec.run {
        Some(r) => (go_duration(r.interval_ms), go_duration(r.timeout_ms)),
        None => (String::new(), String::new()),
    };
    json!({
        "Node": node.name,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.spec.notes,
        "Output": c.output,
        "ServiceID": i.id,
        "ServiceName": i.service,
        "ServiceTags": i.tags,
        "Type": c.kind.consul_type(),
        "Interval": interval,
        "Timeout": timeout,
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": indexes.0,
        "ModifyIndex": indexes.1,
    })
}

/// One element of `/v1/catalog/service/<name>`.
pub fn catalog_service(node: &Node, i: &Instance, indexes: (u64, u64)) -> Value {
    json!({
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": DATACENTER,
        "TaggedAddresses": node.tagged(),
        "NodeMeta": { "consul-network-segment": "" },
        "ServiceKind": "",
        "ServiceID": i.id,
        "ServiceName": i.service,
        "ServiceTags": i.tags,
        "ServiceAddress": i.address,
        "ServiceWeights": weights(i),
        "ServiceMeta": i.meta,
        "ServicePort": i.port,
        "ServiceEnableTagOverride": false,
        "ServiceProxy": { "MeshGateway": {}, "Expose": {} },
        "ServiceConnect": {},
        "CreateIndex": indexes.0,
        "ModifyIndex": indexes.1,
    })
}

/// One element of `/v1/health/service/<name>`: the node (with Consul's
/// node check `serfHealth`, always passing: the node is this laneway), the
/// service and its checks.
pub fn health_entry(node: &Node, i: &Instance, indexes: (u64, u64)) -> Value {
    let mut checks = vec![json!({
        "Node": node.name,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })];
    checks.extend(i.checks.iter().map(|c| health_check(node, i, c, indexes)));
    json!({
        "Node": node.json(1),
        "Service": {
            "ID": i.id,
            "Service": i.service,
            "Tags": i.tags,
            "Address": i.address,
            "Meta": i.meta,
            "Port": i.port,
            "Weights": weights(i),
            "EnableTagOverride": false,
            "Proxy": { "Mode": "", "MeshGateway": {}, "Expose": {} },
            "Connect": {},
            "CreateIndex": indexes.0,
            "ModifyIndex": indexes.1,
        },
        "Checks": checks,
    })
}

/// True when every check of a health entry is passing (`?passing`).
pub fn all_passing(entry: &Value) -> bool {
    entry["Checks"].as_array().is_some_and(|checks| {
        checks
            .iter()
            .all(|c| c["Status"].as_str() == Some(Health::Passing.as_str()))
    })
}

/// The query string as Consul reads it: repeated keys kept, `+` a space.
#[derive(Debug, Default)]
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    pub fn parse(raw: Option<&str>) -> QueryPairs {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        QueryPairs(
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Go's `strconv.ParseBool` for a flag: absent false, bare true.
    pub fn flag(&self, key: &str) -> Result<bool, ConsulError> {
        match self.get(key) {
            None | Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some(_) => Err(ConsulError::bad_request(format!(
                "Invalid value for ?{key}"
            ))),
        }
    }

    /// `?index=` and `?wait=` of a blocking query, with Consul's errors.
    pub fn blocking(&self) -> Result<(u64, Duration), ConsulError> {
        if self.get("stale").is_some() && self.get("consistent").is_some() {
            return Err(ConsulError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        let mut wait = DEFAULT_WAIT;
        if let Some(w) = self.get("wait").filter(|w| !w.is_empty()) {
            let nanos = crate::discovery::register::parse_go_duration(w)
                .map_err(|_| ConsulError::bad_request("Invalid wait time"))?;
            if nanos > 0.0 {
                wait = Duration::from_nanos(nanos as u64).min(MAX_WAIT);
            }
        }
        let mut index = 0;
        if let Some(text) = self.get("index").filter(|i| !i.is_empty()) {
            if !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConsulError::bad_request("Invalid index"));
            }
            index = text
                .parse()
                .map_err(|_| ConsulError::bad_request("Invalid index"))?;
        }
        // Consul adds up to wait/16 of jitter so that woken clients spread.
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        Ok((index, wait + jitter))
    }

    /// `?dc=`: only this agent's datacenter is served.
    pub fn datacenter(&self) -> Result<(), ConsulError> {
        match self.get("dc") {
            Some(dc) if !dc.is_empty() && dc != DATACENTER => Err(ConsulError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// The read headers Consul sends: `X-Consul-Index` (never 0),
/// `X-Consul-KnownLeader`, `X-Consul-LastContact`.
pub fn read_headers(index: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-consul-index", HeaderValue::from(index.max(1)));
    h.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    h.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    h
}

/// A JSON answer with read headers.
pub fn json_read(index: u64, body: Value) -> Response {
    (read_headers(index), axum::Json(body)).into_response()
}

/// The subset of Consul's `?filter=` language (go-bexpr) laneway
/// evaluates: `<Selector> == "v"`, `<Selector> != "v"`,
/// `<Selector> contains "v"`, `"v" in <Selector>`, `<Selector> is empty`,
/// `<Selector> is not empty`, joined by `and`. A selector is a dotted path
/// into the endpoint's JSON (`Service.Meta.version`, `ServiceTags`). `or`,
/// `not`, parentheses and other operators are refused with 400 rather than
/// silently matching everything.
#[derive(Debug, Default)]
pub struct Filter {
    conds: Vec<Cond>,
}

#[derive(Debug)]
enum Cond {
    Eq(Vec<String>, String, bool),
    Contains(Vec<String>, String),
    Empty(Vec<String>, bool),
}

impl Filter {
    /// Parses `?filter=` for items whose top-level fields are `fields`.
    pub fn parse(expr: Option<&str>, fields: &[&str]) -> Result<Filter, ConsulError> {
        let expr = expr.unwrap_or("").trim();
        let mut filter = Filter::default();
        if expr.is_empty() {
            return Ok(filter);
        }
        let refuse = |why: &str| {
            ConsulError::bad_request(format!(
                "Failed to create boolean expression evaluator: {why} in {expr:?} (laneway supports \
                 `Selector == \"v\"`, `!=`, `contains`, `\"v\" in Selector`, `is empty` and \
                 `is not empty`, joined by `and`)"
            ))
        };
        let tokens = tokenize(expr).map_err(|e| refuse(&e))?;
        for clause in tokens.split(|t| matches!(t, Tok::Word(w) if w == "and")) {
            let cond = parse_clause(clause).ok_or_else(|| refuse("unsupported condition"))?;
            let path = match &cond {
                Cond::Eq(p, _, _) | Cond::Contains(p, _) | Cond::Empty(p, _) => p,
            };
            if !path.first().is_some_and(|f| fields.contains(&f.as_str())) {
                return Err(ConsulError::bad_request(format!(
                    "Failed to create boolean expression evaluator: Selector {:?} is not valid",
                    path.join(".")
                )));
            }
            filter.conds.push(cond);
        }
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        self.conds.is_empty()
    }

    pub fn matches(&self, item: &Value) -> bool {
        let lookup = |path: &[String]| path.iter().try_fold(item, |v, k| v.get(k.as_str()));
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.conds.iter().all(|c| match c {
            Cond::Eq(p, want, equal) => lookup(p).is_some_and(|v| text(v) == *want) == *equal,
            Cond::Contains(p, want) => match lookup(p) {
                Some(Value::Array(a)) => a.iter().any(|x| text(x) == *want),
                Some(Value::Object(m)) => m.contains_key(want),
                Some(Value::String(s)) => s.contains(want.as_str()),
                _ => false,
            },
            Cond::Empty(p, empty) => {
                let is_empty = match lookup(p) {
                    None | Some(Value::Null) => true,
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Object(m)) => m.is_empty(),
                    Some(Value::String(s)) => s.is_empty(),
                    Some(_) => false,
                };
                is_empty == *empty
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(&'static str),
}

fn tokenize(expr: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '`' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some(q) if q == c => break,
                    Some('\\') if c == '"' => match chars.next() {
                        Some(e) => s.push(e),
                        None => return Err("unterminated string".into()),
                    },
                    Some(x) => s.push(x),
                }
            }
            out.push(Tok::Str(s));
        } else if c == '=' || c == '!' {
            chars.next();
            if chars.next() != Some('=') {
                return Err(format!("expected {c}="));
            }
            out.push(Tok::Op(if c == '=' { "==" } else { "!=" }));
        } else if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') {
            let mut w = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_alphanumeric() || matches!(x, '_' | '-' | '.') {
                    w.push(x);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(w));
        } else {
            return Err(format!("unexpected {c:?}"));
        }
    }
    Ok(out)
}

fn selector(w: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = w.split('.').map(str::to_owned).collect();
    let keyword = [
        "and", "or", "not", "in", "contains", "is", "empty", "matches",
    ];
    (!parts.iter().any(String::is_empty) && !keyword.contains(&w)).then_some(parts)
}

fn parse_clause(clause: &[Tok]) -> Option<Cond> {
    let word = |t: &Tok, w: &str| matches!(t, Tok::Word(x) if x == w);
    match clause {
        [Tok::Word(sel), Tok::Op(op), Tok::Str(v)] => {
            Some(Cond::Eq(selector(sel)?, v.clone(), *op == "=="))
        }
        [Tok::Word(sel), c, Tok::Str(v)] if word(c, "contains") => {
            Some(Cond::Contains(selector(sel)?, v.clone()))
        }
        [Tok::Str(v), i, Tok::Word(sel)] if word(i, "in") => {
            Some(Cond::Contains(selector(sel)?, v.clone()))
        }
        [Tok::Word(sel), is, e] if word(is, "is") && word(e, "empty") => {
            Some(Cond::Empty(selector(sel)?, true))
        }
        [Tok::Word(sel), is, n, e] if word(is, "is") && word(n, "not") && word(e, "empty") => {
            Some(Cond::Empty(selector(sel)?, false))
        }
        _ => None,
    }
}

/// Top-level fields each endpoint's filter may select.
pub const HEALTH_FIELDS: &[&str] = &["Node", "Service", "Checks"];
pub const CATALOG_FIELDS: &[&str] = &[
    "ID",
    "Node",
    "Address",
    "Datacenter",
    "TaggedAddresses",
    "NodeMeta",
    "ServiceKind",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "ServiceAddress",
    "ServiceWeights",
    "ServiceMeta",
    "ServicePort",
    "ServiceEnableTagOverride",
];
pub const AGENT_SERVICE_FIELDS: &[&str] = &[
    "ID",
    "Service",
    "Tags",
    "Meta",
    "Port",
    "Address",
    "Weights",
    "EnableTagOverride",
    "Datacenter",
];
pub const CHECK_FIELDS: &[&str] = &[
    "Node",
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "Type",
    "Interval",
    "Timeout",
];

/// Names → union of tags, in first-seen order (`/v1/catalog/services`).
pub fn services_map<'a>(items: impl Iterator<Item = &'a Instance>) -> Value {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in items {
        let tags = map.entry(i.service.as_str()).or_default();
        for t in &i.tags {
            if !tags.contains(&t.as_str()) {
                tags.push(t);
            }
        }
    }
    Value::Object(
        map.into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect::<Map<String, Value>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(10_000), "10s");
        assert_eq!(go_duration(90_000), "1m30s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(1_500), "1.5s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
    }

    #[test]
    fn filter_subset() {
        let entry =
            json!({"Service": {"Meta": {"version": "v2"}, "Tags": ["canary", "blue"], "Port": 80}});
        for expr in [
            r#"Service.Meta.version == "v2""#,
            r#"Service.Meta.version != "v1""#,
            r#"Service.Tags contains "canary""#,
            r#""blue" in Service.Tags"#,
            r#"Service.Port == "80""#,
            r#"Service.Meta.version == `v2` and Service.Tags contains "blue""#,
            "Service.Tags is not empty",
            "Service.Meta.missing is empty",
        ] {
            let f = Filter::parse(Some(expr), HEALTH_FIELDS).expect(expr);
            assert!(f.matches(&entry), "{expr}");
        }
        let f = Filter::parse(Some(r#"Service.Meta.version == "v1""#), HEALTH_FIELDS).expect("ok");
        assert!(!f.matches(&entry));
        for expr in [
            r#"Service.Meta.version == "v1" or Service.Tags contains "x""#,
            r#"not Service.Tags contains "x""#,
            r#"(Service.Port == "80")"#,
            r#"Service.Meta.version == "v1"#,
            r#"Bogus.Field == "x""#,
        ] {
            let e = Filter::parse(Some(expr), HEALTH_FIELDS).expect_err(expr);
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{expr}");
            assert!(e
                .1
                .starts_with("Failed to create boolean expression evaluator"));
        }
    }

    #[test]
    fn query_pairs_keep_repeats_and_parse_blocking() {
        let q = QueryPairs::parse(Some("tag=a&tag=b%20c&index=42&wait=2s&passing"));
        assert_eq!(q.all("tag"), ["a", "b c"]);
        assert_eq!(q.flag("passing").ok(), Some(true));
        let (index, wait) = q.blocking().expect("valid");
        assert_eq!(index, 42);
        assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_millis(2125));
        let q = QueryPairs::parse(Some("wait=1h"));
        assert!(q.blocking().expect("valid").1 <= MAX_WAIT + MAX_WAIT / 16);
        assert_eq!(
            QueryPairs::parse(Some("index=-1"))
                .blocking()
                .expect_err("bad")
                .1,
            "Invalid index"
        );
        assert_eq!(
            QueryPairs::parse(Some("wait=5x"))
                .blocking()
                .expect_err("bad")
                .1,
            "Invalid wait time"
        );
    }
}
