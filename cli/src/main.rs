//! `natkit`: diagnose NATs, probe STUN/TURN servers, benchmark servers.

mod bench;
mod creds;
mod netcheck;
mod stun;
mod turn;
mod udp_driver;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "natkit",
    version,
    about = "NAT traversal toolkit: diagnose, probe, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a STUN server for your mapped address and measure the round trip.
    Stun(stun::Args),
    /// Discover your NAT's mapping, filtering and hairpinning behavior (RFC 5780).
    Netcheck(netcheck::Args),
    /// Load-test a server and print figures.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Check a TURN server: allocate, relay round trips through it, close.
    Turn(turn::Args),
    /// Mint REST-style TURN credentials from a shared secret.
    Creds(creds::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    natkit_runtime::logging::init_cli();
    let result = match cli.command {
        Command::Stun(a) => stun::run(a),
        Command::Netcheck(a) => netcheck::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Turn(a) => turn::run(a),
        Command::Creds(a) => creds::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
