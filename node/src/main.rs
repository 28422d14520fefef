//! The `discless` binary: parse the command line, set up logging, run, exit with the command's
//! code. Everything else lives in the library (`discless::cli`).

use std::process::ExitCode;

use clap::Parser;
use discless::cli::{self, Cli};
use discless::home::ENV_LOG;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Cli::parse();
    let default = match args.verbose {
        0 => "warn",
        1 => "discless=info",
        _ => "discless=debug",
    };
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages carry their causes already; print the chain only where a
            // source adds something the message does not say.
            let e = anyhow::Error::from(e);
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}
