use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{
    config::Config,
    daemon::{self, RunOptions},
    dataplane::LoadOptions,
    demo, proxy,
};

/// lb: XDP L4 load balancer, L7 TLS proxy and DNS server.
#[derive(Parser, Debug)]
#[command(name = "lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Conntrack entries per direction.
        #[arg(long, default_value_t = lb_common::CONNTRACK_SIZE)]
        conntrack_size: u32,
        /// Most verbose XDP log level forwarded to the host log
        /// (error, warn, info, debug, trace). Debug reports malformed packets.
        #[arg(long, default_value = "info")]
        xdp_log: String,
    },
    /// The built-in demo: a client, lb and three reals in network namespaces.
    Demo {
        /// Requests per address family.
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Generate a test PKI (root CA, intermediate, leaf certificates).
    Cert(proxy::CertArgs),
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
        } => xdp_level(&xdp_log).and_then(|log_level| {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(daemon::run(RunOptions {
                config,
                interfaces: iface,
                load: LoadOptions {
                    conntrack_size,
                    log_level,
                },
            }))
        }),
        Command::Demo { requests } => demo::run(requests),
        Command::Cert(args) => proxy::cert_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
