//! Triton's logging extension (`GET` and `POST /v2/logging`, gRPC `LogSettings`; tritonclient's
//! `get_log_settings` and `update_log_settings`): the gateway's log level, read and changed while
//! it runs, through the admin stack (role `admin`; a change needs a TOTP code too, and is written
//! ahead in the audit log as every admin action is).
//!
//! Triton's settings are flags per severity and a verbose level; Palisade's logs (`tracing`) have
//! one ordered level, so the flags must be ordered too: `log_info` needs `log_warning`, which
//! needs `log_error`, and a verbose level needs all three (1 is `debug`, 2 and more `trace`). A
//! setting sent implies what that order needs of the others (a verbose level turns on the
//! severities, errors off turns off the rest); a combination sent that no level gives is refused
//! (400), as are a `log_file` (Palisade logs to
//! stderr, where the process's supervisor sends them) and another `log_format` than the one the
//! gateway started with. The process owns its logger: it hands the gateway a [`LogControl`].

use serde::Serialize;
use tracing::level_filters::LevelFilter;

/// The process's logger, as the gateway may read and change it.
pub trait LogControl: Send + Sync {
    /// The most verbose level anything is logged at now.
    fn level(&self) -> LevelFilter;
    /// Logs everything at `level` from now on (directives per target given at start are
    /// replaced).
    fn set_level(&self, level: LevelFilter) -> Result<(), String>;
    /// How log lines are written (`json`, or `default` for text lines); fixed at start.
    fn format(&self) -> &'static str;
}

/// Triton's log settings, as `GET /v2/logging` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSettings {
    /// Always empty: Palisade logs to stderr.
    pub log_file: String,
    /// Whether `info` lines are logged.
    pub log_info: bool,
    /// Whether warnings are logged.
    pub log_warning: bool,
    /// Whether errors are logged.
    pub log_error: bool,
    /// 0, 1 (`debug`) or 2 (`trace`).
    pub log_verbose_level: u32,
    /// [`LogControl::format`].
    pub log_format: String,
}

impl LogSettings {
    /// The settings of a logger at `level` writing `format`.
    pub fn of(level: LevelFilter, format: &str) -> LogSettings {
        let at_least = |l: LevelFilter| level >= l;
        LogSettings {
            log_file: String::new(),
            log_info: at_least(LevelFilter::INFO),
            log_warning: at_least(LevelFilter::WARN),
            log_error: at_least(LevelFilter::ERROR),
            log_verbose_level: if at_least(LevelFilter::TRACE) {
                2
            } else if at_least(LevelFilter::DEBUG) {
                1
            } else {
                0
            },
            log_format: format.to_string(),
        }
    }

