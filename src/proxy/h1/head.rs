//! Message heads the lean engine writes: the upstream request head (the
//! client's fields minus hop-by-hop ones, plus laneway's edits) and
//! laneway's own responses. Request path.

use super::*;

impl H1App {
    /// The upstream request head into `s.out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build_upstream_head(
        &self,
        s: &mut Scratch,
        head: &ReqHead,
        headers: &HeaderMap,
        info: &ReqInfo,
        plan: &Plan,
        lane: &LaneView,
        peer_ip: &[u8],
        https: bool,
    ) {
        let out = &mut s.out;
        out.clear();
        if plan.as_get && !info.is_head {
            // an error page redirected the request: nginx sends it as GET
            out.extend_from_slice(b"GET");
        } else {
            out.extend_from_slice(head.method());
        }
        out.push(b' ');
        match &plan.upstream_target {
            Some(t) => out.extend_from_slice(t.as_bytes()),
            None => {
                // an absolute-form target goes up in origin-form
                let (slash, target) = head.parsed.origin_form(&head.head);
                if slash {
                    out.push(b'/');
                }
                out.extend_from_slice(target);
            }
        }
        out.extend_from_slice(if head.parsed.minor == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        let edits = crate::proxy::upstream_fields::Edits {
            settings: &self.settings,
            plan,
            lane: &lane.name,
            client_ip: peer_ip,
            https,
            upgrade: info.upgrade,
            expect_continue: info.expect_continue,
            authority: match (head.parsed.has_host_field, head.parsed.host) {
                (false, Some(host)) => Some(host.of(&head.head)),
                _ => None,
            },
            http2_upstream: false,
        };
        edits.write(head.parsed.fields.iter(&head.head), out);
        if info.framing == Framing::Chunked {
            // the body goes up as the decoder accepted it
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let _ = headers; // the parsed map served routing; the raw fields are forwarded
    }

    pub(super) async fn write_local(
        &self,
        c: &mut Client,
        s: &mut Scratch,
        resp: &LocalResponse,
        log: &Log,
        info: &ReqInfo,
    ) -> io::Result<()> {
        let out = &mut s.out;
        out.clear();
        status_line(out, resp.status);
        for (name, value) in &resp.headers {
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if self.settings.response_headers {
            push_header(
                out,
                self.settings.lanes.header.as_str().as_bytes(),
                log.lane.name.as_bytes(),
            );
            if let Some(t) = &log.target {
                push_header(out, b"x-laneway-version", t.version.as_bytes());
            }
        }
        self.push_unknown(out, log);
        {
            use std::io::Write;
            let _ = write!(out, "content-length: {}\r\n", resp.body.len()); // Vec write cannot fail
        }
        if !info.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if head_minor_is_zero(info) {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !info.is_head {
            out.extend_from_slice(&resp.body);
        }
        write_flush(&mut c.io, out).await
    }
}

impl H1App {
    /// `X-Laneway-Lane-Unknown` (and the lane served, when lane headers
    /// are off) for a request that named a lane that does not exist.
    pub(super) fn push_unknown(&self, out: &mut Vec<u8>, log: &Log) {
        if let Some(u) = &log.unknown {
            if !self.settings.response_headers {
                push_header(
                    out,
                    self.settings.lanes.header.as_str().as_bytes(),
                    log.lane.name.as_bytes(),
                );
            }
            push_header(out, b"x-laneway-lane-unknown", u.name.as_bytes());
        }
    }
}

/// HTTP/1.0 clients that asked for keep-alive need it spelled out.
pub(super) fn head_minor_is_zero(info: &ReqInfo) -> bool {
    info.minor == 0
}

pub(super) fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n"); // Vec write cannot fail
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe one connection and are never forwarded.
pub(super) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 5] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}
