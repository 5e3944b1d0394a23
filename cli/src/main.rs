//! `natkit`: diagnose NATs, probe STUN/TURN servers, benchmark servers,
//! connect peers and move files.

// First: its macros (`outln!`, `out!`) are used by the modules below.
#[macro_use]
mod output;

mod bench;
mod creds;
mod discovery_output;
mod duration;
mod examples;
mod netcheck;
mod p2p;
mod portmap_check;
mod relays;
mod secret;
mod servers;
mod stun;
mod stun_tcp;
mod turn;
mod udp_driver;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "natkit",
    version,
    propagate_version = true,
    about = "NAT traversal toolkit: diagnose your NAT (netcheck, stun), check and benchmark \
             STUN/TURN servers (turn, bench, creds), connect two peers (listen, connect) \
             and move files between them (send, receive)",
    after_help = examples::TOP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask STUN servers for your mapped address (IPv4 and IPv6) and measure the round trip.
    #[command(after_help = examples::STUN)]
    Stun(stun::Args),
    /// Diagnose your NAT: mapping, filtering, hairpinning (RFC 5780), UDP vs TCP, port
    /// mapping, relays, and what it means for peer-to-peer connections.
    #[command(after_help = examples::NETCHECK)]
    Netcheck(netcheck::Args),
    /// Load-test a server and print figures.
    #[command(subcommand, after_help = examples::BENCH)]
    Bench(bench::Command),
    /// Check a TURN server: allocate, relay round trips through it, close.
    #[command(after_help = examples::TURN)]
    Turn(turn::Args),
    /// Mint REST-style TURN credentials from a shared secret.
    #[command(after_help = examples::CREDS)]
    Creds(creds::Args),
    /// Wait for a peer (ICE controlled, QUIC server), then pipe stdin and stdout to it.
    #[command(after_help = examples::LISTEN)]
    Listen(p2p::ListenArgs),
    /// Connect to a peer (ICE controlling, QUIC client), then pipe stdin and stdout to it.
    #[command(after_help = examples::CONNECT)]
    Connect(p2p::ConnectArgs),
    /// Send files or folders (or stdin) to a peer running `natkit receive`, each with a SHA-256
    /// check.
    #[command(after_help = examples::SEND)]
    Send(p2p::SendArgs),
    /// Receive what a peer running `natkit send` offers; each file kept only when verified.
    #[command(after_help = examples::RECEIVE)]
    Receive(p2p::ReceiveArgs),
}

impl Command {
    /// Whether the command was asked for JSON and prints its own failure
    /// document (`None`: main prints a generic one when asked for JSON).
    fn json(&self) -> Json {
        match self {
            Command::Stun(_) | Command::Netcheck(_) | Command::Turn(_) => Json::Own,
            Command::Creds(a) => Json::Generic(a.json),
            Command::Bench(c) => Json::Generic(c.json()),
            // The peer-to-peer commands write their own document, on
            // stderr where stdout carries the peer's data (p2p::outcome).
            _ => Json::Own,
        }
    }
}

#[derive(Clone, Copy)]
enum Json {
    /// The command prints its JSON document (if asked), failure included.
    Own,
    /// main prints the failure document.
    Generic(bool),
}

/// Exit code of a usage error (clap's).
const USAGE: u8 = 2;

fn main() -> std::process::ExitCode {
    // A safety net under [`output`]: any `println!` left that hits a closed
    // stdout, or `errln!` a closed stderr pipe, ends the process quietly
    // instead of with a panic (101).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if output::is_closed_pipe_panic(msg) {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let asked_json = std::env::args().any(|a| a == "--json");
            let is_usage = !matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if asked_json && is_usage {
                let _ = e.print();
                output::failure_json("usage", &e.kind().to_string());
                return std::process::ExitCode::from(USAGE);
            }
            e.exit();
        }
    };
    natkit_runtime::logging::init_cli();
    let json = cli.command.json();
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
    // A closed stdout (the reader went away) is a quiet end, not an error.
    let code = if let Err(e) = output::status() {
        errln!("error: {e}");
        std::process::ExitCode::FAILURE
    } else {
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                if let Json::Generic(true) = json {
                    output::failure_json(output::kind_of(&e), &format!("{e:#}"));
                }
                errln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    };
    output::write_last_err_line();
    code
}
