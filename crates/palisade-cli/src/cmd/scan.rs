//! `palisade scan PATH...`: find code-execution payloads in model files (see `palisade-scan`).

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use palisade_scan::{FileStatus, ScanOptions, ScanReport, Severity};

use crate::cmd::Outcome;
use crate::output::Ctx;

/// Arguments of `palisade scan` (its help text is on `Command::Scan`).
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Files or directories (scanned recursively, in parallel).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Print SARIF 2.1.0 (for code-scanning tools) instead of text.
    #[arg(long, conflicts_with = "json")]
    pub sarif: bool,

    /// Strict: archive members of unknown format make the archive unscannable.
    #[arg(long)]
    pub strict: bool,

    /// Skip the SHA-256 of every file (faster on large files; the report then has no hashes).
    #[arg(long)]
    pub no_hash: bool,

    /// Also allow this pickle global as a callable, for a library you trust: `module.Name`, or
    /// `module.*` for a module and its submodules (e.g. `--allow 'sklearn.*'`). Repeatable.
    #[arg(long, value_name = "GLOBAL")]
    pub allow: Vec<String>,
}

/// Runs the scan and prints the report.
pub fn run(ctx: &Ctx, args: &ScanArgs) -> anyhow::Result<Outcome> {
    let opts = ScanOptions::default()
        .strict(args.strict)
        .allow(args.allow.clone())
        .hash(!args.no_hash);
    let mut reports = Vec::with_capacity(args.paths.len());
    let spinner = ctx.progress().then(indicatif::ProgressBar::new_spinner);
    for p in &args.paths {
        if let Some(s) = &spinner {
            s.set_message(format!("scanning {}", p.display()));
            s.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        reports.push(palisade_scan::scan_path(p, &opts)?);
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let report = ScanReport::merge(reports);
    if args.sarif {
        let log = palisade_scan::sarif::to_sarif(&report);
        let s = serde_json::to_string_pretty(&log)?;
        crate::output::print_line(&s)?;
    } else {
        ctx.emit(&report, text)?;
    }
    Ok(outcome(&report))
}

/// The exit decision: findings first, then unscannable files, else success.
pub fn outcome(report: &ScanReport) -> Outcome {
    if report.has_findings() {
        Outcome::Findings
    } else if report.has_errors() || report.files.is_empty() {
        Outcome::Unscannable
    } else {
        Outcome::Success
    }
}

fn text(r: &ScanReport) -> String {
    let mut s = String::new();
    for f in &r.files {
        let shown: Vec<_> = f
            .findings
            .iter()
            .filter(|x| x.severity != Severity::Info)
            .collect();
        if f.status == FileStatus::Clean && shown.is_empty() {
            continue;
        }
        let status = match f.status {
            FileStatus::Clean => "clean",
            FileStatus::Flagged if f.is_dangerous() => "DANGEROUS",
            FileStatus::Flagged => "SUSPICIOUS",
            FileStatus::Unscannable => "UNSCANNABLE",
        };
        let partial = if f.complete || f.status == FileStatus::Unscannable {
            ""
        } else {
            ", partly unscannable"
        };
        let _ = writeln!(
            s,
            "{}: {status}{partial} ({})",
            f.path.display(),
            f.format.as_str()
        );
        for x in shown {
            let at = x.offset.map(|o| format!(" @{o}")).unwrap_or_default();
            let member = if x.member.is_empty() {
                String::new()
            } else {
                format!(" [{}]", x.member)
            };
            let _ = writeln!(
                s,
                "  {:<10} {}{member}{at}: {}",
                x.severity.as_str(),
                x.kind.id(),
                x.message
            );
            for c in &x.chain {
                let _ = writeln!(s, "             via {c}");
            }
        }
    }
    let m = &r.summary;
    let _ = write!(
        s,
        "{} file(s) scanned: {} clean, {} flagged, {} unscannable ({} dangerous, {} suspicious findings)",
        m.files, m.clean, m.flagged, m.unscannable, m.dangerous, m.suspicious
    );
    s
}
