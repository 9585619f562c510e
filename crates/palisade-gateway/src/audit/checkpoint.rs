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

impl SignedCheckpoint {
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
}
