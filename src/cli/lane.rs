//! `laneway lane create|list|show|extend|delete`: a client of the admin API
//! (`--admin URL`), printing tables or, with `--json`, the API's JSON.
//! Errors say which admin URL could not be reached, or repeat the API's own
//! message.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

/// Manage lanes through a running laneway's admin API.
#[derive(Debug, Args)]
pub struct LaneArgs {
    /// The admin API to talk to.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:9900",
        value_name = "URL"
    )]
    pub admin: String,
    /// The admin token (a `[admin] tokens_file` secret), sent as
    /// `Authorization: Bearer`.
    #[arg(
        long,
        global = true,
        env = "LANEWAY_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: LaneCommand,
}

#[derive(Debug, Subcommand)]
pub enum LaneCommand {
    /// Create a lane and allocate its VIP, port and hostname; the same
    /// settings again show the existing lane.
    Create {
        name: String,
        /// A version override, repeatable: `-s user-api=v2`.
        #[arg(short, long = "service", value_name = "SERVICE=VERSION")]
        services: Vec<String>,
        /// The lane to fall back to (default: baseline).
        #[arg(long)]
        parent: Option<String>,
        /// Answer 503 instead of falling back when a version is missing.
        #[arg(long)]
        strict: bool,
        /// A specific VIP of the pool.
        #[arg(long)]
        vip: Option<String>,
        /// A specific port of the pool.
        #[arg(long)]
        port: Option<u16>,
        /// A lease, e.g. 72h; the lane is released when it ends.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A label, repeatable: `-l team=pay`.
        #[arg(short, long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List lanes, optionally filtered.
    List {
        #[arg(long)]
        owner: Option<String>,
        /// Only lanes with this label, repeatable.
        #[arg(short, long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Show one lane with its entries and URLs.
    Show { name: String },
    /// Renew a lane's lease: it ends TTL from now (default: its own lease length).
    Extend {
        name: String,
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Delete a lane; its VIP and port go into quarantine.
    Delete { name: String },
}

/// Runs the command; `Ok` is what to print on stdout, `Err` the message for
/// stderr.
pub fn run(args: LaneArgs) -> Result<String, String> {
    let admin = normalise(&args.admin);
    let api = Api {
        admin: &admin,
        token: args.token.as_deref(),
    };
    let (value, kind) = match args.command {
        LaneCommand::Create {
            name,
            services,
            parent,
            strict,
            vip,
            port,
            ttl,
            owner,
            description,
            labels,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("services".into(), json!(pairs("--service", &services)?));
            if !labels.is_empty() {
                body.insert("labels".into(), json!(pairs("--label", &labels)?));
            }
            for (key, value) in [
                ("parent", parent),
                ("vip", vip),
                ("ttl", ttl),
                ("owner", owner),
                ("description", description),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), json!(v));
                }
            }
            if strict {
                body.insert("strict".into(), json!(true));
            }
            if let Some(p) = port {
                body.insert("port".into(), json!(p));
            }
            let value = api.call("POST", "/api/v1/lanes", Some(Value::Object(body)))?;
            (value, Kind::Lane)
        }
        LaneCommand::List { owner, labels } => {
            let mut query = Vec::new();
            if let Some(o) = owner {
                query.push(format!("owner={}", encode(&o)));
            }
            for l in &labels {
                if !l.contains('=') {
                    return Err(format!("--label {l:?} must be KEY=VALUE"));
                }
                query.push(format!("label={}", encode(l)));
            }
            let path = if query.is_empty() {
                "/api/v1/lanes".to_owned()
            } else {
                format!("/api/v1/lanes?{}", query.join("&"))
            };
            (api.call("GET", &path, None)?, Kind::List)
        }
        LaneCommand::Show { name } => (
            api.call("GET", &format!("/api/v1/lanes/{}", encode(&name)), None)?,
            Kind::Lane,
        ),
        LaneCommand::Extend { name, ttl } => {
            let body = ttl.map(|t| json!({ "ttl": t }));
            let path = format!("/api/v1/lanes/{}/extend", encode(&name));
            (api.call("POST", &path, body)?, Kind::Lane)
        }
        LaneCommand::Delete { name } => (
            api.call("DELETE", &format!("/api/v1/lanes/{}", encode(&name)), None)?,
            Kind::Deleted,
        ),
    };
    if args.json {
        return serde_json::to_string_pretty(&value)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| e.to_string());
    }
    Ok(match kind {
        Kind::Lane => show_lane(&value),
        Kind::List => list_table(&value),
        Kind::Deleted => {
            let lane = &value["deleted"];
            let mut out = format!("lane {} deleted", text(&lane["name"]));
            let held: Vec<String> = [
                ("vip", &lane["entries"]["vip"]),
                ("port", &lane["entries"]["port"]),
            ]
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k} {}", text(v)))
            .collect();
            if !held.is_empty() {
                let _ = write!(
                    out,
                    "; {} held in quarantine for this lane name",
                    held.join(" and ")
                );
            }
            out.push('\n');
            out
        }
    })
}

enum Kind {
    Lane,
    List,
    Deleted,
}

pub(super) struct Api<'a> {
    pub(super) admin: &'a str,
    pub(super) token: Option<&'a str>,
}

