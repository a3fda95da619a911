//! The checks every admin request passes before its handler: the Host it
//! names (no DNS rebinding), where a state-changing request comes from (no
//! cross-site requests from a browser), and the scope its path and method
//! need. Pure functions of the request head; the middleware that applies
//! them with the tokens is in [`super::access`]. Control plane only.

use http::{HeaderMap, Method};

use super::auth::Scope;

/// The scope a request needs; `None` for the endpoints that answer anyone:
/// the health checks LVS and load balancers probe, the sign-in page and the
/// dashboard's static assets.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if reads {
        return match path {
            "/healthz" | "/lvs/health" | "/login" => None,
            p if p.starts_with("/assets/") => None,
            _ => Some(Scope::Read),
        };
    }
    if path == "/login" || path == "/logout" {
        return None;
    }
    let lanes_path = path
        .strip_prefix("/api/v1/lanes")
        .or_else(|| path.strip_prefix("/lanes"));
    if let Some(rest) = lanes_path {
        let lane = rest.trim_start_matches('/').split('/').next().unwrap_or("");
        return Some(if lane == crate::allocation::lanes::BASELINE {
            Scope::Admin
        } else {
            Scope::Lanes
        });
    }
    if path.starts_with("/v1/agent/") || path.starts_with("/v1/catalog/") {
        return Some(Scope::Register);
    }
    // maintenance, rules and anything else that changes state
    Some(Scope::Admin)
}

/// Whether `host` (a Host header value) names this admin listener: an IP
/// address (a rebinding attack needs a name), `localhost`, or one of
/// `[admin] hostnames`. A name an attacker's DNS points at the listener is
/// refused.
pub fn host_allowed(host: &str, hostnames: &[String]) -> bool {
    let name = strip_port(host.trim()).trim_end_matches('.');
    if name.is_empty() {
        return false;
    }
    if name.starts_with('[') || name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || hostnames.contains(&lower)
}

/// Why a state-changing request from a browser is refused: its `Origin`
/// (or, without one, its `Referer`) is another site than the admin's own
/// `host`, or the browser says the request is cross-site
/// (`Sec-Fetch-Site`). Requests without any of these (curl, deploy
/// tooling, Consul clients) pass.
pub fn cross_site(method: &Method, headers: &HeaderMap, host: &str) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(site) = value("sec-fetch-site") {
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Some(format!(
                "a {site} request from a browser may not change state here (Sec-Fetch-Site)"
            ));
        }
    }
    let (which, source) = match (value("origin"), value("referer")) {
        (Some(o), _) => ("Origin", o),
        (None, Some(r)) => ("Referer", r),
        (None, None) => return None,
    };
    match authority_of(source) {
        Some(a) if a.eq_ignore_ascii_case(host.trim()) => None,
        _ => Some(format!(
            "{which} {source:?} is not this admin listener ({host}): cross-site requests may not change state"
        )),
    }
}

/// `host[:port]` of an absolute http(s) URL; `None` for anything else
/// (`null`, other schemes).
fn authority_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

fn strip_port(host: &str) -> &str {
    crate::routing::lanes::strip_port(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_method_and_path() {
        let get = Method::GET;
        let post = Method::POST;
        let patch = Method::PATCH;
        let put = Method::PUT;
        let del = Method::DELETE;
        for (m, p, want) in [
            (&get, "/healthz", None),
            (&get, "/lvs/health", None),
            (&get, "/assets/laneway.css", None),
            (&get, "/login", None),
            (&post, "/login", None),
            (&get, "/metrics", Some(Scope::Read)),
            (&get, "/", Some(Scope::Read)),
            (&get, "/api/v1/lanes/baseline", Some(Scope::Read)),
            (&get, "/v1/agent/services", Some(Scope::Read)),
            (&post, "/api/v1/lanes", Some(Scope::Lanes)),
            (&patch, "/api/v1/lanes/t-42", Some(Scope::Lanes)),
            (&post, "/api/v1/lanes/t-42/extend", Some(Scope::Lanes)),
            (&del, "/api/v1/lanes/t-42", Some(Scope::Lanes)),
            (&patch, "/api/v1/lanes/baseline", Some(Scope::Admin)),
            (&post, "/lanes/baseline/extend", Some(Scope::Admin)),
            (&post, "/lanes/new", Some(Scope::Lanes)),
            (&put, "/v1/agent/service/register", Some(Scope::Register)),
            (&put, "/v1/agent/check/pass/x", Some(Scope::Register)),
            (&post, "/api/v1/maintenance", Some(Scope::Admin)),
            (&post, "/api/v1/anything-new", Some(Scope::Admin)),
        ] {
            assert_eq!(required_scope(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn hosts_are_addresses_localhost_or_configured_names() {
        let names = vec!["laneway.qa.corp".to_string()];
        for ok in [
            "127.0.0.1:9900",
            "10.1.2.3",
            "[::1]:9900",
            "localhost:9900",
            "LANEWAY.qa.corp",
            "laneway.qa.corp.:80",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for bad in [
            "",
            "attacker.example",
            "laneway.qa.corp.attacker.example",
            "evil:9900",
        ] {
            assert!(!host_allowed(bad, &names), "{bad}");
        }
    }

    fn heads(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_state_changes_are_refused() {
        let host = "127.0.0.1:9900";
        let post = Method::POST;
        assert!(cross_site(&post, &heads(&[]), host).is_none(), "curl");
        assert!(cross_site(&post, &heads(&[("origin", "http://127.0.0.1:9900")]), host).is_none());
        assert!(cross_site(
            &post,
            &heads(&[("referer", "http://127.0.0.1:9900/lanes/new")]),
            host
        )
        .is_none());
        let why = cross_site(&post, &heads(&[("origin", "http://evil.example")]), host).unwrap();
        assert!(
            why.contains("Origin") && why.contains("evil.example"),
            "{why}"
        );
        assert!(cross_site(&post, &heads(&[("origin", "null")]), host).is_some());
        assert!(cross_site(&post, &heads(&[("referer", "http://evil.example/x")]), host).is_some());
        assert!(cross_site(
            &post,
            &heads(&[("origin", "http://127.0.0.1:9900@evil")]),
            host
        )
        .is_some());
        assert!(cross_site(&post, &heads(&[("sec-fetch-site", "cross-site")]), host).is_some());
        assert!(cross_site(&post, &heads(&[("sec-fetch-site", "same-origin")]), host).is_none());
        // reads are never refused for their origin
        assert!(cross_site(
            &Method::GET,
            &heads(&[("origin", "http://evil.example")]),
            host
        )
        .is_none());
    }
}
