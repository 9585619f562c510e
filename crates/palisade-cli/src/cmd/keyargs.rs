//! Shared arguments: where a private key's password comes from. Never from the command line
//! itself (it would show in `ps` and shell history).

use std::path::PathBuf;

use anyhow::Context;
use zeroize::Zeroizing;

/// Password source for an encrypted private key.
#[derive(Debug, clap::Args)]
pub struct PasswordArgs {
    /// Read the key password from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Read the key password from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
}

impl PasswordArgs {
    /// The password, if one was given.
    pub fn password(&self) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
        if let Some(f) = &self.password_file {
            let s = Zeroizing::new(
                std::fs::read(f).with_context(|| format!("password file {}", f.display()))?,
            );
            let line = s.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(Some(Zeroizing::new(line.to_vec())));
        }
        if let Some(v) = &self.password_env {
            let s =
                std::env::var(v).with_context(|| format!("environment variable {v} is not set"))?;
            return Ok(Some(Zeroizing::new(s.into_bytes())));
        }
        Ok(None)
    }
}
