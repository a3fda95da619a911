//! `laneway explain URL`: asks a running laneway's admin API
//! (`/api/v1/explain`) how it would route a request, and prints the answer:
//! lane and how it was found, the server and location matched (file:line),
//! the version chosen and why, and the instances that would be tried.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

/// Explain how a running laneway routes a request (nothing is sent upstream).
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The request: `http://host[:port]/path?query`.
    pub url: String,
    /// Ask as this lane (sent as the lane header).
    #[arg(long)]
    pub lane: Option<String>,
    /// A request header, repeatable: `-H 'Cookie: laneway_lane=t-1'`.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// The address the client connected to (a VIP or a pool port).
    #[arg(long, value_name = "IP:PORT")]
    pub dst: Option<String>,
    /// The admin API to ask.
    #[arg(long, default_value = "http://127.0.0.1:9900", value_name = "URL")]
    pub admin: String,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExplainArgs) -> Result<String, String> {
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let mut query = format!("url={}", enc(&args.url));
    if let Some(l) = &args.lane {
        write!(query, "&lane={}", enc(l)).ok();
    }
    for h in &args.headers {
        write!(query, "&header={}", enc(h)).ok();
    }
    if let Some(d) = &args.dst {
        write!(query, "&dst={}", enc(d)).ok();
    }
    let admin = args.admin.trim().trim_end_matches('/');
    let admin = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    let url = format!("{admin}/api/v1/explain?{query}");
    let answer: Value = match ureq::get(&url).timeout(Duration::from_secs(30)).call() {
        Ok(r) => r
            .into_json()
            .map_err(|e| format!("{url}: the answer is not JSON: {e}"))?,
        Err(ureq::Error::Status(_, r)) => {
            let text = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(msg);
        }
        Err(ureq::Error::Transport(t)) => {
            return Err(format!(
                "cannot reach the laneway admin API at {admin} ({}); use --admin URL",
                t.to_string().trim()
            ))
        }
    };
    if args.json {
        return Ok(format!("{answer:#}\n"));
    }
    Ok(render(&answer))
}

/// The answer as lines a person reads.
fn render(a: &Value) -> String {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let mut out = String::new();
    let r = &a["request"];
    writeln!(
        out,
        "request   {}://{}{}",
        s(&r["scheme"]),
        s(&r["host"]),
        s(&r["target"])
    )
    .ok();
    let lane = &a["lane"];
    let chain: Vec<String> = lane["chain"]
        .as_array()
        .map(|c| c.iter().map(s).collect())
        .unwrap_or_default();
    writeln!(
        out,
        "lane      {} (from {}{}; chain {})",
        s(&lane["name"]),
        s(&lane["source"]),
        if lane["strict"] == true {
            ", strict"
        } else {
            ""
        },
        chain.join(" → ")
    )
    .ok();
    if a["host_recovered"] == true {
        writeln!(
            out,
            "host      {} (recovered from the lane hostname)",
            s(&a["rules_host"])
        )
        .ok();
    }
    if a["server"].is_object() {
        let sv = &a["server"];
        let names: Vec<String> = sv["names"]
            .as_array()
            .map(|n| n.iter().map(s).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "server    {} ({}:{})",
            names.join(" "),
            s(&sv["file"]),
            sv["line"]
        )
        .ok();
        let lo = &a["location"];
        writeln!(
            out,
            "location  {} ({}:{})",
            s(&lo["match"]),
            s(&lo["file"]),
            lo["line"]
        )
        .ok();
    }
    writeln!(out, "action    {}", s(&a["action"])).ok();
    if a["service"].is_string() {
        writeln!(
            out,
            "service   {} → upstream target {}",
            s(&a["service"]),
            s(&a["upstream_target"])
        )
        .ok();
    }
    if a["version"].is_string() {
        writeln!(
            out,
            "version   {} ({}, served by lane {})",
            s(&a["version"]),
            s(&a["choice"]),
            s(&a["served_by"])
        )
        .ok();
    }
    if a["redirect_to"].is_string() {
        writeln!(out, "redirect  {} {}", a["status"], s(&a["redirect_to"])).ok();
    } else if !a["status"].is_null() {
        writeln!(out, "status    {}", s(&a["status"])).ok();
    }
    if a["why"].is_string() {
        writeln!(out, "why       {}", s(&a["why"])).ok();
    }
    for i in a["instances"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "instance  {} {} weight {}",
            s(&i["id"]),
            s(&i["address"]),
            i["weight"]
        )
        .ok();
    }
    for i in a["not_routed"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "skipped   {} version {} ({})",
            s(&i["id"]),
            s(&i["version"]),
            s(&i["reason"])
        )
        .ok();
    }
    out
}
