//! The `laneway` command line: `run`, `check`, `lane` (a client of the
//! admin API, in `laneway::cli`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use laneway::allocation::owner;
use laneway::config::Config;
use laneway::control::Control;
use laneway::routing::rules::RuleSet;
use laneway::telemetry::{self, Metrics};

/// mimalloc instead of glibc malloc: Pingora allocates and frees header maps
/// and buffers on every request, and glibc spent ~12% of the data plane's
/// CPU in malloc/free/consolidation (see benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// laneway: a lane-aware reverse proxy for test environments.
///
/// Runs many versions of the same services side by side behind the
/// production routing rules; each lane (a set of versions) is reached by
/// header, cookie or hostname.
#[derive(Parser)]
#[command(name = "laneway", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the proxy, the admin API and the embedded registry.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "config/laneway.toml")]
        config: PathBuf,
        /// Take over the listening sockets of the running laneway with the
        /// same configuration: start this, then send SIGQUIT to the old one.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the configuration and the route rules offline; print every
    /// error with file and line, and exit non-zero if there is any.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "config/laneway.toml")]
        config: PathBuf,
        /// Check only this route rules file instead of a whole configuration.
        #[arg(long, conflicts_with = "config")]
        routes: Option<PathBuf>,
        /// Check an nginx configuration: list every directive with file:line
        /// as translated, ignored (irrelevant to routing) or not supported.
        /// Upstream mappings come from --config when given.
        #[arg(long, conflicts_with = "routes")]
        nginx: Option<PathBuf>,
    },
    /// Translate an nginx configuration into route rules (routes.toml) on
    /// standard output; the report goes to standard error.
    ImportNginx {
        /// The nginx configuration (includes are followed).
        nginx: PathBuf,
        /// A laneway configuration whose [routes.nginx_upstreams] maps
        /// upstream names to services.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Create, list, show, extend and delete lanes through a running
    /// laneway's admin API.
    Lane(laneway::cli::lane::LaneArgs),
    /// Explain how a running laneway would route a URL: server block and
    /// location (file:line), lane, version and fallback, upstream URI and
    /// instances. Nothing is sent upstream.
    Explain(laneway::cli::explain::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => match run(config, upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("laneway: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check {
            config,
            routes,
            nginx: Some(nginx),
        } => {
            let explicit =
                routes.is_none() && config != std::path::Path::new("config/laneway.toml");
            nginx_command(&nginx, explicit.then_some(config), false)
        }
        Command::Check { config, routes, .. } => check(config, routes),
        Command::ImportNginx { nginx, config } => nginx_command(&nginx, config, true),
        Command::Explain(args) => match laneway::cli::explain::run(args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("laneway: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Lane(args) => match laneway::cli::lane::run(args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("laneway: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `check --nginx` (report on stdout) and `import-nginx` (rules on stdout,
/// report on stderr). Errors carry the nginx file:line.
fn nginx_command(nginx: &std::path::Path, config: Option<PathBuf>, import: bool) -> ExitCode {
    let mapping = match config {
        Some(c) => match Config::load(&c) {
            Ok(cfg) => cfg.routes.nginx_upstreams,
            Err(e) => {
                for e in e.0 {
                    eprintln!("error: {e}");
                }
                return ExitCode::FAILURE;
            }
        },
        None => Default::default(),
    };
    let cfg = match laneway::config::nginx::parse::parse_file(nginx) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tr = match laneway::config::nginx::translate::translate(&cfg, &mapping) {
        Ok(t) => t,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s)", errors.len());
            return ExitCode::FAILURE;
        }
    };
    let report: Vec<String> = tr.report.iter().map(|r| r.to_string()).collect();
    let compiled = laneway::config::nginx::translate::load(nginx, &mapping);
    if import {
        for r in &report {
            eprintln!("{r}");
        }
        if let Err((errors, _)) = &compiled {
            for e in errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s)", errors.len());
            return ExitCode::FAILURE;
        }
        print!("{}", tr.toml);
        return ExitCode::SUCCESS;
    }
    for r in &report {
        println!("{r}");
    }
    let count = |o| tr.report.iter().filter(|r| r.outcome == o).count();
    use laneway::config::nginx::translate::Outcome;
    match compiled {
        Ok((rules, _)) => {
            println!(
                "{}: ok ({} files, {} translated, {} ignored, {} not supported; {} services referenced)",
                nginx.display(),
                tr.files.len(),
                count(Outcome::Translated),
                count(Outcome::Ignored),
                count(Outcome::Unsupported),
                rules.services().len()
            );
            ExitCode::SUCCESS
        }
        Err((errors, _)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

fn check(config: PathBuf, routes: Option<PathBuf>) -> ExitCode {
    let mut errors = Vec::new();
    let mut summary = Vec::new();
    match routes {
        Some(file) => match RuleSet::load(&file) {
            Ok(rules) => summary.push(format!(
                "{}: ok ({} services referenced)",
                file.display(),
                rules.services().len()
            )),
            Err(e) => errors.extend(e),
        },
        None => match Config::load(&config) {
            Ok(cfg) => {
                let before = errors.len();
                errors.extend(laneway::proxy::server::check_files(&cfg));
                if errors.len() == before {
                    summary.push(format!("{}: ok", config.display()));
                }
                // the rules file or nginx configuration, with the nginx
                // ports of the listeners checked against its servers
                let source = cfg.routes.nginx.as_ref().or(cfg.routes.file.as_ref());
                if let Some(source) = source {
                    match laneway::control::load_rules(&cfg.routes) {
                        Ok((rules, files)) => summary.push(format!(
                            "{}: ok ({} files, {} services referenced{})",
                            source.display(),
                            files.len(),
                            rules.services().len(),
                            ports_summary(&cfg, &rules)
                        )),
                        Err((e, _)) => errors.extend(e),
                    }
                }
            }
            Err(e) => errors.extend(e.0),
        },
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        for s in summary {
            println!("{s}");
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("{} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

/// `; servers chosen by port: 127.0.0.1:8080 → 80, …` when the rules'
/// servers listen on two or more ports.
fn ports_summary(cfg: &Config, rules: &RuleSet) -> String {
    if rules.ports().len() < 2 {
        return String::new();
    }
    let each: Vec<String> = cfg
        .routes
        .listeners
        .iter()
        .map(|l| format!("{} → {}", l.addr, l.port))
        .collect();
    format!("; servers chosen by port: {}", each.join(", "))
}

fn run(config_path: PathBuf, upgrade: bool) -> anyhow::Result<()> {
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // (lines of the access log still queued at exit are written out by
    // an exit hook, whichever way the process ends)
    telemetry::init_logging(&config.log)?;
    laneway::proxy::limits::raise_open_file_limit(&config);
    // One laneway per data directory and per address, before any state is
    // read (see allocation::owner).
    let wait = upgrade.then_some(owner::UPGRADE_WAIT);
    owner::claim_data_dir(&config.store.data_dir, wait)?;
    if !upgrade {
        owner::check_addresses_free(&own_addresses(&config))?;
    }
    let metrics = Arc::new(Metrics::new());
    let access = Arc::new(
        laneway::admin::Access::new(&config.admin)
            .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?,
    );
    let control = Control::open(config, metrics).context("cannot start")?;

    // The control and admin planes run on their own small runtime so the
    // data plane's threads only ever serve requests.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("laneway-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let admin_addr = control.config.admin.listen;
    let listener = runtime
        .block_on(async { bind_reuseport(admin_addr) })
        .with_context(|| format!("cannot listen on the admin address {admin_addr}"))?;
    let watcher = runtime.block_on(async {
        tokio::spawn(control.clone().run_compiler());
        tokio::spawn(control.clone().run_reaper());
        control.start_consul();
        if control.consul.is_none() {
            // Embedded mode: laneway runs the registered checks itself.
            tokio::spawn(laneway::discovery::checks::run(control.clone()));
        }
        let watcher = control.watch_rules();
        let admin_control = control.clone();
        tokio::spawn(async move {
            tokio::select! {
                served = laneway::admin::serve(listener, admin_control, access) => {
                    if let Err(e) = served {
                        tracing::error!(error = %e, "admin API stopped");
                    }
                }
                // after a graceful upgrade the new process answers
                () = until_handed_over() => {
                    tracing::info!("admin listener closed: the new process serves the admin API");
                }
            }
        });
        watcher
    });
    tracing::info!(
        admin = %admin_addr,
        listen = ?control.config.proxy.listen,
        "laneway starting"
    );
    let server =
        laneway::proxy::server::build(&control, upgrade).context("cannot start the data plane")?;
    tracing::info!(
        listeners = laneway::proxy::server::listen_addresses(&control.config).len(),
        "data plane listening"
    );
    runtime.spawn(announce_ready(control.clone()));
    laneway::proxy::server::run(server, control, &runtime);
    drop(watcher);
    Ok(())
}

/// Logs `ready: data http://…, admin/dashboard http://…/` once every plain
/// `[proxy] listen` address accepts connections (Pingora binds them on its
/// own threads after `run` starts), naming every data listener.
async fn announce_ready(control: Arc<Control>) {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    let cfg = &control.config;
    let reachable = |a: std::net::SocketAddr| {
        if a.ip().is_unspecified() {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port())
        } else {
            a
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    for &addr in &cfg.proxy.listen {
        loop {
            if tokio::net::TcpStream::connect(reachable(addr))
                .await
                .is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(listen = %addr, "the data listener does not accept connections {} s after start", WAIT.as_secs());
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut data: Vec<String> = cfg
        .proxy
        .listen
        .iter()
        .chain(&cfg.proxy.h2c_listen)
        .map(|a| format!("http://{}", reachable(*a)))
        .collect();
    if let Some(tls) = &cfg.tls {
        data.extend(
            tls.listen
                .iter()
                .map(|a| format!("https://{}", reachable(*a))),
        );
    }
    tracing::info!(
        "ready: data {}, admin/dashboard http://{}/",
        data.join(", "),
        reachable(cfg.admin.listen)
    );
}

/// Every address this laneway listens on, with the setting it comes from.
fn own_addresses(cfg: &Config) -> Vec<(std::net::SocketAddr, String)> {
    use laneway::proxy::server::{listen_addresses, vip_addresses};
    let mut out = vec![(cfg.admin.listen, "[admin] listen".to_owned())];
    // what a listener comes from: the setting, or a lane entry bound for it
    let named = |addrs: Vec<std::net::SocketAddr>, listen: &[std::net::SocketAddr], what: &str| {
        addrs
            .into_iter()
            .map(|a| {
                let what = if listen.contains(&a) {
                    what.to_owned()
                } else {
                    format!("the lane entry for {what} ([proxy] bind_entries)")
                };
                (a, what)
            })
            .collect::<Vec<_>>()
    };
    let listen = &cfg.proxy.listen;
    out.extend(named(listen_addresses(cfg), listen, "[proxy] listen"));
    if let Some(tls) = &cfg.tls {
        out.extend(named(
            vip_addresses(cfg, &tls.listen),
            &tls.listen,
            "[tls] listen",
        ));
    }
    let h2c = &cfg.proxy.h2c_listen;
    out.extend(named(vip_addresses(cfg, h2c), h2c, "[proxy] h2c_listen"));
    out
}

/// Resolves once this process has handed its data directory to a new one
/// (graceful upgrade).
async fn until_handed_over() {
    while !owner::handed_over() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The admin listener, with `SO_REUSEPORT` so that a new laneway taking over
/// in a graceful upgrade can bind it while the old one still runs.
fn bind_reuseport(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
