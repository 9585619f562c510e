//! `palisade scan PATH...`: find code-execution payloads in model files. The command line lives
//! in `palisade-scan-cli`, which the standalone `palisade-scan` binary shares.

pub use palisade_scan_cli::ScanArgs;

use crate::cmd::Outcome;
use crate::output::Ctx;

/// Runs the scan and prints the report.
pub fn run(ctx: &Ctx, args: &ScanArgs) -> anyhow::Result<Outcome> {
    Ok(match palisade_scan_cli::run(args, ctx.json)? {
        palisade_scan_cli::Outcome::Clean => Outcome::Success,
        palisade_scan_cli::Outcome::Findings => Outcome::Findings,
        palisade_scan_cli::Outcome::Unscannable => Outcome::Unscannable,
    })
}
