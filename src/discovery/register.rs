//! Parses the body of Consul's `PUT /v1/agent/service/register` into an
//! [`Instance`], so deploy tooling written for Consul can target the
//! embedded registry unchanged. Control plane only (admin API handler).
//!
//! Faithful to Consul: `Name` is required and `ID` defaults to it; unknown
//! fields (`Kind`, `EnableTagOverride`, `TaggedAddresses`, `Proxy`,
//! `Connect`, `Namespace`, …) are ignored; top-level and check keys also
//! match in lowercase and snake_case, as Consul's decoder does; `Meta` is
//! validated with Consul's rules (≤ 64 pairs, keys `[A-Za-z0-9_-]` ≤ 128
//! chars without the reserved `consul-` prefix, values ≤ 512 chars);
//! `Weights` absent means 1/1, and a given `Weights` object is taken as is
//! (a missing `Passing` is 0 and rejected, a missing `Warning` is 0); check
//! validation mirrors Consul's `CheckType.Validate`; default check IDs are
//! `service:<ID>`, or `service:<ID>:<n>` (1-based over `Check` then
//! `Checks`) when the registration has more than one check; an empty
//! `Check` object is ignored; durations are Go strings (`"10s"`,
//! `"1m30s"`) or numbers of nanoseconds.
//!
//! Deliberate differences:
//! HTTP, TCP and TTL checks start `critical` (or their `Status`) until they
//! first run or get an update, as in Consul; [`checks`](super::checks) runs
//! them. `Method`, `Header`, `Body`, `TLSSkipVerify`, `Timeout`,
//! `SuccessBeforePassing`, `FailuresBeforeCritical`/`Warning` and
//! `DeregisterCriticalServiceAfter` are kept with the check.
//!
//! Deliberate differences:
//! - gRPC, script, alias, H2PING, UDP and OS service checks are accepted but
//!   not run: they start `passing` (or their `Status`) and change only
//!   through `/v1/agent/check/pass|warn|fail|update`.
//! - An HTTP or TCP check must target its own instance: the host of its URL
//!   or address is the instance's `Address`, or both are loopback
//!   ([`check_target`]); anything else is refused, so registering a check
//!   cannot make laneway probe arbitrary hosts.
//! - `Port` must be 1–65535 and `Address` must be set: laneway routes to
//!   `Address:Port`, and embedded mode has no node address to fall back to.
//! - Names, IDs and check IDs with whitespace or control characters are
//!   rejected (Consul accepts them with a DNS warning); they appear in URLs,
//!   lane maps, metric labels and logs.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_json::Value;

use super::{CheckKind, CheckRun, CheckSpec, CheckState, Health, Instance, Probe};

/// Why a register body was rejected. Every message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The body is not JSON.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON, but a value has the wrong type (or a key appears twice).
    #[error("unexpected value at line {line} column {column}: {message}")]
    Shape {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("missing \"{field}\": {hint}")]
    Missing {
        field: &'static str,
        hint: &'static str,
    },
    #[error("\"{field}\" {problem}")]
    Invalid { field: String, problem: String },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> RegisterError {
    RegisterError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a JSON object describing the service")]
struct Body {
    #[serde(rename = "Name", alias = "name")]
    name: Option<String>,
    #[serde(rename = "ID", alias = "Id", alias = "id")]
    id: Option<String>,
    #[serde(rename = "Tags", alias = "tags")]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", alias = "address")]
    address: Option<String>,
    #[serde(rename = "Port", alias = "port")]
    port: Option<Value>,
    #[serde(rename = "Meta", alias = "meta")]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", alias = "weights")]
    weights: Option<WeightsBody>,
    #[serde(rename = "Check", alias = "check")]
    check: Option<CheckBody>,
    #[serde(rename = "Checks", alias = "checks")]
    checks: Option<Vec<CheckBody>>,
}

#[derive(Deserialize)]
#[serde(expecting = "an object {\"Passing\": n, \"Warning\": n}")]
struct WeightsBody {
    #[serde(rename = "Passing", alias = "passing")]
    passing: Option<Value>,
    #[serde(rename = "Warning", alias = "warning")]
    warning: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(expecting = "a check object")]
struct CheckBody {
    #[serde(
        rename = "CheckID",
        alias = "CheckId",
        alias = "check_id",
        alias = "checkid"
    )]
    check_id: Option<String>,
    #[serde(rename = "Name", alias = "name")]
    name: Option<String>,
    #[serde(rename = "Status", alias = "status")]
    status: Option<String>,
    #[serde(rename = "Notes", alias = "notes")]
    notes: Option<String>,
    #[serde(rename = "HTTP", alias = "http", alias = "Http")]
    http: Option<String>,
    #[serde(rename = "TCP", alias = "tcp", alias = "Tcp")]
    tcp: Option<String>,
    #[serde(rename = "UDP", alias = "udp", alias = "Udp")]
    udp: Option<String>,
    #[serde(rename = "GRPC", alias = "grpc", alias = "Grpc")]
    grpc: Option<String>,
    #[serde(rename = "H2PING", alias = "h2ping", alias = "H2Ping")]
    h2ping: Option<String>,
    #[serde(rename = "OSService", alias = "os_service")]
    os_service: Option<String>,
    #[serde(
        rename = "Args",
        alias = "args",
        alias = "ScriptArgs",
        alias = "script_args"
    )]
    args: Option<Vec<String>>,
    #[serde(rename = "AliasService", alias = "alias_service")]
    alias_service: Option<String>,
    #[serde(rename = "AliasNode", alias = "alias_node")]
    alias_node: Option<String>,
    #[serde(rename = "TTL", alias = "ttl", alias = "Ttl")]
    ttl: Option<Value>,
    #[serde(rename = "Interval", alias = "interval")]
    interval: Option<Value>,
    #[serde(rename = "Timeout", alias = "timeout")]
    timeout: Option<Value>,
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        alias = "deregister_critical_service_after"
    )]
    deregister_critical_service_after: Option<Value>,
    #[serde(rename = "Method", alias = "method")]
    method: Option<String>,
    #[serde(rename = "Header", alias = "header")]
    header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(rename = "Body", alias = "body")]
    http_body: Option<String>,
    #[serde(
        rename = "TLSSkipVerify",
        alias = "tls_skip_verify",
        alias = "tlsskipverify"
    )]
    tls_skip_verify: Option<bool>,
    #[serde(
        rename = "SuccessBeforePassing",
        alias = "success_before_passing",
        alias = "successbeforepassing"
    )]
    success_before_passing: Option<Value>,
    #[serde(
        rename = "FailuresBeforeCritical",
        alias = "failures_before_critical",
        alias = "failuresbeforecritical"
    )]
    failures_before_critical: Option<Value>,
    #[serde(
        rename = "FailuresBeforeWarning",
        alias = "failures_before_warning",
        alias = "failuresbeforewarning"
    )]
    failures_before_warning: Option<Value>,
    /// `PUT /v1/agent/check/register` only: the check's ID (`CheckID` is
    /// the spelling inside a service registration).
    #[serde(rename = "ID", alias = "Id", alias = "id")]
    id: Option<String>,
    /// `PUT /v1/agent/check/register` only: the service it belongs to.
    #[serde(
        rename = "ServiceID",
        alias = "ServiceId",
        alias = "service_id",
        alias = "serviceid"
    )]
    service_id: Option<String>,
}

