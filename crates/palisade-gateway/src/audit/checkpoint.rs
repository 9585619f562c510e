//! Signed checkpoints: a tree size and root, signed with Ed25519, so that anyone holding the
//! public key can check that a log has not been rewritten.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::merkle::Hash;
use crate::hexfmt;

/// What a checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Number of entries in the log.
    pub size: u64,
    /// RFC 6962 root of those entries (hex).
    pub root: String,
    /// When it was signed, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A checkpoint and its Ed25519 signature over [`Checkpoint::message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The signed content.
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// Ed25519 signature (hex, 64 bytes).
    pub signature: String,
}

impl Checkpoint {
    /// A checkpoint of `size` entries with root `root`.
    pub fn new(size: u64, root: &Hash, timestamp_ms: u64) -> Self {
        Checkpoint {
            size,
            root: hexfmt::encode(root),
            timestamp_ms,
        }
    }

    /// The exact bytes that are signed.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "palisade-audit-checkpoint/v1\n{}\n{}\n{}\n",
            self.size, self.root, self.timestamp_ms
        )
        .into_bytes()
    }

    /// The root as bytes, if it is well-formed hex.
    pub fn root_hash(&self) -> Option<Hash> {
        hexfmt::decode_32(&self.root)
    }
}

/// Signs checkpoints with the log's Ed25519 key.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field(
                "public",
                &hexfmt::encode(self.key.verifying_key().as_bytes()),
            )
            .finish()
    }
}

impl CheckpointSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        CheckpointSigner {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public key that verifies this signer's checkpoints.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `checkpoint`.
    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let sig = self.key.sign(&checkpoint.message());
        SignedCheckpoint {
            checkpoint,
            signature: hexfmt::encode(&sig.to_bytes()),
        }
    }
}

/// Why a signed checkpoint does not vouch for a log's tree of its size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Disagreement {
    /// The signature does not verify under the key.
    #[error("bad signature: it does not verify under the key")]
    Signature,
    /// The log holds fewer entries than the checkpoint covers.
    #[error("the log holds only {have} entries: entries were removed")]
    Removed {
        /// Entries the log holds.
        have: u64,
    },
    /// The log's tree of the checkpoint's size has another root.
    #[error("it signs root {signed} but the log gives {log}: the log was altered")]
    Root {
        /// The root the checkpoint signs (hex).
        signed: String,
        /// The log's root (hex).
        log: String,
    },
}

impl SignedCheckpoint {
    /// Whether this checkpoint vouches, under `public_key`, for a log of `log_size` entries
    /// whose tree of the checkpoint's size has the root `root_at_size` (not looked at when the
    /// log holds fewer entries than that). The signature is checked first: a checkpoint that
    /// does not verify vouches for nothing.
    pub fn vouches_for(
        &self,
        public_key: &[u8; 32],
        log_size: u64,
        root_at_size: Option<&Hash>,
    ) -> Result<(), Disagreement> {
        if !self.verify(public_key) {
            return Err(Disagreement::Signature);
        }
        if self.checkpoint.size > log_size {
            return Err(Disagreement::Removed { have: log_size });
        }
        match (self.checkpoint.root_hash(), root_at_size) {
            (Some(signed), Some(log)) if signed == *log => Ok(()),
            (_, log) => Err(Disagreement::Root {
                signed: self.checkpoint.root.clone(),
                log: log.map_or_else(|| "no root".into(), |l| hexfmt::encode(l)),
            }),
        }
    }

    /// Whether the signature verifies under `public_key`.
    pub fn verify(&self, public_key: &[u8; 32]) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(public_key) else {
            return false;
        };
        let Some(sig) = hexfmt::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) else {
            return false;
        };
        vk.verify(&self.checkpoint.message(), &Signature::from_bytes(&sig))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let s = CheckpointSigner::from_seed(&[7u8; 32]);
        let c = s.sign(Checkpoint::new(5, &[3u8; 32], 1000));
        assert!(c.verify(&s.public_key()));
        let mut t = c.clone();
        t.checkpoint.size = 4;
        assert!(!t.verify(&s.public_key()));
        let other = CheckpointSigner::from_seed(&[8u8; 32]);
        assert!(!c.verify(&other.public_key()));
        let mut bad = c.clone();
        bad.signature = "zz".into();
        assert!(!bad.verify(&s.public_key()));
    }

    #[test]
    fn a_checkpoint_vouches_only_for_its_own_root_under_its_key() {
        let s = CheckpointSigner::from_seed(&[7u8; 32]);
        let pk = s.public_key();
        let c = s.sign(Checkpoint::new(5, &[3u8; 32], 1000));
        assert_eq!(c.vouches_for(&pk, 5, Some(&[3u8; 32])), Ok(()));
        assert_eq!(c.vouches_for(&pk, 9, Some(&[3u8; 32])), Ok(()));
        assert!(matches!(
            c.vouches_for(&pk, 5, Some(&[4u8; 32])),
            Err(Disagreement::Root { .. })
        ));
        assert_eq!(
            c.vouches_for(&pk, 4, None),
            Err(Disagreement::Removed { have: 4 })
        );
        let other = CheckpointSigner::from_seed(&[8u8; 32]).public_key();
        // A bad signature comes first: such a checkpoint says nothing about the log.
        assert_eq!(c.vouches_for(&other, 4, None), Err(Disagreement::Signature));
    }
}
