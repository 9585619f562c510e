//! `palisade seal` / `palisade unseal`: encryption at rest in the age format (X25519 recipients
//! or a passphrase), streaming, with atomic output.

use std::path::PathBuf;

use anyhow::{Context, bail};
use palisade_supply::seal::{self, OpenWith, SealTo};
use zeroize::Zeroizing;

use super::Outcome;
use super::keyargs::PasswordArgs;
use crate::output::Ctx;

/// Encrypt a file with age (to X25519 recipients, or with a passphrase).
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// File to encrypt.
    input: PathBuf,
    /// Encrypted output (written atomically).
    #[arg(long, short)]
    output: PathBuf,
    /// An X25519 recipient (`age1...`); repeatable.
    #[arg(long, short, value_name = "AGE1...")]
    recipient: Vec<String>,
    /// A file of recipients, one per line.
    #[arg(long, value_name = "FILE")]
    recipients_file: Vec<PathBuf>,
    /// ASCII-armored output.
    #[arg(long)]
    armor: bool,
    /// Encrypt with a passphrase instead of recipients (from --password-file or --password-env).
    #[command(flatten)]
    password: PasswordArgs,
}

/// Decrypt an age file (with X25519 identities, or a passphrase).
#[derive(Debug, clap::Args)]
pub struct UnsealArgs {
    /// Encrypted file.
    input: PathBuf,
    /// Decrypted output (written atomically, only if the whole file authenticates).
    #[arg(long, short)]
    output: PathBuf,
    /// Identity file (`AGE-SECRET-KEY-1...`, as written by `palisade keygen --curve x25519`).
    #[arg(long, short, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Decrypt with a passphrase (from --password-file or --password-env).
    #[command(flatten)]
    password: PasswordArgs,
}

#[derive(serde::Serialize)]
struct Report {
    input: PathBuf,
    output: PathBuf,
    bytes: u64,
    mode: &'static str,
}

fn passphrase(p: &PasswordArgs) -> anyhow::Result<Option<Zeroizing<String>>> {
    Ok(match p.password()? {
        Some(b) => Some(Zeroizing::new(
            String::from_utf8(b.to_vec()).context("the passphrase is not UTF-8")?,
        )),
        None => None,
    })
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Runs `seal`.
pub fn run_seal(ctx: &Ctx, a: SealArgs) -> anyhow::Result<Outcome> {
    if same_file(&a.input, &a.output) {
        bail!("--output must not be the input file");
    }
    let pass = passphrase(&a.password)?;
    let mut recipients = Vec::new();
    for r in &a.recipient {
        recipients.extend(seal::parse_recipients(
            r,
            std::path::Path::new("--recipient"),
        )?);
    }
    for f in &a.recipients_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
        recipients.extend(seal::parse_recipients(&text, f)?);
    }
    let (to, mode) = match (pass, recipients.is_empty()) {
        (Some(_), false) => bail!("give recipients or a passphrase, not both"),
        (Some(p), true) => (SealTo::Passphrase(p), "passphrase"),
        (None, false) => (SealTo::Recipients(recipients), "x25519"),
        (None, true) => bail!("no recipient: give --recipient, --recipients-file or a passphrase"),
    };
    let bytes = seal::seal_file(&a.input, &a.output, &to, a.armor)?;
    let r = Report {
        input: a.input,
        output: a.output,
        bytes,
        mode,
    };
    ctx.emit(&r, |r| {
        format!(
            "sealed {} ({} bytes, {}) -> {}",
            r.input.display(),
            r.bytes,
            r.mode,
            r.output.display()
        )
    })?;
    Ok(Outcome::Success)
}

/// Runs `unseal`.
pub fn run_unseal(ctx: &Ctx, a: UnsealArgs) -> anyhow::Result<Outcome> {
    if same_file(&a.input, &a.output) {
        bail!("--output must not be the input file");
    }
    let pass = passphrase(&a.password)?;
    let (with, mode) = match (&a.identity, pass) {
        (Some(_), Some(_)) => bail!("give an identity or a passphrase, not both"),
        (Some(f), None) => (OpenWith::Identities(seal::read_identities(f)?), "x25519"),
        (None, Some(p)) => (OpenWith::Passphrase(p), "passphrase"),
        (None, None) => bail!("give --identity or a passphrase (--password-file / --password-env)"),
    };
    let bytes = seal::unseal_file(&a.input, &a.output, &with)?;
    let r = Report {
        input: a.input,
        output: a.output,
        bytes,
        mode,
    };
    ctx.emit(&r, |r| {
        format!(
            "unsealed {} ({} bytes) -> {}",
            r.input.display(),
            r.bytes,
            r.output.display()
        )
    })?;
    Ok(Outcome::Success)
}