fn set(s: &Option<String>) -> bool {
    s.as_deref().is_some_and(|s| !s.is_empty())
}

fn given(v: &Option<Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

impl CheckBody {
    /// Consul ignores a `Check` with no field set (`CheckType.Empty`).
    fn is_empty(&self) -> bool {
        ![
            &self.check_id,
            &self.name,
            &self.status,
            &self.notes,
            &self.http,
            &self.tcp,
            &self.udp,
            &self.grpc,
            &self.h2ping,
            &self.os_service,
            &self.alias_service,
            &self.alias_node,
        ]
        .into_iter()
        .any(set)
            && self.args.as_ref().is_none_or(Vec::is_empty)
            && ![
                &self.ttl,
                &self.interval,
                &self.timeout,
                &self.deregister_critical_service_after,
            ]
            .into_iter()
            .any(given)
    }
}

/// Parses a register body. `version_key` and `lane_key` name the `Meta` key
/// (or the `key=value` tag) that carries an instance's version and lane.
pub fn parse_registration(
    body: &[u8],
    version_key: &str,
    lane_key: &str,
) -> Result<Instance, RegisterError> {
    let raw: Body = serde_json::from_slice(body).map_err(json_error)?;
    let service = match raw.name {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(RegisterError::Missing {
                field: "Name",
                hint: "a registration must name its service",
            })
        }
    };
    check_name("Name", &service)?;
    let id = match raw.id {
        Some(id) if !id.is_empty() => id,
        _ => service.clone(),
    };
    check_name("ID", &id)?;
    let address = address(raw.address)?;
    let port = port(raw.port)?;
    let (weight_passing, weight_warning) = weights(raw.weights)?;
    let meta = raw.meta.unwrap_or_default();
    check_meta(&meta)?;
    let tags = raw.tags.unwrap_or_default();
    let version = label(&meta, &tags, version_key);
    let lane = label(&meta, &tags, lane_key);
    let checks = checks(&id, &service, raw.check, raw.checks.unwrap_or_default())?;
    let mut instance = Instance {
        id,
        service,
        address,
        port,
        version,
        lane,
        tags,
        meta,
        weight_passing,
        weight_warning,
        health: Health::Passing,
        checks,
    };
    for check in &instance.checks {
        check_target(&instance, check)?;
    }
    instance.refresh_health();
    Ok(instance)
}

fn json_error(e: serde_json::Error) -> RegisterError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    match e.classify() {
        serde_json::error::Category::Data => RegisterError::Shape {
            line,
            column,
            message,
        },
        _ => RegisterError::Json {
            line,
            column,
            message,
        },
    }
}

