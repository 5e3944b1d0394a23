//! `natkit`: diagnose NATs, probe STUN/TURN servers, benchmark servers.

mod bench;
mod creds;
mod discovery_output;
mod netcheck;
mod p2p;
mod portmap_check;
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
    /// Wait for a peer (ICE controlled, QUIC server), then pipe stdin and stdout to it.
    Listen(p2p::ListenArgs),
    /// Connect to a peer (ICE controlling, QUIC client), then pipe stdin and stdout to it.
    Connect(p2p::ConnectArgs),
    /// Send a file to a peer running `natkit receive`, with a SHA-256 check.
    Send(p2p::SendArgs),
    /// Receive a file from a peer running `natkit send`; kept only when verified.
    Receive(p2p::ReceiveArgs),
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
        Command::Listen(a) => p2p::listen(a),
        Command::Connect(a) => p2p::connect(a),
        Command::Send(a) => p2p::send(a),
        Command::Receive(a) => p2p::receive(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