impl Api<'_> {
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.admin);
        let mut req = ureq::request(method, &url).timeout(Duration::from_secs(30));
        if let Some(t) = self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => r
                .into_json::<Value>()
                .map_err(|e| format!("{method} {url}: the answer is not JSON: {e}")),
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{method} {url} answered {status}: {}", text.trim()));
                Err(message)
            }
            Err(ureq::Error::Transport(t)) => Err(format!(
                "cannot reach the laneway admin API at {} ({}); is laneway running there? Use --admin URL to point elsewhere",
                self.admin,
                t.to_string().trim()
            )),
        }
    }
}

/// `127.0.0.1:9900` and `http://h:p/` both become `http://h:p`.
pub(super) fn normalise(admin: &str) -> String {
    let admin = admin.trim().trim_end_matches('/');
    if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    }
}

pub(super) fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// `k=v` arguments as a map.
fn pairs(flag: &str, items: &[String]) -> Result<Map<String, Value>, String> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), json!(v))),
            _ => Err(format!("{flag} {item:?} must be KEY=VALUE")),
        })
        .collect()
}

/// A JSON value as plain text: strings unquoted, null as `-`.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `k=v, k=v` of an object, or `-`.
fn joined(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_owned(),
    }
}

fn show_lane(lane: &Value) -> String {
    let e = &lane["entries"];
    let urls: Vec<String> = e["urls"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let expires = match (&lane["expires"], &lane["ttl"]) {
        (Value::Null, _) => "never".to_owned(),
        (at, ttl) => format!("{} (ttl {})", text(at), text(ttl)),
    };
    let rows: Vec<(&str, String)> = vec![
        ("name", text(&lane["name"])),
        ("parent", text(&lane["parent"])),
        ("services", joined(&lane["services"])),
        ("strict", text(&lane["strict"])),
        ("vip", text(&e["vip"])),
        ("port", text(&e["port"])),
        ("hostname", text(&e["hostname"])),
        ("urls", urls.join("\n              ")),
        ("hosts line", text(&e["hosts_line"])),
        ("owner", text(&lane["owner"])),
        ("description", text(&lane["description"])),
        ("labels", joined(&lane["labels"])),
        ("expires", expires),
        ("auto", text(&lane["auto"])),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:<13} {v}", format!("{k}:"));
    }
    // create and patch say what in the lane will not serve as asked
    for w in lane["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "warning: {}", text(w));
    }
    out
}

fn list_table(list: &Value) -> String {
    let header = [
        "NAME", "VIP", "PORT", "HOSTNAME", "OWNER", "EXPIRES", "AUTO", "SERVICES",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for lane in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let e = &lane["entries"];
        rows.push(vec![
            text(&lane["name"]),
            text(&e["vip"]),
            text(&e["port"]),
            text(&e["hostname"]),
            text(&lane["owner"]),
            text(&lane["expires"]),
            if lane["auto"] == json!(true) {
                "yes"
            } else {
                "-"
            }
            .to_owned(),
            joined(&lane["services"]),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane() -> Value {
        json!({
            "name": "t-42", "parent": "baseline", "services": {"user-api": "v2"}, "strict": false,
            "owner": "ann", "description": null, "labels": {"team": "pay"},
            "ttl": "72h", "expires": "2030-01-01T00:00:00Z", "auto": false,
            "entries": {"vip": "127.0.0.2", "port": 20000, "hostname": "t-42.lanes.test",
                        "urls": ["http://127.0.0.2:8080/", "http://t-42.lanes.test:20000/"],
                        "hosts_line": "127.0.0.2 shop.example.com t-42.lanes.test"}
        })
    }

    #[test]
    fn show_prints_entries_one_per_line() {
        let out = show_lane(&lane());
        assert!(out.contains("vip:          127.0.0.2\n"), "{out}");
        assert!(out.contains("services:     user-api=v2\n"), "{out}");
        assert!(out.contains("urls:         http://127.0.0.2:8080/\n              http://t-42.lanes.test:20000/\n"), "{out}");
        assert!(out.contains("description:  -\n"), "{out}");
        assert!(
            out.contains("expires:      2030-01-01T00:00:00Z (ttl 72h)\n"),
            "{out}"
        );
    }

    #[test]
    fn show_prints_the_warnings_of_create_and_patch() {
        assert!(!show_lane(&lane()).contains("warning"));
        let mut created = lane();
        created["warnings"] = json!([
            "version \"v2\" of service \"user-api\" has no registered instance",
            "service \"pay\" (version \"v1\"): no rule routes to it",
        ]);
        let out = show_lane(&created);
        assert!(
            out.ends_with("warning: version \"v2\" of service \"user-api\" has no registered instance\nwarning: service \"pay\" (version \"v1\"): no rule routes to it\n"),
            "{out}"
        );
    }

    #[test]
    fn list_is_an_aligned_table() {
        let mut other = lane();
        other["name"] = json!("a-much-longer-name");
        other["entries"]["vip"] = Value::Null;
        let out = list_table(&json!([lane(), other]));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("NAME                VIP        PORT"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("t-42                127.0.0.2  20000"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("a-much-longer-name  -          20000"),
            "{out}"
        );
    }

    #[test]
    fn arguments_are_checked_before_any_request() {
        assert!(pairs("--service", &["web".into()])
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert_eq!(normalise("127.0.0.1:9900/"), "http://127.0.0.1:9900");
        assert_eq!(normalise("https://h"), "https://h");
    }
}
