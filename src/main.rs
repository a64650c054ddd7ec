//! The `flint` command.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use flint::cli::{Cli, Command};
use flint::exit::VmOutcome;

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_micros()
        .init();
    match cli.command {
        Command::InstanceTypes {
            instance_generation,
        } => match instance_generation.parse() {
            Ok(generation) => {
                print!("{}", flint::instance::table(generation));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flint: error: --instance-generation: {e}");
                ExitCode::FAILURE
            }
        },
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

/// Help and version go to stdout in full; a usage error is one line on stderr and status 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let message = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("flint: error: {message} (see flint --help)");
    ExitCode::from(2)
}
