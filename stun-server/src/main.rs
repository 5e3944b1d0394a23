use std::process::ExitCode;

use clap::Parser;
use natkit_stun::config::{Args, Config};

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match Config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("natkit-stun: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("natkit-stun: configuration OK");
        return ExitCode::SUCCESS;
    }
    natkit_runtime::logging::init(cfg.log_format, "info");
    match natkit_stun::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("natkit-stun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
