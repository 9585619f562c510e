//! How the binary talks to people and programs: JSON or text on stdout, logs and errors on stderr.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// Output settings shared by every command.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// `--json`: one JSON document on stdout.
    pub json: bool,
}

impl Ctx {
    /// Prints `value` as pretty JSON when `--json` is on, else calls `text`.
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        let s = if self.json {
            serde_json::to_string_pretty(value)?
        } else {
            text(value)
        };
        // A closed pipe (`palisade ... | head`) is a normal stop, not an error.
        match writeln!(out, "{s}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        }
    }

    /// Whether progress bars may be drawn (never in JSON mode).
    pub fn progress(&self) -> bool {
        !self.json
    }
}

/// Structured logs on stderr (`--log`, `PALISADE_LOG`); JSON lines when `json` (servers).
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Prints an error as one line (its cause chain joined by ": ") and returns exit code 2.
pub fn report_error(ctx: &Ctx, err: &anyhow::Error) -> ExitCode {
    if ctx.json {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        let v = serde_json::json!({ "error": format!("{err:#}"), "causes": chain });
        println!("{v}");
    }
    eprintln!("error: {err:#}");
    ExitCode::from(2)
}
