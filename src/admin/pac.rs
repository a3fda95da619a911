//! `GET /api/v1/lanes/<name>/pac`: a proxy auto-config file that sends the
//! production hosts of the loaded rules to one lane's entry (its VIP, else
//! laneway's address at the lane's pool port) and everything else
//! `DIRECT`. The PAC text is built by a pure function ([`pac_text`]).
//! Control plane (admin listener); the data plane serves what the browser
//! then sends: absolute-form requests and `CONNECT` ([`crate::proxy::connect`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::allocation::lanes::Entries;
use crate::control::Control;
use crate::routing::rules::ServedName;

/// The media type browsers expect of a PAC file.
pub const PAC_CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

pub async fn pac(
    State(c): State<Arc<Control>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lane = c
        .lanes
        .lock()
        .await
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("lane \"{name}\" does not exist")))?;
    let admin_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(strip_port);
    let proxy =
        lane_proxy(&lane.entries, &c.config.proxy.listen, admin_host).map_err(|why| ApiError {
            status: StatusCode::CONFLICT,
            message: format!("lane \"{name}\": {why}"),
        })?;
    let names = c.snapshot().rules.served_names();
    let text = pac_text(&name, &proxy, &names, &c.config.lanes.pac_domains);
    Ok(([(header::CONTENT_TYPE, PAC_CONTENT_TYPE)], text).into_response())
}

/// `host` of a Host value `host[:port]` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    crate::routing::lanes::strip_port(host)
}

/// Where a browser reaches `entries`' lane as a proxy, `host:port`:
/// the VIP at the first `[proxy] listen` port of its address family, else
/// laneway's address at the lane's pool port. laneway's address is the
/// first `[proxy] listen` IP, or, when that is a wildcard address
/// (`0.0.0.0`), the name the admin request was sent to (`admin_host`).
pub fn lane_proxy(
    entries: &Entries,
    listen: &[SocketAddr],
    admin_host: Option<&str>,
) -> Result<String, String> {
    if let Some(vip) = entries.vip {
        let port = listen
            .iter()
            .find(|l| l.is_ipv4() == vip.is_ipv4())
            .or(listen.first())
            .map(|l| l.port())
            .ok_or("laneway has no [proxy] listen address for the VIP's port")?;
        return Ok(SocketAddr::new(vip, port).to_string());
    }
    if let Some(port) = entries.port {
        let ip = listen.first().map(|l| l.ip());
        let host = match ip {
            Some(ip) if !ip.is_unspecified() => ip_host(ip),
            _ => match admin_host {
                Some(h) if !h.is_empty() => h.to_string(),
                _ => {
                    return Err(
                        "laneway listens on a wildcard address and the request named no Host to use as laneway's address".into(),
                    )
                }
            },
        };
        return Ok(format!("{host}:{port}"));
    }
    Err("the lane has no VIP or port entry for a PAC to point at; configure [lanes] vip_pool or port_pool and create the lane again".into())
}

fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The PAC file for lane `lane` reached at `proxy` (`host:port`): every
/// name in `names` (the rules' server names) and every domain of
/// `pac_domains` (with its subdomains) goes to `PROXY <proxy>`, anything
/// else `DIRECT`. Exact names are compared with `==`; wildcards with
/// `dnsDomainIs`/`shExpMatch`; regex names through their literal suffix,
/// and those without one are listed in a comment as not covered.
pub fn pac_text(lane: &str, proxy: &str, names: &[ServedName], pac_domains: &[String]) -> String {
    let js = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut exact: Vec<String> = Vec::new();
    let mut tests: Vec<(String, String)> = Vec::new();
    let mut uncovered: Vec<&str> = Vec::new();
    for name in names {
        match name {
            ServedName::Exact { name } => exact.push(format!("host == {}", js(name))),
            ServedName::Suffix {
                suffix,
                matches_self,
            } => {
                let mut t = format!("dnsDomainIs(host, {})", js(&format!(".{suffix}")));
                if *matches_self {
                    t = format!("host == {} || {t}", js(suffix));
                }
                let written = if *matches_self { "." } else { "*." };
                tests.push((t, format!("{written}{suffix}")));
            }
            ServedName::Prefix { prefix } => tests.push((
                format!("shExpMatch(host, {})", js(&format!("{prefix}.*"))),
                format!("{prefix}.*"),
            )),
            ServedName::Regex {
                pattern,
                literal_suffix: Some(suffix),
            } => tests.push((
                format!("dnsDomainIs(host, {})", js(suffix)),
                format!("~{pattern} (by its suffix {suffix})"),
            )),
            ServedName::Regex {
                pattern,
                literal_suffix: None,
            } => uncovered.push(pattern),
        }
    }
    for d in pac_domains {
        tests.push((
            format!(
                "host == {} || dnsDomainIs(host, {})",
                js(d),
                js(&format!(".{d}"))
            ),
            format!("{d} ([lanes] pac_domains)"),
        ));
    }
    let mut out = String::new();
    out.push_str(&format!(
        "// laneway: proxy auto-config for lane {}.\n// The production hosts of the rules go to the lane's entry; everything else DIRECT.\n",
        comment(lane)
    ));
    for p in &uncovered {
        out.push_str(&format!(
            "// not covered: server name ~{} (a regex without a literal suffix); add its domain to [lanes] pac_domains\n",
            comment(p)
        ));
    }
    out.push_str("function FindProxyForURL(url, host) {\n");
    out.push_str("    host = host.toLowerCase();\n");
    out.push_str(
        "    if (host.charAt(host.length - 1) == \".\") host = host.substring(0, host.length - 1);\n",
    );
    out.push_str(&format!(
        "    var lane = {};\n",
        js(&format!("PROXY {proxy}"))
    ));
    for chunk in exact.chunks(8) {
        out.push_str(&format!("    if ({}) return lane;\n", chunk.join(" || ")));
    }
    for (test, what) in &tests {
        out.push_str(&format!(
            "    if ({test}) return lane; // {}\n",
            comment(what)
        ));
    }
    out.push_str("    return \"DIRECT\";\n}\n");
    out
}

