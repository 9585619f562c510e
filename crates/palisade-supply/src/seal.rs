//! Encryption at rest in the age format (age-encryption.org/v1): X25519 recipients or a
//! passphrase (scrypt). Streaming both ways (64 KiB chunks; memory does not grow with the file),
//! and the output is written atomically: a wrong key, a truncated or tampered file leaves nothing
//! behind, because age authenticates every chunk and the last one.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::SecretString;
use zeroize::Zeroizing;

use crate::atomic::AtomicFile;
use crate::error::{Error, Result};

/// Highest scrypt work factor (log2 N) accepted when unsealing, to bound the cost a hostile file
/// can impose (age's default passphrase encryption uses about 18).
const MAX_SCRYPT_LOG_N: u8 = 22;
const COPY_BUF: usize = 1 << 16;

/// Who can open a sealed file.
pub enum SealTo {
    /// X25519 recipients (`age1...`).
    Recipients(Vec<age::x25519::Recipient>),
    /// A passphrase.
    Passphrase(Zeroizing<String>),
}

impl std::fmt::Debug for SealTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealTo::Recipients(r) => write!(f, "Recipients({})", r.len()),
            SealTo::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

/// How to open a sealed file.
pub enum OpenWith {
    /// X25519 identities (`AGE-SECRET-KEY-1...`).
    Identities(Vec<age::x25519::Identity>),
    /// A passphrase.
    Passphrase(Zeroizing<String>),
}

impl std::fmt::Debug for OpenWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenWith::Identities(i) => write!(f, "Identities({})", i.len()),
            OpenWith::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

/// Parses `age1...` recipients, one per line (`#` comments and blank lines ignored).
pub fn parse_recipients(text: &str, origin: &Path) -> Result<Vec<age::x25519::Recipient>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(age::x25519::Recipient::from_str(line).map_err(|e| {
            Error::key(
                origin,
                format!("line {}: not an X25519 age recipient: {e}", i + 1),
            )
        })?);
    }
    if out.is_empty() {
        return Err(Error::key(origin, "no recipient"));
    }
    Ok(out)
}

/// Reads an identity file (`AGE-SECRET-KEY-1...` lines, `#` comments).
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
        .map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(age::x25519::Identity::from_str(line).map_err(|_| {
            Error::key(path, format!("line {}: not an X25519 age identity", i + 1))
        })?);
    }
    if out.is_empty() {
        return Err(Error::key(path, "no identity"));
    }
    Ok(out)
}

/// A new X25519 identity and its recipient: (identity file text, `age1...`).
pub fn generate_identity() -> (Zeroizing<String>, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = Zeroizing::new(format!(
        "# public key: {recipient}\n{}\n",
        id.to_string().expose_secret()
    ));
    (text, recipient)
}

/// Encrypts `input` to `to`, streaming into `output`. Returns the plaintext length.
pub fn seal_stream<R: Read, W: Write>(
    input: R,
    output: W,
    to: &SealTo,
    armor: bool,
) -> Result<u64> {
    let enc = match to {
        SealTo::Recipients(rs) => {
            age::Encryptor::with_recipients(rs.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| Error::Crypto(format!("cannot encrypt: {e}")))?
        }
        SealTo::Passphrase(p) => {
            age::Encryptor::with_user_passphrase(SecretString::from(p.as_str().to_owned()))
        }
    };
    let crypto = |e: std::io::Error| Error::Crypto(format!("encrypting: {e}"));
    let format = if armor {
        age::armor::Format::AsciiArmor
    } else {
        age::armor::Format::Binary
    };
    let armored = age::armor::ArmoredWriter::wrap_output(output, format).map_err(crypto)?;
    let mut w = enc.wrap_output(armored).map_err(crypto)?;
    let n = copy(input, &mut w).map_err(crypto)?;
    w.finish().and_then(|a| a.finish()).map_err(crypto)?;
    Ok(n)
}

/// Decrypts `input` with `with`, streaming into `output`. Returns the plaintext length.
pub fn unseal_stream<R: BufRead, W: Write>(input: R, output: W, with: &OpenWith) -> Result<u64> {
    let dec = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(input))
        .map_err(|e| Error::Crypto(format!("not an age file: {e}")))?;
    let reader = match with {
        OpenWith::Identities(ids) => {
            if dec.is_scrypt() {
                return Err(Error::Crypto(
                    "the file is sealed with a passphrase, not to a recipient".into(),
                ));
            }
            dec.decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        }
        OpenWith::Passphrase(p) => {
            if !dec.is_scrypt() {
                return Err(Error::Crypto(
                    "the file is sealed to recipients, not with a passphrase".into(),
                ));
            }
            let mut id = age::scrypt::Identity::new(SecretString::from(p.as_str().to_owned()));
            id.set_max_work_factor(MAX_SCRYPT_LOG_N);
            dec.decrypt(std::iter::once(&id as &dyn age::Identity))
        }
    }
    .map_err(|e| Error::Crypto(format!("cannot decrypt: {e}")))?;
    let mut output = output;
    copy(reader, &mut output).map_err(|e| Error::Crypto(format!("decrypting: {e}")))
}

