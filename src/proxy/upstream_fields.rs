//! The header fields a request carries upstream, decided once for both
//! engines: the client's fields minus hop-by-hop ones (RFC 9110 §7.6.1,
//! those `Connection` nominates included), plus laneway's edits (the rules'
//! `set_headers`/`remove_headers`, the production `Host`,
//! `X-Forwarded-For`/`-Proto`, `X-Request-Id`, the lane in its header and
//! in W3C `baggage`, the hop marker) and the connection's own `Connection`.
//! Request path, no I/O: the h1 engine writes the fields as bytes, the
//! Pingora engine into its request header, both through [`FieldSink`], so
//! an upstream sees the same fields in the same order from either engine.
//!
//! Upgrades: only a WebSocket upgrade goes upstream (as Pingora's standard
//! policy); `Upgrade: h2c` through a proxy is a known smuggling vector, and
//! any other token is dropped with the fields it came with.
//!
//! Framing fields are the engine's: `Transfer-Encoding` is never copied
//! (each engine frames the body it sends), `Content-Length` is kept.

use super::plan::Plan;
use super::ProxySettings;

/// Where the upstream fields go.
pub trait FieldSink {
    fn field(&mut self, name: &[u8], value: &[u8]);
    /// A field whose value `write` appends to the buffer it is given.
    fn field_with(&mut self, name: &[u8], write: impl FnOnce(&mut Vec<u8>));
}

/// An HTTP/1 head being written: `name: value\r\n`.
impl FieldSink for Vec<u8> {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }

    fn field_with(&mut self, name: &[u8], write: impl FnOnce(&mut Vec<u8>)) {
        self.extend_from_slice(name);
        self.extend_from_slice(b": ");
        write(self);
        self.extend_from_slice(b"\r\n");
    }
}

/// What the edits need to know of the request, besides its fields.
pub struct Edits<'a> {
    pub settings: &'a ProxySettings,
    pub plan: &'a Plan,
    pub lane: &'a str,
    /// The client's IP as written in `X-Forwarded-For`.
    pub client_ip: &'a [u8],
    pub https: bool,
    /// A WebSocket upgrade is asked for ([`is_websocket_upgrade`]).
    pub upgrade: bool,
    /// `Expect: 100-continue`, answered by laneway itself.
    pub expect_continue: bool,
    /// The Host to send when the request has no Host field (an HTTP/1.0
    /// absolute-form target's authority, an HTTP/2 `:authority`).
    pub authority: Option<&'a [u8]>,
    /// The upstream speaks HTTP/2 (`[services.<name>] h2`): `TE: trailers`
    /// goes up (gRPC needs it; RFC 9113 §8.2.2 allows only that value) and
    /// no `Connection` field does.
    pub http2_upstream: bool,
}

/// Fields of one connection, never forwarded (RFC 9110 §7.6.1, plus the
/// de-facto `Proxy-Connection` and `Keep-Alive`). `Upgrade` goes up only
/// with a WebSocket upgrade; `Transfer-Encoding` is the engine's.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"http2-settings",
];

/// Fields `Connection` may not remove: what laneway routes and reports by.
const PROTECTED: [&[u8]; 5] = [
    b"host",
    b"content-length",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-request-id",
];

/// Whether `name` is a hop-by-hop field.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether the request asks for a WebSocket upgrade: HTTP/1.1, GET, an
/// `Upgrade` naming `websocket` and `Connection` naming `upgrade`.
pub fn is_websocket_upgrade<'f>(
    http11: bool,
    method: &[u8],
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
) -> bool {
    if !http11 || method != b"GET" {
        return false;
    }
    let (mut websocket, mut connection) = (false, false);
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"upgrade") {
            websocket |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection |= has_token(value, b"upgrade");
        }
    }
    websocket && connection
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a `Connection` field of the request nominates `name`.
fn nominated<'f>(name: &[u8], fields: impl Iterator<Item = (&'f [u8], &'f [u8])>) -> bool {
    if PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p)) {
        return false;
    }
    fields
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .any(|(_, v)| has_token(v, name))
}