/// `s` made safe for a `//` comment: no line breaks.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<ServedName> {
        vec![
            ServedName::Exact {
                name: "bj.example.com".into(),
            },
            ServedName::Suffix {
                suffix: "cities.example.com".into(),
                matches_self: false,
            },
            ServedName::Suffix {
                suffix: "example.org".into(),
                matches_self: true,
            },
            ServedName::Prefix {
                prefix: "www.example".into(),
            },
            ServedName::Regex {
                pattern: "^(?<c>[a-z]+)\\.shop\\.example\\.com$".into(),
                literal_suffix: Some(".shop.example.com".into()),
            },
            ServedName::Regex {
                pattern: "^api\\d+$".into(),
                literal_suffix: None,
            },
        ]
    }

    #[test]
    fn every_kind_of_name_has_its_test_and_the_rest_is_direct() {
        let pac = pac_text("t-42", "127.0.0.2:8080", &names(), &["corp.test".into()]);
        assert!(
            pac.contains("var lane = \"PROXY 127.0.0.2:8080\";"),
            "{pac}"
        );
        assert!(pac.contains("host == \"bj.example.com\""), "{pac}");
        assert!(
            pac.contains("dnsDomainIs(host, \".cities.example.com\")"),
            "{pac}"
        );
        assert!(
            pac.contains("host == \"example.org\" || dnsDomainIs(host, \".example.org\")"),
            "{pac}"
        );
        assert!(pac.contains("shExpMatch(host, \"www.example.*\")"), "{pac}");
        assert!(
            pac.contains("dnsDomainIs(host, \".shop.example.com\")"),
            "{pac}"
        );
        assert!(
            pac.contains("// not covered: server name ~^api\\d+$"),
            "{pac}"
        );
        assert!(pac.contains("dnsDomainIs(host, \".corp.test\")"), "{pac}");
        assert!(pac.trim_end().ends_with("return \"DIRECT\";\n}"), "{pac}");
    }

    #[test]
    fn names_are_quoted_as_javascript_strings() {
        let names = vec![ServedName::Exact {
            name: "a\"b".into(),
        }];
        let pac = pac_text("x\ny", "h:1", &names, &[]);
        assert!(pac.contains("host == \"a\\\"b\""), "{pac}");
        assert!(pac.contains("lane x y."), "{pac}");
    }

    fn entries(vip: Option<&str>, port: Option<u16>) -> Entries {
        Entries {
            vip: vip.map(|v| v.parse().unwrap()),
            port,
            hostname: String::new(),
        }
    }

    #[test]
    fn the_proxy_is_the_vip_else_laneways_address_at_the_pool_port() {
        let listen: Vec<SocketAddr> = vec!["127.0.0.1:8080".parse().unwrap()];
        let any: Vec<SocketAddr> = vec!["0.0.0.0:8080".parse().unwrap()];
        let e = entries(Some("127.0.0.9"), Some(18001));
        assert_eq!(lane_proxy(&e, &listen, None).unwrap(), "127.0.0.9:8080");
        let e = entries(None, Some(18001));
        assert_eq!(lane_proxy(&e, &listen, None).unwrap(), "127.0.0.1:18001");
        assert_eq!(
            lane_proxy(&e, &any, Some("laneway.corp")).unwrap(),
            "laneway.corp:18001"
        );
        assert!(lane_proxy(&e, &any, None).is_err());
        let none = lane_proxy(&entries(None, None), &listen, None).unwrap_err();
        assert!(none.contains("no VIP or port entry"), "{none}");
    }
}
