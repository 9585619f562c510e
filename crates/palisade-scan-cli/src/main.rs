//! `palisade-scan`: the scanner alone, for CI jobs and pre-commit hooks (see the crate docs).
//! It takes the same arguments, prints the same reports and exits with the same codes as
//! `palisade scan`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use palisade_scan_cli::{LONG_ABOUT, ScanArgs};

/// Scan model files for code-execution payloads (exit 0 clean, 1 findings, 2 unscannable).
#[derive(Debug, Parser)]
#[command(name = "palisade-scan", version, long_about = LONG_ABOUT)]
struct Cli {
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    args: ScanArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match palisade_scan_cli::run(&cli.args, cli.json) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(err) => {
            let mut chain = Vec::new();
            let mut cur: Option<&dyn std::error::Error> = Some(&err);
            while let Some(e) = cur {
                chain.push(e.to_string());
                cur = e.source();
            }
            if cli.json {
                let v = serde_json::json!({ "error": chain.join(": "), "causes": chain });
                println!("{v}");
            }
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(2)
        }
    }
}
