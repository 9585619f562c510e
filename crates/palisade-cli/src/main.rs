//! `palisade`: parse the command line, dispatch to a library crate, map the outcome to an exit
//! code. No logic of its own lives here.
//!
//! Exit codes, for every command:
//! - 0: success (for checks: clean / passed);
//! - 1: the command ran and found something (findings, a failed verification, a check that fails);
//! - 2: error: bad input, unreadable file, bad usage.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod output;

/// Palisade: a security system for machine-learning models.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Log verbosity on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "PALISADE_LOG")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a native network (default: the CNN on the bundled MNIST subset) and save a checkpoint.
    Train(cmd::train::TrainArgs),
    /// Evaluate a model: accuracy, per-class accuracy, loss.
    Eval(cmd::eval::EvalArgs),
    /// The main job on the embedded defaults: train, evaluate and check the native CNN.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging(&cli.log);
    let ctx = output::Ctx { json: cli.json };
    let result: anyhow::Result<cmd::Outcome> = match cli.command {
        Command::Train(args) => cmd::train::run(&ctx, args),
        Command::Eval(args) => cmd::eval::run(&ctx, args),
        Command::Demo(args) => cmd::demo::run(&ctx, args),
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => output::report_error(&ctx, &err),
    }
}
