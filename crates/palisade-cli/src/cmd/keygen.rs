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
    /// Key type: p256 or p384 (ECDSA, for signing), or x25519 (an age identity, for sealing).
    #[arg(long, default_value = "p256")]
    curve: KeyKind,
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

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// An ECDSA signing key.
    Ecdsa(Curve),
    /// An age X25519 identity.
    X25519,
}

impl std::str::FromStr for KeyKind {
    type Err = palisade_supply::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("x25519") {
            return Ok(KeyKind::X25519);
        }
        s.parse().map(KeyKind::Ecdsa)
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Ecdsa(c) => c.fmt(f),
            KeyKind::X25519 => f.write_str("X25519"),
        }
    }
}

#[derive(serde::Serialize)]
struct Report {
    curve: String,
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
    let hint = match args.curve {
        KeyKind::Ecdsa(curve) => {
            let key = SigningKey::generate(curve);
            let pem = key.to_pkcs8_pem(pw.as_ref().map(|p| p.as_slice()))?;
            atomic::write_secret_atomic(&args.private_key, pem.as_bytes())?;
            let public = key.public_key();
            atomic::write_atomic(&args.public_key, public.to_pem().as_bytes())?;
            public.hint()
        }
        KeyKind::X25519 => {
            if pw.is_some() {
                bail!(
                    "x25519 identities are written unencrypted (seal the identity file itself if needed)"
                );
            }
            let (identity, recipient) = palisade_supply::seal::generate_identity();
            atomic::write_secret_atomic(&args.private_key, identity.as_bytes())?;
            atomic::write_atomic(&args.public_key, format!("{recipient}\n").as_bytes())?;
            recipient
        }
    };
    let r = Report {
        curve: args.curve.to_string(),
        private_key: args.private_key,
        public_key: args.public_key,
        encrypted: pw.is_some(),
        hint,
    };
    ctx.emit(&r, |r| {
        format!(
            "generated {} key pair: private {}{}, public {} ({})",
            r.curve,
            r.private_key.display(),
            if r.encrypted { " (encrypted)" } else { "" },
            r.public_key.display(),
            r.hint
        )
    })?;
    Ok(Outcome::Success)
}
