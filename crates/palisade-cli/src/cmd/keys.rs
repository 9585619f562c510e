//! `palisade keys`: create, list, rotate and revoke the gateway's API keys.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use palisade_gateway::keys::{
    ClientBinding, ClientCertificate, ClientIdentity, KeyStore as _, NewKey, Role, SqliteKeyStore,
    SubjectName,
};
use palisade_gateway::server::StatePaths;

use crate::cmd::Outcome;
use crate::output::Ctx;

/// Arguments of `palisade keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The gateway's state folder.
    #[arg(long, default_value = "palisade-state", global = true)]
    state: PathBuf,

    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Make a key (shown once). Keys with admin or deploy get a TOTP secret.
    Create {
        /// A label for people.
        #[arg(long)]
        name: String,
        /// A role: query:<model>, query:*, ingest, train, deploy, audit, admin (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Validity, e.g. 30d, 12h, 15m.
        #[arg(long)]
        expires_in: Option<String>,
        /// Bind the key to this client certificate (PEM; its first certificate): the key is
        /// then accepted only on a mutual TLS connection (`serve --tls-client-ca`) that
        /// presented it.
        #[arg(long, value_name = "PEM")]
        client_cert: Option<PathBuf>,
        /// Bind the key to a subject alternative name instead (dns:<name>, uri:<uri>,
        /// ip:<address> or email:<address>): accepted only over mutual TLS with a certificate
        /// the client CA issued with that name, whichever one (renewals keep the key working;
        /// `keys identity` shows a certificate's names).
        #[arg(long, value_name = "NAME", conflicts_with = "client_cert")]
        client_san: Option<String>,
    },
    /// Show what a client certificate (PEM) presents to the gateway: its SHA-256 thumbprint
    /// and the subject alternative names a key can be bound to.
    Identity {
        /// The certificate (its file's first certificate is read).
        #[arg(value_name = "PEM")]
        cert: PathBuf,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key at once.
    Revoke {
        /// The key id (the 12 hex digits after `pal_`).
        id: String,
    },
    /// Make a successor with the same roles and expiry; the old key lives for the overlap (not
    /// past its own expiry; an overlap of 0 revokes it).
    Rotate {
        /// The key id.
        id: String,
        /// How long the old key stays valid, e.g. 1h.
        #[arg(long, default_value = "1h")]
        overlap: String,
        /// Bind the successor to this client certificate (PEM) instead of the old key's
        /// binding (a renewed client certificate); without it, or --client-san, the successor
        /// is bound as the old key was.
        #[arg(long, value_name = "PEM")]
        client_cert: Option<PathBuf>,
        /// Bind the successor to this subject alternative name instead (see `keys create`).
        #[arg(long, value_name = "NAME", conflicts_with = "client_cert")]
        client_san: Option<String>,
    },
}

/// `30s`, `15m`, `12h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a duration like 30s, 15m, 12h or 7d"))?;
    let secs = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("'{s}': unknown unit '{unit}' (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The identity the client certificate in the PEM file `path` presents.
fn identity(path: &std::path::Path) -> anyhow::Result<ClientIdentity> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the client certificate {}", path.display()))?;
    ClientIdentity::from_pem(&pem).with_context(|| path.display().to_string())
}

/// The binding asked for: the thumbprint of the certificate in the PEM file `cert`, or the
/// name `san` ([`ClientBinding::one_of`]).
fn binding(
    cert: Option<&std::path::Path>,
    san: Option<&str>,
) -> anyhow::Result<Option<ClientBinding>> {
    let certificate = cert.map(|path| identity(path).map(|id| *id.certificate()));
    let name = san.map(str::parse::<SubjectName>);
    Ok(ClientBinding::one_of(
        certificate.transpose()?,
        name.transpose()?,
    )?)
}

/// What `keys identity` shows of a certificate.
#[derive(serde::Serialize)]
struct Shown {
    client_cert_sha256: ClientCertificate,
    /// The names a key can be bound to (`--client-san`).
    client_san: Vec<SubjectName>,
}

/// How a new key is shown.
pub fn show_new_key(k: &NewKey) -> String {
    let mut s = format!(
        "key {} ({}), roles {}\n\n    {}\n\nStore it now: it is not shown again.",
        k.record.id,
        k.record.name,
        k.record
            .roles
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        k.key
    );
    if let Some(cert) = &k.record.client_cert {
        s.push_str(&format!(
            "\nBound to the client certificate with SHA-256 {cert}: accepted only over mutual TLS \
             with that certificate."
        ));
    }
    if let Some(name) = &k.record.client_san {
        s.push_str(&format!(
            "\nBound to the name {name}: accepted only over mutual TLS with a certificate the \
             client CA issued with that name."
        ));
    }
    if let (Some(secret), Some(uri)) = (&k.totp_secret, &k.totp_uri) {
        s.push_str(&format!(
            "\nAdmin actions also need a TOTP code (header X-Palisade-TOTP).\nTOTP secret: {secret}\n{uri}"
        ));
    }
    s
}

/// Revokes the new key `id`, in the key database `db`, that could not be shown (its audit entry,
/// queued as the operator's, says so).
pub fn take_back(db: &std::path::Path, id: &str) -> anyhow::Result<()> {
    SqliteKeyStore::open(db)?
        .for_operator(format!("{} (key not shown)", operator()))
        .revoke(id, now_ms())
        .with_context(|| format!("revoking {id}, which was not shown"))?;
    Ok(())
}

