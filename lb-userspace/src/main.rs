use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::{generate, shells};
use lb_userspace::{
    admin::{
        client::{self as cli, Client, Endpoint, Verb, VipFormat},
        config::DEFAULT_API_SOCKET,
    },
    config::Config,
    daemon::{self, RunOptions},
    ident::VipId,
    l4::dataplane::LoadOptions,
    proxy,
};
use serde_json::json;

/// lb: XDP L4 load balancer, L7 TLS proxy and DNS server.
#[derive(Parser, Debug)]
#[command(name = "lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the client commands reach the daemon.
#[derive(Args, Debug, Clone)]
struct ApiArgs {
    /// The admin API socket.
    #[arg(long, env = "LB_SOCKET", default_value = DEFAULT_API_SOCKET, global = true)]
    socket: PathBuf,
    /// Use the loopback TCP listener instead (address:port); needs a token.
    #[arg(long, env = "LB_API", global = true)]
    api: Option<SocketAddr>,
    /// File with the bearer token for --api (or env LB_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let endpoint = match self.api {
            None => Endpoint::Unix(self.socket.clone()),
            Some(addr) => {
                let token = match (&self.token_file, std::env::var("LB_TOKEN")) {
                    (Some(f), _) => std::fs::read_to_string(f)
                        .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", f.display()))?
                        .trim()
                        .to_string(),
                    (None, Ok(t)) => t,
                    (None, Err(_)) => {
                        anyhow::bail!("--api needs a token: --token-file or env LB_TOKEN")
                    }
                };
                Endpoint::Tcp { addr, token }
            }
        };
        Ok(Client::new(endpoint))
    }
}

#[derive(Subcommand, Debug)]
enum VipCmd {
    /// Every VIP with its reals, weights, health and drain state.
    List {
        /// `table` (lb's own) or `ipvsadm` (the layout of `ipvsadm -Ln`).
        #[arg(long, value_enum, default_value_t = VipFormat::Table)]
        format: VipFormat,
    },
    /// Add a VIP: `lb vip add 198.18.100.2:80/tcp --real 198.18.11.2:8080 --real 198.18.12.2:8080=2`.
    Add {
        /// address:port/protocol (port * = all ports).
        vip: String,
        /// A real: address:port, optionally =weight (repeatable, at least one).
        #[arg(long = "real", required = true)]
        reals: Vec<String>,
        #[arg(long)]
        ring_size: Option<i64>,
        /// e.g. 30s; how long drained reals keep their flows.
        #[arg(long)]
        drain_timeout: Option<String>,
        /// keep, open or drop.
        #[arg(long)]
        all_down: Option<String>,
        /// A health key for the VIP: kind=http, interval=1s, path=/healthz ... (repeatable).
        #[arg(long = "health")]
        health: Vec<String>,
    },
    /// Remove a VIP (its flows end).
    Del { vip: String },
}

