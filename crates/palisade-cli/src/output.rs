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
        // A closed pipe (`palisade ... | head`) is a normal stop, not an error.
        match self.write(value, text)? {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        }
    }

    /// [`Ctx::emit`] for output that carries a secret shown once (a new key): written and
    /// flushed, or an error, a closed pipe included, so that the caller can take back what it
    /// could not show (a key stored but never seen is a key nobody can use, or revoke by name).
    pub fn emit_secret<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if stdout_goes_nowhere() {
            anyhow::bail!(
                "stdout is the null device (redirected to /dev/null, or closed): the new key \
                 would be shown to no one"
            );
        }
        self.write(value, text)?
            .map_err(|e| anyhow::anyhow!("cannot write the new key to stdout: {e}"))
    }

    /// Writes and flushes `value` (JSON or `text`) to stdout: the outer error is encoding's,
    /// the inner one writing's.
    fn write<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<std::io::Result<()>> {
        let s = if self.json {
            serde_json::to_string_pretty(value)?
        } else {
            text(value)
        };
        let mut out = std::io::stdout().lock();
        Ok(writeln!(out, "{s}").and_then(|()| out.flush()))
    }

    /// Whether progress bars may be drawn (never in JSON mode).
    pub fn progress(&self) -> bool {
        !self.json
    }
}

/// Whether stdout is the null device: redirected to `/dev/null`, or closed (Rust's runtime
/// opens the null device on a closed descriptor 1 at start, and writes to it succeed: a key
/// "shown" there was shown to no one; review, 2026-12-06).
fn stdout_goes_nowhere() -> bool {
    let Ok(out) = rustix::fs::fstat(std::io::stdout()) else {
        return true;
    };
    let Ok(null) = rustix::fs::stat("/dev/null") else {
        return false;
    };
    let char_device =
        |m| rustix::fs::FileType::from_raw_mode(m) == rustix::fs::FileType::CharacterDevice;
    char_device(out.st_mode) && char_device(null.st_mode) && out.st_rdev == null.st_rdev
}

/// The levels `--log` takes, alone or as `target=level`.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `--log` value: comma-separated levels or `target=level` directives. A bare word that
/// is not a level is refused: tracing would take `warning` for a target and log nothing else.
pub fn check_log_filter(level: &str) -> anyhow::Result<()> {
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            anyhow::bail!(
                "--log '{d}': not a level ({}) nor a target=level directive",
                LEVELS.join(", ")
            );
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("--log '{level}': {e}"))
}

/// Structured logs on stderr (`--log`, `PALISADE_LOG`, checked by [`check_log_filter`]); JSON
/// lines when `json` (servers). A log line that cannot be written is dropped: with the
/// subscriber's default, a broken stderr (a log shipper that died) made every log line a panic,
/// the audit guard's among them, after the request's entry was committed and before its answer.
/// The filter can be replaced while the process runs: [`logger`] gives the handle.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    // Kept only when this subscriber is the one installed.
    let logger = if json {
        let builder = builder.json().with_filter_reloading();
        let handle = builder.reload_handle();
        builder
            .try_init()
            .is_ok()
            .then(|| Logger::of("json", handle))
    } else {
        let builder = builder.with_filter_reloading();
        let handle = builder.reload_handle();
        builder
            .try_init()
            .is_ok()
            .then(|| Logger::of("default", handle))
    };
    if let Some(logger) = logger {
        let _ = LOGGER.set(std::sync::Arc::new(logger));
    }
}

static LOGGER: std::sync::OnceLock<std::sync::Arc<Logger>> = std::sync::OnceLock::new();

/// The process's logger, once [`init_logging`] has installed it: what `palisade serve` hands the
/// gateway for Triton's logging extension (`/v2/logging`).
pub fn logger() -> Option<std::sync::Arc<Logger>> {
    LOGGER.get().cloned()
}