/// `palisade keys identity`.
fn show_identity(ctx: &Ctx, cert: &std::path::Path) -> anyhow::Result<Outcome> {
    let id = identity(cert)?;
    let shown = Shown {
        client_cert_sha256: *id.certificate(),
        client_san: id.names().to_vec(),
    };
    ctx.emit(&shown, |s| {
        let mut out = format!("client_cert_sha256 {}", s.client_cert_sha256);
        if s.client_san.is_empty() {
            out.push_str("\n(no subject alternative name a key can be bound to)");
        }
        for n in &s.client_san {
            out.push_str(&format!("\nclient_san         {n}"));
        }
        out
    })?;
    Ok(Outcome::Success)
}

/// Runs `palisade keys`.
pub fn run(ctx: &Ctx, args: KeysArgs) -> anyhow::Result<Outcome> {
    // Reads a certificate, not the key database.
    if let KeysAction::Identity { cert } = &args.action {
        return show_identity(ctx, cert);
    }
    let paths = StatePaths::new(&args.state);
    if !matches!(args.action, KeysAction::Create { .. }) {
        // Only a database that is not there is "none": one that cannot be looked at (EACCES)
        // says why.
        match std::fs::metadata(paths.keys_db()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "no key database in {} (start `palisade serve` or create a key first)",
                args.state.display()
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot read {}", paths.keys_db().display())));
            }
        }
    }
    palisade_gateway::server::make_private_dir(&args.state)?;
    let store = SqliteKeyStore::open(&paths.keys_db())?.for_operator(operator());
    let changes = !matches!(args.action, KeysAction::List);
    match args.action {
        KeysAction::Create {
            name,
            roles,
            expires_in,
            client_cert,
            client_san,
        } => {
            let bind = binding(client_cert.as_deref(), client_san.as_deref())?;
            let roles = roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()?;
            let now = now_ms();
            let expires = match expires_in {
                // Past u64 milliseconds saturates (and the store refuses it), never wraps.
                Some(d) => Some(now.saturating_add(
                    u64::try_from(parse_duration(&d)?.as_millis()).unwrap_or(u64::MAX),
                )),
                None => None,
            };
            let k = store.create_bound(&name, &roles, expires, bind, now)?;
            if let Err(e) = ctx.emit_secret(&k, show_new_key) {
                take_back(&paths.keys_db(), &k.record.id)?;
                return Err(e.context(format!(
                    "key {} was not shown and has been revoked",
                    k.record.id
                )));
            }
        }
        KeysAction::List => {
            let keys = store.list()?;
            ctx.emit(&keys, |keys| {
                let now = now_ms();
                keys.iter()
                    .map(|k| {
                        let status = if k.revoked_ms.is_some() {
                            "revoked"
                        } else if k.expires_ms.is_some_and(|e| e <= now) {
                            "expired"
                        } else {
                            "active"
                        };
                        let roles: Vec<String> = k.roles.iter().map(|r| r.to_string()).collect();
                        // A successor by rotation shares its line's limits: say whose.
                        let line = if k.lineage == k.id {
                            String::new()
                        } else {
                            format!("  (rotated from line {})", k.lineage)
                        };
                        let bound = match k.binding() {
                            Some(ClientBinding::Certificate(c)) => {
                                format!("  (client certificate sha256:{c})")
                            }
                            Some(ClientBinding::Name(n)) => format!("  (client name {n})"),
                            None => String::new(),
                        };
                        format!(
                            "{}  {:8}  {:20}  {}{line}{bound}",
                            k.id,
                            status,
                            k.name,
                            roles.join(",")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        KeysAction::Identity { .. } => unreachable!("answered above"),
        KeysAction::Revoke { id } => {
            let changed = store.revoke(&id, now_ms())?;
            let v = serde_json::json!({ "id": id, "revoked": true, "was_active": changed });
            ctx.emit(&v, |_| {
                if changed {
                    format!("revoked {id}")
                } else {
                    format!("{id} was already revoked")
                }
            })?;
        }
        KeysAction::Rotate {
            id,
            overlap,
            client_cert,
            client_san,
        } => {
            let bind = binding(client_cert.as_deref(), client_san.as_deref())?;
            let k = store.rotate_rebinding(&id, parse_duration(&overlap)?, bind, now_ms())?;
            let shown = ctx.emit_secret(&k, |k| {
                format!(
                    "{} stays valid for {overlap} (not past its own expiry); its successor:\n{}",
                    id,
                    show_new_key(k)
                )
            });
            if let Err(e) = shown {
                take_back(&paths.keys_db(), &k.record.id)?;
                return Err(e.context(format!(
                    "the successor {} was not shown and has been revoked ({id} stays valid for \
                     the overlap)",
                    k.record.id
                )));
            }
        }
    }
    if changes {
        // On stderr, so that --json output stays one document.
        eprintln!("{QUEUED}");
    }
    Ok(Outcome::Success)
}

/// Said after each change: where its audit entry is.
const QUEUED: &str = "audit: this change's entry is queued in the key database; the gateway on \
this state folder appends it to the audit log within a second (a stopped one when it starts)";

/// Who runs this command, for the audit entry: `$PALISADE_ACTOR` (as `palisade registry`
/// records), else the user, and the host, as the environment says (informative: anyone who can
/// write the key database can claim any name).
fn operator() -> String {
    let user = std::env::var("PALISADE_ACTOR")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    format!("palisade keys ({user}@{host})")
}
