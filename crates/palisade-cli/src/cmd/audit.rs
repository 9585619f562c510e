//! `palisade audit`: verify a gateway's audit log offline, print its checkpoint, and make
//! inclusion and consistency proofs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use palisade_gateway::audit::{SignedCheckpoint, open_offline, verify_log};
use palisade_gateway::keys::SqliteKeyStore;
use palisade_gateway::server::{StatePaths, read_public_key};

use crate::cmd::Outcome;
use crate::output::Ctx;

/// What `palisade audit verify` reports: the verifier's report, and the key changes queued for
/// the log.
#[derive(serde::Serialize)]
struct Verified<'a> {
    #[serde(flatten)]
    report: &'a palisade_gateway::audit::VerifyReport,
    queued_key_changes: u64,
}

/// Arguments of `palisade audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The gateway's state folder.
    #[arg(long, default_value = "palisade-state", global = true)]
    state: PathBuf,

    /// The audit database (default: <state>/audit.db).
    #[arg(long, global = true)]
    db: Option<PathBuf>,

    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Recompute every leaf and root; check every checkpoint's signature (exit 1 on failure).
    Verify {
        /// The checkpoint public key (hex file; default: <state>/audit-ed25519.pub). Keep a copy
        /// outside the state folder: whoever can rewrite the log can rewrite this file too.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Checkpoints saved earlier (JSON from `palisade audit checkpoint`): they catch a log
        /// truncated together with its later checkpoints.
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
    },
    /// Print the latest signed checkpoint (save it somewhere else).
    Checkpoint,
    /// Prove that entry INDEX is in the log (of SIZE entries, default: all).
    Inclusion {
        /// Entry index.
        #[arg(long)]
        index: u64,
        /// Tree size.
        #[arg(long)]
        size: Option<u64>,
    },
    /// Prove that the log of FIRST entries is a prefix of the log of SECOND entries.
    Consistency {
        /// The older size.
        #[arg(long)]
        first: u64,
        /// The newer size (default: all).
        #[arg(long)]
        second: Option<u64>,
    },
}

/// Runs `palisade audit`.
pub fn run(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<Outcome> {
    let paths = StatePaths::new(&args.state);
    let db = args.db.clone().unwrap_or_else(|| paths.audit_db());
    match args.action {
        AuditAction::Verify {
            public_key,
            checkpoints,
        } => {
            let pk_path = public_key.unwrap_or_else(|| paths.public_key());
            let pk = read_public_key(&pk_path)?;
            let mut trusted = Vec::new();
            for p in &checkpoints {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
                // Accept the bare checkpoint or the API's {"checkpoint": …} wrapper.
                let c = v.get("checkpoint").cloned().unwrap_or(v);
                let c: SignedCheckpoint = serde_json::from_value(c)
                    .with_context(|| format!("{} is not a signed checkpoint", p.display()))?;
                trusted.push(c);
            }
            let spinner = ctx.progress().then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.set_message(format!("verifying {}", db.display()));
                s.enable_steady_tick(std::time::Duration::from_millis(120));
                s
            });
            let report = verify_log(&db, &pk, &trusted);
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            let report = report?;
            // Key changes by operators not yet moved into the log (read only; a folder given
            // only as --db has none to tell).
            let keys_db = paths.keys_db();
            let queued_key_changes = if keys_db.exists() {
                SqliteKeyStore::queued(&keys_db)
                    .with_context(|| format!("reading {}", keys_db.display()))?
            } else {
                0
            };
            let out = Verified {
                report: &report,
                queued_key_changes,
            };
            ctx.emit(&out, |v| {
                let r = v.report;
                let mut s = format!(
                    "{} entries, {} checkpoints, verified up to {} ({} unsigned after), root {}",
                    r.entries, r.checkpoints, r.verified_up_to, r.unsigned_tail, r.root
                );
                if r.journal_entries > 0 {
                    s.push_str(&format!(
                        "\n{} of the entries are in the append journal, not yet in the database (the gateway copies them in when it starts)",
                        r.journal_entries
                    ));
                }
                if v.queued_key_changes > 0 {
                    s.push_str(&format!(
                        "\n{} key changes made with `palisade keys` are queued, not yet in the log (the gateway appends them within a second, or when it starts)",
                        v.queued_key_changes
                    ));
                }
                if r.ok() {
                    s.push_str("\nOK: the log verifies");
                } else {
                    for p in &r.problems {
                        s.push_str(&format!("\nFAIL: {p}"));
                    }
                }
                s
            })?;
            Ok(if report.ok() {
                Outcome::Success
            } else {
                Outcome::Findings
            })
        }
        AuditAction::Checkpoint => {
            let log = open_offline(&db)?;
            let c = log
                .latest_checkpoint()?
                .context("the log has no checkpoint yet")?;
            ctx.emit(&c, |c| serde_json::to_string_pretty(c).unwrap_or_default())?;
            Ok(Outcome::Success)
        }
        AuditAction::Inclusion { index, size } => {
            let log = open_offline(&db)?;
            let size = match size {
                Some(s) => s,
                None => log.size()?,
            };
            let p = log.inclusion(index, size)?;
            let ok = p.verify();
            ctx.emit(&p, |p| {
                format!(
                    "entry {} of {}: leaf {}\nroot {}\npath ({} nodes):\n  {}\n{}",
                    p.index,
                    p.size,
                    p.leaf,
                    p.root,
                    p.path.len(),
                    p.path.join("\n  "),
                    if ok {
                        "proof verifies"
                    } else {
                        "PROOF DOES NOT VERIFY"
                    }
                )
            })?;
            Ok(if ok {
                Outcome::Success
            } else {
                Outcome::Findings
            })
        }
        AuditAction::Consistency { first, second } => {
            let log = open_offline(&db)?;
            let second = match second {
                Some(s) => s,
                None => log.size()?,
            };
            let p = log.consistency(first, second)?;
            let ok = p.verify();
            ctx.emit(&p, |p| {
                format!(
                    "{} → {} entries\nold root {}\nnew root {}\npath ({} nodes):\n  {}\n{}",
                    p.first,
                    p.second,
                    p.first_root,
                    p.second_root,
                    p.path.len(),
                    p.path.join("\n  "),
                    if ok {
                        "proof verifies"
                    } else {
                        "PROOF DOES NOT VERIFY"
                    }
                )
            })?;
            Ok(if ok {
                Outcome::Success
            } else {
                Outcome::Findings
            })
        }
    }
}
