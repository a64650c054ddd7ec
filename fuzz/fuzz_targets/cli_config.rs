//! The user-facing parsers, through flint's library API: the `flint` command line (clap), a JSON or
//! TOML config file, and the `--volume`, `--disk`, `--net`, `--memory`, `throughput=` and `mac=`
//! syntaxes, then validation of the whole configuration and, for a valid one, every volume's EBS
//! caps and limiter. The first byte picks the parser; the rest is the text (for the command line,
//! arguments separated by NUL or newline bytes). Nothing may panic: bad input is an error value.
#![no_main]

use std::cell::RefCell;

use clap::{CommandFactory, FromArgMatches};
use flint::cli::{Cli, Command};
use flint::config::{parse_memory_size, RawConfig, VmConfig};
use flint::disk::DiskConfig;
use flint::net::{parse_mac, NetConfig};
use flint::volume::{parse_throughput, VolumeConfig};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static COMMAND: RefCell<clap::Command> = RefCell::new(Cli::command());
}

/// What a valid configuration leads to before any file is opened: each volume's caps for a few
/// sizes, and their token-bucket settings.
fn use_config(config: &VmConfig, size: u64) {
    for volume in &config.volumes {
        for size in [0, 1, size, 170 << 30, u64::MAX] {
            if let Some(caps) = volume.caps(size) {
                let _ = caps.limiter_config();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 4 {
        0 => {
            let args = text.split(['\0', '\n']);
            // What `Cli::try_parse_from` does, with the clap command built once per process
            // instead of once per input (building it is most of the cost).
            let matches = COMMAND.with_borrow_mut(|command| {
                command.try_get_matches_from_mut(std::iter::once("flint").chain(args))
            });
            let Ok(cli) = matches.and_then(|mut m| Cli::from_arg_matches_mut(&mut m)) else {
                return;
            };
            if let Command::Run(mut run) = cli.command {
                // A config file named on the command line would be read from the host; the
                // file's text is fuzzed on its own below.
                run.config = None;
                if let Ok(config) = run.to_config() {
                    use_config(&config, rest.len() as u64);
                }
            }
        }
        1 | 2 => {
            if let Ok(raw) = RawConfig::parse(&text, selector % 4 == 2) {
                if let Ok(config) = raw.clone().overridden_by(RawConfig::default()).validate() {
                    use_config(&config, u64::from(selector) << 30);
                }
            }
        }
        _ => {
            for spec in text.split('\n') {
                let _ = spec.parse::<VolumeConfig>();
                let _ = spec.parse::<DiskConfig>();
                let _ = spec.parse::<NetConfig>();
                let _ = parse_memory_size(spec);
                let _ = parse_throughput(spec);
                let _ = parse_mac(spec);
            }
        }
    }
});
