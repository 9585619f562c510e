//! `palisade provenance ...`: dataset manifests, signed training records (in-toto SLSA
//! provenance v1), and the dataset → training → model check.
//!
//! `verify` exit codes: 0 the chain holds; 1 a link is broken (bad signature, other model, other
//! dataset, changed dataset files, other code version); 2 error.

use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_supply::keys::{PublicKey, SigningKey};
use palisade_supply::oms::{self, VerifyOptions};
use palisade_supply::provenance::{self, DatasetManifest, TrainingRecord};
use palisade_supply::{Error, atomic};

use super::Outcome;
use super::keyargs::PasswordArgs;
use crate::output::Ctx;

/// Provenance commands.
#[derive(Debug, clap::Args)]
pub struct ProvenanceArgs {
    #[command(subcommand)]
    command: ProvenanceCommand,
}

/// The model and the key its OMS signature must verify with.
#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// The trained model (directory or file).
    #[arg(long)]
    model: PathBuf,
    /// Its OMS signature.
    #[arg(long, value_name = "FILE")]
    model_signature: PathBuf,
    /// Public key the model signature must verify with.
    #[arg(long, value_name = "FILE")]
    model_key: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum ProvenanceCommand {
    /// Write a dataset manifest: the SHA-256 and size of every file.
    Dataset {
        /// Dataset directory.
        dir: PathBuf,
        /// Output manifest (JSON).
        #[arg(long, short)]
        output: PathBuf,
        /// Dataset name (default: the directory name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Sign a training record (SLSA provenance v1) linking dataset, code, config and metrics to
    /// a signed model.
    Record {
        #[command(flatten)]
        model: ModelArgs,
        /// Model name recorded as the subject.
        #[arg(long)]
        name: String,
        /// Dataset manifest (from `palisade provenance dataset`).
        #[arg(long, value_name = "FILE")]
        dataset_manifest: PathBuf,
        /// Training configuration (JSON file).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Metrics (JSON file).
        #[arg(long, value_name = "FILE")]
        metrics: PathBuf,
        /// Code version (e.g. the git commit).
        #[arg(long)]
        code_version: String,
        /// Code location (URI).
        #[arg(long)]
        code_uri: Option<String>,
        /// Trainer's private key (PEM).
        #[arg(long, value_name = "FILE")]
        private_key: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
        /// Output bundle.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Check dataset -> training -> model.
    Verify {
        /// The provenance bundle.
        #[arg(long, value_name = "FILE")]
        provenance: PathBuf,
        /// Trainer's public key.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Dataset manifest.
        #[arg(long, value_name = "FILE")]
        dataset_manifest: PathBuf,
        /// Also re-hash the dataset files against the manifest.
        #[arg(long, value_name = "DIR")]
        dataset: Option<PathBuf>,
        /// Require this code version.
        #[arg(long)]
        code_version: Option<String>,
    },
}

fn read(p: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{what} {}", p.display()))
}

fn read_json(p: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&read(p, what)?)
        .with_context(|| format!("{what} {}: not JSON", p.display()))
}

/// Verifies the model's OMS signature and returns its root digest.
fn model_root(m: &ModelArgs) -> Result<String, Error> {
    let key = PublicKey::from_pem_file(&m.model_key)?;
    let bundle = palisade_supply::bundle::read_bundle_file(&m.model_signature)?;
    let opts = VerifyOptions {
        signature_path: Some(m.model_signature.clone()),
        ..Default::default()
    };
    Ok(oms::verify_model(&m.model, &bundle, &key, &opts, None)?
        .manifest()
        .root_digest
        .clone())
}

/// Runs a provenance command.
pub fn run(ctx: &Ctx, args: ProvenanceArgs) -> anyhow::Result<Outcome> {
    match args.command {
        ProvenanceCommand::Dataset { dir, output, name } => {
            let m = DatasetManifest::compute(&dir, name.as_deref())?;
            let bytes = m.to_json();
            atomic::write_atomic(&output, &bytes)?;
            let digest = hex::encode(palisade_supply::hashing::sha256(&bytes));
            let v = serde_json::json!({ "dataset": m.name, "files": m.files.len(), "manifest": output, "sha256": digest });
            ctx.emit(&v, |_| {
                format!(
                    "dataset {}: {} files -> {} (sha256 {digest})",
                    m.name,
                    m.files.len(),
                    output.display()
                )
            })?;
            Ok(Outcome::Success)
        }
        ProvenanceCommand::Record {
            model,
            name,
            dataset_manifest,
            config,
            metrics,
            code_version,
            code_uri,
            private_key,
            password,
            output,
        } => {
            let pw = password.password()?;
            let key = SigningKey::from_pem_file(&private_key, pw.as_ref().map(|p| p.as_slice()))?;
            let dm_bytes = read(&dataset_manifest, "dataset manifest")?;
            let dm = DatasetManifest::from_json(&dm_bytes)?;
            let root = model_root(&model)
                .context("the model's signature must verify before recording its provenance")?;
            let rec = TrainingRecord {
                model_name: name,
                model_root_digest: root,
                dataset_name: dm.name,
                dataset_manifest_sha256: hex::encode(palisade_supply::hashing::sha256(&dm_bytes)),
                code_version,
                code_uri,
                config: read_json(&config, "config")?,
                metrics: read_json(&metrics, "metrics")?,
            };
            atomic::write_atomic(&output, &rec.sign(&key))?;
            ctx.emit(&rec, |r| {
                format!(
                    "provenance for {} ({}) -> {}",
                    r.model_name,
                    r.model_root_digest,
                    output.display()
                )
            })?;
            Ok(Outcome::Success)
        }
        ProvenanceCommand::Verify {
            provenance: prov,
            public_key,
            model,
            dataset_manifest,
            dataset,
            code_version,
        } => {
            let key = PublicKey::from_pem_file(&public_key)?;
            let bundle = palisade_supply::bundle::read_bundle_file(&prov)?;
            let dm_bytes = read(&dataset_manifest, "dataset manifest")?;
            let result = model_root(&model).and_then(|root| {
                let rec = provenance::verify_record(&bundle, &key)?;
                provenance::verify_chain(
                    rec,
                    &root,
                    &dm_bytes,
                    dataset.as_deref(),
                    code_version.as_deref(),
                )
            });
            match result {
                Ok(r) => {
                    ctx.emit(&serde_json::json!({ "verified": true, "chain": r }), |_| {
                        format!(
                            "provenance verified: dataset {} -> training (code {}) -> model {}{}",
                            r.record.dataset_name,
                            r.record.code_version,
                            r.record.model_name,
                            if r.dataset_files_checked {
                                " (dataset files re-hashed)"
                            } else {
                                ""
                            }
                        )
                    })?;
                    Ok(Outcome::Success)
                }
                Err(e) if e.is_refusal() => {
                    ctx.emit(
                        &serde_json::json!({ "verified": false, "reason": e.to_string() }),
                        |_| format!("provenance verification FAILED: {e}"),
                    )?;
                    Ok(Outcome::Findings)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
