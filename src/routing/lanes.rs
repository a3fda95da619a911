//! Lane resolution on the request path: which lane a request wants, in the
//! order of DESIGN.md (header, W3C `baggage` member, cookie, hostname,
//! destination port, destination IP, baseline), and the production host
//! recovered from a lane hostname. Pure lookups on the snapshot; no
//! allocation (except [`baggage_with_lane`], which builds the upstream
//! `baggage` header).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::snapshot::{LaneView, Snapshot};
use crate::allocation::pools::{Pool as _, PortPool, VipPool};

/// Where lanes come from in requests (static for the life of the process).
#[derive(Debug, Clone)]
pub struct LaneSettings {
    pub header: HeaderName,
    pub cookie: String,
    /// `Max-Age` of the cookie the lane switch sets (`[lanes] cookie_max_age`).
    pub cookie_max_age: std::time::Duration,
    /// The W3C `baggage` member naming the lane (`laneway-lane`).
    pub baggage_key: String,
    /// Lowercase lane domain, e.g. `lanes.test`.
    pub domain: String,
    /// The VIP pool, to tell a free VIP from an address outside the pool.
    pub vip_pool: Option<Arc<VipPool>>,
    pub port_pool: Option<PortPool>,
}

/// How a request's lane was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneSource {
    Header,
    Baggage,
    Cookie,
    Hostname,
    Port,
    Vip,
    Default,
}

impl LaneSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LaneSource::Header => "header",
            LaneSource::Baggage => "baggage",
            LaneSource::Cookie => "cookie",
            LaneSource::Hostname => "hostname",
            LaneSource::Port => "port",
            LaneSource::Vip => "vip",
            LaneSource::Default => "default",
        }
    }
}

