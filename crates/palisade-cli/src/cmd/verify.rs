//! `palisade verify`: verify a model against an OMS signature bundle and a trusted public key.
//!
//! Exit codes: 0 verified; 1 verification failed (bad signature, wrong key, tampered, missing or
//! unsigned files, malformed or unsupported bundle); 2 error (unreadable key, model or bundle
//! file, bad usage).

use std::path::PathBuf;

use anyhow::Context;
use palisade_supply::error::{Error, Failure, ManifestIssue};
use palisade_supply::keys::PublicKey;
use palisade_supply::oms::{self, SignedManifest, VerifyOptions};

use super::Outcome;
use crate::output::Ctx;

/// Verify a model (directory or file) against an OMS signature.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model. Without it, only the bundle's signature and statement are checked.
    model: Option<PathBuf>,
    /// The signature bundle.
    #[arg(long, value_name = "FILE", default_value = "model.sig")]
    signature: PathBuf,
    /// Trusted public key (PEM `PUBLIC KEY`, or a `CERTIFICATE` whose key is trusted).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Extra paths (relative to the model root) to leave out.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    ignore_paths: Vec<String>,
    /// Do not fail on files present in the model but not signed.
    #[arg(long)]
    ignore_unsigned_files: bool,
}

#[derive(serde::Serialize)]
struct Report {
    verified: bool,
    model: Option<PathBuf>,
    model_checked: bool,
    signature: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<SignedManifest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    issues: Vec<ManifestIssue>,
}

/// Runs the command.
pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Outcome> {
    let key = PublicKey::from_pem_file(&args.public_key)?;
    let bundle = palisade_supply::bundle::read_bundle_file(&args.signature)?;
    let result = match &args.model {
        Some(model) => {
            let opts = VerifyOptions {
                ignore_unsigned_files: args.ignore_unsigned_files,
                ignore_paths: args.ignore_paths.clone(),
                signature_path: Some(args.signature.clone()),
            };
            let bar = super::progress::bytes_bar(ctx, model);
            let tick = |n: u64| bar.inc(n);
            let r = oms::verify_model(model, &bundle, &key, &opts, Some(&tick));
            bar.finish_and_clear();
            r.map(|v| v.manifest().clone())
        }
        None => oms::verify_bundle(&bundle, &key),
    };
    let mut report = Report {
        verified: false,
        model_checked: args.model.is_some(),
        model: args.model,
        signature: args.signature,
        manifest: None,
        reason: None,
        issues: Vec::new(),
    };
    match result {
        Ok(m) => {
            report.verified = true;
            report.manifest = Some(m);
        }
        Err(Error::Verification(f)) => {
            report.reason = Some(match &f {
                Failure::Manifest(issues) => {
                    report.issues = issues.clone();
                    format!(
                        "model does not match the signed manifest ({} issues)",
                        issues.len()
                    )
                }
                other => other.to_string(),
            });
        }
        Err(e) => return Err(e).context("verify"),
    }
    ctx.emit(&report, text)?;
    Ok(if report.verified {
        Outcome::Success
    } else {
        Outcome::Findings
    })
}

fn text(r: &Report) -> String {
    let sig = r.signature.display();
    match (&r.manifest, &r.reason) {
        (Some(m), _) => {
            let what = match &r.model {
                Some(p) => format!("{}: verified", p.display()),
                None => {
                    "signature and statement verified (no model given: files not checked)".into()
                }
            };
            format!(
                "{what} ({} resources, {}, key {}, {sig})",
                m.resources.len(),
                m.hash,
                m.key_hint
            )
        }
        (None, reason) => {
            let mut s = format!(
                "{}: verification FAILED ({sig}): {}",
                r.model
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "bundle".into()),
                reason.as_deref().unwrap_or("unknown")
            );
            for i in &r.issues {
                s.push_str(&format!("\n  {i}"));
            }
            s
        }
    }
}