type LevelHint = Box<dyn Fn() -> Option<tracing::level_filters::LevelFilter> + Send + Sync>;
type Reload = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

/// The filter of the installed subscriber, read and replaced.
pub struct Logger {
    format: &'static str,
    level: LevelHint,
    reload: Reload,
}

impl Logger {
    /// The logger of the filter `handle` reloads, writing `format`. The handle's type is its
    /// subscriber's (one per formatter): it is kept behind the two closures.
    fn of<S: Send + Sync + 'static>(
        format: &'static str,
        handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
    ) -> Self {
        let read = handle.clone();
        Logger {
            format,
            level: Box::new(move || read.with_current(|f| f.max_level_hint()).ok().flatten()),
            reload: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        }
    }
}

impl palisade_gateway::logging::LogControl for Logger {
    fn level(&self) -> tracing::level_filters::LevelFilter {
        // A filter without a hint may enable anything.
        (self.level)().unwrap_or(tracing::level_filters::LevelFilter::TRACE)
    }

    /// A verbose level (`debug`, `trace`) is Palisade's own lines' (its crates' targets all begin
    /// with `palisade`): the libraries beneath (hyper, h2, tonic…) then log at `info`, as
    /// Triton's verbose level is the server's own logging.
    fn set_level(&self, level: tracing::level_filters::LevelFilter) -> Result<(), String> {
        let directives = if level > tracing::level_filters::LevelFilter::INFO {
            format!("info,palisade={level}")
        } else {
            level.to_string()
        };
        (self.reload)(tracing_subscriber::EnvFilter::new(directives))
    }

    fn format(&self) -> &'static str {
        self.format
    }
}

/// Prints an error as one line (its cause chain joined by ": ") and returns exit code 2.
pub fn report_error(ctx: &Ctx, err: &anyhow::Error) -> ExitCode {
    let line = one_line(err);
    // Written where possible: a closed or full stdout or stderr must not turn the error into a
    // panic (println! and eprintln! panic when they cannot write).
    if ctx.json {
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        let v = serde_json::json!({ "error": line, "causes": chain });
        let _ = writeln!(std::io::stdout(), "{v}");
    }
    let _ = writeln!(std::io::stderr(), "error: {line}");
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
    fn a_log_filter_is_levels_or_target_directives() {
        for ok in [
            "warn",
            "INFO",
            "info,tower=warn",
            "palisade_gateway=debug",
            "off",
        ] {
            assert!(super::check_log_filter(ok).is_ok(), "{ok}");
        }
        // tracing would take these for targets and then log nothing else.
        for bad in ["warning", "info,verbose"] {
            let e = super::check_log_filter(bad).unwrap_err().to_string();
            assert!(e.contains("not a level"), "{bad}: {e}");
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

    /// The logger reads the filter's level and replaces it; a verbose level is Palisade's own.
    #[test]
    fn the_logger_reads_and_replaces_its_filter() {
        use palisade_gateway::logging::LogControl as _;
        use tracing::level_filters::LevelFilter;
        let (layer, handle): (
            tracing_subscriber::reload::Layer<_, tracing_subscriber::Registry>,
            _,
        ) = tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new("warn"));
        let logger = super::Logger::of("json", handle);
        assert_eq!(logger.level(), LevelFilter::WARN);
        logger.set_level(LevelFilter::DEBUG).unwrap();
        assert_eq!(logger.level(), LevelFilter::DEBUG);
        let shown = logger_filter(&layer);
        assert!(
            shown.contains("palisade=debug") && shown.contains("info"),
            "{shown}"
        );
        logger.set_level(LevelFilter::OFF).unwrap();
        assert_eq!(logger.level(), LevelFilter::OFF);
        assert_eq!(logger.format(), "json");
    }

    fn logger_filter<S>(
        layer: &tracing_subscriber::reload::Layer<tracing_subscriber::EnvFilter, S>,
    ) -> String {
        layer
            .handle()
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}
