//! A deterministic, production-like routing table shared by the benchmarks
//! (`benches/routing.rs`, `benches/scale.rs`): route rules, instances and
//! lanes generated in code, so every run measures the same table.
//!
//! Shape (the defaults of [`Shape::large`]):
//! - 1,000 servers with 2 names each (2,000 names): 50% exact, 20% leading
//!   wildcard `*.x`, 15% trailing wildcard `x.*`, 15% regex with named
//!   captures; server 0 is the default.
//! - 5,000 locations: 10 big servers with 250 each (exact `=`, prefix with
//!   and without rewrite, `^~`, `~` with named captures, `~*`), and 990
//!   small ones with 2–3 each (`/`, `= /healthz`, a shared static-file
//!   `~*` regex, as production configs repeat it in many servers).
//! - services × versions × instances per version, version 0 labelled
//!   `stable` (the baseline), the others `v1`…; each instance registered
//!   with a Consul agent body (tags, meta, weights, an HTTP check).
//! - lanes `t-0000`…, each overriding 1–5 services; every lane `i` with
//!   `i % 4` in {2, 3} has lane `i - 1` as parent (chains up to 3 deep).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use laneway::allocation::lanes::Lane;
use laneway::discovery::register::parse_registration;
use laneway::discovery::Instance;
use laneway::routing::snapshot::BASELINE;

/// Sizes of a generated table.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub servers: usize,
    pub big_servers: usize,
    pub big_locations: usize,
    /// Locations over all small servers (each gets 2 or 3).
    pub small_locations: usize,
    pub services: usize,
    pub versions: usize,
    pub per_version: usize,
    pub lanes: usize,
}

impl Shape {
    /// 2,000 names, 5,000 locations, 2,000 services × 20 versions × 5
    /// instances (200,000), 1,000 lanes.
    pub const fn large() -> Shape {
        Shape {
            servers: 1000,
            big_servers: 10,
            big_locations: 250,
            small_locations: 2500,
            services: 2000,
            versions: 20,
            per_version: 5,
            lanes: 1000,
        }
    }

    /// The large rules and lanes with 10,000 instances: 1,000 services × 2
    /// versions × 5 instances.
    pub const fn scale() -> Shape {
        Shape {
            services: 1000,
            versions: 2,
            per_version: 5,
            ..Shape::large()
        }
    }

    /// A small table of the same shape, for `cargo test`, which runs the
    /// benchmarks once as smoke tests.
    pub const fn smoke() -> Shape {
        Shape {
            servers: 100,
            big_servers: 2,
            big_locations: 50,
            small_locations: 250,
            services: 100,
            versions: 4,
            per_version: 2,
            lanes: 40,
        }
    }

    /// `shape` under `cargo bench`, [`Shape::smoke`] under `cargo test`
    /// (which runs a benchmark binary without `--bench`).
    pub fn or_smoke(shape: Shape) -> Shape {
        if std::env::args().any(|a| a == "--bench")
            || std::env::var_os("LANEWAY_BENCH_FULL").is_some()
        {
            shape
        } else {
            Shape::smoke()
        }
    }

    pub fn instances(&self) -> usize {
        self.services * self.versions * self.per_version
    }

    /// Every `big_every`-th server is big (server 0, the default, is big).
    fn big_every(&self) -> usize {
        self.servers / self.big_servers
    }

    pub fn is_big(&self, server: usize) -> bool {
        server.is_multiple_of(self.big_every())
    }

    /// Locations of small server `server` (2 or 3).
    fn small_count(&self, server: usize) -> usize {
        let small = self.servers - self.big_servers;
        let threes = self.small_locations - 2 * small;
        let rank = server - server / self.big_every() - 1;
        if rank < threes {
            3
        } else {
            2
        }
    }
}

/// Appends one formatted line.
fn push_line(out: &mut String, line: std::fmt::Arguments<'_>) {
    out.write_fmt(line)
        .expect("writing to a String cannot fail");
    out.push('\n');
}

pub fn service(n: usize) -> String {
    format!("svc-{n:04}")
}

pub fn version(v: usize) -> String {
    if v == 0 {
        "stable".to_string()
    } else {
        format!("v{v}")
    }
}

pub fn lane_name(i: usize) -> String {
    format!("t-{i:04}")
}

/// The kind of server name number `n` (two per server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Exact,
    Leading,
    Trailing,
    Regex,
}

pub fn name_kind(n: usize) -> NameKind {
    match n % 20 {
        0..=9 => NameKind::Exact,
        10..=13 => NameKind::Leading,
        14..=16 => NameKind::Trailing,
        _ => NameKind::Regex,
    }
}

