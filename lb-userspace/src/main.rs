use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{config::Config, proxy};

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
    /// Generate a test PKI (root CA, intermediate, leaf certificates).
    Cert(proxy::CertArgs),
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
            Err(errs) => Err(anyhow::anyhow!("{errs}")),
        },
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