impl Edits<'_> {
    /// Writes the upstream fields of a request whose fields are `fields`
    /// (as received, in order) into `out`.
    pub fn write<'f, I>(&self, fields: I, out: &mut impl FieldSink)
    where
        I: Iterator<Item = (&'f [u8], &'f [u8])> + Clone,
    {
        let plan = self.plan;
        let lane_header = self.settings.lanes.header.as_str().as_bytes();
        // `Connection: keep-alive` (what browsers send) nominates no other
        // field: the per-field look at `Connection` is only for the rest.
        let nominates_fields = fields
            .clone()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|t| !t.is_empty() && !is_hop_by_hop(t) && !t.eq_ignore_ascii_case(b"close"));
        let mut forwarded_for: Option<&[u8]> = None;
        let mut request_id = false;
        let mut baggage = false;
        let mut has_host = false;
        for (name, value) in fields.clone() {
            if is_hop_by_hop(name) {
                if self.upgrade && name.eq_ignore_ascii_case(b"upgrade") {
                    out.field(b"upgrade", value);
                } else if self.http2_upstream
                    && name.eq_ignore_ascii_case(b"te")
                    && value.trim_ascii().eq_ignore_ascii_case(b"trailers")
                {
                    out.field(b"te", b"trailers");
                }
                continue;
            }
            if nominates_fields && nominated(name, fields.clone()) {
                continue;
            }
            if self.expect_continue && name.eq_ignore_ascii_case(b"expect") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                forwarded_for = Some(value);
                continue;
            }
            if name.eq_ignore_ascii_case(b"baggage") {
                baggage = true; // merged with the lane below
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                has_host = true;
                if plan.production_host.is_some() {
                    continue;
                }
            }
            request_id |= name.eq_ignore_ascii_case(b"x-request-id");
            if name.eq_ignore_ascii_case(b"x-forwarded-proto")
                || name.eq_ignore_ascii_case(lane_header)
                || plan
                    .remove_headers
                    .iter()
                    .any(|r| name.eq_ignore_ascii_case(r.as_str().as_bytes()))
                || plan
                    .set_headers
                    .iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
            {
                continue;
            }
            out.field(name, value);
        }
        match (&plan.production_host, has_host, self.authority) {
            (Some(host), _, _) => out.field(b"host", host.as_bytes()),
            (None, false, Some(authority)) => out.field(b"host", authority),
            _ => {}
        }
        for (name, value) in &plan.set_headers {
            if !value.is_empty() {
                out.field(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        out.field_with(b"x-forwarded-for", |v| {
            if let Some(prev) = forwarded_for {
                v.extend_from_slice(prev);
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(self.client_ip);
        });
        out.field(
            b"x-forwarded-proto",
            if self.https { b"https" } else { b"http" },
        );
        if !request_id {
            let mut id = [0u8; 32];
            super::plan::fill_request_id(&mut id);
            out.field(b"x-request-id", &id);
        }
        out.field(lane_header, self.lane.as_bytes());
        // the hop marker (proxy::hops): this instance after those listed
        out.field(b"x-laneway-via", self.settings.instance_id.as_bytes());
        // The lane also goes in W3C baggage, other members kept.
        out.field_with(b"baggage", |v| {
            let existing = fields
                .clone()
                .filter(|_| baggage)
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"baggage"))
                .map(|(_, v)| v);
            crate::routing::lanes::write_baggage(
                v,
                existing,
                &self.settings.lanes.baggage_key,
                self.lane,
            );
        });
        if self.http2_upstream {
            return;
        }
        out.field(
            b"connection",
            if self.upgrade {
                &b"upgrade"[..]
            } else {
                &b"keep-alive"[..]
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_upgrades_count() {
        let ws: [(&[u8], &[u8]); 2] = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"keep-alive, Upgrade"),
        ];
        assert!(is_websocket_upgrade(true, b"GET", ws.into_iter()));
        assert!(!is_websocket_upgrade(false, b"GET", ws.into_iter()));
        assert!(!is_websocket_upgrade(true, b"POST", ws.into_iter()));
        let h2c: [(&[u8], &[u8]); 2] = [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade")];
        assert!(!is_websocket_upgrade(true, b"GET", h2c.into_iter()));
        let no_conn: [(&[u8], &[u8]); 1] = [(b"Upgrade", b"websocket")];
        assert!(!is_websocket_upgrade(true, b"GET", no_conn.into_iter()));
    }

    #[test]
    fn connection_nominated_fields_go_but_protected_ones_stay() {
        let f: [(&[u8], &[u8]); 4] = [
            (b"Connection", b"X-Secret, host"),
            (b"X-Secret", b"1"),
            (b"Host", b"a"),
            (b"X-Other", b"2"),
        ];
        assert!(nominated(b"x-secret", f.into_iter()));
        assert!(!nominated(b"host", f.into_iter()));
        assert!(!nominated(b"x-other", f.into_iter()));
    }

    #[test]
    fn vec_sink_writes_http1_field_lines() {
        let mut out = Vec::new();
        out.field(b"a", b"1");
        out.field_with(b"b", |v| v.extend_from_slice(b"2, 3"));
        assert_eq!(out, b"a: 1\r\nb: 2, 3\r\n");
    }
}
