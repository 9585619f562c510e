//! `palisade audit`: verify a gateway's audit log offline, print its checkpoint, and make
//! inclusion and consistency proofs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use palisade_gateway::audit::merkle::Hash;
use palisade_gateway::audit::{AuditError, SignedCheckpoint, open_offline, verify_log};
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
    /// `None` when the key database beside the log could not be read.
    queued_key_changes: Option<u64>,
    /// Why the key database could not be read (the log's verdict stands without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_key_changes_unknown: Option<String>,
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
    /// Prove that entry INDEX is in the log (of SIZE entries, default: the largest checkpoint
    /// given, else all).
    Inclusion {
        /// Entry index.
        #[arg(long)]
        index: u64,
        /// Tree size.
        #[arg(long)]
        size: Option<u64>,
        #[command(flatten)]
        against: Against,
    },
    /// Prove that the log of FIRST entries is a prefix of the log of SECOND entries.
    Consistency {
        /// The older size.
        #[arg(long)]
        first: u64,
        /// The newer size (default: the largest checkpoint given, else all).
        #[arg(long)]
        second: Option<u64>,
        #[command(flatten)]
        against: Against,
    },
}

/// The signed checkpoints a proof's roots are checked against. A proof that agrees with its
/// own root shows only that it was computed correctly; that the root is the log's is what a
/// checkpoint, signed by the gateway and kept elsewhere, vouches for.
#[derive(Debug, Args)]
struct Against {
    /// A signed checkpoint saved earlier (JSON from `palisade audit checkpoint` or the API) of
    /// one of the proof's tree sizes; repeat for both sizes of a consistency proof.
    #[arg(long = "checkpoint")]
    checkpoints: Vec<PathBuf>,
    /// The key the checkpoints are checked with (hex file; default:
    /// <state>/audit-ed25519.pub).
    #[arg(long)]
    public_key: Option<PathBuf>,
}

/// A checkpoint a proof was checked against.
#[derive(Debug, serde::Serialize)]
struct CheckedAgainst {
    /// The tree size it signs.
    size: u64,
    /// Whether its signature verifies under the key and its root is the proof's.
    matches: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// A proof, whether it is valid for its own roots, and the checkpoints its roots were checked
/// against (`palisade audit inclusion|consistency --json`).
#[derive(Debug, serde::Serialize)]
struct Proved<P> {
    #[serde(flatten)]
    proof: P,
    verifies: bool,
    checked_against: Vec<CheckedAgainst>,
}

impl<P: serde::Serialize> Proved<P> {
    /// Prints the proof (`text` describes it, the verdict follows) and says whether it held.
    fn emit(self, ctx: &Ctx, text: impl FnOnce(&P) -> String) -> anyhow::Result<Outcome> {
        ctx.emit(&self, |o| format!("{}\n{}", text(&o.proof), o.verdict()))?;
        Ok(
            if self.verifies && self.checked_against.iter().all(|c| c.matches) {
                Outcome::Success
            } else {
                Outcome::Findings
            },
        )
    }

    /// The closing lines of the text output.
    fn verdict(&self) -> String {
        let mut lines = vec![if self.verifies {
            "proof verifies against its roots".to_string()
        } else {
            "PROOF DOES NOT VERIFY".to_string()
        }];
        if self.checked_against.is_empty() {
            lines.push("(not checked against a signed checkpoint: give --checkpoint)".into());
        }
        lines.extend(self.checked_against.iter().map(CheckedAgainst::line));
        lines.join("\n")
    }
}

/// What is printed instead of a proof when a checkpoint given covers more entries than the log
/// holds: entries were removed (exit 1).
#[derive(Debug, serde::Serialize)]
struct Truncated {
    log_entries: u64,
    verifies: bool,
    checked_against: Vec<CheckedAgainst>,
}

/// What is printed instead of an inclusion proof when the stored log is inconsistent where the
/// proof would be built: an entry whose data no longer hashes to the leaf stored for it (it was
/// rewritten), or an entry or a node missing (exit 1).
#[derive(Debug, serde::Serialize)]
struct Unprovable {
    index: u64,
    size: u64,
    verifies: bool,
    problem: String,
}

/// Reads a signed checkpoint saved as JSON: the bare checkpoint or the API's
/// `{"checkpoint": …}` wrapper.
fn read_checkpoint(p: &std::path::Path) -> anyhow::Result<SignedCheckpoint> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
    let c = v.get("checkpoint").cloned().unwrap_or(v);
    serde_json::from_value(c).with_context(|| format!("{} is not a signed checkpoint", p.display()))
}

