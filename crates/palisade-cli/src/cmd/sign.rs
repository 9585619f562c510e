//! `palisade sign`: sign a model in the OpenSSF Model Signing format (a Sigstore bundle).

use std::path::PathBuf;

use anyhow::Context;
use palisade_supply::atomic;
use palisade_supply::hashing::HashAlgorithm;
use palisade_supply::keys::SigningKey;
use palisade_supply::manifest::Serialization;
use palisade_supply::oms::{self, SignOptions};

use super::Outcome;
use super::keyargs::PasswordArgs;
use crate::output::Ctx;

/// Sign a model directory or file with an ECDSA key (OMS v1.0, Sigstore bundle v0.3).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: a directory or a single file.
    model: PathBuf,
    /// Private key (PEM: SEC1, PKCS#8 or encrypted PKCS#8), P-256 or P-384.
    #[arg(long, value_name = "FILE")]
    private_key: PathBuf,
    /// Where to write the signature bundle.
    #[arg(long, value_name = "FILE", default_value = "model.sig")]
    signature: PathBuf,
    /// File hash algorithm: sha256, blake2b or blake3.
    #[arg(long = "hash", default_value = "sha256")]
    hash: HashAlgorithm,
    /// Use shard serialization with this shard size in bytes (default: files serialization).
    #[arg(long, value_name = "BYTES")]
    shard_size: Option<u64>,
    /// Paths (relative to the model root) to leave out.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    ignore_paths: Vec<String>,
    /// Do not leave out .git, .gitignore, .gitattributes and .github.
    #[arg(long)]
    no_ignore_git_paths: bool,
    /// Follow symbolic links (default: refuse them).
    #[arg(long)]
    allow_symlinks: bool,
    /// The name the signature gives the model (default: its file or folder name). For a model
    /// repository that `palisade serve` loads, `MODEL/VERSION` binds the signature to that model
    /// and version: the gateway refuses the folder copied under another name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(serde::Serialize)]
struct Report {
    model: PathBuf,
    signature: PathBuf,
    hash: HashAlgorithm,
    serialization: Serialization,
    resources: usize,
    root_digest: String,
    key_hint: String,
}

/// Runs the command.
pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Outcome> {
    let pw = args.password.password()?;
    let key = SigningKey::from_pem_file(&args.private_key, pw.as_ref().map(|p| p.as_slice()))?;
    let opts = SignOptions {
        hash: args.hash,
        serialization: match args.shard_size {
            Some(shard_size) => Serialization::Shards { shard_size },
            None => Serialization::Files,
        },
        ignore_paths: args.ignore_paths,
        ignore_git_paths: !args.no_ignore_git_paths,
        allow_symlinks: args.allow_symlinks,
        signature_path: Some(args.signature.clone()),
        subject_name: args.name,
    };
    let bar = super::progress::bytes_bar(ctx, &args.model);
    let tick = |n: u64| bar.inc(n);
    let signed = oms::sign_model(&args.model, &key, &opts, Some(&tick))
        .with_context(|| format!("signing {}", args.model.display()))?;
    bar.finish_and_clear();
    atomic::write_atomic(&args.signature, &signed.bundle)?;
    let r = Report {
        model: args.model,
        signature: args.signature,
        hash: opts.hash,
        serialization: opts.serialization,
        resources: signed.resources.len(),
        root_digest: signed.root_digest,
        key_hint: key.public_key().hint(),
    };
    ctx.emit(&r, |r| {
        format!(
            "signed {} ({} resources, {}) -> {}",
            r.model.display(),
            r.resources,
            r.hash,
            r.signature.display()
        )
    })?;
    Ok(Outcome::Success)
}
