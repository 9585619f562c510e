//! One module per command. Each parses its own arguments and calls into a library crate.

use std::process::ExitCode;

pub mod attack;
pub mod audit;
mod common;
pub mod demo;
pub mod eval;
pub mod keyargs;
pub mod keygen;
pub mod keys;
pub mod model;
pub mod progress;
pub mod provenance;
pub mod registry;
pub mod robustness;
pub mod scan;
pub mod seal;
pub mod serve;
pub mod sign;
pub mod train;
pub mod verify;

/// How a command that ran to the end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// Success: clean, verified, passed.
    Success,
    /// The command ran and found something (findings, failed verification).
    Findings,
    /// The command ran but could not analyse some input (unknown format, unparsable file).
    Unscannable,
}

impl Outcome {
    /// The documented exit code: 0 success, 1 findings, 2 unscannable input (2 is also errors,
    /// in `main`).
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Findings => ExitCode::from(1),
            Outcome::Unscannable => ExitCode::from(2),
        }
    }
}