/// The checkpoints given, read, and the key to check them under (read only when there are
/// checkpoints).
struct Checkpoints {
    given: Vec<SignedCheckpoint>,
    key: Option<[u8; 32]>,
}

impl Against {
    fn load(&self, paths: &StatePaths) -> anyhow::Result<Checkpoints> {
        let given = self
            .checkpoints
            .iter()
            .map(|p| read_checkpoint(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key = if given.is_empty() {
            None
        } else {
            let pk_path = self
                .public_key
                .clone()
                .unwrap_or_else(|| paths.public_key());
            Some(read_public_key(&pk_path)?)
        };
        Ok(Checkpoints { given, key })
    }
}

impl CheckedAgainst {
    /// `c` checked (see [`SignedCheckpoint::vouches_for`]) against a log of `have` entries.
    fn new(c: &SignedCheckpoint, key: &[u8; 32], have: u64, root: Option<&Hash>) -> Self {
        let r = c.vouches_for(key, have, root);
        CheckedAgainst {
            size: c.checkpoint.size,
            matches: r.is_ok(),
            problem: r.err().map(|e| e.to_string()),
        }
    }

    fn line(&self) -> String {
        match &self.problem {
            None => format!(
                "root of {} entries matches the signed checkpoint",
                self.size
            ),
            Some(p) => format!("FAIL: checkpoint of {} entries: {p}", self.size),
        }
    }
}

impl Checkpoints {
    /// The size a proof is for by default: the largest checkpoint given.
    fn largest(&self) -> Option<u64> {
        self.given.iter().map(|c| c.checkpoint.size).max()
    }

    /// When a checkpoint covers more than the log's `have` entries, prints why the log fails
    /// it (entries were removed) and returns the outcome; `None` when the log holds all they
    /// cover.
    fn beyond(&self, ctx: &Ctx, have: u64) -> anyhow::Result<Option<Outcome>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let beyond: Vec<CheckedAgainst> = self
            .given
            .iter()
            .filter(|c| c.checkpoint.size > have)
            .map(|c| CheckedAgainst::new(c, key, have, None))
            .collect();
        if beyond.is_empty() {
            return Ok(None);
        }
        let out = Truncated {
            log_entries: have,
            verifies: false,
            checked_against: beyond,
        };
        ctx.emit(&out, |o| {
            o.checked_against
                .iter()
                .map(CheckedAgainst::line)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        Ok(Some(Outcome::Findings))
    }

    /// Each checkpoint checked against the proof's root of its size (`trees`: the proof's
    /// sizes and roots). A checkpoint of a size the proof is not about is a usage error.
    fn check(
        &self,
        have: u64,
        trees: &[(u64, Option<Hash>)],
    ) -> anyhow::Result<Vec<CheckedAgainst>> {
        let Some(key) = &self.key else {
            return Ok(Vec::new());
        };
        self.given
            .iter()
            .map(|c| {
                let size = c.checkpoint.size;
                let Some((_, root)) = trees.iter().find(|(s, _)| *s == size) else {
                    let sizes: Vec<String> = trees.iter().map(|(s, _)| s.to_string()).collect();
                    anyhow::bail!(
                        "a checkpoint of {size} entries was given, but the proof is about trees of {} entries",
                        sizes.join(" and ")
                    );
                };
                Ok(CheckedAgainst::new(c, key, have, root.as_ref()))
            })
            .collect()
    }
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
            let trusted = checkpoints
                .iter()
                .map(|p| read_checkpoint(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
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
            // Key changes by operators not yet moved into the log (read only), from the key
            // database beside the log. One that cannot be read leaves the count unknown, not
            // the log's verdict.
            let keys_db = match &args.db {
                Some(db) => db.with_file_name("keys.db"),
                None => paths.keys_db(),
            };
            let (queued_key_changes, queued_key_changes_unknown) = match std::fs::metadata(&keys_db)
            {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Some(0), None),
                _ => match SqliteKeyStore::queued(&keys_db) {
                    Ok(n) => (Some(n), None),
                    Err(e) => (None, Some(format!("reading {}: {e}", keys_db.display()))),
                },
            };
            let out = Verified {
                report: &report,
                queued_key_changes,
                queued_key_changes_unknown,
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
                if !r.unknown_fields.is_empty() {
                    let listed: Vec<String> = r
                        .unknown_fields
                        .iter()
                        .map(|(f, n)| format!("{f} ({n})"))
                        .collect();
                    s.push_str(&format!(
                        "\nentries carry fields this version does not know (a later gateway's?), not checked for meaning: {}",
                        listed.join(", ")
                    ));
                }
                match (v.queued_key_changes, &v.queued_key_changes_unknown) {
                    (Some(n), _) if n > 0 => s.push_str(&format!(
                        "\n{n} key changes made with `palisade keys` are queued, not yet in the log (the gateway appends them within a second, or when it starts)"
                    )),
                    (None, Some(why)) => s.push_str(&format!(
                        "\nkey changes queued for the log: unknown ({why})"
                    )),
                    _ => {}
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
        AuditAction::Inclusion {
            index,
            size,
            against,
        } => {
            let checkpoints = against.load(&paths)?;
            let log = open_offline(&db)?;
            let have = log.size()?;
            if let Some(outcome) = checkpoints.beyond(ctx, have)? {
                return Ok(outcome);
            }
            let size = size.or_else(|| checkpoints.largest()).unwrap_or(have);
            let p = match log.inclusion(index, size) {
                // The stored log is inconsistent (an entry rewritten, an entry or node
                // missing): tampering, exit 1, as a checkpoint the log no longer gives is.
                Err(AuditError::Corrupt(problem)) => {
                    let out = Unprovable {
                        index,
                        size,
                        verifies: false,
                        problem,
                    };
                    ctx.emit(&out, |o| format!("entry {}: {}", o.index, o.problem))?;
                    return Ok(Outcome::Findings);
                }
                r => r.map_err(|e| not_in_the_database_yet(&log, have, e))?,
            };
            let checked_against = checkpoints.check(have, &[p.tree()])?;
            Proved {
                verifies: p.verify(),
                proof: p,
                checked_against,
            }
            .emit(ctx, |p| {
                format!(
                    "entry {} of {}: leaf {}\nroot {}\npath ({} nodes):\n  {}",
                    p.index,
                    p.size,
                    p.leaf,
                    p.root,
                    p.path.len(),
                    p.path.join("\n  "),
                )
            })
        }
        AuditAction::Consistency {
            first,
            second,
            against,
        } => {
            let checkpoints = against.load(&paths)?;
            let log = open_offline(&db)?;
            let have = log.size()?;
            if let Some(outcome) = checkpoints.beyond(ctx, have)? {
                return Ok(outcome);
            }
            let second = second.or_else(|| checkpoints.largest()).unwrap_or(have);
            let p = log
                .consistency(first, second)
                .map_err(|e| not_in_the_database_yet(&log, have, e))?;
            let checked_against = checkpoints.check(have, &p.trees())?;
            Proved {
                verifies: p.verify(),
                proof: p,
                checked_against,
            }
            .emit(ctx, |p| {
                format!(
                    "{} → {} entries\nold root {}\nnew root {}\npath ({} nodes):\n  {}",
                    p.first,
                    p.second,
                    p.first_root,
                    p.second_root,
                    p.path.len(),
                    p.path.join("\n  "),
                )
            })
        }
    }
}

/// `e`, and, where it says the log has too few entries while the journal beside the database
/// holds more (a gateway killed before it copied them in), what to do about it.
fn not_in_the_database_yet(
    log: &palisade_gateway::audit::OfflineLog,
    have: u64,
    e: AuditError,
) -> anyhow::Error {
    match (&e, log.journaled_beyond(have)) {
        (AuditError::OutOfRange(_), n) if n > 0 => anyhow::anyhow!(
            "{e}; {n} more acknowledged entr{} only in the journal beside the database (its \
             gateway stopped before copying {} in): start `palisade serve` on this state folder, \
             which copies {} in, and ask again (`palisade audit verify` reads the journal now)",
            if n == 1 { "y is" } else { "ies are" },
            if n == 1 { "it" } else { "them" },
            if n == 1 { "it" } else { "them" },
        ),
        _ => e.into(),
    }
}
