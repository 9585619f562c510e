//! `palisade registry ...`: the versioned model registry (SQLite + content-addressed blobs).
//!
//! `add` admits a version only if its OMS signature verifies against the trusted key and
//! `palisade scan` finds it clean (exit 1 otherwise, with the reason).

use std::path::PathBuf;

use anyhow::Context;
use palisade_supply::keys::PublicKey;
use palisade_supply::oms::{self, VerifyOptions};
use palisade_supply::registry::{AddOptions, Registry, VersionInfo, VersionRef};
use palisade_supply::{gate, seal};

use super::Outcome;
use crate::output::Ctx;

/// Registry location and the acting user.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Registry directory (created if missing).
    #[arg(
        long,
        global = true,
        env = "PALISADE_REGISTRY",
        default_value = "palisade-state/registry"
    )]
    registry: PathBuf,
    /// Who is acting (recorded in the history); default: $PALISADE_ACTOR, else $USER.
    #[arg(long, global = true)]
    actor: Option<String>,
    #[command(subcommand)]
    command: RegistryCommand,
}

/// Registry commands.
#[derive(Debug, clap::Subcommand)]
enum RegistryCommand {
    /// Add a version: verify the signature, scan, store (exit 1 if refused).
    Add {
        /// Model name.
        name: String,
        /// The model directory or file.
        model: PathBuf,
        /// Its OMS signature bundle.
        #[arg(long, value_name = "FILE")]
        signature: PathBuf,
        /// Trusted public key.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Seal the stored blobs to this age recipient (repeatable).
        #[arg(long, value_name = "AGE1...")]
        seal_to: Vec<String>,
    },
    /// List models with their versions and aliases.
    List,
    /// Show a version (number, alias or `latest`).
    Show {
        /// Model name.
        name: String,
        /// Version number, alias, or `latest`.
        #[arg(default_value = "latest", value_name = "VERSION")]
        rev: VersionRef,
    },
    /// A model's history: every change with who and when.
    History {
        /// Model name.
        name: String,
    },
    /// Point an alias (production, staging, any name) at a version.
    Alias {
        /// Model name.
        name: String,
        /// Alias.
        alias: String,
        /// Version number.
        #[arg(value_name = "VERSION")]
        to: u32,
    },
    /// Move an alias back to the version it pointed at before.
    Rollback {
        /// Model name.
        name: String,
        /// Alias.
        alias: String,
    },
    /// Attach a signed training record (provenance) to a version; its subject must be that version.
    AttachProvenance {
        /// Model name.
        name: String,
        /// Version number, alias, or `latest`.
        #[arg(default_value = "latest", value_name = "VERSION")]
        rev: VersionRef,
        /// The provenance bundle (from `palisade provenance record`).
        #[arg(long, value_name = "FILE")]
        provenance: PathBuf,
        /// Trainer's public key.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// The dataset manifest the record must name.
        #[arg(long, value_name = "FILE")]
        dataset_manifest: PathBuf,
    },
    /// Write a version's files out (checked against their digests), and its signature.
    Export {
        /// Model name.
        name: String,
        /// Version number, alias, or `latest`.
        #[arg(default_value = "latest", value_name = "VERSION")]
        rev: VersionRef,
        /// Destination (must not exist).
        #[arg(long, short)]
        output: PathBuf,
        /// Also write the version's signature bundle here.
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// age identity file, for sealed versions.
        #[arg(long, short, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

fn actor(a: &Option<String>) -> String {
    a.clone()
        .or_else(|| std::env::var("PALISADE_ACTOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn version_text(v: &VersionInfo) -> String {
    let mut s = format!(
        "{} v{} ({}, {} files{}{}) added {} by {}\n  key {}\n  root {}",
        v.model,
        v.version,
        v.kind,
        v.files.len(),
        if v.sealed { ", sealed" } else { "" },
        if v.has_provenance { ", provenance" } else { "" },
        v.created_at,
        v.created_by,
        v.key_hint,
        v.root_digest
    );
    if !v.aliases.is_empty() {
        s.push_str(&format!("\n  aliases: {}", v.aliases.join(", ")));
    }
    for f in &v.files {
        s.push_str(&format!("\n  {}  {}  {}", f.sha256, f.size, f.name));
    }
    s
}

/// Runs a registry command.
pub fn run(ctx: &Ctx, args: RegistryArgs) -> anyhow::Result<Outcome> {
    let who = actor(&args.actor);
    let mut reg = Registry::open(&args.registry)
        .with_context(|| format!("registry {}", args.registry.display()))?;
    match args.command {
        RegistryCommand::Add {
            name,
            model,
            signature,
            public_key,
            seal_to,
        } => {
            let key = PublicKey::from_pem_file(&public_key)?;
            let bundle = palisade_supply::bundle::read_bundle_file(&signature)?;
            let mut recipients = Vec::new();
            for r in &seal_to {
                recipients.extend(seal::parse_recipients(
                    r,
                    std::path::Path::new("--seal-to"),
                )?);
            }
            let opts = VerifyOptions {
                signature_path: Some(signature.clone()),
                ..Default::default()
            };
            let admitted = oms::verify_model(&model, &bundle, &key, &opts, None).and_then(|v| {
                let clean = gate::admit_scan(v.model())?;
                reg.add_version(
                    &name,
                    &v,
                    &clean,
                    &AddOptions {
                        actor: who,
                        seal_to: recipients,
                    },
                )
            });
            match admitted {
                Ok(info) => {
                    ctx.emit(&info, |v| format!("added {}", version_text(v)))?;
                    Ok(Outcome::Success)
                }
                Err(e) if e.is_refusal() => {
                    let v = serde_json::json!({ "added": false, "model": model, "reason": e.to_string() });
                    ctx.emit(&v, |_| format!("{}: refused: {e}", model.display()))?;
                    Ok(Outcome::Findings)
                }
                Err(e) => Err(e.into()),
            }
        }
        RegistryCommand::List => {
            let l = reg.list()?;
            ctx.emit(&l, |l| {
                if l.is_empty() {
                    return "no models".into();
                }
                l.iter()
                    .map(|m| {
                        let al: Vec<String> =
                            m.aliases.iter().map(|(a, v)| format!("{a}=v{v}")).collect();
                        format!(
                            "{}  {} versions (latest v{})  {}",
                            m.name,
                            m.versions,
                            m.latest,
                            al.join(" ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(Outcome::Success)
        }
        RegistryCommand::Show { name, rev } => {
            let v = reg.show(&name, &rev)?;
            ctx.emit(&v, version_text)?;
            Ok(Outcome::Success)
        }
        RegistryCommand::History { name } => {
            let h = reg.history(&name)?;
            ctx.emit(&h, |h| {
                h.iter()
                    .map(|e| {
                        let v = e.version.map(|v| format!(" v{v}")).unwrap_or_default();
                        format!("{}  {:<10} {}{}  {}", e.at, e.actor, e.action, v, e.detail)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(Outcome::Success)
        }
        RegistryCommand::Alias { name, alias, to } => {
            let version = to;
            reg.set_alias(&name, &alias, version, &who)?;
            let v = serde_json::json!({ "model": name, "alias": alias, "version": version });
            ctx.emit(&v, |_| format!("{name}: {alias} -> v{version}"))?;
            Ok(Outcome::Success)
        }
        RegistryCommand::Rollback { name, alias } => {
            let (from, to) = reg.rollback(&name, &alias, &who)?;
            let v = serde_json::json!({ "model": name, "alias": alias, "from": from, "to": to });
            ctx.emit(&v, |_| {
                format!("{name}: {alias} rolled back v{from} -> v{to}")
            })?;
            Ok(Outcome::Success)
        }
        RegistryCommand::AttachProvenance {
            name,
            rev,
            provenance,
            public_key,
            dataset_manifest,
        } => {
            let key = PublicKey::from_pem_file(&public_key)?;
            let bundle = palisade_supply::bundle::read_bundle_file(&provenance)?;
            let dm = std::fs::read(&dataset_manifest)
                .with_context(|| format!("dataset manifest {}", dataset_manifest.display()))?;
            let info = reg.show(&name, &rev)?;
            let checked = palisade_supply::provenance::verify_record(&bundle, &key).and_then(|r| {
                palisade_supply::provenance::verify_chain(r, &info.root_digest, &dm, None, None)
            });
            match checked {
                Ok(_) => {
                    let v = reg.attach_provenance(
                        &name,
                        &VersionRef::Number(info.version),
                        &bundle,
                        &who,
                    )?;
                    let out = serde_json::json!({ "model": name, "version": v, "attached": true });
                    ctx.emit(&out, |_| format!("{name} v{v}: provenance attached"))?;
                    Ok(Outcome::Success)
                }
                Err(e) if e.is_refusal() => {
                    let out = serde_json::json!({ "model": name, "attached": false, "reason": e.to_string() });
                    ctx.emit(&out, |_| {
                        format!("{name} v{}: provenance refused: {e}", info.version)
                    })?;
                    Ok(Outcome::Findings)
                }
                Err(e) => Err(e.into()),
            }
        }
        RegistryCommand::Export {
            name,
            rev,
            output,
            signature,
            identity,
        } => {
            let ids = match &identity {
                Some(f) => seal::read_identities(f)?,
                None => Vec::new(),
            };
            let info = reg.export(&name, &rev, &output, &ids)?;
            if let Some(sig) = &signature {
                let b = reg.signature(&name, &VersionRef::Number(info.version))?;
                palisade_supply::atomic::write_atomic(sig, &b)?;
            }
            ctx.emit(&info, |v| {
                format!(
                    "exported {} v{} -> {}",
                    v.model,
                    v.version,
                    output.display()
                )
            })?;
            Ok(Outcome::Success)
        }
    }
}
