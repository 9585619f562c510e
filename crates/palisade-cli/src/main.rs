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
    /// Inspect and check model files (`model info`, `model check`).
    Model(cmd::model::ModelArgs),
    /// Serve models over the Open Inference Protocol behind the guards (default: the bundled
    /// MNIST model; prints a first admin key once).
    Serve(cmd::serve::ServeArgs),
    /// Manage the gateway's API keys.
    Keys(cmd::keys::KeysArgs),
    /// Verify the gateway's audit log; checkpoints and proofs.
    Audit(cmd::audit::AuditArgs),
    /// Scan model files for code-execution payloads (exit 0 clean, 1 findings, 2 unscannable).
    #[command(long_about = palisade_scan_cli::LONG_ABOUT)]
    Scan(cmd::scan::ScanArgs),
    /// Sign a model in the OpenSSF Model Signing format.
    Sign(cmd::sign::Args),
    /// Verify a model against an OpenSSF Model Signing bundle (0 verified, 1 failed, 2 error).
    Verify(cmd::verify::Args),
    /// Generate an ECDSA P-256/P-384 key pair for signing.
    Keygen(cmd::keygen::Args),
    /// Encrypt a file at rest (age: X25519 recipients or passphrase).
    Seal(cmd::seal::SealArgs),
    /// Decrypt an age file (atomic: nothing is written unless it authenticates).
    Unseal(cmd::seal::UnsealArgs),
    /// The model registry: versions, aliases, rollback, history (add: exit 1 if refused).
    Registry(cmd::registry::RegistryArgs),
    /// Provenance: dataset manifests, signed training records, chain verification.
    Provenance(cmd::provenance::ProvenanceArgs),
    /// Run one evasion attack; writes adversarial examples (NPY) and a JSON summary.
    Attack(Box<cmd::attack::AttackArgs>),
    /// Robustness suite over a sweep of epsilons: JSON, accuracy-vs-epsilon plot, HTML report.
    Robustness(cmd::robustness::RobustnessArgs),
    /// Train a native network (default: the CNN on the bundled MNIST subset) and save a checkpoint.
    Train(cmd::train::TrainArgs),
    /// Evaluate a model: accuracy, per-class accuracy, loss.
    Eval(cmd::eval::EvalArgs),
    /// The main job on the embedded defaults: train, evaluate and check the native CNN.
    Demo(cmd::demo::DemoArgs),
    /// The gateway benchmarks' bare endpoint: a model with no guards, on loopback only.
    #[command(hide = true)]
    BenchEndpoint(cmd::serve::BenchEndpointArgs),
}

/// mimalloc rather than glibc's allocator: the gateway allocates per request on many threads
/// (bodies, tensors, headers, audit entries), where glibc's malloc and free took about 3% of
/// the gateway's CPU at 16 connections (perf self time, 2026-12-04). With mimalloc in both it
/// and the bare endpoint, the CPU the guard chain adds per request went from 29 to 24 µs at 16
/// connections and from 46 to 38 µs at one (`bench/gateway_vs_bare.sh`, process durability: one
/// 5-round run before, one 3-round run after; a later 5-round run gave 20 and 44 µs), while the
/// bare endpoint's own cost stayed within 3 µs. Differences of this size are near what this
/// shared VM repeats, so the figure is a direction, not a precise gain.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // tract panics on some malformed models; palisade-model turns such a panic into an error,
    // which is reported below like any other. The default hook would first print it, with a
    // backtrace where RUST_BACKTRACE is set, as if palisade had crashed. Other panics print.
    palisade_model::onnx::quiet_caught_panics();
    let ctx = output::Ctx { json: cli.json };
    if let Err(err) = output::check_log_filter(&cli.log) {
        return output::report_error(&ctx, &err);
    }
    // The server logs JSON lines (for log shippers); other commands log text unless --json.
    output::init_logging(
        &cli.log,
        cli.json || matches!(cli.command, Command::Serve(_)),
    );
    let result: anyhow::Result<cmd::Outcome> = match cli.command {
        Command::Model(args) => cmd::model::run(&ctx, args),
        Command::Sign(a) => cmd::sign::run(&ctx, a),
        Command::Verify(a) => cmd::verify::run(&ctx, a),
        Command::Keygen(a) => cmd::keygen::run(&ctx, a),
        Command::Seal(a) => cmd::seal::run_seal(&ctx, a),
        Command::Unseal(a) => cmd::seal::run_unseal(&ctx, a),
        Command::Registry(a) => cmd::registry::run(&ctx, a),
        Command::Provenance(a) => cmd::provenance::run(&ctx, a),
        Command::Scan(args) => cmd::scan::run(&ctx, &args),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::Keys(a) => cmd::keys::run(&ctx, a),
        Command::Audit(a) => cmd::audit::run(&ctx, a),
        Command::Attack(a) => cmd::attack::run(&ctx, *a),
        Command::Robustness(a) => cmd::robustness::run(&ctx, a),
        Command::Train(args) => cmd::train::run(&ctx, args),
        Command::Eval(args) => cmd::eval::run(&ctx, args),
        Command::Demo(args) => cmd::demo::run(&ctx, args),
        Command::BenchEndpoint(args) => cmd::serve::bench_endpoint(&ctx, args),
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(err) => output::report_error(&ctx, &err),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
