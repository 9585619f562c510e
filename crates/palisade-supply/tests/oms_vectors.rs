//! Data-driven checks against the model-signing 1.1.1 and OMS spec vectors in `tests/data/oms`.

use std::path::{Path, PathBuf};

use palisade_supply::error::{Error, Failure, ManifestIssue};
use palisade_supply::keys::PublicKey;
use palisade_supply::oms::{self, VerifyOptions};

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/oms")
        .join(p)
}

fn key(p: &str) -> PublicKey {
    PublicKey::from_pem_file(&data(p)).unwrap()
}

fn verify(model: &Path, sig: &str, k: &str) -> Result<oms::Verified, Error> {
    let bundle = std::fs::read(data(sig)).unwrap();
    oms::verify_model(model, &bundle, &key(k), &VerifyOptions::default(), None)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

const VALID: [(&str, &str); 5] = [
    ("model.sig", "ec_p256_public.pem"),
    ("model.p384.sig", "ec_p384_public.pem"),
    ("model.files-blake3.sig", "ec_p256_public.pem"),
    ("model.files-blake2.sig", "ec_p256_public.pem"),
    ("model.shards64-sha256.sig", "ec_p256_public.pem"),
];

#[test]
fn every_model_signing_vector_verifies() {
    for (sig, k) in VALID {
        let v = verify(&data("model"), sig, k).unwrap_or_else(|e| panic!("{sig}: {e}"));
        assert!(!v.manifest().resources.is_empty());
    }
}

#[test]
fn the_tampered_model_fails_every_vector() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model");
    copy_dir(&data("model"), &m);
    // The same change as the vectors' model_tampered/: one digit of config.json.
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    std::fs::write(
        m.join("config.json"),
        cfg.replace("\"hidden_size\":4", "\"hidden_size\":5"),
    )
    .unwrap();
    std::fs::write(m.join("extra_unsigned.bin"), b"extra").unwrap();
    for (sig, k) in VALID {
        let e = verify(&m, sig, k).unwrap_err();
        let Error::Verification(Failure::Manifest(issues)) = &e else {
            panic!("{sig}: {e}")
        };
        assert!(issues.iter().any(|i| matches!(i, ManifestIssue::DigestMismatch { name, .. } if name.starts_with("config.json"))), "{sig}: {e}");
        assert!(
            issues.iter().any(
                |i| matches!(i, ManifestIssue::Unsigned { name } if name == "extra_unsigned.bin")
            ),
            "{sig}: {e}"
        );
    }
    // Ignoring unsigned files still catches the changed digest.
    let bundle = std::fs::read(data("model.sig")).unwrap();
    let opts = VerifyOptions {
        ignore_unsigned_files: true,
        ..Default::default()
    };
    assert!(oms::verify_model(&m, &bundle, &key("ec_p256_public.pem"), &opts, None).is_err());
}

#[test]
fn a_missing_file_fails() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model");
    copy_dir(&data("model"), &m);
    std::fs::remove_file(m.join("a/b")).unwrap();
    let e = verify(&m, "model.sig", "ec_p256_public.pem").unwrap_err();
    assert!(e.to_string().contains("a/b: signed but missing"), "{e}");
}

#[test]
fn the_wrong_key_is_a_hint_mismatch() {
    let e = verify(&data("model"), "model.sig", "ec_p384_public.pem").unwrap_err();
    assert!(
        matches!(e, Error::Verification(Failure::KeyHintMismatch { .. })),
        "{e}"
    );
}

#[test]
fn ed25519_keys_are_rejected_with_a_clear_error() {
    let e = PublicKey::from_pem_file(&data("ed25519_public.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong key type: Ed25519"), "{e}");
    let e = palisade_supply::keys::SigningKey::from_pem_file(&data("ed25519_private.pem"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("wrong key type: Ed25519"), "{e}");
}

#[test]
fn spec_valid_bundles_verify_signature_and_statement() {
    let k = key("spec/spec_key_p384_public.pem");
    for f in [
        "spec/valid/key.bundle.json",
        "spec/valid/certificate.bundle.json",
    ] {
        let b = std::fs::read(data(f)).unwrap();
        let m = oms::verify_bundle(&b, &k).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(m.resources.len(), 2, "{f}");
        assert!(m.ignore_paths.contains(&"ignore-me".to_string()));
    }
}

#[test]
fn spec_invalid_bundles_are_rejected() {
    let k = key("spec/spec_key_p384_public.pem");
    for f in [
        "spec/invalid/empty.bundle.json",
        "spec/invalid/missing-envelope.bundle.json",
        "spec/invalid/missing-tlog-entries.bundle.json",
        "spec/invalid/missing-verification-material.bundle.json",
        "spec/invalid-payload/wrong-predicate.bundle.json",
    ] {
        let b = std::fs::read(data(f)).unwrap();
        let e = oms::verify_bundle(&b, &k).unwrap_err();
        assert!(e.is_verification_failure(), "{f}: {e}");
    }
    // The wrong-predicate vector's signature was made over another payload: it fails there first.
    let b = std::fs::read(data("spec/invalid-payload/wrong-predicate.bundle.json")).unwrap();
    let e = oms::verify_bundle(&b, &k).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Verification(Failure::BadSignature | Failure::WrongPredicateType { .. })
        ),
        "{e}"
    );
}