/// The text of server name `n`, as written in routes.toml (TOML-escaped).
fn name_text(n: usize) -> String {
    match name_kind(n) {
        NameKind::Exact => format!("e{n}.example.com"),
        NameKind::Leading => format!("*.d{n}.example.com"),
        NameKind::Trailing => format!("www.d{n}.example.*"),
        NameKind::Regex => match n % 3 {
            0 => format!("~^(?<city>[a-z]+)\\\\.r{n}\\\\.example\\\\.com$"),
            1 => format!("~^(?<sub>[a-z0-9-]+)\\\\.(?<city>[a-z]+)\\\\.r{n}\\\\.example\\\\.org$"),
            _ => format!("~^r{n}-(?<city>[a-z]{{2,3}})(?<n>[0-9]*)\\\\.example\\\\.net$"),
        },
    }
}

/// A request host that the server name `n` matches (for regex names, one
/// with a capture).
pub fn host_for(n: usize) -> String {
    match name_kind(n) {
        NameKind::Exact => format!("e{n}.example.com"),
        NameKind::Leading => format!("a.b.d{n}.example.com"),
        NameKind::Trailing => format!("www.d{n}.example.co.uk"),
        NameKind::Regex => match n % 3 {
            0 => format!("bj.r{n}.example.com"),
            1 => format!("m-2.sh.r{n}.example.org"),
            _ => format!("r{n}-bj7.example.net"),
        },
    }
}

/// The first name number of `server` that has `kind`, if any.
pub fn name_of_kind(server: usize, kind: NameKind) -> Option<usize> {
    (2 * server..2 * server + 2).find(|&n| name_kind(n) == kind)
}

/// A server whose names include `kind` and that is small (or big).
pub fn server_with(shape: &Shape, kind: NameKind, big: bool) -> (usize, usize) {
    (1..shape.servers)
        .filter(|&s| shape.is_big(s) == big)
        .find_map(|s| name_of_kind(s, kind).map(|n| (s, n)))
        .expect("the table has every kind of name")
}

/// The service location `loc` of server `server` proxies to.
fn service_of(shape: &Shape, server: usize, loc: usize) -> String {
    service((server * 7919 + loc * 104_729) % shape.services)
}

/// routes.toml for the shape: `servers` blocks, `big_locations` in each big
/// server, `small_locations` over the small ones.
pub fn routes_toml(shape: &Shape) -> String {
    let mut out = String::with_capacity(4 << 20);
    for s in 0..shape.servers {
        let names = [name_text(2 * s), name_text(2 * s + 1)];
        push_line(
            &mut out,
            format_args!("[[server]]\nnames = [\"{}\", \"{}\"]", names[0], names[1]),
        );
        if s == 0 {
            out.push_str("default = true\n");
        }
        out.push('\n');
        let has_regex_name = names.iter().any(|n| n.starts_with('~'));
        if shape.is_big(s) {
            for k in 0..shape.big_locations {
                big_location(&mut out, shape, s, k, has_regex_name);
            }
        } else {
            small_locations(&mut out, shape, s, has_regex_name);
        }
    }
    out
}

/// Location kinds of big servers, by `k % 10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocKind {
    Exact,
    Prefix,
    NoRegex,
    Regex,
    RegexCaseless,
}

pub fn loc_kind(k: usize) -> LocKind {
    match k % 10 {
        0 | 1 => LocKind::Exact,
        2..=5 => LocKind::Prefix,
        6 | 7 => LocKind::NoRegex,
        8 => LocKind::Regex,
        _ => LocKind::RegexCaseless,
    }
}

/// A request path that location `k` of big server `s` matches.
pub fn path_for(s: usize, k: usize) -> String {
    match loc_kind(k) {
        LocKind::Exact => format!("/api/s{s}/x{k}/status"),
        LocKind::Prefix => format!("/api/s{s}/p{k}/users/42"),
        LocKind::NoRegex => format!("/static/s{s}/b{k}/app.js"),
        LocKind::Regex => format!("/v2/s{s}/r{k}/12345"),
        LocKind::RegexCaseless => format!("/Legacy/s{s}/c{k}/Index.PHP"),
    }
}

