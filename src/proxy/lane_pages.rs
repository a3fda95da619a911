//! The pages laneway answers on the data plane about lanes: the lane
//! switch (`GET /__laneway/lane?use=<lane>[&to=<path>]`, which sets the
//! lane cookie for the host and redirects, `?clear=1` to leave the lane)
//! and the unknown-lane page (404 for a lane hostname of no lane, or a
//! switch to one), HTML for browsers and text for others. Request path,
//! only for those requests; no I/O.

use std::fmt::Write as _;

use http::header::{HeaderName, ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::HeaderMap;
use maud::{html, DOCTYPE};

use super::plan::LocalResponse;
use super::ProxySettings;
use crate::routing::snapshot::Snapshot;

/// The lane switch's path on every host laneway serves.
pub const SWITCH_PATH: &str = "/__laneway/lane";

/// Lanes listed on the unknown-lane page at most.
const LIST_MAX: usize = 200;

/// The request target is the lane switch.
#[inline]
pub fn is_switch(target: &str) -> bool {
    target
        .strip_prefix(SWITCH_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
}

/// What the switch was asked.
#[derive(Debug, PartialEq, Eq)]
struct SwitchQuery {
    lane: Option<String>,
    to: Option<String>,
    clear: bool,
}

fn parse_query(target: &str) -> SwitchQuery {
    let mut q = SwitchQuery {
        lane: None,
        to: None,
        clear: false,
    };
    let query = target.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "use" => q.lane = Some(v.trim().to_ascii_lowercase()),
            "to" => q.to = Some(v),
            "clear" => q.clear = matches!(v.as_str(), "1" | "true" | "yes" | ""),
            _ => {}
        }
    }
    q
}

/// `to` as a `Location` value, when it is a path on the same host;
/// otherwise why not (the switch is no open redirect).
pub fn relative_target(to: &str) -> Result<String, &'static str> {
    if to.bytes().any(|b| b.is_ascii_control()) {
        return Err("it holds control characters");
    }
    if !to.starts_with('/') {
        return Err("it must be a path starting with \"/\" on this host");
    }
    if to.starts_with("//") || to.starts_with("/\\") {
        return Err("\"//\" or \"/\\\" would leave this host");
    }
    if to.contains('\\') {
        return Err("backslashes are not allowed");
    }
    // bytes outside visible ASCII are percent-encoded for the header
    let mut out = String::with_capacity(to.len());
    for b in to.bytes() {
        if b.is_ascii_graphic() {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}"); // String write cannot fail
        }
    }
    Ok(out)
}

/// Answers the lane switch: 303 with the lane cookie set (or expired),
/// 400 for a `to` that leaves the host, 404 (the unknown-lane page) for a
/// lane that does not exist, 405 for methods other than GET and HEAD.
pub fn switch(
    snap: &Snapshot,
    settings: &ProxySettings,
    method: &str,
    target: &str,
    headers: &HeaderMap,
) -> LocalResponse {
    if method != "GET" && method != "HEAD" {
        let mut r = LocalResponse::text(
            405,
            "lane_switch",
            format!("laneway: {SWITCH_PATH} answers GET and HEAD only\n"),
        );
        r.headers.push((ALLOW, "GET, HEAD".into()));
        return r;
    }
    let q = parse_query(target);
    let to = match relative_target(q.to.as_deref().unwrap_or("/")) {
        Ok(to) => to,
        Err(why) => {
            return LocalResponse::text(
                400,
                "lane_switch",
                format!(
                    "laneway: {SWITCH_PATH}: \"to\" is refused: {why}; give a path on this host such as to=/orders\n"
                ),
            )
        }
    };
    let cookie = &settings.lanes.cookie;
    let set_cookie = if q.clear {
        format!("{cookie}=; Path=/; Max-Age=0; SameSite=Lax; HttpOnly")
    } else {
        let Some(lane) = q.lane.filter(|l| !l.is_empty()) else {
            return LocalResponse::text(
                400,
                "lane_switch",
                format!(
                    "laneway: {SWITCH_PATH} needs ?use=<lane> to enter a lane or ?clear=1 to leave it\n"
                ),
            );
        };
        if snap.lane(&lane).is_none() {
            return unknown_lane(snap, settings, &lane, &Links::Switch { to: &to }, headers);
        }
        format!(
            "{cookie}={lane}; Path=/; Max-Age={}; SameSite=Lax; HttpOnly",
            settings.lanes.cookie_max_age.as_secs()
        )
    };
    LocalResponse {
        status: 303,
        reason: "lane_switch",
        body: bytes::Bytes::new(),
        headers: vec![
            (LOCATION, to),
            (SET_COOKIE, set_cookie),
            (CACHE_CONTROL, "no-store".into()),
        ],
    }
}

/// Where the unknown-lane page's links go.
pub enum Links<'a> {
    /// To the lane hostnames: `<scheme>://[<production>.]<lane>.<domain><port>/`.
    Hostname {
        scheme: &'a str,
        production: Option<&'a str>,
        /// `:<port>` as the client wrote it, or empty.
        port: &'a str,
    },
    /// Through the switch on this host.
    Switch { to: &'a str },
}

impl Links<'_> {
    fn href(&self, lane: &str, domain: &str) -> String {
        match self {
            Links::Hostname {
                scheme,
                production,
                port,
            } => match production {
                Some(p) => format!("{scheme}://{p}.{lane}.{domain}{port}/"),
                None => format!("{scheme}://{lane}.{domain}{port}/"),
            },
            Links::Switch { to } => {
                let to: String =
                    percent_encoding::utf8_percent_encode(to, percent_encoding::NON_ALPHANUMERIC)
                        .collect();
                format!("{SWITCH_PATH}?use={lane}&to={to}")
            }
        }
    }
}

