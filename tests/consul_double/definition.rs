//! Service and check definitions as `/v1/agent/service/register` takes
//! them, parsed and validated with Consul's rules and error texts. Bodies
//! are read like Consul reads them: field names match case-insensitively,
//! `snake_case` aliases work, and `null` counts as absent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::duration::parse_go;
use super::http::ApiError;
use super::state::{Probe, Service, Status, Weights};

/// Consul raises shorter HTTP/TCP check intervals to this.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Consul's default HTTP/TCP check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A service registration body, parsed and validated.
pub struct ServiceDef {
    pub service: Service,
    pub checks: Vec<CheckDef>,
}

pub struct CheckDef {
    pub id: Option<String>,
    pub name: Option<String>,
    pub notes: String,
    pub status: Option<Status>,
    pub probe: Probe,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub deregister_after: Option<Duration>,
}

impl ServiceDef {
    /// Parses a `/v1/agent/service/register` body with Consul's validation
    /// and error texts.
    pub fn parse(body: &Value) -> Result<ServiceDef, ApiError> {
        let f = Fields::of(body)?;
        let name = f.string("Name")?.unwrap_or_default();
        if name.is_empty() {
            return Err(ApiError::bad_request("Missing service name"));
        }
        let id = f
            .string("ID")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| name.clone());
        let address = f.string("Address")?.unwrap_or_default();
        let port = match f.get("Port") {
            None => 0,
            Some(v) => v
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| decode_error("Port", "a port number"))?,
        };
        let tags = f.strings("Tags")?;
        let meta = match f.get("Meta") {
            None => None,
            Some(Value::Object(m)) => Some(
                m.iter()
                    .map(|(k, v)| {
                        v.as_str()
                            .map(|s| (k.clone(), s.to_string()))
                            .ok_or_else(|| decode_error("Meta", "string values"))
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()?,
            ),
            Some(_) => return Err(decode_error("Meta", "an object")),
        };
        let weights = match f.get("Weights") {
            None => Weights {
                passing: 1,
                warning: 1,
            },
            Some(v) => {
                let w = Fields::of(v)?;
                let int = |k: &str| {
                    w.get(k).map_or(Ok(0), |v| {
                        v.as_i64().ok_or_else(|| decode_error(k, "an integer"))
                    })
                };
                let weights = Weights {
                    passing: int("Passing")?,
                    warning: int("Warning")?,
                };
                if weights.passing < 1 {
                    return Err(ApiError::bad_request(
                        "Invalid Weights: Passing must be greater than 0",
                    ));
                }
                if weights.warning < 0 {
                    return Err(ApiError::bad_request(
                        "Invalid Weights: Warning must be greater or equal than 0",
                    ));
                }
                weights
            }
        };
        let mut tagged_addresses = BTreeMap::new();
        if let Some(v) = f.get("TaggedAddresses") {
            let Value::Object(m) = v else {
                return Err(decode_error("TaggedAddresses", "an object"));
            };
            for (k, a) in m {
                let a = Fields::of(a)?;
                let addr = a.string("Address")?.unwrap_or_default();
                let p = a.get("Port").and_then(Value::as_u64).unwrap_or(0);
                tagged_addresses.insert(k.clone(), (addr, u16::try_from(p).unwrap_or(0)));
            }
        }
        // The agent adds lan/wan tagged addresses for an IP service address.
        if let Ok(ip) = address.parse::<IpAddr>() {
            let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
            for net in ["lan", "wan"] {
                tagged_addresses
                    .entry(format!("{net}_{family}"))
                    .or_insert_with(|| (address.clone(), port));
            }
        }
        let enable_tag_override = f
            .get("EnableTagOverride")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut checks = Vec::new();
        if let Some(c) = f.get("Check") {
            checks.extend(CheckDef::parse(c)?);
        }
        match f.get("Checks") {
            None => {}
            Some(Value::Array(list)) => {
                for c in list {
                    checks.extend(CheckDef::parse(c)?);
                }
            }
            Some(_) => return Err(decode_error("Checks", "an array")),
        }
        Ok(ServiceDef {
            service: Service {
                node: String::new(),
                id,
                name,
                tags,
                address,
                port,
                meta,
                weights,
                tagged_addresses,
                enable_tag_override,
                create_index: 0,
                modify_index: 0,
            },
            checks,
        })
    }
}