/// Rejects whitespace and control characters in a name-like value.
fn check_name(field: &str, value: &str) -> Result<(), RegisterError> {
    match value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(invalid(
            field,
            format!(
                "{value:?} contains {c:?}; names may not contain whitespace or control characters \
                 (they appear in URLs, lane maps, metric labels and logs)"
            ),
        )),
        None => Ok(()),
    }
}

fn address(raw: Option<String>) -> Result<String, RegisterError> {
    let a = raw.unwrap_or_default();
    if a.is_empty() {
        return Err(invalid(
            "Address",
            "is empty: the embedded registry has no node address to fall back to \
             (Consul would use the agent's); set \"Address\" to the instance's IP or hostname",
        ));
    }
    if a.parse::<IpAddr>().is_ok() {
        return Ok(a);
    }
    let problem = if a.parse::<SocketAddr>().is_ok()
        || a.rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        format!("{a:?} includes a port; put the host in \"Address\" and the port in \"Port\"")
    } else if a.contains("://") {
        format!("{a:?} is a URL; expected an IP address or a hostname")
    } else if a.starts_with('[') {
        format!("{a:?}: write an IPv6 address without brackets")
    } else if a.len() > 253 {
        format!("is {} characters long; a hostname has at most 253", a.len())
    } else if let Some(c) = a
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        format!("{a:?} contains {c:?}; expected an IP address or a hostname")
    } else {
        return Ok(a);
    };
    Err(invalid("Address", problem))
}

fn port(raw: Option<Value>) -> Result<u16, RegisterError> {
    match raw {
        None | Some(Value::Null) => Err(invalid(
            "Port",
            "is missing: it must be 1-65535 (Consul allows no port, but laneway routes to Address:Port)",
        )),
        Some(v) => match v.as_u64() {
            Some(0) => Err(invalid(
                "Port",
                "must be 1-65535, got 0 (Consul allows 0, but laneway cannot route to port 0)",
            )),
            Some(p) => u16::try_from(p).map_err(|_| invalid("Port", format!("must be 1-65535, got {p}"))),
            None => Err(invalid("Port", format!("must be an integer 1-65535, got {v}"))),
        },
    }
}

fn weights(raw: Option<WeightsBody>) -> Result<(u32, u32), RegisterError> {
    let Some(w) = raw else {
        return Ok((1, 1));
    };
    let passing = weight("Weights.Passing", w.passing)?;
    if passing == 0 {
        return Err(invalid(
            "Weights.Passing",
            "must be at least 1, got 0 (a missing \"Passing\" counts as 0, as in Consul)",
        ));
    }
    Ok((passing, weight("Weights.Warning", w.warning)?))
}

fn weight(field: &str, raw: Option<Value>) -> Result<u32, RegisterError> {
    match raw {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_i64() {
            Some(n) if n < 0 => Err(invalid(field, format!("must not be negative, got {n}"))),
            Some(n) => u32::try_from(n).map_err(|_| invalid(field, format!("is too large: {n}"))),
            None => Err(invalid(field, format!("must be an integer, got {v}"))),
        },
    }
}

/// Consul's `ValidateServiceMetadata`.
fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), RegisterError> {
    if meta.len() > 64 {
        return Err(invalid(
            "Meta",
            format!("has {} pairs; Consul allows at most 64", meta.len()),
        ));
    }
    for (k, v) in meta {
        let problem = if k.is_empty() {
            "has an empty key".to_owned()
        } else if k.len() > 128 {
            format!("key {k:?} is longer than 128 characters")
        } else if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            format!("key {k:?} may contain only letters, digits, '_' and '-'")
        } else if k.starts_with("consul-") {
            format!("key {k:?}: the prefix \"consul-\" is reserved for Consul")
        } else if v.len() > 512 {
            format!("value of {k:?} is longer than 512 characters")
        } else {
            continue;
        };
        return Err(invalid("Meta", problem));
    }
    Ok(())
}

/// `meta[key]`, else the value of the first tag `key=value`; empty is none.
pub(crate) fn label(meta: &BTreeMap<String, String>, tags: &[String], key: &str) -> Option<String> {
    meta.get(key)
        .filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| {
            tags.iter().find_map(|t| {
                t.strip_prefix(key)?
                    .strip_prefix('=')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            })
        })
}

fn checks(
    id: &str,
    service: &str,
    check: Option<CheckBody>,
    list: Vec<CheckBody>,
) -> Result<Vec<CheckState>, RegisterError> {
    let mut defs: Vec<(String, CheckBody)> = Vec::with_capacity(list.len() + 1);
    if let Some(c) = check.filter(|c| !c.is_empty()) {
        defs.push(("Check".to_owned(), c));
    }
    defs.extend(
        list.into_iter()
            .enumerate()
            .map(|(i, c)| (format!("Checks[{i}]"), c)),
    );
    let many = defs.len() > 1;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(defs.len());
    for (n, (field, c)) in defs.into_iter().enumerate() {
        let default_id = match many {
            true => format!("service:{id}:{}", n + 1),
            false => format!("service:{id}"),
        };
        let check = one_check(&field, c, default_id, &format!("Service '{service}' check"))?;
        if !seen.insert(check.id.clone()) {
            return Err(invalid(
                format!("{field}.CheckID"),
                format!(
                    "{:?} is used by another check of this registration",
                    check.id
                ),
            ));
        }
        out.push(check);
    }
    Ok(out)
}