    /// The level these settings are, if one is.
    pub fn level(&self) -> Result<LevelFilter, String> {
        let (info, warning, error) = (self.log_info, self.log_warning, self.log_error);
        if self.log_verbose_level > 0 && !(info && warning && error) {
            return Err(
                "a verbose level needs log_info, log_warning and log_error: Palisade's log \
                 levels are ordered (trace, debug, info, warning, error)"
                    .into(),
            );
        }
        Ok(match self.log_verbose_level {
            0 => match (info, warning, error) {
                (true, true, true) => LevelFilter::INFO,
                (false, true, true) => LevelFilter::WARN,
                (false, false, true) => LevelFilter::ERROR,
                (false, false, false) => LevelFilter::OFF,
                _ => {
                    return Err(
                        "log_info needs log_warning, and log_warning needs log_error: \
                                Palisade's log levels are ordered (trace, debug, info, \
                                warning, error)"
                            .into(),
                    );
                }
            },
            1 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    /// These settings with `update` (a JSON object of some of them, as Triton's `POST
    /// /v2/logging` takes) applied, or why it cannot be. A setting sent implies what the order
    /// of the levels needs of those not sent: a verbose level, or `log_info`, turns on the
    /// severities below it; `log_error` or `log_warning` off turns off those above it. Settings
    /// sent that contradict each other are refused.
    pub fn updated(&self, update: &serde_json::Value) -> Result<LogSettings, String> {
        let Some(fields) = update.as_object() else {
            return Err("expected a JSON object of log settings".into());
        };
        let (mut info, mut warning, mut error, mut verbose) = (None, None, None, None);
        for (name, value) in fields {
            let flag = |v: &serde_json::Value| {
                v.as_bool()
                    .map(Some)
                    .ok_or_else(|| format!("'{name}' must be true or false"))
            };
            match name.as_str() {
                "log_info" => info = flag(value)?,
                "log_warning" => warning = flag(value)?,
                "log_error" => error = flag(value)?,
                "log_verbose_level" => {
                    verbose = Some(
                        value
                            .as_u64()
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| format!("'{name}' must be a whole number from 0"))?,
                    );
                }
                "log_file" => {
                    if value.as_str() != Some("") {
                        return Err("Palisade logs to stderr, where the process's supervisor \
                                    sends them: 'log_file' can only be \"\""
                            .into());
                    }
                }
                "log_format" => {
                    if value.as_str() != Some(self.log_format.as_str()) {
                        return Err(format!(
                            "'log_format' is set when the gateway starts (--json); it is \"{}\"",
                            self.log_format
                        ));
                    }
                }
                other => return Err(format!("unknown log setting '{other}'")),
            }
        }
        // What those sent imply of those not sent, from the most verbose down and back up.
        let on = verbose.is_some_and(|v| v > 0) || info == Some(true);
        let info = info.or(on.then_some(true));
        let warning = warning.or((on || info == Some(true)).then_some(true));
        let error = error.or((on || warning == Some(true)).then_some(true));
        let warning = warning.or((error == Some(false)).then_some(false));
        let info = info.or((warning == Some(false)).then_some(false));
        let verbose = verbose.or((info == Some(false)).then_some(0));
        let next = LogSettings {
            log_info: info.unwrap_or(self.log_info),
            log_warning: warning.unwrap_or(self.log_warning),
            log_error: error.unwrap_or(self.log_error),
            log_verbose_level: verbose.unwrap_or(self.log_verbose_level),
            ..self.clone()
        };
        next.level()?;
        Ok(next)
    }
}

/// Applies `update` (see [`LogSettings::updated`]) to `log`: the settings after, or why it cannot
/// be (nothing changed then). One change at a time, so that two at once do not each undo the
/// other's. Logged at the level before the change, so that a change that silences the log is
/// in it; a change to the level already set changes nothing (the `--log` directives stay).
pub fn apply(log: &dyn LogControl, update: &serde_json::Value) -> Result<Applied, LogError> {
    static CHANGING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CHANGING.lock().unwrap_or_else(|p| p.into_inner());
    let before = log.level();
    let next = LogSettings::of(before, log.format())
        .updated(update)
        .map_err(LogError::Refused)?;
    let level = next.level().map_err(LogError::Refused)?;
    if level == before {
        return Ok(Applied::Kept(next));
    }
    tracing::warn!(from = %before, to = %level, "log level changed through the admin API");
    log.set_level(level).map_err(LogError::Failed)?;
    Ok(Applied::Changed(LogSettings::of(log.level(), log.format())))
}

/// Why [`apply`] changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The settings cannot be taken (answered 400).
    #[error("{0}")]
    Refused(String),
    /// The logger failed to change (answered 500).
    #[error("the logger failed: {0}")]
    Failed(String),
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The level was already the one asked for: the logger is untouched.
    Kept(LogSettings),
    /// The level was changed.
    Changed(LogSettings),
}

impl Applied {
    /// The settings now.
    pub fn settings(&self) -> &LogSettings {
        match self {
            Applied::Kept(s) | Applied::Changed(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_reads_back_as_itself() {
        for level in [
            LevelFilter::OFF,
            LevelFilter::ERROR,
            LevelFilter::WARN,
            LevelFilter::INFO,
            LevelFilter::DEBUG,
            LevelFilter::TRACE,
        ] {
            assert_eq!(LogSettings::of(level, "json").level(), Ok(level));
        }
        let info = LogSettings::of(LevelFilter::INFO, "json");
        assert!(info.log_info && info.log_warning && info.log_error);
        assert_eq!(info.log_verbose_level, 0);
    }

    #[test]
    fn updates_are_applied_or_refused_with_the_reason() {
        let info = LogSettings::of(LevelFilter::INFO, "default");
        let warn = LogSettings::of(LevelFilter::WARN, "default");
        let set =
            |from: &LogSettings, u: serde_json::Value| from.updated(&u).and_then(|s| s.level());
        for (from, update, level) in [
            (
                &info,
                serde_json::json!({"log_verbose_level": 1}),
                LevelFilter::DEBUG,
            ),
            (
                &info,
                serde_json::json!({"log_verbose_level": 3}),
                LevelFilter::TRACE,
            ),
            // A verbose level turns on the severities below it.
            (
                &warn,
                serde_json::json!({"log_verbose_level": 1}),
                LevelFilter::DEBUG,
            ),
            (
                &warn,
                serde_json::json!({"log_info": true}),
                LevelFilter::INFO,
            ),
            (
                &info,
                serde_json::json!({"log_info": false}),
                LevelFilter::WARN,
            ),
            // Errors off: everything off; warnings off: errors alone.
            (
                &info,
                serde_json::json!({"log_error": false}),
                LevelFilter::OFF,
            ),
            (
                &info,
                serde_json::json!({"log_warning": false}),
                LevelFilter::ERROR,
            ),
            (
                &LogSettings::of(LevelFilter::DEBUG, "default"),
                serde_json::json!({"log_info": false}),
                LevelFilter::WARN,
            ),
            (
                &info,
                serde_json::json!({"log_file": "", "log_format": "default"}),
                LevelFilter::INFO,
            ),
        ] {
            assert_eq!(set(from, update.clone()), Ok(level), "{update}");
        }
        for (update, needle) in [
            (
                serde_json::json!({"log_warning": false, "log_info": true}),
                "ordered",
            ),
            (
                serde_json::json!({"log_error": false, "log_verbose_level": 1}),
                "verbose level needs",
            ),
            (serde_json::json!({"log_file": "/tmp/x"}), "stderr"),
            (serde_json::json!({"log_format": "ISO8601"}), "\"default\""),
            (serde_json::json!({"log_info": "yes"}), "true or false"),
            (serde_json::json!({"log_verbose_level": -1}), "whole number"),
            (serde_json::json!({"log_level": 1}), "unknown log setting"),
            (serde_json::json!([1]), "JSON object"),
        ] {
            let e = info.updated(&update).unwrap_err();
            assert!(e.contains(needle), "{update}: {e}");
        }
    }
}
