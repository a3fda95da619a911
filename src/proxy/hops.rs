//! Loop detection between laneway instances: the hop marker every request
//! laneway forwards carries, and the check that answers `508 Loop
//! Detected` instead of forwarding. Shared by both engines; request path,
//! no I/O.
//!
//! The marker is one header, `X-Laneway-Via`, listing the instance id of
//! every laneway the request passed through, oldest first (each instance
//! appends its id; several field lines are one comma-separated list). A
//! request is not forwarded when the list already holds this instance's
//! id (a loop, however long) or `[proxy] max_hops` ids (a chain too long
//! to be meant, e.g. a loop through instances that restarted with new ids).
//! One list rather than the standard `Via` plus a separate counter:
//! - `Via` changes what upstreams do: nginx does not compress a response to
//!   a request carrying `Via` unless `gzip_proxied` allows it, and test
//!   environments should see what production sees;
//! - RFC 9110 lets intermediaries collapse `Via` entries, which loses both
//!   the ids and the count; a laneway-only header passes proxies unchanged;
//! - the count is the list's length, so the two can never disagree.
//!
//! The instance id is random per process (8 hex digits), so two laneways
//! started from one configuration (a farm behind LVS, or the old and new
//! process of a graceful upgrade) still tell each other apart. It is
//! logged at start.

use std::sync::{Arc, OnceLock};

use http::header::HeaderName;
use http::HeaderMap;

use super::plan::LocalResponse;

/// The hop marker: the ids of the laneway instances a request passed through.
pub static X_LANEWAY_VIA: HeaderName = HeaderName::from_static("x-laneway-via");

/// This process's instance id: 8 random hex digits, the same for every
/// worker.
pub fn process_instance_id() -> Arc<str> {
    static ID: OnceLock<Arc<str>> = OnceLock::new();
    ID.get_or_init(|| format!("{:08x}", fastrand::u32(..)).into())
        .clone()
}

/// Why a request must not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    /// The request passed through this instance already.
    Own { hops: usize },
    /// The request passed through `hops` instances, the most allowed.
    TooMany { hops: usize },
}

/// Whether a request with `headers` arriving at instance `own` must not be
/// forwarded, with at most `max_hops` laneway instances before this one.
pub fn check(headers: &HeaderMap, own: &str, max_hops: u8) -> Option<Loop> {
    let mut hops = 0usize;
    let mut seen = false;
    for value in headers.get_all(&X_LANEWAY_VIA) {
        for id in value.as_bytes().split(|&b| b == b',') {
            let id = id.trim_ascii();
            if id.is_empty() {
                continue;
            }
            hops += 1;
            seen |= id == own.as_bytes();
        }
    }
    if seen {
        Some(Loop::Own { hops })
    } else if hops >= usize::from(max_hops) {
        Some(Loop::TooMany { hops })
    } else {
        None
    }
}

/// The `508 Loop Detected` answer naming lane, service and instance.
pub fn loop_response(why: Loop, lane: &str, service: &str, own: &str) -> LocalResponse {
    let body = match why {
        Loop::Own { hops } => format!(
            "laneway: loop detected: lane \"{lane}\": service \"{service}\": the request came back to laneway instance {own} after {hops} hop(s); an instance of \"{service}\" is registered at an address that leads to laneway itself: deregister it\n"
        ),
        Loop::TooMany { hops } => format!(
            "laneway: loop detected: lane \"{lane}\": service \"{service}\": the request passed through {hops} laneway instances already ([proxy] max_hops of instance {own}); check where \"{service}\" is registered, or raise max_hops if such a chain is meant\n"
        ),
    };
    LocalResponse::text(508, "loop", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_via(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_LANEWAY_VIA.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_request_without_marker_passes() {
        assert_eq!(check(&HeaderMap::new(), "aaaa0001", 8), None);
    }

    #[test]
    fn own_id_anywhere_in_the_list_is_a_loop() {
        let h = with_via(&["bbbb0002, aaaa0001", "cccc0003"]);
        assert_eq!(check(&h, "aaaa0001", 8), Some(Loop::Own { hops: 3 }));
        let h = with_via(&["aaaa0001"]);
        assert_eq!(check(&h, "aaaa0001", 8), Some(Loop::Own { hops: 1 }));
        // a prefix of the id is another instance
        let h = with_via(&["aaaa000"]);
        assert_eq!(check(&h, "aaaa0001", 8), None);
    }

    #[test]
    fn hops_count_every_field_line_and_skip_empty_items() {
        let h = with_via(&["a1, a2,, ", "a3", " a4 ,a5"]);
        assert_eq!(check(&h, "ffffffff", 6), None);
        assert_eq!(check(&h, "ffffffff", 5), Some(Loop::TooMany { hops: 5 }));
        assert_eq!(check(&h, "ffffffff", 1), Some(Loop::TooMany { hops: 5 }));
    }

    #[test]
    fn the_process_id_is_stable_and_8_hex_digits() {
        let a = process_instance_id();
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, process_instance_id());
    }

    #[test]
    fn the_answer_names_lane_service_and_instance() {
        let r = loop_response(Loop::Own { hops: 2 }, "t-42", "web", "aaaa0001");
        assert_eq!((r.status, r.reason), (508, "loop"));
        let body = String::from_utf8_lossy(&r.body);
        for want in ["\"t-42\"", "\"web\"", "aaaa0001"] {
            assert!(body.contains(want), "{body}");
        }
        let r = loop_response(Loop::TooMany { hops: 8 }, "t-42", "web", "aaaa0001");
        assert!(String::from_utf8_lossy(&r.body).contains("max_hops"));
    }
}