fn big_location(out: &mut String, shape: &Shape, s: usize, k: usize, city: bool) {
    let svc = service_of(shape, s, k);
    out.push_str("[[server.location]]\n");
    match loc_kind(k) {
        LocKind::Exact if k.is_multiple_of(20) => {
            push_line(out, format_args!("match = \"= /api/s{s}/x{k}/status\"\nreturn = {{ status = 200, body = \"ok $host\\n\" }}"));
        }
        LocKind::Exact => {
            push_line(
                out,
                format_args!("match = \"= /api/s{s}/x{k}/status\"\nservice = \"{svc}\""),
            );
        }
        LocKind::Prefix => {
            push_line(
                out,
                format_args!("match = \"/api/s{s}/p{k}/\"\nservice = \"{svc}\""),
            );
            if k % 5 == 2 {
                push_line(
                    out,
                    format_args!("rewrite = [\"^/api/s{s}/p{k}/(.*)$\", \"/$1\"]"),
                );
            }
            if city {
                out.push_str("set_headers = { \"X-City\" = \"$city\", \"X-Lane\" = \"$lane\" }\n");
            } else {
                out.push_str("set_headers = { \"X-Lane\" = \"$lane\" }\n");
            }
        }
        LocKind::NoRegex => {
            push_line(
                out,
                format_args!("match = \"^~ /static/s{s}/b{k}/\"\nservice = \"{svc}\""),
            );
        }
        LocKind::Regex => {
            push_line(out, format_args!("match = \"~ ^/v(?<ver>[0-9]+)/s{s}/r{k}/(?<id>[0-9]+)$\"\nservice = \"{svc}\"\n\
                 set_headers = {{ \"X-Id\" = \"$id\", \"X-Api-Version\" = \"$ver\" }}"));
        }
        LocKind::RegexCaseless => {
            push_line(
                out,
                format_args!(
                    "match = \"~* ^/legacy/s{s}/c{k}/.*\\\\.(php|jsp)$\"\nservice = \"{svc}\""
                ),
            );
        }
    }
    out.push('\n');
}

fn small_locations(out: &mut String, shape: &Shape, s: usize, city: bool) {
    let svc = service_of(shape, s, 0);
    let header = if city { "$city" } else { "$host" };
    push_line(
        out,
        format_args!(
            "[[server.location]]\nmatch = \"/\"\nservice = \"{svc}\"\n\
         set_headers = {{ \"X-Site\" = \"{header}\" }}\n"
        ),
    );
    push_line(out, format_args!("[[server.location]]\nmatch = \"= /healthz\"\nreturn = {{ status = 200, body = \"ok\\n\" }}\n"));
    if shape.small_count(s) == 3 {
        let static_svc = service_of(shape, s, 1);
        push_line(
            out,
            format_args!(
                "[[server.location]]\nmatch = \"~* \\\\.(png|jpe?g|gif|css|js|ico|svg|woff2?)$\"\n\
             service = \"{static_svc}\"\n"
            ),
        );
    }
}

/// The Consul agent register body of instance `k` of `version` of `service`.
pub fn register_body(svc: usize, version_n: usize, k: usize) -> String {
    let id = instance_id(svc, version_n, k);
    let n = (svc * 20 + version_n) * 8 + k;
    let addr = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let port = 20000 + (n % 10000);
    format!(
        r#"{{"ID":"{id}","Name":"{}","Address":"{addr}","Port":{port},"Tags":["http","team-{}"],"Meta":{{"version":"{}","commit":"{:08x}"}},"Weights":{{"Passing":10,"Warning":1}},"Check":{{"HTTP":"http://{addr}:{port}/health","Interval":"10s","Timeout":"1s"}}}}"#,
        service(svc),
        svc % 37,
        version(version_n),
        n.wrapping_mul(2_654_435_761) & 0xffff_ffff,
    )
}

pub fn instance_id(svc: usize, version_n: usize, k: usize) -> String {
    format!("{}-{}-{k}", service(svc), version(version_n))
}

/// Every instance of the shape, sorted by id (as `Catalog` wants).
pub fn instances(shape: &Shape) -> Vec<Instance> {
    let mut out = Vec::with_capacity(shape.instances());
    for s in 0..shape.services {
        for v in 0..shape.versions {
            for k in 0..shape.per_version {
                out.push(parse(&register_body(s, v, k)));
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

pub fn parse(body: &str) -> Instance {
    parse_registration(body.as_bytes(), "version", "lane").expect("generated bodies are valid")
}

/// The services lane `i` overrides, with their versions (1–5 of them).
pub fn lane_services(shape: &Shape, i: usize) -> BTreeMap<String, String> {
    (0..i % 5 + 1)
        .map(|j| {
            let svc = (i * 7 + j * 389) % shape.services;
            let v = 1 + (i + j) % (shape.versions - 1).max(1);
            (service(svc), version(v.min(shape.versions - 1)))
        })
        .collect()
}

/// The parent of lane `i`.
pub fn lane_parent(i: usize) -> Option<usize> {
    (i % 4 >= 2).then(|| i - 1)
}

/// The baseline and `shape.lanes` lanes.
pub fn lanes(shape: &Shape) -> Vec<Lane> {
    let mut out = vec![Lane {
        name: BASELINE.to_string(),
        services: BTreeMap::new(),
        parent: None,
        strict: false,
        created_at: 0,
        updated_at: 0,
        ..Default::default()
    }];
    for i in 0..shape.lanes {
        out.push(Lane {
            name: lane_name(i),
            services: lane_services(shape, i),
            parent: Some(lane_parent(i).map_or_else(|| BASELINE.to_string(), lane_name)),
            strict: i % 10 == 9,
            created_at: 0,
            updated_at: 0,
            ..Default::default()
        });
    }
    out
}