impl CheckDef {
    /// `None` for an empty definition, which Consul ignores.
    fn parse(v: &Value) -> Result<Option<CheckDef>, ApiError> {
        let f = Fields::of(v)?;
        if f.is_empty() {
            return Ok(None);
        }
        for unsupported in [
            "Args",
            "ScriptArgs",
            "GRPC",
            "H2PING",
            "DockerContainerID",
            "AliasService",
            "AliasNode",
            "UDP",
            "OSService",
        ] {
            if f.get(unsupported).is_some() {
                return Err(ApiError::bad_request(format!(
                    "consul double: {unsupported} checks are not supported (HTTP, TCP and TTL are)"
                )));
            }
        }
        let status = match f.string("Status")?.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(Status::parse(&s).ok_or_else(|| {
                ApiError::bad_request("Status for checks must 'passing', 'warning', 'critical'")
            })?),
        };
        let http = f.string("HTTP")?.filter(|s| !s.is_empty());
        let tcp = f.string("TCP")?.filter(|s| !s.is_empty());
        let ttl = f.duration("TTL")?.filter(|d| !d.is_zero());
        let interval = f.duration("Interval")?.filter(|d| !d.is_zero());
        let interval_check = http.is_some() || tcp.is_some();
        let invalid = |why: &str| ApiError::bad_request(format!("Invalid check: {why}"));
        if interval.is_some() && ttl.is_some() {
            return Err(invalid("Interval and TTL cannot both be specified"));
        }
        if interval_check && interval.is_none() {
            return Err(invalid(
                "Interval must be > 0 for Script, HTTP, H2PING, or TCP checks",
            ));
        }
        if !interval_check && ttl.is_none() {
            return Err(invalid("TTL must be > 0 for TTL checks"));
        }
        let probe = match (http, tcp, ttl) {
            (Some(url), _, _) => {
                let mut headers = Vec::new();
                if let Some(Value::Object(h)) = f.get("Header") {
                    for (k, vals) in h {
                        for v in vals.as_array().into_iter().flatten() {
                            headers.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
                        }
                    }
                }
                let method = f
                    .string("Method")?
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "GET".into());
                Probe::Http {
                    url,
                    method,
                    headers,
                }
            }
            (None, Some(addr), _) => Probe::Tcp(addr),
            (None, None, Some(ttl)) => Probe::Ttl(ttl),
            (None, None, None) => return Err(invalid("TTL must be > 0 for TTL checks")),
        };
        let (interval, timeout) = match probe {
            Probe::Ttl(_) => (None, None),
            _ => (
                interval.map(|i| i.max(MIN_INTERVAL)),
                Some(
                    f.duration("Timeout")?
                        .filter(|d| !d.is_zero())
                        .unwrap_or(DEFAULT_TIMEOUT),
                ),
            ),
        };
        Ok(Some(CheckDef {
            id: f
                .string("CheckID")?
                .or(f.string("ID")?)
                .filter(|s| !s.is_empty()),
            name: f.string("Name")?.filter(|s| !s.is_empty()),
            notes: f.string("Notes")?.unwrap_or_default(),
            status,
            probe,
            interval,
            timeout,
            deregister_after: f.duration("DeregisterCriticalServiceAfter")?,
        }))
    }
}

fn decode_error(field: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Request decode failed: {field}: expected {expected}"
    ))
}

/// A JSON object's fields, looked up as Go's decoder and Consul's key
/// translation do: case-insensitive, `snake_case` accepted, `null` absent.
pub struct Fields<'a>(Vec<(String, &'a Value)>);

impl<'a> Fields<'a> {
    pub fn of(v: &'a Value) -> Result<Fields<'a>, ApiError> {
        match v {
            Value::Null => Ok(Fields(Vec::new())),
            Value::Object(m) => Ok(Fields(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (normalize(k), v))
                    .collect(),
            )),
            _ => Err(ApiError::bad_request(
                "Request decode failed: expected a JSON object",
            )),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        let name = normalize(name);
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(decode_error(name, "a string")),
        }
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| decode_error(name, "strings"))
                })
                .collect(),
            Some(_) => Err(decode_error(name, "an array of strings")),
        }
    }

    /// A Go duration string, or a number of nanoseconds.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => parse_go(s).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Request decode failed: {name}: time: invalid duration {s:?}"
                ))
            }),
            Some(Value::Number(n)) => Ok(n.as_u64().map(Duration::from_nanos)),
            Some(_) => Err(decode_error(name, "a duration")),
        }
    }
}

fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}