/// The outcome of lane resolution.
pub struct Resolved<'s, 'r> {
    /// Set when nothing named a lane and the connection came to a pool
    /// entry (VIP or port) that no lane holds: such a request must not be
    /// served by another lane.
    pub free_entry: Option<SocketAddr>,
    pub lane: &'s Arc<LaneView>,
    pub source: LaneSource,
    /// The host the production rules see: the request host, or the
    /// production host recovered from `<host>.<lane>.<domain>`.
    pub host: &'r str,
    /// True when `host` was recovered from a lane hostname.
    pub host_recovered: bool,
    /// The first lane named by the request that does not exist, and where
    /// it was named (a header, baggage member or cookie passed over, or a
    /// lane hostname that nothing before it overrode).
    pub unknown: Option<(LaneSource, &'r str)>,
}

/// Resolves the lane of a request. `host` is the request's host (Host header
/// or URI authority), possibly with a port; `dst` the address the client
/// connected to (a VIP or pool port selects a lane).
pub fn resolve<'s, 'r>(
    snap: &'s Snapshot,
    settings: &LaneSettings,
    headers: &'r HeaderMap,
    host: &'r str,
    dst: Option<SocketAddr>,
) -> Resolved<'s, 'r> {
    let from_host = lane_host(snap, &settings.domain, host);
    let (host_out, recovered) = match &from_host {
        HostLane::Known(_, Some(production)) => (*production, true),
        _ => (host, false),
    };
    let mut unknown: Option<(LaneSource, &'r str)> = None;
    let pick = |lane: &'s Arc<LaneView>, source, unknown| Resolved {
        free_entry: None,
        lane,
        source,
        host: host_out,
        host_recovered: recovered,
        unknown,
    };

    for value in headers.get_all(&settings.header) {
        let Some(name) = value.to_str().ok().map(str::trim) else {
            continue;
        };
        match snap.lane(name) {
            Some(lane) => return pick(lane, LaneSource::Header, unknown),
            None if !name.is_empty() && unknown.is_none() => {
                unknown = Some((LaneSource::Header, name));
            }
            None => {}
        }
    }
    if let Some(name) = baggage_value(headers, &settings.baggage_key) {
        match snap.lane(name) {
            Some(lane) => return pick(lane, LaneSource::Baggage, unknown),
            None => {
                unknown.get_or_insert((LaneSource::Baggage, name));
            }
        }
    }
    if let Some(name) = cookie_value(headers, &settings.cookie) {
        match snap.lane(name) {
            Some(lane) => return pick(lane, LaneSource::Cookie, unknown),
            None if !name.is_empty() => {
                unknown.get_or_insert((LaneSource::Cookie, name));
            }
            None => {}
        }
    }
    match from_host {
        HostLane::Known(lane, _) => return pick(lane, LaneSource::Hostname, unknown),
        HostLane::Unknown(name) => {
            if let Some(lane) = snap.lane_by_hostname(&lowercase_name(host)) {
                return pick(lane, LaneSource::Hostname, unknown);
            }
            // a lane hostname of no lane: never served by the baseline
            return pick(
                snap.baseline(),
                LaneSource::Default,
                Some((LaneSource::Hostname, name)),
            );
        }
        HostLane::None => {}
    }
    if let Some(lane) = snap.lane_by_hostname(strip_port(host).trim_end_matches('.')) {
        return pick(lane, LaneSource::Hostname, unknown);
    }
    if let Some(dst) = dst {
        if let Some(lane) = snap.lane_by_port(dst.port()) {
            return pick(lane, LaneSource::Port, unknown);
        }
        if let Some(lane) = snap.lane_by_vip(dst.ip()) {
            return pick(lane, LaneSource::Vip, unknown);
        }
        let free_port = settings.port_pool.is_some_and(|p| p.contains(dst.port()));
        let free_vip = settings
            .vip_pool
            .as_ref()
            .is_some_and(|p| p.contains(dst.ip()));
        if free_port || free_vip {
            let mut r = pick(snap.baseline(), LaneSource::Default, unknown);
            r.free_entry = Some(dst);
            return r;
        }
    }
    pick(snap.baseline(), LaneSource::Default, unknown)
}

/// What a host under the lane domain names.
enum HostLane<'s, 'r> {
    /// `<lane>.<domain>` or `<production-host>.<lane>.<domain>` of a known
    /// lane: that lane and the production host, if any.
    Known(&'s Arc<LaneView>, Option<&'r str>),
    /// The same shape naming a lane that does not exist: its label.
    Unknown(&'r str),
    /// Not under the lane domain.
    None,
}

/// `host` without port and trailing dot, lowercased (off the common path:
/// only for hosts under the lane domain).
fn lowercase_name(host: &str) -> String {
    strip_port(host).trim_end_matches('.').to_ascii_lowercase()
}

fn lane_host<'s, 'r>(snap: &'s Snapshot, domain: &str, host: &'r str) -> HostLane<'s, 'r> {
    let name = strip_port(host).trim_end_matches('.');
    if name.len() <= domain.len() + 1 {
        return HostLane::None;
    }
    let split = name.len() - domain.len();
    if !name.is_char_boundary(split - 1)
        || !name[split..].eq_ignore_ascii_case(domain)
        || name.as_bytes()[split - 1] != b'.'
    {
        return HostLane::None;
    }
    let prefix = &name[..split - 1];
    let (production, lane_label) = match prefix.rfind('.') {
        Some(dot) => (Some(&prefix[..dot]), &prefix[dot + 1..]),
        None => (None, prefix),
    };
    let lane = if lane_label.bytes().any(|b| b.is_ascii_uppercase()) {
        snap.lane(&lane_label.to_ascii_lowercase())
    } else {
        snap.lane(lane_label)
    };
    match lane {
        Some(lane) => HostLane::Known(lane, production.filter(|p| !p.is_empty())),
        None if lane_label.is_empty() => HostLane::None,
        None => HostLane::Unknown(lane_label),
    }
}

/// `host` without a trailing `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'r>(headers: &'r HeaderMap, name: &str) -> Option<&'r str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// The value of member `key` in the request's W3C `baggage` headers
/// (`key1=value1;property, key2=value2`), properties left out.
pub fn baggage_value<'r>(headers: &'r HeaderMap, key: &str) -> Option<&'r str> {
    headers
        .get_all(&BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|member| {
            let (k, v) = member.split_once('=')?;
            if k.trim() != key {
                return None;
            }
            let v = v.split(';').next().unwrap_or("").trim();
            (!v.is_empty()).then_some(v)
        })
}

