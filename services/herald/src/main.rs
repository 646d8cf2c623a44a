//! `herald`: parses the command line and hands over to a subcommand module.
#![forbid(unsafe_code)]

mod cmd;

/// jemalloc instead of glibc's malloc: see docs/benchmarks.md ("Allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;
use std::time::Duration;

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

/// How long the process waits, once its command has returned, for work still on the runtime's
/// threads. Dropping a runtime waits for every thread without a bound, and a thread held by a
/// call that never returns (a Kafka consumer's close once did, `herald_kafka`'s `closing`)
/// kept a stopped `herald projector` alive until it was killed. Whatever the command
/// acknowledged is durable by then; past this the process exits anyway.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs `command` to completion on `runtime`, then shuts the runtime down waiting at most
/// `grace` for its threads.
fn run_then_shut_down<T>(
    runtime: tokio::runtime::Runtime,
    grace: Duration,
    command: impl std::future::Future<Output = T>,
) -> T {
    let result = runtime.block_on(command);
    runtime.shutdown_timeout(grace);
    result
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
    let result = run_then_shut_down(runtime, RUNTIME_SHUTDOWN_GRACE, async move {
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
    use std::time::{Duration, Instant};

    use clap::{CommandFactory, Parser};

    use super::{Cli, Command, run_then_shut_down};

    #[test]
    fn a_thread_that_never_returns_does_not_keep_the_process() {
        // Shut down on a thread of its own, so that a shutdown that waits forever fails this
        // test instead of hanging it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap();
            let started = Instant::now();
            let answer = run_then_shut_down(runtime, Duration::from_millis(200), async move {
                tokio::task::spawn_blocking(move || {
                    let _ = held.recv();
                });
                42
            });
            done.send((answer, started.elapsed())).unwrap();
        });
        let (answer, took) = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the shutdown waited for the stuck thread");
        assert_eq!(answer, 42);
        assert!(
            took >= Duration::from_millis(200),
            "it waited the grace: {took:?}"
        );
        release.send(()).unwrap();
    }

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
