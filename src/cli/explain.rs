//! `laneway explain URL [--lane L] [--header Name:Value]… [--listener ADDR]`: asks a running
//! laneway's admin API what it would do with a request (nothing is sent
//! upstream) and prints the answer readably, or the API's JSON with
//! `--json`.

use std::fmt::Write as _;

use clap::Args;
use serde_json::Value;

use super::lane::{encode, normalise, text, Api};

/// Explain how laneway would route a request.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The URL as a client would open it, e.g. http://bj.example.com/user/1
    pub url: String,
    /// Ask for this lane (as the lane header would).
    #[arg(long)]
    pub lane: Option<String>,
    /// A request header, repeatable: `--header 'Cookie: laneway_lane=t-1'`.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// The laneway listener the request arrives on (its nginx port chooses
    /// among the servers); default: the URL's address, else the first
    /// `[proxy] listen`.
    #[arg(long, value_name = "ADDR")]
    pub listener: Option<String>,
    /// The admin API to talk to.
    #[arg(long, default_value = "http://127.0.0.1:9900", value_name = "URL")]
    pub admin: String,
    /// The admin token, sent as `Authorization: Bearer`.
    #[arg(
        long,
        env = "LANEWAY_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub token: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command; `Ok` is what to print, `Err` the message for stderr.
pub fn run(args: ExplainArgs) -> Result<String, String> {
    let admin = normalise(&args.admin);
    let mut query = format!("url={}", encode(&args.url));
    if let Some(l) = &args.lane {
        let _ = write!(query, "&lane={}", encode(l));
    }
    if let Some(l) = &args.listener {
        let _ = write!(query, "&listener={}", encode(l));
    }
    for h in &args.headers {
        if !h.contains(':') {
            return Err(format!("--header {h:?} must be NAME:VALUE"));
        }
        let _ = write!(query, "&header={}", encode(h));
    }
    let v = Api {
        admin: &admin,
        token: args.token.as_deref(),
    }
    .call("GET", &format!("/api/v1/explain?{query}"), None)?;
    if args.json {
        return serde_json::to_string_pretty(&v)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string());
    }
    Ok(render(&v))
}

/// The explanation as aligned `key  value` lines.
pub fn render(v: &Value) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, val: String| rows.push((k.to_string(), val));
    let r = &v["request"];
    row(
        "request",
        format!("{} (Host {})", text(&r["url"]), text(&r["host"])),
    );
    let l = &v["lane"];
    row(
        "lane",
        format!(
            "{} by {} ({}){}",
            text(&l["name"]),
            text(&l["source"]),
            text(&l["detail"]),
            if l["strict"].as_bool() == Some(true) {
                ", strict"
            } else {
                ""
            }
        ),
    );
    if !l["production_host"].is_null() {
        row("production host", text(&l["production_host"]));
    }
    let li = &v["listener"];
    if !li.is_null() {
        row(
            "listener",
            format!(
                "{} = nginx port {} ({}){}",
                text(&li["address"]),
                text(&li["nginx_port"]),
                text(&li["source"]),
                if li["selects_servers"] == true {
                    ""
                } else {
                    "; the servers name at most one port, so it chooses nothing"
                }
            ),
        );
    }
    let s = &v["server"];
    if !s.is_null() {
        row(
            "server",
            format!(
                "{}:{} by {}{}{}",
                text(&s["file"]),
                text(&s["line"]),
                text(&s["matched_by"]),
                match &s["name"] {
                    Value::Null => String::new(),
                    n => format!(" {}", text(n)),
                },
                match &s["port"] {
                    Value::Null => String::new(),
                    p => format!(" on port {}", text(p)),
                }
            ),
        );
    } else if v["outcome"]["reason"] != "free_entry" {
        row("server", "none matches".to_string());
    }
    let loc = &v["location"];
    if !loc.is_null() {
        row(
            "location",
            format!(
                "{:?} at {}:{} by {}",
                text(&loc["match"]),
                text(&loc["file"]),
                text(&loc["line"]),
                text(&loc["matched_by"])
            ),
        );
    } else if !s.is_null() {
        row("location", "none matches".to_string());
    }
    let ver = &v["version"];
    if !ver.is_null() {
        row(
            "version",
            format!(
                "{} {} ({}, served by lane {})",
                text(&ver["service"]),
                text(&ver["version"]),
                text(&ver["choice"]),
                text(&ver["served_by"])
            ),
        );
        row("why", text(&ver["why"]));
        let chain: Vec<String> = ver["chain"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|step| {
                        let pinned = match &step["version"] {
                            Value::Null => "no override".to_string(),
                            p => format!(
                                "{} ({})",
                                text(p),
                                if step["healthy"] == true {
                                    "healthy"
                                } else {
                                    "no healthy instance"
                                }
                            ),
                        };
                        format!("{}: {pinned}", text(&step["lane"]))
                    })
                    .collect()
            })
            .unwrap_or_default();
        row("chain", chain.join(" -> "));
    }
    let o = &v["outcome"];
    match o["action"].as_str() {
        Some("proxy") => {
            row("upstream uri", text(&o["upstream_uri"]));
            row("host header", text(&o["host_header"]));
            if !o["status"].is_null() {
                row(
                    "status",
                    format!("{} (an error page is in force)", text(&o["status"])),
                );
            }
            if let Some(codes) = o["intercept_errors"].as_array() {
                let codes: Vec<String> = codes.iter().map(text).collect();
                row(
                    "intercept",
                    format!("upstream {} go to the error page", codes.join(", ")),
                );
            }
        }
        _ => row(
            "answer",
            format!(
                "{} {} {}",
                text(&o["status"]),
                text(&o["reason"]),
                text(&o["body"]).trim()
            ),
        ),
    }
    let inst = &v["instances"];
    for (i, u) in inst["would_try"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let key = if i == 0 { "would try" } else { "" };
        let reason = match &u["reason"] {
            Value::Null => String::new(),
            r => format!(": {}", text(r)),
        };
        row(
            key,
            format!(
                "{} {} weight {} {}{reason}",
                text(&u["id"]),
                text(&u["address"]),
                text(&u["weight"]),
                text(&u["health"])
            ),
        );
    }
    for (i, u) in inst["held_out"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let key = if i == 0 { "held out" } else { "" };
        row(
            key,
            format!(
                "{} {} {}: {}",
                text(&u["id"]),
                text(&u["address"]),
                text(&u["health"]),
                text(&u["reason"])
            ),
        );
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, val) in rows {
        let _ = writeln!(out, "{k:width$}  {val}");
    }
    out
}
