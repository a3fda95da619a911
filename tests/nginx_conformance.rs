//! Differential conformance: the real nginx (Debian package) and laneway run
//! the same nginx configuration, every upstream is an echo server that says
//! who it is and which path and query it received, and a generated corpus of
//! requests (hosts × paths × queries × headers × cookies) must get the same
//! answer from both: upstream, upstream path+query, status and redirect
//! Location. A mismatch is printed as request / nginx / laneway.
//!
//! A configuration may listen on two ports (`{{LISTEN2}}`): nginx then
//! listens on two ports and laneway on two listeners mapped to them with
//! `[routes.nginx_listen]`, and every request is sent on both. The echo
//! upstreams answer the status a `/status/NNN` path segment asks for, so
//! that `proxy_intercept_errors` and `error_page` are compared too.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, Conn, Laneway, Upstream};

/// The nginx binary: `scripts/test.sh` installs the Debian package.
fn nginx_bin() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx is not installed: run ./scripts/setup.sh nginx (scripts/test.sh does)");
}

/// A real nginx on a loopback port, run from its own prefix directory.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, port: u16) -> Nginx {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut n = Nginx {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        let up = eventually(Duration::from_secs(20), || {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited with {status}: {}", n.log());
            }
            std::net::TcpStream::connect(addr).is_ok()
        });
        assert!(up, "nginx did not start: {}", n.log());
        n
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a request got, reduced to what must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    upstream: String,
    target: String,
    location: String,
}

fn ask(addr: SocketAddr, host: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("host", host), ("connection", "close")];
    all.extend_from_slice(headers);
    let r = Conn::open(addr)
        .and_then(|mut c| c.request("GET", target, &all, b""))
        .unwrap_or_else(|e| panic!("GET http://{host}{target} via {addr}: {e}"));
    let (upstream, up_target) = match serde_json::from_str::<serde_json::Value>(&r.body) {
        Ok(v) if v.get("upstream").is_some() => (
            v["upstream"].as_str().unwrap_or("").to_string(),
            v["target"].as_str().unwrap_or("").to_string(),
        ),
        _ => (String::new(), String::new()),
    };
    // nginx makes a relative Location absolute with the Host and its own
    // port; laneway keeps it relative (its port is not the one QA used)
    let mut location = r.header("location").unwrap_or("").to_string();
    let port = format!(":{}/", addr.port());
    if let Some(rest) = location.strip_prefix("http://") {
        if let Some(i) = rest.find(&port) {
            if !rest[..i].contains('/') {
                location = rest[i + port.len() - 1..].to_string();
            }
        }
    }
    Answer {
        status: r.status,
        upstream,
        target: up_target,
        location,
    }
}

/// One configuration: nginx text with `{{LISTEN}}` (and `{{LISTEN2}}` for a
/// second port) and `{{name}}` for the port of the echo upstream `name`,
/// extra files (includes), hosts, paths.
struct Case {
    name: &'static str,
    files: Vec<(&'static str, &'static str)>,
    upstreams: &'static [&'static str],
    hosts: &'static [&'static str],
    paths: &'static [&'static str],
    /// nginx listens on two ports (`{{LISTEN2}}`).
    two_ports: bool,
}

const COMMON_HTTP: &str = "
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    proxy_http_version 1.1;
    proxy_set_header Host $host;
    proxy_set_header Connection \"\";
";

const MAIN: &str = "
daemon off;
master_process off;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log;
events { worker_connections 256; }
";