fn one_check(
    field: &str,
    c: CheckBody,
    default_id: String,
    default_name: &str,
) -> Result<CheckState, RegisterError> {
    let check_id = match c.check_id.as_deref() {
        Some(given) if !given.is_empty() => given.to_owned(),
        _ => default_id,
    };
    check_name(&format!("{field}.CheckID"), &check_id)?;
    let name = match c.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => default_name.to_owned(),
    };
    let ttl = duration(field, "TTL", &c.ttl)?.unwrap_or(0.0);
    let interval = duration(field, "Interval", &c.interval)?.unwrap_or(0.0);
    let timeout = duration(field, "Timeout", &c.timeout)?.unwrap_or(0.0);
    let deregister_after = duration(
        field,
        "DeregisterCriticalServiceAfter",
        &c.deregister_critical_service_after,
    )?
    .unwrap_or(0.0);
    let success_before_passing = count(field, "SuccessBeforePassing", &c.success_before_passing)?;
    let failures_before_critical =
        count(field, "FailuresBeforeCritical", &c.failures_before_critical)?;
    let failures_before_warning = match given(&c.failures_before_warning) {
        true => Some(count(
            field,
            "FailuresBeforeWarning",
            &c.failures_before_warning,
        )?),
        false => None,
    };

    // Consul's CheckType.Validate, in its order.
    let interval_check = c.args.as_ref().is_some_and(|a| !a.is_empty())
        || [&c.http, &c.tcp, &c.udp, &c.grpc, &c.h2ping, &c.os_service]
            .into_iter()
            .any(set);
    let alias = set(&c.alias_service) || set(&c.alias_node);
    let problem = if interval > 0.0 && ttl > 0.0 {
        Some("has both \"Interval\" and \"TTL\"; a check has one or the other")
    } else if interval_check && interval <= 0.0 {
        Some("needs an \"Interval\" > 0 (HTTP, TCP, UDP, gRPC, H2PING, script and OS service checks)")
    } else if interval_check && alias {
        Some("is an alias check and may not have an \"Interval\" check type")
    } else if alias && ttl > 0.0 {
        Some("is an alias check and may not have a \"TTL\"")
    } else if !interval_check && !alias && ttl <= 0.0 {
        Some("needs a \"TTL\" > 0, or \"HTTP\"/\"TCP\" with an \"Interval\"")
    } else {
        None
    };
    if let Some(p) = problem {
        return Err(invalid(field, p));
    }
    let kind = if set(&c.http) {
        CheckKind::Http
    } else if set(&c.tcp) {
        CheckKind::Tcp
    } else if interval_check || alias {
        CheckKind::Other
    } else {
        CheckKind::Ttl
    };
    let status = match c.status.as_deref() {
        Some(s) if !s.is_empty() => s
            .parse::<Health>()
            .map_err(|e| invalid(format!("{field}.Status"), format!("is invalid: {e}")))?,
        // Critical until the first run or TTL update, as in Consul.
        _ if matches!(kind, CheckKind::Ttl | CheckKind::Http | CheckKind::Tcp) => Health::Critical,
        // Not run by laneway: see the module doc.
        _ => Health::Passing,
    };
    let ms = |nanos: f64| (nanos / 1e6).round().max(1.0) as u64;
    let run = match kind {
        CheckKind::Http => Some(Probe::Http {
            url: c.http.unwrap_or_default(),
            method: c
                .method
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".to_owned()),
            header: c.header.unwrap_or_default(),
            body: c.http_body.unwrap_or_default(),
            tls_skip_verify: c.tls_skip_verify.unwrap_or(false),
        }),
        CheckKind::Tcp => Some(Probe::Tcp {
            address: c.tcp.unwrap_or_default(),
        }),
        _ => None,
    }
    .map(|probe| CheckRun {
        probe,
        interval_ms: ms(interval),
        timeout_ms: if timeout > 0.0 {
            ms(timeout)
        } else {
            DEFAULT_CHECK_TIMEOUT_MS
        },
    });
    if let Some(CheckRun {
        probe: Probe::Http { url, method, .. },
        ..
    }) = &run
    {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                format!("{field}.HTTP"),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(invalid(
                format!("{field}.Method"),
                format!("{method:?} is not an HTTP method"),
            ));
        }
    }
    Ok(CheckState {
        id: check_id,
        name,
        kind,
        status,
        output: String::new(),
        ttl_ms: (kind == CheckKind::Ttl).then(|| ms(ttl)),
        spec: CheckSpec {
            notes: c.notes.unwrap_or_default(),
            run,
            success_before_passing,
            failures_before_critical,
            failures_before_warning,
            deregister_after_ms: (deregister_after > 0.0).then(|| ms(deregister_after)),
        },
    })
}

/// Consul's default check timeout (10 s).
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 10_000;

