//! The `flint` command.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use flint::cli::{Cli, Command};
use flint::exit::VmOutcome;

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_micros()
        .init();
    match cli.command {
        Command::Run(args) => {
            let result = args
                .to_config()
                .map_err(anyhow::Error::from)
                .and_then(|config| flint::vmm::run(&config, process_start));
            // The terminal is back in its original mode by now: `run` restores it on every path.
            match result {
                Ok(VmOutcome::Guest(reason)) => {
                    log::info!("guest stopped: {reason:?}");
                    ExitCode::SUCCESS
                }
                Ok(VmOutcome::ConsoleEscape) => ExitCode::SUCCESS,
                Ok(VmOutcome::Signal(signum)) => {
                    log::info!("stopped by signal {signum}");
                    ExitCode::from(128u8.saturating_add(signum as u8))
                }
                Ok(VmOutcome::Error(message)) => {
                    eprintln!("flint: error: {message}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    flint::terminal::restore();
                    eprintln!("flint: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
