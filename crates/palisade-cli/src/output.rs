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
    let line = one_line(err);
    if ctx.json {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        let v = serde_json::json!({ "error": line, "causes": chain });
        println!("{v}");
    }
    eprintln!("error: {line}");
    ExitCode::from(2)
}

/// The cause chain joined by ": ", leaving out a cause whose message already ends the line
/// (an error that shows its source, as `#[error("…: {0}")]` with `#[from]` does, would
/// otherwise print it twice).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&format!(": {text}")) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    /// An error that shows its source in its own message, as thiserror's `{0}` with `#[from]`.
    #[derive(Debug)]
    struct Shows(std::io::Error);

    impl std::fmt::Display for Shows {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "audit log I/O: {}", self.0)
        }
    }

    impl std::error::Error for Shows {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_shown_is_not_repeated() {
        let io = std::io::Error::other("x.db does not exist");
        let e = anyhow::Error::from(Shows(io)).context("opening the log");
        assert_eq!(
            super::one_line(&e),
            "opening the log: audit log I/O: x.db does not exist"
        );
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::one_line(&e), "outer: inner");
        // A cause that only happens to end the text is kept.
        let e = anyhow::anyhow!("0").context("size 10");
        assert_eq!(super::one_line(&e), "size 10: 0");
    }
}
