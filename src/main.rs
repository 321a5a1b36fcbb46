//! The `allot` binary: parse arguments, run one command, report errors.

use clap::{Parser, Subcommand};

use allot::cmd::{self, Common};

// The service allocates a few small buffers per message; glibc's
// allocator spent about a quarter of `allot serve`'s CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Competitive bidding for N winning slots on NATS JetStream.
#[derive(Parser)]
#[command(name = "allot", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: gateway and verifier.
    Serve(cmd::serve::Args),
    /// Open and close auctions, and show their status.
    #[command(subcommand)]
    Auction(cmd::auction::Command),
    /// Place a bid.
    Bid(cmd::bid::Args),
    /// Withdraw a bid, before or after its try is in the log.
    Withdraw(cmd::withdraw::Args),
    /// Raise a bid that holds a slot in a top_amount auction.
    Raise(cmd::raise::Args),
    /// Ask what became of one of your bids (no stream access needed).
    Result(cmd::result::Args),
    /// Print outcome events as they happen.
    Watch(cmd::watch::Args),
    /// Start a private NATS and the service, run a bidding burst, print a summary.
    Demo(cmd::demo::Args),
    /// Drive a bidding workload, measure it, and check the invariants.
    Loadtest(cmd::loadtest::Args),
    /// Decide the log again offline and compare with the published outcomes.
    Audit(cmd::audit::Args),
    /// Show running instances, partitions with owner and lag, and auction fill.
    Status(cmd::status::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.common.threads.runtime() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("allot: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> std::process::ExitCode {
    // The demo prints its own summary; the service's logs would drown it.
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Loadtest(_) => "allot=warn,async_nats=error",
        _ => "allot=info,async_nats=warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(cli.common, args).await,
        Command::Auction(command) => cmd::auction::run(cli.common, command).await,
        Command::Bid(args) => cmd::bid::run(cli.common, args).await,
        Command::Withdraw(args) => cmd::withdraw::run(cli.common, args).await,
        Command::Raise(args) => cmd::raise::run(cli.common, args).await,
        Command::Result(args) => cmd::result::run(cli.common, args).await,
        Command::Watch(args) => cmd::watch::run(cli.common, args).await,
        Command::Demo(args) => cmd::demo::run(cli.common, args).await,
        Command::Loadtest(args) => cmd::loadtest::run(cli.common, args).await,
        Command::Audit(args) => cmd::audit::run(cli.common, args).await,
        Command::Status(args) => cmd::status::run(cli.common, args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allot: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
