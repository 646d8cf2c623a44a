//! `herald`: parses the command line and hands over to a subcommand module.
#![forbid(unsafe_code)]

mod cmd;

/// jemalloc instead of glibc's malloc: see docs/benchmarks.md ("Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "herald", version, about = "Herald: durable notification delivery", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process on embedded, durable storage, with demo conveniences.
    Dev(cmd::dev::Args),
    /// The production server: no demo login, producers and users must authenticate. On
    /// embedded storage it runs the projector too; on Kafka it is one of several replicas.
    Gateway(cmd::gateway::Args),
    /// The projector alone, as one replica of a Kafka consumer group.
    Projector(cmd::projector::Args),
    /// Send a notification to a running Herald.
    Produce(Box<cmd::produce::Args>),
    /// Rebuild the projection from the log into a fresh store and compare it with the live one.
    Replay(cmd::replay::Args),
    /// Every event about a notification id or a user id, in order.
    Audit(cmd::audit::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => cmd::dev::run(args).await,
            Command::Gateway(args) => cmd::gateway::run(args).await,
            Command::Projector(args) => cmd::projector::run(args).await,
            Command::Produce(args) => cmd::produce::run(*args).await,
            Command::Replay(args) => cmd::replay::run(args).await,
            Command::Audit(args) => cmd::audit::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    fn help(sub: &str) -> String {
        Cli::command()
            .find_subcommand_mut(sub)
            .expect("subcommand")
            .render_long_help()
            .to_string()
    }

    #[test]
    fn the_server_flags_default_to_the_gateway_config_defaults() {
        for args in [
            vec!["herald", "dev"],
            vec!["herald", "gateway", "--jwt-secret", "s"],
        ] {
            let knobs = match Cli::parse_from(&args).command {
                Command::Dev(a) => a.knobs().clone(),
                Command::Gateway(a) => a.knobs().clone(),
                _ => unreachable!(),
            };
            assert_eq!(
                knobs.config(),
                herald_gateway::GatewayConfig::default(),
                "{args:?}: every knob's default comes from GatewayConfig::default()"
            );
        }
    }

    #[test]
    fn each_server_command_says_what_is_true_of_it() {
        let dev = help("dev");
        let gateway = help("gateway");
        assert!(dev.contains("dev-secret"), "{dev}");
        assert!(
            !gateway.contains("dev-secret"),
            "herald gateway has no dev secret: {gateway}"
        );
        for flag in ["--producer-burst", "--partitions", "--projector"] {
            for h in [&dev, &gateway] {
                let line = h
                    .lines()
                    .skip_while(|l| !l.trim_start().starts_with(flag))
                    .nth(1)
                    .unwrap_or_default();
                assert!(!line.trim().is_empty(), "{flag} has a description");
            }
        }
        let default = herald_gateway::GatewayConfig::default();
        assert!(gateway.contains(&format!("[default: {}]", default.producer_burst)));
    }
}