/// A non-negative integer field such as `SuccessBeforePassing`; absent is 0.
fn count(check: &str, key: &str, v: &Option<Value>) -> Result<u32, RegisterError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                invalid(
                    format!("{check}.{key}"),
                    format!("must be a non-negative integer, got {v}"),
                )
            }),
    }
}

/// A check registered on its own (`PUT /v1/agent/check/register`).
#[derive(Debug)]
pub struct CheckRegistration {
    /// The instance it belongs to (`ServiceID`); laneway's embedded agent
    /// has no node, so a check without one is refused.
    pub service_id: String,
    pub check: CheckState,
}

/// Parses a `PUT /v1/agent/check/register` body: `Name` is required, `ID`
/// (or `CheckID`) defaults to it, `ServiceID` names the instance.
pub fn parse_check_registration(body: &[u8]) -> Result<CheckRegistration, RegisterError> {
    let raw: CheckBody = serde_json::from_slice(body).map_err(json_error)?;
    let name = match raw.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => {
            return Err(RegisterError::Missing {
                field: "Name",
                hint: "a check registration must name the check",
            })
        }
    };
    let service_id = match raw.service_id.as_deref() {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => {
            return Err(RegisterError::Missing {
                field: "ServiceID",
                hint: "laneway's embedded agent has no node of its own, so a check must belong to a registered service",
            })
        }
    };
    let default_id = match raw.id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => name.clone(),
    };
    let check = one_check("Check", raw, default_id, &name)?;
    Ok(CheckRegistration { service_id, check })
}

/// Laneway runs a check only against the instance it belongs to: the host
/// of an HTTP check's URL or a TCP check's address must be the instance's
/// `Address` (or both loopback), so that registering a check cannot make
/// laneway probe arbitrary hosts.
pub fn check_target(inst: &Instance, check: &CheckState) -> Result<(), RegisterError> {
    let Some(run) = &check.spec.run else {
        return Ok(());
    };
    let (field, host) = match &run.probe {
        Probe::Http { url, .. } => ("HTTP", url_host(url)),
        Probe::Tcp { address } => ("TCP", tcp_host(address)),
    };
    let host = host.unwrap_or_default();
    let same = host.eq_ignore_ascii_case(&inst.address)
        || (is_loopback(&host) && is_loopback(&inst.address));
    if same {
        return Ok(());
    }
    Err(invalid(
        format!("{} {field}", check.id),
        format!(
            "targets host {host:?}, but instance {:?} is at {:?}: laneway runs a check only against its own instance's address",
            inst.id, inst.address
        ),
    ))
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    Some(tcp_host(authority).unwrap_or_else(|| authority.to_owned()))
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn tcp_host(address: &str) -> Option<String> {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h.to_owned());
    }
    match address.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(h.to_owned())
        }
        _ => Some(address.to_owned()),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A duration field: a Go duration string or a number of nanoseconds.
/// Returns nanoseconds; absent, null or `""` is `None`.
fn duration(check: &str, key: &str, v: &Option<Value>) -> Result<Option<f64>, RegisterError> {
    let field = || format!("{check}.{key}");
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s)
            .map(Some)
            .map_err(|e| invalid(field(), e)),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(field(), format!("is not a number of nanoseconds: {n}"))),
        Some(other) => Err(invalid(
            field(),
            format!("must be a duration such as \"10s\", got {other}"),
        )),
    }
}