#[derive(Subcommand, Debug)]
enum RealCmd {
    /// Add a real to a VIP.
    Add {
        vip: String,
        /// address:port
        real: String,
        #[arg(long)]
        weight: Option<i64>,
        /// Health keys overriding the VIP's (repeatable key=value).
        #[arg(long = "health")]
        health: Vec<String>,
    },
    /// Remove a real from a VIP (its flows move to other reals).
    Del { vip: String, real: String },
    /// Set a real's weight (0 drains).
    Weight {
        vip: String,
        real: String,
        weight: i64,
    },
    /// Drain a real: no new flows; established flows continue until the
    /// VIP's drain_timeout.
    Drain { vip: String, real: String },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file without touching the kernel.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run every role the config has (XDP L4, L7 proxy, DNS) until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Attach XDP here instead of the config's `interfaces` (repeatable).
        #[arg(long = "iface")]
        iface: Vec<String>,
        /// Flows conntrack holds (each takes an entry per direction, 136
        /// bytes of kernel memory each).
        #[arg(long, default_value_t = lb_common::CONNTRACK_SIZE,
              value_parser = clap::value_parser!(u32).range(1..=(u32::MAX / 2) as i64))]
        conntrack_size: u32,
        /// Most verbose XDP log level forwarded to the host log
        /// (error, warn, info, debug, trace). Debug reports malformed packets.
        #[arg(long, default_value = "info")]
        xdp_log: String,
        /// Pin maps and links here (bpffs); overrides the config's pin_path.
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// On exit, detach XDP and remove the pinned state (otherwise a
        /// pinned program stays attached for the next `lb run`).
        #[arg(long)]
        cleanup: bool,
    },
    /// Detach XDP and remove the state pinned by `lb run` (no daemon may be running).
    Cleanup {
        /// The pin directory; or take `pin_path` from --config.
        #[arg(long)]
        pin_path: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Daemon summary.
    Status(#[command(flatten)] ApiArgsBox),
    /// List, add or remove VIPs.
    Vip {
        #[command(subcommand)]
        cmd: VipCmd,
        #[command(flatten)]
        api: ApiArgsBox,
    },
    /// Add, remove, weight or drain reals.
    Real {
        #[command(subcommand)]
        cmd: RealCmd,
        #[command(flatten)]
        api: ApiArgsBox,
    },
    /// Packets, bytes and new flows per VIP and real, with rates; drop reasons.
    Stats {
        /// Repeat every N seconds until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after this many reports.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        api: ApiArgsBox,
    },
    /// A bounded dump of conntrack entries.
    Conns {
        /// Only this VIP (address:port/protocol).
        #[arg(long)]
        vip: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgsBox,
    },
    /// Each real's health, how long, and its last failure.
    Health(#[command(flatten)] ApiArgsBox),
    /// Reload the daemon's config file (validated first; an invalid one changes nothing).
    Reload(#[command(flatten)] ApiArgsBox),
    /// The built-in demo: a client, lb and three reals in network namespaces.
    #[cfg(feature = "demo")]
    Demo {
        /// Requests per address family.
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Generate a test PKI (root CA, intermediate, leaf certificates).
    Cert(proxy::CertArgs),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    ///
    /// bash: `lb completions bash > /etc/bash_completion.d/lb`; zsh: into a
    /// directory on `$fpath` as `_lb`; fish: `~/.config/fish/completions/lb.fish`.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages: `lb.1` to stdout, or with --out every page
    /// (`lb.1` and one `lb-<command>.1` per command) into a directory.
    Man {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Client options, flattened into every client verb.
#[derive(Args, Debug, Clone)]
struct ApiArgsBox {
    #[command(flatten)]
    api: ApiArgs,
}

fn client_verb(api: &ApiArgs, verb: Verb) -> anyhow::Result<()> {
    let client = api.client()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(cli::run(&client, verb, api.json))
}

fn xdp_level(s: &str) -> anyhow::Result<u8> {
    Ok(match s {
        "off" => 0,
        "error" => 1,
        "warn" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        other => anyhow::bail!(
            "--xdp-log: `{other}` is not a level (off, error, warn, info, debug, trace)"
        ),
    })
}

/// Shells `lb completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `lb man`: the pages come from the same clap definitions as `--help`.
fn man(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let cmd = Cli::command();
    match out {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the man page"),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} VIPs, {} L7 listeners, dns {})",
                    config.display(),
                    cfg.vips.len(),
                    cfg.l7.len(),
                    if cfg.dns.is_some() { "on" } else { "off" }
                );
                Ok(())
            }
            Err(errs) => Err(anyhow::anyhow!(
                "{}: invalid config:\n{errs}",
                config.display()
            )),
        },
        Command::Run {
            config,
            iface,
            conntrack_size,
            xdp_log,
            pin_path,
            cleanup,
        } => xdp_level(&xdp_log).and_then(|log_level| {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::run(RunOptions {
                config,
                interfaces: iface,
                load: LoadOptions {
                    conntrack_size,
                    log_level,
                    pin_path,
                },
                cleanup,
            }))
        }),
        Command::Cleanup { pin_path, config } => (|| {
            let dir = match (pin_path, config) {
                (Some(p), _) => p,
                (None, Some(c)) => Config::load(&c)
                    .map_err(|e| anyhow::anyhow!("{}: invalid config:\n{e}", c.display()))?
                    .pin_path
                    .ok_or_else(|| anyhow::anyhow!("{}: no pin_path set", c.display()))?,
                (None, None) => anyhow::bail!("give --pin-path or --config"),
            };
            let removed = daemon::cleanup(&dir)?;
            println!(
                "{}: {} pinned entries removed{}",
                dir.display(),
                removed.len(),
                if removed.iter().any(|n| n.starts_with("link_")) {
                    " (XDP detached)"
                } else {
                    ""
                }
            );
            Ok(())
        })(),
        Command::Status(a) => client_verb(&a.api, Verb::Status),
        Command::Vip { cmd, api } => (|| {
            let verb = match cmd {
                VipCmd::List { format } => Verb::VipList(format),
                VipCmd::Del { vip } => Verb::VipDel(vip),
                VipCmd::Add {
                    vip,
                    reals,
                    ring_size,
                    drain_timeout,
                    all_down,
                    health,
                } => {
                    let k: VipId = vip.parse().map_err(|e| anyhow::anyhow!("vip: {e}"))?;
                    let mut body = json!({
                        "address": k.address.to_string(),
                        "port": k.port,
                        "protocol": k.protocol.as_str(),
                        "real": reals.iter().map(|r| cli::real_body(r, None, &[])).collect::<anyhow::Result<Vec<_>>>()?,
                    });
                    if let Some(r) = ring_size {
                        body["ring_size"] = json!(r);
                    }
                    if let Some(d) = drain_timeout {
                        body["drain_timeout"] = json!(d);
                    }
                    if let Some(a) = all_down {
                        body["all_down"] = json!(a);
                    }
                    if !health.is_empty() {
                        body["health"] = cli::health_body(&health)?;
                    }
                    Verb::VipAdd(body)
                }
            };
            client_verb(&api.api, verb)
        })(),
        Command::Real { cmd, api } => (|| {
            let verb = match cmd {
                RealCmd::Add {
                    vip,
                    real,
                    weight,
                    health,
                } => Verb::RealAdd {
                    vip,
                    real: cli::real_body(&real, weight, &health)?,
                },
                RealCmd::Del { vip, real } => Verb::RealDel { vip, real },
                RealCmd::Weight { vip, real, weight } => Verb::RealWeight { vip, real, weight },
                RealCmd::Drain { vip, real } => Verb::RealDrain { vip, real },
            };
            client_verb(&api.api, verb)
        })(),
        Command::Stats { watch, count, api } => (|| {
            let watch = match watch {
                None => None,
                Some(s) if s.is_finite() && s >= 0.1 => Some(Duration::from_secs_f64(s)),
                Some(s) => anyhow::bail!("--watch: {s} is not an interval of at least 0.1 seconds"),
            };
            client_verb(&api.api, Verb::Stats { watch, count })
        })(),
        Command::Conns { vip, limit, api } => client_verb(&api.api, Verb::Conns { vip, limit }),
        Command::Health(a) => client_verb(&a.api, Verb::Health),
        Command::Reload(a) => client_verb(&a.api, Verb::Reload),
        #[cfg(feature = "demo")]
        Command::Demo { requests } => lb_userspace::demo::run(requests),
        Command::Cert(args) => proxy::cert_main(args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            match shell {
                Shell::Bash => generate(shells::Bash, &mut cmd, "lb", &mut std::io::stdout()),
                Shell::Zsh => generate(shells::Zsh, &mut cmd, "lb", &mut std::io::stdout()),
                Shell::Fish => generate(shells::Fish, &mut cmd, "lb", &mut std::io::stdout()),
            }
            Ok(())
        }
        Command::Man { out } => man(out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