/// The `baggage` header name.
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The `baggage` value sent upstream: the members of `existing` (every
/// `baggage` header of the request, in order) except `key`, then
/// `key=lane`. Other members and their properties are kept as they came.
pub fn baggage_with_lane<'a>(
    existing: impl IntoIterator<Item = &'a [u8]>,
    key: &str,
    lane: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_baggage(&mut out, existing, key, lane);
    out
}

/// [`baggage_with_lane`], appended to `out`.
pub fn write_baggage<'a>(
    out: &mut Vec<u8>,
    existing: impl IntoIterator<Item = &'a [u8]>,
    key: &str,
    lane: &str,
) {
    for value in existing {
        for member in value.split(|&b| b == b',') {
            let name = member
                .split(|&b| b == b'=')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if name.is_empty() || name == key.as_bytes() {
                continue;
            }
            out.extend_from_slice(member.trim_ascii());
            out.push(b',');
        }
    }
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(lane.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::lanes::Lane;
    use crate::discovery::Catalog;
    use crate::routing::rules::RuleSet;
    use crate::routing::snapshot::{BuildInput, BASELINE};
    use crate::telemetry::Metrics;

    fn snapshot(m: &Metrics) -> Snapshot {
        let lane = |name: &str, parent: Option<&str>| Lane {
            name: name.into(),
            services: Default::default(),
            parent: parent.map(Into::into),
            strict: false,
            created_at: 0,
            updated_at: 0,
            ..Default::default()
        };
        Snapshot::build(BuildInput {
            generation: 1,
            rules: Arc::new(RuleSet::empty()),
            lanes: &[
                lane(BASELINE, None),
                lane("t-42", Some(BASELINE)),
                lane("t-7", Some(BASELINE)),
            ],
            catalog: &Catalog::default(),
            baseline_versions: &[],
            metrics: m,
            previous: None,
            states: None,
        })
    }

    fn settings() -> LaneSettings {
        LaneSettings {
            header: HeaderName::from_static("x-laneway-lane"),
            cookie: "laneway_lane".into(),
            cookie_max_age: std::time::Duration::from_secs(3600),
            baggage_key: "laneway-lane".into(),
            domain: "lanes.test".into(),
            vip_pool: None,
            port_pool: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn order_is_header_cookie_hostname_default() {
        let m = Metrics::new();
        let s = snapshot(&m);
        let st = settings();
        let both = headers(&[
            ("x-laneway-lane", "t-42"),
            ("cookie", "a=b; laneway_lane=t-7"),
        ]);
        let r = resolve(&s, &st, &both, "bj.example.com", None);
        assert_eq!((&*r.lane.name, r.source), ("t-42", LaneSource::Header));

        let cookie = headers(&[("cookie", "a=b; laneway_lane=t-7")]);
        let r = resolve(&s, &st, &cookie, "x.t-42.lanes.test", None);
        assert_eq!((&*r.lane.name, r.source), ("t-7", LaneSource::Cookie));
        // The production host is still recovered from the lane hostname.
        assert_eq!(r.host, "x");

        let none = HeaderMap::new();
        let r = resolve(&s, &st, &none, "bj.example.com.t-42.lanes.test:8080", None);
        assert_eq!(
            (&*r.lane.name, r.source, r.host),
            ("t-42", LaneSource::Hostname, "bj.example.com")
        );
        assert!(r.host_recovered);

        let r = resolve(&s, &st, &none, "T-7.Lanes.Test", None);
        assert_eq!(
            (&*r.lane.name, r.source, r.host_recovered),
            ("t-7", LaneSource::Hostname, false)
        );

        let r = resolve(&s, &st, &none, "bj.example.com", None);
        assert_eq!((&*r.lane.name, r.source), ("baseline", LaneSource::Default));
    }

    #[test]
    fn unknown_lanes_fall_through_to_the_next_source() {
        let m = Metrics::new();
        let s = snapshot(&m);
        let h = headers(&[("x-laneway-lane", "nope"), ("cookie", "laneway_lane=t-7")]);
        let r = resolve(&s, &settings(), &h, "a.nope.lanes.test", None);
        assert_eq!(
            (&*r.lane.name, r.source, r.host),
            ("t-7", LaneSource::Cookie, "a.nope.lanes.test")
        );
        assert_eq!(r.unknown, Some((LaneSource::Header, "nope")));
        let empty = HeaderMap::new();
        let r = resolve(&s, &settings(), &empty, "lanes.test", None);
        assert_eq!((r.source, r.unknown), (LaneSource::Default, None));
    }

    #[test]
    fn unknown_lanes_are_reported_with_their_source() {
        let m = Metrics::new();
        let s = snapshot(&m);
        let st = settings();
        let none = HeaderMap::new();
        let r = resolve(&s, &st, &none, "bj.example.com.t-43.lanes.test:80", None);
        assert_eq!(
            (&*r.lane.name, r.source, r.unknown),
            (
                "baseline",
                LaneSource::Default,
                Some((LaneSource::Hostname, "t-43"))
            )
        );
        let r = resolve(&s, &st, &none, "T-44.lanes.test", None);
        assert_eq!(r.unknown, Some((LaneSource::Hostname, "T-44")));
        let h = headers(&[("baggage", "laneway-lane=t-9")]);
        let r = resolve(&s, &st, &h, "bj.example.com", None);
        assert_eq!(r.unknown, Some((LaneSource::Baggage, "t-9")));
        let h = headers(&[("cookie", "laneway_lane=t-8")]);
        let r = resolve(&s, &st, &h, "bj.example.com", None);
        assert_eq!(
            (&*r.lane.name, r.unknown),
            ("baseline", Some((LaneSource::Cookie, "t-8")))
        );
        // A known lane anywhere leaves nothing unknown.
        let r = resolve(&s, &st, &none, "bj.example.com", None);
        assert_eq!(r.unknown, None);
        let h = headers(&[("x-laneway-lane", " ")]);
        let r = resolve(&s, &st, &h, "t-42.lanes.test", None);
        assert_eq!((&*r.lane.name, r.unknown), ("t-42", None));
    }

    #[test]
    fn baggage_comes_after_the_header_and_before_the_cookie() {
        let m = Metrics::new();
        let s = snapshot(&m);
        let st = settings();
        let h = headers(&[
            ("baggage", "userId=alice, laneway-lane=t-42;prop=1"),
            ("cookie", "laneway_lane=t-7"),
        ]);
        let r = resolve(&s, &st, &h, "bj.example.com", None);
        assert_eq!((&*r.lane.name, r.source), ("t-42", LaneSource::Baggage));
        let h = headers(&[("x-laneway-lane", "t-7"), ("baggage", "laneway-lane=t-42")]);
        let r = resolve(&s, &st, &h, "bj.example.com", None);
        assert_eq!((&*r.lane.name, r.source), ("t-7", LaneSource::Header));
        // An unknown lane in baggage falls through to the cookie.
        let h = headers(&[
            ("baggage", "laneway-lane=nope"),
            ("cookie", "laneway_lane=t-7"),
        ]);
        let r = resolve(&s, &st, &h, "bj.example.com", None);
        assert_eq!((&*r.lane.name, r.source), ("t-7", LaneSource::Cookie));
    }

    #[test]
    fn baggage_upstream_keeps_other_members() {
        let out = baggage_with_lane(
            [&b"userId=alice, laneway-lane=old;p=1"[..], b"k2=v2;prop"],
            "laneway-lane",
            "t-42",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "userId=alice,k2=v2;prop,laneway-lane=t-42"
        );
        let none: [&[u8]; 0] = [];
        assert_eq!(
            baggage_with_lane(none, "laneway-lane", "baseline"),
            b"laneway-lane=baseline"
        );
    }

    #[test]
    fn strip_port_handles_ipv6_and_names() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
