//! `palisade keygen`: an ECDSA key pair for OMS signing. The private key is written (atomically,
//! mode 0600) and never printed.

use std::path::PathBuf;

use anyhow::bail;
use palisade_supply::atomic;
use palisade_supply::keys::{Curve, SigningKey};

use super::Outcome;
use super::keyargs::PasswordArgs;
use crate::output::Ctx;

/// Generate a P-256 or P-384 key pair in PEM.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Curve: p256 or p384.
    #[arg(long, default_value = "p256")]
    curve: Curve,
    /// Private key output (PKCS#8 PEM; encrypted when a password is given).
    #[arg(long, value_name = "FILE")]
    private_key: PathBuf,
    /// Public key output (SubjectPublicKeyInfo PEM).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(serde::Serialize)]
struct Report {
    curve: Curve,
    private_key: PathBuf,
    public_key: PathBuf,
    encrypted: bool,
    hint: String,
}

/// Runs the command.
pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<Outcome> {
    for p in [&args.private_key, &args.public_key] {
        if p.exists() && !args.force {
            bail!("{} exists (use --force to replace it)", p.display());
        }
    }
    if args.private_key == args.public_key {
        bail!("--private-key and --public-key must be different files");
    }
    let pw = args.password.password()?;
    let key = SigningKey::generate(args.curve);
    let pem = key.to_pkcs8_pem(pw.as_ref().map(|p| p.as_slice()))?;
    atomic::write_secret_atomic(&args.private_key, pem.as_bytes())?;
    let public = key.public_key();
    atomic::write_atomic(&args.public_key, public.to_pem().as_bytes())?;
    let r = Report {
        curve: args.curve,
        private_key: args.private_key,
        public_key: args.public_key,
        encrypted: pw.is_some(),
        hint: public.hint(),
    };
    ctx.emit(&r, |r| {
        format!(
            "generated {} key pair: private {}{}, public {} (hint {})",
            r.curve,
            r.private_key.display(),
            if r.encrypted { " (encrypted)" } else { "" },
            r.public_key.display(),
            r.hint
        )
    })?;
    Ok(Outcome::Success)
}