/// Runs a configuration on nginx and on laneway (with `engine`, `"h1"` or
/// `"pingora"`); returns the number of requests and the mismatches.
fn run_case(case: &Case, engine: &str) -> (usize, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let echoes: Vec<Upstream> = case.upstreams.iter().map(|n| Upstream::start(n)).collect();
    let nginx_port = free_port();
    let nginx_port2 = free_port();
    let fill = |text: &str| {
        let mut t = text
            .replace("{{LISTEN}}", &format!("127.0.0.1:{nginx_port}"))
            .replace("{{LISTEN2}}", &format!("127.0.0.1:{nginx_port2}"));
        t = t
            .replace("{{COMMON}}", COMMON_HTTP)
            .replace("{{MAIN}}", MAIN);
        for e in &echoes {
            t = t.replace(&format!("{{{{{}}}}}", e.name), &e.port().to_string());
        }
        t
    };
    for (rel, text) in &case.files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, fill(text)).unwrap();
    }
    let check = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--nginx"])
        .arg(dir.join("nginx.conf"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}: laneway check --nginx failed:\n{}{}",
        case.name,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let nginx = Nginx::start(&dir, nginx_port);
    // laneway gets its own directory holding the same configuration files
    let ltmp = tempfile::tempdir().unwrap();
    for (rel, text) in &case.files {
        let p = ltmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, fill(text)).unwrap();
    }
    let listen: Vec<SocketAddr> = (0..if case.two_ports { 2 } else { 1 })
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let mut routes = "nginx = \"nginx.conf\"\n".to_string();
    if case.two_ports {
        routes.push_str(&format!(
            "[routes.nginx_listen]\n\"{}\" = {nginx_port}\n\"{}\" = {nginx_port2}\n",
            listen[0], listen[1]
        ));
    }
    let _laneway =
        Laneway::start_listening(ltmp, &listen, &format!("engine = \"{engine}\""), &routes);
    // nginx and laneway, port by port
    let mut pairs = vec![(nginx.addr, listen[0])];
    if case.two_ports {
        let second: SocketAddr = format!("127.0.0.1:{nginx_port2}").parse().unwrap();
        assert!(eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(second).is_ok()
                && std::net::TcpStream::connect(listen[1]).is_ok()
        }));
        pairs.push((second, listen[1]));
    }

    let queries = ["", "?a=1", "?a=1&b=two&v=7", "?q=x%20y"];
    let headers: [&[(&str, &str)]; 3] = [&[], &[("x-canary", "1")], &[("user-agent", "Mobile")]];
    let cookies = ["", "beta=on", "beta=off; lang=en"];
    let mut n = 0;
    let mut mismatches = Vec::new();
    for (nginx_addr, laneway_addr) in &pairs {
        for host in case.hosts {
            for path in case.paths {
                for q in queries {
                    let target = format!("{path}{q}");
                    let mut hs: Vec<(&str, &str)> = headers[n % headers.len()].to_vec();
                    let cookie = cookies[(n / headers.len()) % cookies.len()];
                    if !cookie.is_empty() {
                        hs.push(("cookie", cookie));
                    }
                    n += 1;
                    let a = ask(*nginx_addr, host, &target, &hs);
                    let b = ask(*laneway_addr, host, &target, &hs);
                    if a != b {
                        mismatches.push(format!(
                            "{} ({engine}): GET {target} Host: {host} via nginx {nginx_addr} / laneway {laneway_addr} {hs:?}\n  nginx:   {a:?}\n  laneway: {b:?}",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    drop(nginx);
    (n, mismatches)
}

fn city_sites() -> Case {
    Case {
        name: "city-sites",
        upstreams: &[
            "www_web",
            "city_web",
            "user_api",
            "search_api",
            "static_files",
            "m_web",
        ],
        hosts: &[
            "www.example.com",
            "example.com",
            "bj.example.com",
            "SH.Example.com",
            "gz.example.com.",
            "m.example.com",
            "x.m.example.com",
            "unknown.test",
        ],
        paths: &[
            "/",
            "/health",
            "/static/app.css",
            "/static",
            "/user/",
            "/user/42/profile",
            "/user",
            "/search/phones",
            "/search/a/b",
            "/img/logo.PNG",
            "/api/orders/1",
            "/api",
            "/old-city/deals",
            "/a//b/../c",
            "/user/a%20b",
        ],
        two_ports: false,
        files: vec![(
            "nginx.conf",
            r#"{{MAIN}}
http {
    {{COMMON}}
    upstream www_web { server 127.0.0.1:{{www_web}}; }
    upstream city_web { server 127.0.0.1:{{city_web}} weight=2; keepalive 16; }
    upstream user_api { server 127.0.0.1:{{user_api}}; }
    upstream search_api { server 127.0.0.1:{{search_api}}; }
    upstream static_files { server 127.0.0.1:{{static_files}}; }
    upstream m_web { server 127.0.0.1:{{m_web}}; }
    gzip on;
    proxy_read_timeout 30;

    server {
        listen {{LISTEN}} default_server;
        server_name www.example.com example.com;
        location / { proxy_pass http://www_web; }
        location = /health { return 200 "ok"; }
        location ^~ /static/ { proxy_pass http://static_files/assets/; }
    }

    server {
        listen {{LISTEN}};
        server_name ~^(?<city>[a-z]+)\.example\.com$;
        rewrite ^/old-city/(.*)$ /deals/$1?city=$city permanent;
        location / { proxy_pass http://city_web; add_header X-City $city; }
        location /user/ {
            rewrite ^/user/(.*)$ /u/$1?city=$city break;
            proxy_pass http://user_api;
        }
        location ~ ^/search/(?<q>[^/]+)$ { proxy_pass http://search_api/find?city=$city&q=$q; }
        location ~* \.(png|jpg|css|js)$ { proxy_pass http://static_files; }
        location ^~ /static/ { proxy_pass http://static_files/; }
        location /api/ { proxy_pass http://user_api/v2/; proxy_connect_timeout 2s; }
    }

    server {
        listen {{LISTEN}};
        server_name m.example.com *.m.example.com;
        location / {
            if ($http_user_agent ~* mobile) { proxy_pass http://m_web; }
            return 302 https://www.example.com$request_uri;
        }
    }
}
"#,
        )],
    }
}

fn map_driven() -> Case {
    Case {
        name: "map-driven",
        upstreams: &[
            "web_default",
            "shop_web",
            "saas_web",
            "api_gw",
            "canary_web",
        ],
        hosts: &[
            "shop.example.com",
            "eu.shop.example.com",
            "acme.saas.example.com",
            "Big-Co.saas.example.com",
            "api.example.com",
            "other.example.org",
            "SHOP.example.com",
            "x.y.shop.example.com",
        ],
        paths: &[
            "/",
            "/ping",
            "/legacy/x/y",
            "/new/a",
            "/tenant/home",
            "/tenant/",
            "/cookie/c",
            "/args/list",
            "/versioned/9",
            "/deep/path/with.dots",
        ],
        two_ports: false,
        files: vec![(
            "nginx.conf",
            r#"{{MAIN}}
http {
    {{COMMON}}
    upstream web_default { server 127.0.0.1:{{web_default}}; }
    upstream shop_web { server 127.0.0.1:{{shop_web}}; }
    upstream saas_web { server 127.0.0.1:{{saas_web}}; }
    upstream api_gw { server 127.0.0.1:{{api_gw}}; }
    upstream canary_web { server 127.0.0.1:{{canary_web}}; }

    map $host $backend {
        hostnames;
        default web_default;
        shop.example.com shop_web;
        *.shop.example.com shop_web;
        ~^(?<tenant>[a-z0-9-]+)\.saas\.example\.com$ saas_web;
        api.example.com api_gw;
    }
    map $http_x_canary $canary_backend {
        default $backend;
        "1" canary_web;
    }
    map $uri $legacy {
        default 0;
        ~^/legacy/ 1;
    }

    server {
        listen {{LISTEN}} default_server;
        server_name _;
        if ($legacy) { rewrite ^/legacy/(.*)$ /new/$1 last; }
        location / { proxy_pass http://$canary_backend; }
        location /new/ { proxy_pass http://$backend; }
        location = /ping { return 204; }
        location /tenant/ {
            set $b $backend;
            if ($tenant = "") { return 404; }
            rewrite ^/tenant/(.*)$ /t/$tenant/$1 break;
            proxy_pass http://$b;
        }
        location /cookie/ {
            if ($cookie_beta = "on") { proxy_pass http://canary_web; }
            proxy_pass http://$backend;
        }
        location /args/ {
            if ($arg_v ~ ^(\d+)$) { rewrite ^ /versioned/$1 last; }
            proxy_pass http://$backend;
        }
        location /versioned/ { proxy_pass http://api_gw; }
    }
}
"#,
        )],
    }
}

fn nested_rewrites() -> Case {
    Case {
        name: "nested-rewrites",
        upstreams: &[
            "frontend",
            "legacy_php",
            "catalog_api",
            "static_files",
            "cart_api",
            "account_api",
        ],
        hosts: &["shop.example.com", "www.shop.example.com"],
        paths: &[
            "/",
            "/index.php",
            "/about",
            "/catalog/item/123",
            "/catalog/item/abc",
            "/catalog/shoes/red",
            "/catalog/static/a.css",
            "/catalog/SKU42.json",
            "/catalog",
            "/item",
            "/products/a/b",
            "/img/x.webp",
            "/img/y.png",
            "/media/z.webp",
            "/media/z.GIF",
            "/app/dashboard",
            "/app/",
            "/loop/a",
            "/r/shoes/blue",
            "/r/item/7",
            "/go/sale",
            "/old",
            "/oldies",
            "/cart/add",
            "/account",
            "/accounts/1",
            "/catalog/a%2Fb",
            "/x/./y/../z",
        ],
        two_ports: false,
        files: vec![
            (
                "nginx.conf",
                r#"{{MAIN}}
http {
    {{COMMON}}
    include upstreams.conf;
    include sites/*.conf;
}
"#,
            ),
            (
                "upstreams.conf",
                r#"
upstream frontend { server 127.0.0.1:{{frontend}}; }
upstream legacy_php { server 127.0.0.1:{{legacy_php}}; }
upstream catalog_api { server 127.0.0.1:{{catalog_api}}; }
upstream static_files { server 127.0.0.1:{{static_files}}; }
upstream cart_api { server 127.0.0.1:{{cart_api}}; }
upstream account_api { server 127.0.0.1:{{account_api}}; }
"#,
            ),
            (
                "sites/shop.conf",
                r#"
server {
    listen {{LISTEN}} default_server;
    server_name shop.example.com www.shop.example.com;
    location / {
        proxy_pass http://frontend;
        location ~ \.php$ { proxy_pass http://legacy_php; }
    }
    location /catalog/ {
        rewrite ^/catalog/item/(\d+)$ /item?id=$1 last;
        rewrite ^/catalog/(.*)$ /products/$1 break;
        proxy_pass http://catalog_api/v1/;
        location ^~ /catalog/static/ { proxy_pass http://static_files/; }
        location ~ ^/catalog/(?<sku>[A-Z0-9]+)\.json$ { proxy_pass http://catalog_api; }
    }
    location = /item { proxy_pass http://catalog_api/lookup; }
    location /products/ { proxy_pass http://catalog_api/; }
    location ^~ /img/ { proxy_pass http://static_files; }
    location ~* ^/img/.*\.webp$ { return 403; }
    location ~* \.(gif|webp)$ { proxy_pass http://static_files; }
    location /app/ { try_files $uri $uri/ @app; }
    location @app { proxy_pass http://frontend; }
    location /loop/ { rewrite ^/loop/(.*)$ /loop/$1 last; }
    location /r/ { rewrite ^/r/(.*)$ /catalog/$1 last; }
    location /go/ { rewrite ^/go/(.*)$ https://shop.example.com/$1 redirect; }
    location /old { return 301 /new$is_args$args; }
    location /cart/ { set $cart 1; proxy_pass http://cart_api; }
    location /account { proxy_pass http://account_api/me; }
}
"#,
            ),
        ],
    }
}

#[test]
fn laneway_routes_like_nginx_on_four_production_shaped_configs() {
    let mut total = 0;
    let mut all = Vec::new();
    let runs = [
        (city_sites(), "h1"),
        (map_driven(), "h1"),
        (nested_rewrites(), "h1"),
        (two_ports_error_pages(), "h1"),
        // the Pingora engine intercepts upstream statuses its own way
        (two_ports_error_pages(), "pingora"),
    ];
    for (case, engine) in &runs {
        let (n, mismatches) = run_case(case, engine);
        eprintln!(
            "{} ({engine}): {n} requests, {} mismatches",
            case.name,
            mismatches.len()
        );
        total += n;
        all.extend(mismatches);
    }
    for m in all.iter().take(40) {
        eprintln!("{m}");
    }
    assert!(total >= 1000, "only {total} requests");
    assert!(all.is_empty(), "{} of {total} requests differ", all.len());
}

/// A large site's front end: two listening ports with their own default
/// servers and the same host answered differently on each, `error_page`
/// at http, server and (nested) location level with every kind of target,
/// `proxy_intercept_errors` on and off, `recursive_error_pages`.
fn two_ports_error_pages() -> Case {
    Case {
        name: "two-ports-error-pages",
        upstreams: &[
            "www_web",
            "secure_web",
            "shop_web",
            "api_gw",
            "fallback_web",
            "errors_web",
            "public_web",
            "legacy_api",
        ],
        hosts: &[
            "www.example.test",
            "example.test",
            "api.example.test",
            "shop.example.test",
            "unknown.test",
        ],
        paths: &[
            "/",
            "/shop/item",
            "/shop/status/404/x",
            "/shop/status/503/x",
            "/private/a",
            "/public",
            "/gone/x",
            "/missing/x",
            "/moved/x",
            "/api/users",
            "/api/status/404/u",
            "/api/v1/status/404/u",
            "/api/raw/status/404/u",
            "/loop/a",
            "/static/app.css",
            "/legacy/status/502",
            "/legacy/status/404/x",
            "/legacy/ok",
            "/chain/status/404",
            "/chain2/status/404",
            "/admin/x",
            "/status/500/home",
        ],
        two_ports: true,
        files: vec![
            (
                "nginx.conf",
                r#"{{MAIN}}
http {
    {{COMMON}}
    include upstreams.conf;
    # every server answers 5xx with the shared page unless it says otherwise
    error_page 500 502 503 504 /50x.html;
    include sites/*.conf;
}
"#,
            ),
            (
                "upstreams.conf",
                r#"
upstream www_web { server 127.0.0.1:{{www_web}}; }
upstream secure_web { server 127.0.0.1:{{secure_web}}; }
upstream shop_web { server 127.0.0.1:{{shop_web}}; keepalive 8; }
upstream api_gw { server 127.0.0.1:{{api_gw}}; }
upstream fallback_web { server 127.0.0.1:{{fallback_web}}; }
upstream errors_web { server 127.0.0.1:{{errors_web}}; }
upstream public_web { server 127.0.0.1:{{public_web}}; }
upstream legacy_api { server 127.0.0.1:{{legacy_api}}; }
"#,
            ),
            (
                "sites/a-www.conf",
                r#"
# the public site on the first port
server {
    listen {{LISTEN}} default_server;
    server_name www.example.test example.test;
    error_page 404 = @fallback;
    error_page 500 502 503 504 /50x.html;

    location / { proxy_pass http://www_web; }
    location /shop/ {
        proxy_pass http://shop_web;
        proxy_intercept_errors on;
    }
    location @fallback { proxy_pass http://fallback_web; }
    location = /50x.html { internal; proxy_pass http://errors_web; }
    location /private/ {
        error_page 403 =200 /public;
        return 403;
    }
    location /public { proxy_pass http://public_web; }
    location /gone/ { return 404; }
    location /missing/ {
        error_page 404 https://www.example.test/notfound;
        return 404;
    }
    location /moved/ {
        error_page 404 =301 https://www.example.test/new$uri;
        return 404;
    }
    location /api/ {
        proxy_pass http://api_gw;
        proxy_intercept_errors on;
        error_page 404 /api-404?from=$uri;
        location /api/v1/ { proxy_pass http://api_gw/v1/; }
        location /api/raw/ {
            proxy_pass http://api_gw;
            proxy_intercept_errors off;
        }
    }
    location = /api-404 { proxy_pass http://errors_web; }
    location /loop/ { rewrite ^/loop/(.*)$ /loop/$1 last; }
    location /static/ { }
    location /legacy/ {
        proxy_pass http://legacy_api;
        proxy_intercept_errors on;
        error_page 502 503 =200 /maintenance;
        error_page 404 =410 /gone-page;
    }
    location = /maintenance { return 200 "down for maintenance"; }
    location = /gone-page { return 200 "gone"; }
    location /chain/ {
        proxy_pass http://shop_web;
        proxy_intercept_errors on;
        recursive_error_pages on;
        error_page 404 /chain-404;
    }
    location /chain2/ {
        proxy_pass http://shop_web;
        proxy_intercept_errors on;
        error_page 404 /chain-404;
    }
    location = /chain-404 { return 404; }
}
"#,
            ),
            (
                "sites/b-secure.conf",
                r#"
# the same host on the second port is the secure front end
server {
    listen {{LISTEN2}} default_server;
    server_name www.example.test;
    location / { proxy_pass http://secure_web; }
    location /shop/ {
        proxy_pass http://shop_web;
        proxy_intercept_errors on;
    }
    location = /50x.html { proxy_pass http://errors_web; }
    location /gone/ { return 404; }
    location /private/ { return 403; }
}

server {
    listen {{LISTEN2}};
    server_name shop.example.test;
    error_page 404 /shop-404;
    location /shop/ {
        proxy_pass http://shop_web;
        proxy_intercept_errors on;
    }
    location = /shop-404 { proxy_pass http://errors_web; }
}
"#,
            ),
            (
                "sites/c-api.conf",
                r#"
# the API answers on both ports
server {
    listen {{LISTEN}};
    listen {{LISTEN2}};
    server_name api.example.test;
    proxy_intercept_errors on;
    error_page 403 = /forbidden;
    error_page 404 @api_fallback;
    location / { proxy_pass http://api_gw; }
    location /admin/ { return 403; }
    location = /forbidden { proxy_pass http://errors_web; }
    location @api_fallback { proxy_pass http://fallback_web; }
}
"#,
            ),
        ],
    }
}

#[test]
fn nginx_config_hot_reloads_includes_and_keeps_the_last_good_rules() {
    let web = Upstream::start("web");
    let api = Upstream::start("api");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "http {{\n  upstream web {{ server 127.0.0.1:{}; }}\n  upstream api {{ server 127.0.0.1:{}; }}\n  include conf.d/*.conf;\n}}\n",
            web.port(),
            api.port()
        ),
    )
    .unwrap();
    let site = dir.join("conf.d/site.conf");
    std::fs::write(
        &site,
        "server {\n  server_name a.example.com;\n  location / { proxy_pass http://web; }\n}\n",
    )
    .unwrap();
    let lw = Laneway::start_with_routes_section(tmp, "nginx = \"nginx.conf\"");
    assert_eq!(lw.get("a.example.com", "/x", &[]).upstream(), "web");

    // an edit of an included file is picked up
    std::fs::write(
        &site,
        "server {\n  server_name a.example.com;\n  location / { proxy_pass http://web; }\n  location /api/ { proxy_pass http://api/v2/; }\n}\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            lw.get("a.example.com", "/api/x", &[]).json()["target"] == "/v2/x"
        }),
        "{}",
        lw.log()
    );

    // a broken edit keeps the last good rules and names file:line
    std::fs::write(
        &site,
        "server {\n  server_name a.example.com;\n  location / { proxy_pass http://web }\n}\n",
    )
    .unwrap();
    let mut errors = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            errors = lw.api("GET", "/api/v1/rules", None).1;
            errors.contains("site.conf") && errors.contains("\"line\":3")
        }),
        "{errors}\n{}",
        lw.log()
    );
    assert!(errors.contains("\"line\":3"), "{errors}");
    assert_eq!(lw.get("a.example.com", "/api/x", &[]).upstream(), "api");

    // a new file matching the include glob is picked up too
    std::fs::write(
        &site,
        "server {\n  server_name a.example.com;\n  location / { proxy_pass http://web; }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir_of(&site).join("b.conf"),
        "server {\n  server_name b.example.com;\n  location / { proxy_pass http://api; }\n}\n",
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        lw.get("b.example.com", "/", &[]).json()["upstream"] == "api"
    }));
}

fn dir_of(p: &Path) -> PathBuf {
    p.parent().unwrap().to_path_buf()
}

#[test]
fn upstreams_map_to_services_and_lanes_apply() {
    let stable = Upstream::start("user-stable");
    let v2 = Upstream::start("user-v2");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("nginx.conf"),
        "http {\n  # laneway: service=user-api\n  upstream user_backend { server 10.0.0.1:8080; }\n  upstream orders { server 10.0.0.2:8080; }\n  server {\n    server_name bj.example.com;\n    location /user/ { proxy_pass http://user_backend/u/; }\n    location /orders/ { proxy_pass http://orders; }\n  }\n}\n",
    )
    .unwrap();
    let lw = Laneway::start_with_routes_section(
        tmp,
        "nginx = \"nginx.conf\"\n[routes.nginx_upstreams]\norders = \"order-api\"",
    );
    lw.register("u1", "user-api", Some("stable"), stable.port());
    lw.register("u2", "user-api", Some("v2"), v2.port());
    let (status, _) = lw.create_lane(r#"{"name":"t-1","services":{"user-api":"v2"}}"#);
    assert_eq!(status, 201);
    let base = lw.get("bj.example.com", "/user/7", &[]);
    assert_eq!(base.upstream(), "user-stable");
    assert_eq!(base.json()["target"], "/u/7");
    let lane = lw.get("bj.example.com", "/user/7", &[("x-laneway-lane", "t-1")]);
    assert_eq!(lane.upstream(), "user-v2");
    // orders is mapped by laneway.toml to order-api, which has no instance
    assert_eq!(lw.get("bj.example.com", "/orders/1", &[]).status, 503);
    let _ = BTreeMap::<u8, u8>::new();
}

#[test]
fn check_nginx_lists_every_directive_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("nginx.conf");
    std::fs::write(
        &conf,
        "worker_processes 1;\nhttp {\n  gzip on;\n  upstream a { server 127.0.0.1:9; }\n  server {\n    server_name x.example.com;\n    error_page 404 /404.html;\n    location / { proxy_pass http://a; limit_req zone=z; }\n    listen 8080 default_server;\n    proxy_intercept_errors on;\n    recursive_error_pages off;\n  }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--nginx"])
        .arg(&conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("nginx.conf:1: ignored: worker_processes"),
        "{text}"
    );
    assert!(text.contains("nginx.conf:3: ignored: gzip"), "{text}");
    assert!(
        text.contains("nginx.conf:7: translated: error_page"),
        "{text}"
    );
    assert!(
        text.contains("nginx.conf:9: translated: listen (port 8080; default_server of port 8080)"),
        "{text}"
    );
    assert!(
        text.contains("nginx.conf:10: translated: proxy_intercept_errors"),
        "{text}"
    );
    assert!(
        text.contains("nginx.conf:11: translated: recursive_error_pages"),
        "{text}"
    );
    assert!(
        text.contains("nginx.conf:8: translated: proxy_pass"),
        "{text}"
    );
    assert!(
        text.contains("nginx.conf:8: not supported: limit_req"),
        "{text}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .arg("import-nginx")
        .arg(&conf)
        .output()
        .unwrap();
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(toml.contains("proxy_pass = \"http://a\""), "{toml}");
    assert!(
        toml.contains("ports = [8080]\ndefault = true\nerror_page = [\n  \"404 /404.html\",\n]\nproxy_intercept_errors = true\nrecursive_error_pages = false\n"),
        "{toml}"
    );
    // the output is a rules file laneway loads as it is
    let routes = tmp.path().join("routes.toml");
    std::fs::write(&routes, toml.as_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--routes"])
        .arg(&routes)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // a bad edit is an error at the nginx file:line
    std::fs::write(
        &conf,
        "http {\n  server {\n    location / { rewrite ^(x /y; }\n  }\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_laneway"))
        .args(["check", "--nginx"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nginx.conf:3"), "{err}");
}