/// Parses Go's `time.ParseDuration` syntax (`"300ms"`, `"1.5h"`,
/// `"2h45m"`, `"-1s"`, `"0"`) into nanoseconds.
pub(crate) fn parse_go_duration(text: &str) -> Result<f64, String> {
    let bad = |why: &str| {
        format!("{text:?} is not a duration ({why}); use e.g. \"10s\", \"500ms\", \"1m30s\"")
    };
    let (sign, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (-1.0, &text[1..]),
        Some(b'+') => (1.0, &text[1..]),
        _ => (1.0, text),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad("expected a number"));
        }
        let value: f64 = num.parse().map_err(|_| bad("expected a number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        total += value * scale;
        rest = tail;
    }
    if total > i64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(sign * total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Instance, RegisterError> {
        parse_registration(body.as_bytes(), "version", "lane")
    }

    fn err(body: &str) -> String {
        parse(body).expect_err("should be rejected").to_string()
    }

    #[test]
    fn full_consul_body() {
        let inst = parse(
            r#"{
              "ID": "user-api-1", "Name": "user-api", "Tags": ["primary", "lane=t-42"],
              "Address": "10.1.2.3", "Port": 8080,
              "Meta": {"version": "v7", "team": "accounts"},
              "Weights": {"Passing": 10, "Warning": 2},
              "EnableTagOverride": false, "Kind": "", "Namespace": "default",
              "TaggedAddresses": {"lan": {"Address": "10.1.2.3", "Port": 8080}},
              "Connect": null, "Proxy": null, "SocketPath": "", "Locality": {"Region": "x"},
              "Checks": [
                {"Name": "http", "HTTP": "http://10.1.2.3:8080/health", "Interval": "10s",
                 "Timeout": "1s", "DeregisterCriticalServiceAfter": "90m", "Method": "GET",
                 "Header": {"X": ["y"]}, "TLSSkipVerify": true},
                {"CheckID": "user-api-1-ttl", "TTL": "30s", "Notes": "heartbeat"},
                {"TCP": "10.1.2.3:8080", "Interval": 5000000000, "Status": "warning"}
              ]
            }"#,
        )
        .expect("valid body");
        assert_eq!(
            (inst.id.as_str(), inst.service.as_str()),
            ("user-api-1", "user-api")
        );
        assert_eq!((inst.address.as_str(), inst.port), ("10.1.2.3", 8080));
        assert_eq!(inst.version.as_deref(), Some("v7"));
        assert_eq!(inst.lane.as_deref(), Some("t-42"));
        assert_eq!(inst.tags, vec!["primary", "lane=t-42"]);
        assert_eq!(inst.meta.get("team").map(String::as_str), Some("accounts"));
        assert_eq!((inst.weight_passing, inst.weight_warning), (10, 2));
        let ids: Vec<&str> = inst.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "service:user-api-1:1",
                "user-api-1-ttl",
                "service:user-api-1:3"
            ]
        );
        let statuses: Vec<Health> = inst.checks.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [Health::Critical, Health::Critical, Health::Warning],
            "critical until the first run, unless Status says otherwise"
        );
        assert_eq!(inst.checks[0].kind, CheckKind::Http);
        let run = inst.checks[0].spec.run.clone().expect("an HTTP check runs");
        assert_eq!((run.interval_ms, run.timeout_ms), (10_000, 1_000));
        assert_eq!(
            run.probe,
            Probe::Http {
                url: "http://10.1.2.3:8080/health".into(),
                method: "GET".into(),
                header: [("X".to_owned(), vec!["y".to_owned()])].into(),
                body: String::new(),
                tls_skip_verify: true,
            }
        );
        assert_eq!(inst.checks[0].spec.deregister_after_ms, Some(90 * 60_000));
        assert_eq!(inst.checks[1].spec.notes, "heartbeat");
        assert_eq!(
            inst.checks[2]
                .spec
                .run
                .as_ref()
                .map(|r| (&r.probe, r.timeout_ms)),
            Some((
                &Probe::Tcp {
                    address: "10.1.2.3:8080".into()
                },
                DEFAULT_CHECK_TIMEOUT_MS
            ))
        );
        assert_eq!(inst.checks[0].name, "http");
        assert_eq!(inst.checks[1].name, "Service 'user-api' check");
        assert_eq!(inst.checks[1].ttl_ms, Some(30_000));
        assert_eq!(inst.checks[2].kind, CheckKind::Tcp);
        assert_eq!(inst.health, Health::Critical, "worst check wins");
        assert_eq!(inst.weight(), 0);
    }

    #[test]
    fn minimal_body_defaults() {
        let inst =
            parse(r#"{"Name":"web","Address":"web-1.internal","Port":80,"Meta":null,"Tags":null}"#)
                .expect("valid");
        assert_eq!(inst.id, "web");
        assert!(inst.meta.is_empty() && inst.tags.is_empty() && inst.checks.is_empty());
        assert_eq!((inst.weight_passing, inst.weight_warning), (1, 1));
        assert_eq!(inst.health, Health::Passing);
        assert_eq!((inst.version, inst.lane), (None, None));
    }

    #[test]
    fn lowercase_keys_are_accepted() {
        let inst = parse(r#"{"name":"web","id":"web-2","address":"10.0.0.2","port":81,"check":{"ttl":"5s","status":"passing"}}"#)
            .expect("valid");
        assert_eq!((inst.id.as_str(), inst.port), ("web-2", 81));
        assert_eq!(inst.checks[0].id, "service:web-2");
        assert_eq!(inst.health, Health::Passing);
    }

    #[test]
    fn version_from_tag_when_meta_lacks_it() {
        let inst = parse(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Meta":{"other":"x"},"Tags":["versionx=no","version=v2","version=v3"]}"#)
            .expect("valid");
        assert_eq!(inst.version.as_deref(), Some("v2"));
        let inst = parse(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Meta":{"version":"v9"},"Tags":["version=v2"]}"#)
            .expect("valid");
        assert_eq!(inst.version.as_deref(), Some("v9"), "Meta wins over tags");
    }

    #[test]
    fn configured_label_keys_are_used() {
        let inst = parse_registration(
            br#"{"Name":"a","Address":"10.0.0.1","Port":1,"Meta":{"ver":"v5","version":"v1"},"Tags":["env=t-1"]}"#,
            "ver",
            "env",
        )
        .expect("valid");
        assert_eq!(
            (inst.version.as_deref(), inst.lane.as_deref()),
            (Some("v5"), Some("t-1"))
        );
    }

    #[test]
    fn single_check_and_checks_share_numbering() {
        let inst = parse(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Check":{"TTL":"1s"},"Checks":[{"TTL":"2s"}]}"#)
            .expect("valid");
        let ids: Vec<&str> = inst.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:a:1", "service:a:2"]);
        let inst =
            parse(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Check":{}}"#).expect("valid");
        assert!(inst.checks.is_empty(), "an empty Check is ignored");
    }

    #[test]
    fn missing_name() {
        assert_eq!(
            err(r#"{"Address":"10.0.0.1","Port":1}"#),
            "missing \"Name\": a registration must name its service"
        );
        assert!(err(r#"{"Name":"","Address":"10.0.0.1","Port":1}"#).starts_with("missing \"Name\""));
    }

    #[test]
    fn invalid_json_names_position() {
        let msg = err("{\"Name\" \"x\"}");
        assert!(
            msg.starts_with("invalid JSON at line 1 column 9: expected `:`"),
            "{msg}"
        );
        assert!(err("").starts_with("invalid JSON at line 1 column 0"));
        let msg = err("[]");
        assert!(
            msg.ends_with("expected a JSON object describing the service"),
            "{msg}"
        );
        let msg = err(r#"{"Name":"a","Tags":"x"}"#);
        assert!(
            msg.starts_with("unexpected value at line 1 column 22: invalid type: string"),
            "{msg}"
        );
    }

    #[test]
    fn port_must_be_routable() {
        let msg = err(r#"{"Name":"a","Address":"10.0.0.1","Port":0}"#);
        assert!(msg.starts_with("\"Port\" must be 1-65535, got 0"), "{msg}");
        assert!(err(r#"{"Name":"a","Address":"10.0.0.1"}"#).starts_with("\"Port\" is missing"));
        assert!(err(r#"{"Name":"a","Address":"10.0.0.1","Port":70000}"#).contains("got 70000"));
        assert!(err(r#"{"Name":"a","Address":"10.0.0.1","Port":-1}"#)
            .contains("integer 1-65535, got -1"));
        assert!(err(r#"{"Name":"a","Address":"10.0.0.1","Port":"80"}"#).contains("got \"80\""));
    }

    #[test]
    fn address_must_be_set_and_plain() {
        let msg = err(r#"{"Name":"a","Port":80}"#);
        assert!(
            msg.starts_with("\"Address\" is empty: the embedded registry has no node address"),
            "{msg}"
        );
        assert!(err(r#"{"Name":"a","Address":"","Port":80}"#).starts_with("\"Address\" is empty"));
        assert!(
            err(r#"{"Name":"a","Address":"10.0.0.1:80","Port":80}"#).contains("includes a port")
        );
        assert!(err(r#"{"Name":"a","Address":"host:80","Port":80}"#).contains("includes a port"));
        assert!(err(r#"{"Name":"a","Address":"http://host","Port":80}"#).contains("is a URL"));
        assert!(err(r#"{"Name":"a","Address":"a b","Port":80}"#).contains("contains ' '"));
        assert_eq!(
            parse(r#"{"Name":"a","Address":"::1","Port":80}"#).map(|i| i.address),
            Ok("::1".into())
        );
    }

    #[test]
    fn bad_status_is_rejected() {
        let msg =
            err(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Check":{"TTL":"5s","Status":"ok"}}"#);
        assert!(
            msg.starts_with("\"Check.Status\" is invalid: status \"ok\""),
            "{msg}"
        );
        let msg = err(
            r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Checks":[{"TTL":"5s"},{"TTL":"5s","Status":"Passing"}]}"#,
        );
        assert!(msg.starts_with("\"Checks[1].Status\""), "{msg}");
    }

    #[test]
    fn check_validation_mirrors_consul() {
        let base = |check: &str| {
            format!(r#"{{"Name":"a","Address":"10.0.0.1","Port":1,"Check":{check}}}"#)
        };
        assert!(err(&base(r#"{"HTTP":"http://x/"}"#)).contains("needs an \"Interval\""));
        assert!(
            err(&base(r#"{"TTL":"5s","Interval":"5s"}"#)).contains("both \"Interval\" and \"TTL\"")
        );
        assert!(err(&base(r#"{"Name":"only a name"}"#)).contains("needs a \"TTL\" > 0"));
        assert!(err(&base(r#"{"TTL":"5 s"}"#)).contains("\"Check.TTL\" \"5 s\" is not a duration"));
        assert!(err(&base(r#"{"TTL":"5s","Timeout":true}"#))
            .contains("\"Check.Timeout\" must be a duration"));
        let grpc = parse(&base(r#"{"GRPC":"10.0.0.1:9000","Interval":"1m30s"}"#)).expect("valid");
        assert_eq!(
            (grpc.checks[0].kind, grpc.checks[0].status),
            (CheckKind::Other, Health::Passing)
        );
        let dup = err(
            r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Checks":[{"CheckID":"c","TTL":"1s"},{"CheckID":"c","TTL":"1s"}]}"#,
        );
        assert!(
            dup.starts_with("\"Checks[1].CheckID\" \"c\" is used by another check"),
            "{dup}"
        );
    }

    #[test]
    fn weights_are_validated_like_consul() {
        let base =
            |w: &str| format!(r#"{{"Name":"a","Address":"10.0.0.1","Port":1,"Weights":{w}}}"#);
        assert!(err(&base(r#"{"Passing":0,"Warning":1}"#))
            .starts_with("\"Weights.Passing\" must be at least 1"));
        assert!(err(&base(r#"{"Warning":1}"#)).contains("a missing \"Passing\" counts as 0"));
        assert!(
            err(&base(r#"{"Passing":-3}"#)).starts_with("\"Weights.Passing\" must not be negative")
        );
        assert!(err(&base(r#"{"Passing":1,"Warning":-1}"#))
            .starts_with("\"Weights.Warning\" must not be negative"));
        assert!(err(&base(r#"{"Passing":1.5}"#)).contains("must be an integer"));
        let inst = parse(&base(r#"{"Passing":5}"#)).expect("valid");
        assert_eq!((inst.weight_passing, inst.weight_warning), (5, 0));
        let inst = parse(&base("null")).expect("valid");
        assert_eq!((inst.weight_passing, inst.weight_warning), (1, 1));
    }

    #[test]
    fn names_and_meta_are_validated() {
        assert!(err(r#"{"Name":"user api","Address":"10.0.0.1","Port":1}"#)
            .starts_with("\"Name\" \"user api\" contains ' '"));
        assert!(
            err(r#"{"Name":"a","ID":"a\n1","Address":"10.0.0.1","Port":1}"#).starts_with("\"ID\"")
        );
        assert!(
            err(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Meta":{"a.b":"x"}}"#)
                .contains("letters, digits")
        );
        assert!(
            err(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Meta":{"consul-x":"x"}}"#)
                .contains("reserved")
        );
        assert!(
            err(r#"{"Name":"a","Address":"10.0.0.1","Port":1,"Meta":{"v":1}}"#)
                .starts_with("unexpected value")
        );
    }

    #[test]
    fn checks_must_target_their_instance() {
        let body = |target: &str| {
            format!(
                r#"{{"Name":"a","Address":"127.0.0.1","Port":1,"Check":{{{target},"Interval":"1s"}}}}"#
            )
        };
        assert!(parse(&body(r#""HTTP":"http://127.0.0.1:1/h""#)).is_ok());
        assert!(parse(&body(r#""HTTP":"http://localhost:1/h""#)).is_ok());
        assert!(parse(&body(r#""TCP":"127.0.0.1:1""#)).is_ok());
        let msg = err(&body(r#""HTTP":"http://10.9.9.9/h""#));
        assert!(msg.contains("targets host \"10.9.9.9\""), "{msg}");
        assert!(err(&body(r#""TCP":"example.com:22""#)).contains("only against its own instance"));
        assert!(err(&body(r#""HTTP":"ftp://127.0.0.1/""#)).contains("not an http://"));
    }

    #[test]
    fn thresholds_are_kept() {
        let inst = parse(
            r#"{"Name":"a","Address":"127.0.0.1","Port":1,"Check":{"TCP":"127.0.0.1:1","Interval":"1s",
                "SuccessBeforePassing":2,"FailuresBeforeCritical":3,"FailuresBeforeWarning":1}}"#,
        )
        .expect("valid");
        let spec = &inst.checks[0].spec;
        assert_eq!(
            (
                spec.success_before_passing,
                spec.failures_before_critical,
                spec.failures_before_warning
            ),
            (2, 3, Some(1))
        );
        assert!(err(r#"{"Name":"a","Address":"127.0.0.1","Port":1,"Check":{"TTL":"1s","SuccessBeforePassing":-1}}"#)
            .contains("non-negative"));
    }

    #[test]
    fn check_registration_body() {
        // what py-consul sends for agent.check.register(...)
        let reg = parse_check_registration(
            br#"{"name":"web-alive","http":"http://127.0.0.1:8080/","interval":"5s","id":"web-alive-1","notes":"n","serviceid":"web-1"}"#,
        )
        .expect("valid");
        assert_eq!(reg.service_id, "web-1");
        assert_eq!(
            (reg.check.id.as_str(), reg.check.name.as_str()),
            ("web-alive-1", "web-alive")
        );
        assert_eq!(reg.check.kind, CheckKind::Http);
        let reg = parse_check_registration(br#"{"Name":"beat","TTL":"10s","ServiceID":"web-1"}"#)
            .expect("valid");
        assert_eq!(reg.check.id, "beat", "ID defaults to the name");
        let msg = parse_check_registration(br#"{"Name":"beat","TTL":"10s"}"#)
            .expect_err("no service")
            .to_string();
        assert!(msg.starts_with("missing \"ServiceID\""), "{msg}");
        assert!(parse_check_registration(br#"{"TTL":"10s","ServiceID":"x"}"#).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(0.0));
        assert_eq!(parse_go_duration("1m30s"), Ok(90e9));
        assert_eq!(parse_go_duration("1.5h"), Ok(5400e9));
        assert_eq!(parse_go_duration("300ms"), Ok(300e6));
        assert_eq!(parse_go_duration("-2s"), Ok(-2e9));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("5d").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("1..2s").is_err());
    }
}
