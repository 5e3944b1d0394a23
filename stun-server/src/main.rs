use std::process::ExitCode;

use natkit_stun::config::{self, Config};

fn main() -> ExitCode {
    let args = config::schema().parse();
    // The certificate and key are part of the configuration: refuse files the server could
    // not serve with before starting, with or without --check-config.
    let resolved = Config::resolve(&args).and_then(|cfg| {
        let tls = natkit_runtime::config::start_tls(&cfg.common, cfg.tls.as_ref())?;
        Ok((cfg, tls))
    });
    let (cfg, tls) = match resolved {
        Ok(x) => x,
        Err(e) => {
            eprintln!("natkit-stun: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config() {
        println!("natkit-stun: configuration OK");
        return ExitCode::SUCCESS;
    }
    natkit_runtime::logging::init(cfg.common.log_format, "info");
    match natkit_stun::server::run(cfg, tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("natkit-stun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