/// The 404 for a lane that does not exist: the lane asked for, the lanes
/// that exist (with links) and the close names. HTML when the client
/// accepts it, text otherwise.
pub fn unknown_lane(
    snap: &Snapshot,
    settings: &ProxySettings,
    asked: &str,
    links: &Links<'_>,
    headers: &HeaderMap,
) -> LocalResponse {
    let mut lanes: Vec<&str> = snap.lane_names().collect();
    lanes.sort_unstable();
    let close = close_names(asked, &lanes);
    let domain = &settings.lanes.domain;
    let shown = &lanes[..lanes.len().min(LIST_MAX)];
    let html = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")));
    let (body, content_type) = if html {
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "No lane \"" (asked) "\" – laneway" }
                    style { (STYLE) }
                }
                body {
                    h1 { "No lane " code { (asked) } }
                    p { "laneway has no lane called " code { (asked) } ", so this request was not served: it would have reached the baseline instead." }
                    @if !close.is_empty() {
                        p.close { "Did you mean "
                            @for (i, name) in close.iter().enumerate() {
                                @if i > 0 { ", " }
                                a href=(links.href(name, domain)) { (name) }
                            }
                            "?"
                        }
                    }
                    h2 { "Lanes (" (lanes.len()) ")" }
                    ul.lanes {
                        @for name in shown {
                            li { a href=(links.href(name, domain)) { (name) } }
                        }
                    }
                    @if lanes.len() > shown.len() {
                        p { "… and " (lanes.len() - shown.len()) " more." }
                    }
                }
            }
        };
        (page.into_string(), "text/html; charset=utf-8")
    } else {
        let mut t = format!("laneway: no lane \"{asked}\"; the request was not served\n");
        if !close.is_empty() {
            let _ = writeln!(t, "did you mean: {}", close.join(", ")); // String write cannot fail
        }
        let _ = writeln!(t, "lanes ({}):", lanes.len());
        for name in shown {
            let _ = writeln!(t, "  {name}  {}", links.href(name, domain));
        }
        (t, "text/plain; charset=utf-8")
    };
    LocalResponse {
        status: 404,
        reason: "unknown_lane",
        body: bytes::Bytes::from(body),
        headers: vec![
            (CONTENT_TYPE, content_type.into()),
            (CACHE_CONTROL, "no-store".into()),
        ],
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1 code{background:#fde8e8;padding:0 .3em;border-radius:4px}\
.close{font-size:1.2em}ul.lanes{columns:2}a{color:#0b57d0}";

/// Lanes whose names are close to `asked`: within an edit distance of two
/// (one for short names), or one a prefix of the other; closest first, at
/// most five.
pub fn close_names<'a>(asked: &str, lanes: &[&'a str]) -> Vec<&'a str> {
    let asked = asked.to_ascii_lowercase();
    let max = if asked.chars().count() <= 3 { 1 } else { 2 };
    let mut found: Vec<(usize, &str)> = lanes
        .iter()
        .filter(|l| **l != asked)
        .filter_map(|l| {
            let d = edit_distance(&asked, l);
            let prefix = !asked.is_empty() && (l.starts_with(&asked) || asked.starts_with(*l));
            (d <= max || prefix).then_some((d, *l))
        })
        .collect();
    found.sort();
    found.into_iter().take(5).map(|(_, l)| l).collect()
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// `X-Laneway-Lane-Unknown`: the lane a request named that does not exist.
pub static X_LANEWAY_LANE_UNKNOWN: HeaderName = HeaderName::from_static("x-laneway-lane-unknown");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_path_is_recognised_exactly() {
        assert!(is_switch("/__laneway/lane"));
        assert!(is_switch("/__laneway/lane?use=t-1"));
        assert!(!is_switch("/__laneway/lanes"));
        assert!(!is_switch("/__laneway/lane/x"));
        assert!(!is_switch("/"));
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(
            parse_query("/__laneway/lane?use=T-42&to=%2Forders%3Fa%3D1&x=y"),
            SwitchQuery {
                lane: Some("t-42".into()),
                to: Some("/orders?a=1".into()),
                clear: false
            }
        );
        assert!(parse_query("/__laneway/lane?clear=1").clear);
        assert!(!parse_query("/__laneway/lane?clear=0").clear);
    }

    #[test]
    fn only_paths_on_this_host_are_redirect_targets() {
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("/orders?id=1#x", "/orders?id=1#x"),
            ("/caf\u{e9} x", "/caf%C3%A9%20x"),
        ];
        for (to, want) in ok {
            assert_eq!(relative_target(to).as_deref(), Ok(*want), "{to}");
        }
        for bad in [
            "//evil.example/",
            "/\\evil.example/",
            "http://evil.example/",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/a\r\nSet-Cookie: x=1",
            "/\t/evil.example",
            "/a\\b",
        ] {
            assert!(relative_target(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn close_names_by_distance_and_prefix() {
        let lanes = ["baseline", "t-42", "t-43", "t-7", "checkout-v2", "zz"];
        assert_eq!(close_names("t-44", &lanes), vec!["t-42", "t-43", "t-7"]);
        assert_eq!(close_names("checkout", &lanes), vec!["checkout-v2"]);
        assert_eq!(close_names("qqqqqq", &lanes), Vec::<&str>::new());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
