//! The version of each SQLite file's schema, in its header (`PRAGMA user_version`): a file
//! written by a later Palisade, whose schema this one does not know, is refused rather than
//! misread or "migrated" (an older gateway started on a newer state folder, after a downgrade).
//! Files made before versions were recorded read 0 and are brought up to this one's.

use rusqlite::Connection;

/// The schema of `keys.db` (1: `made_expires_ms`, the expiry a key was made with; 2: a key is
/// bound to a client certificate, `client_cert_sha256`, which a gateway of schema 1 would not
/// check: it must refuse the file rather than rotate a bound key into an unbound one; 3: a key
/// is bound to a subject name, `client_san`, which a gateway of schema 2 would not check). A
/// file is brought to 2 or 3 only when a key is first bound so ([`KEYS_UNBOUND`] until then),
/// so that a downgrade stays possible while no key is bound that the older release would not
/// check.
pub(crate) const KEYS: i64 = 3;
/// The schema of a `keys.db` in which a key was bound to a client certificate but none to a
/// name: the release before name bindings reads it as its own.
pub(crate) const KEYS_CERT_BOUND: i64 = 2;
/// The schema of a `keys.db` in which no key was ever bound (to a client certificate or a
/// name): the columns are there, unused, and the release before bindings reads the file as its
/// own.
pub(crate) const KEYS_UNBOUND: i64 = 1;
/// The schema of the audit log's database.
pub(crate) const AUDIT: i64 = 1;
/// The schema of the budget ledger, `limits.db`.
pub(crate) const LIMITS: i64 = 1;

/// Why a file's schema was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    /// Written by a later version.
    #[error(
        "it was written by a later Palisade (schema {found}; this one knows up to {ours}): \
         refused rather than misread; run the version that wrote it"
    )]
    Newer {
        /// The file's version.
        found: i64,
        /// This build's.
        ours: i64,
    },
    /// The database failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl From<SchemaError> for crate::keys::KeyError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Sqlite(e) => crate::keys::KeyError::Sqlite(e),
            e => crate::keys::KeyError::Invalid(format!("key database: {e}")),
        }
    }
}

impl From<SchemaError> for crate::audit::AuditError {
    fn from(e: SchemaError) -> Self {
        match e {
            SchemaError::Sqlite(e) => crate::audit::AuditError::Sqlite(e),
            e => crate::audit::AuditError::Schema(e.to_string()),
        }
    }
}

/// Checks the schema version of the database on `conn` against `ours`, and records `ours` in a
/// file that has an older one (call it once its tables are brought up to `ours`).
pub(crate) fn check(conn: &Connection, ours: i64) -> Result<(), SchemaError> {
    let found = readable(conn, ours)?;
    if found < ours {
        conn.pragma_update(None, "user_version", ours)?;
    }
    Ok(())
}

/// Fails if the database on `conn` has a schema later than `ours`, writing nothing (for readers
/// such as the offline verifier); returns its version.
pub(crate) fn readable(conn: &Connection, ours: i64) -> Result<i64, SchemaError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > ours {
        return Err(SchemaError::Newer { found, ours });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_file_is_brought_up_and_a_newer_one_refused() {
        let conn = Connection::open_in_memory().unwrap();
        check(&conn, 2).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
        check(&conn, 2).unwrap();
        let e = check(&conn, 1).unwrap_err();
        assert!(matches!(e, SchemaError::Newer { found: 2, ours: 1 }), "{e}");
        assert!(e.to_string().contains("later Palisade"), "{e}");
    }
}