fn copy<R: Read, W: Write>(mut r: R, w: &mut W) -> std::io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// Seals the file `input` into `output` (atomically).
pub fn seal_file(input: &Path, output: &Path, to: &SealTo, armor: bool) -> Result<u64> {
    let r = std::fs::File::open(input).map_err(|e| Error::io(input, e))?;
    let mut out = AtomicFile::create(output)?;
    let n = seal_stream(
        BufReader::new(r),
        std::io::BufWriter::new(&mut out),
        to,
        armor,
    )
    .map_err(|e| with_path(e, input))?;
    out.commit()?;
    Ok(n)
}

/// Unseals the file `input` into `output` (atomically: nothing is written unless the whole file
/// decrypts and authenticates).
pub fn unseal_file(input: &Path, output: &Path, with: &OpenWith) -> Result<u64> {
    let r = std::fs::File::open(input).map_err(|e| Error::io(input, e))?;
    let mut out = AtomicFile::create(output)?;
    let n = {
        let mut w = std::io::BufWriter::new(&mut out);
        let n = unseal_stream(BufReader::new(r), &mut w, with).map_err(|e| with_path(e, input))?;
        w.flush().map_err(|e| Error::io(output, e))?;
        n
    };
    out.commit()?;
    Ok(n)
}

fn with_path(e: Error, p: &Path) -> Error {
    match e {
        Error::Crypto(m) => Error::Crypto(format!("{}: {m}", p.display())),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_and_passphrase_roundtrip_and_failures() {
        let (id_text, rcpt) = generate_identity();
        let d = tempfile::tempdir().unwrap();
        let idf = d.path().join("id.txt");
        std::fs::write(&idf, id_text.as_bytes()).unwrap();
        let ids = read_identities(&idf).unwrap();
        let to = SealTo::Recipients(parse_recipients(&rcpt, Path::new("r")).unwrap());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for armor in [false, true] {
            let mut sealed = Vec::new();
            seal_stream(&data[..], &mut sealed, &to, armor).unwrap();
            let mut plain = Vec::new();
            unseal_stream(&sealed[..], &mut plain, &OpenWith::Identities(ids.clone())).unwrap();
            assert_eq!(plain, data);
        }
        // Wrong identity, truncation, passphrase on a recipient file.
        let mut sealed = Vec::new();
        seal_stream(&data[..], &mut sealed, &to, false).unwrap();
        let other = age::x25519::Identity::generate();
        assert!(
            unseal_stream(
                &sealed[..],
                std::io::sink(),
                &OpenWith::Identities(vec![other])
            )
            .is_err()
        );
        let cut = &sealed[..sealed.len() - 100];
        assert!(unseal_stream(cut, std::io::sink(), &OpenWith::Identities(ids.clone())).is_err());
        assert!(
            unseal_stream(
                &sealed[..],
                std::io::sink(),
                &OpenWith::Passphrase(Zeroizing::new("x".into()))
            )
            .is_err()
        );
        // Files: a failed unseal leaves no output.
        let sf = d.path().join("s.age");
        std::fs::write(&sf, cut).unwrap();
        let out = d.path().join("out");
        assert!(unseal_file(&sf, &out, &OpenWith::Identities(ids)).is_err());
        assert!(!out.exists());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn passphrase_roundtrip() {
        let p = SealTo::Passphrase(Zeroizing::new("correct horse".into()));
        let mut sealed = Vec::new();
        seal_stream(&b"weights"[..], &mut sealed, &p, false).unwrap();
        let mut plain = Vec::new();
        unseal_stream(
            &sealed[..],
            &mut plain,
            &OpenWith::Passphrase(Zeroizing::new("correct horse".into())),
        )
        .unwrap();
        assert_eq!(plain, b"weights");
        assert!(
            unseal_stream(
                &sealed[..],
                std::io::sink(),
                &OpenWith::Passphrase(Zeroizing::new("wrong".into()))
            )
            .is_err()
        );
    }
}
