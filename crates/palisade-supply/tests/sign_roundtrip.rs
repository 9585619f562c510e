//! Sign with Palisade, verify with Palisade: every algorithm, method and curve, and the policies.

use std::path::Path;

use palisade_supply::error::{Error, Failure};
use palisade_supply::hashing::HashAlgorithm;
use palisade_supply::keys::{Curve, SigningKey};
use palisade_supply::manifest::Serialization;
use palisade_supply::oms::{self, SignOptions, VerifyOptions};

fn model(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join("weights.bin"), vec![7u8; 100_000]).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    std::fs::write(dir.join("sub/deep/x"), b"hello").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join(".git/HEAD"), b"ref").unwrap();
}

#[test]
fn roundtrip_every_algorithm_method_and_curve() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    model(&m);
    for curve in [Curve::P256, Curve::P384] {
        let k = SigningKey::generate(curve);
        for hash in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Blake2b,
            HashAlgorithm::Blake3,
        ] {
            for ser in [
                Serialization::Files,
                Serialization::Shards { shard_size: 4096 },
            ] {
                let opts = SignOptions {
                    hash,
                    serialization: ser,
                    ..Default::default()
                };
                let s = oms::sign_model(&m, &k, &opts, None).unwrap();
                let v = oms::verify_model(
                    &m,
                    &s.bundle,
                    &k.public_key(),
                    &VerifyOptions::default(),
                    None,
                )
                .unwrap_or_else(|e| panic!("{curve} {hash} {ser:?}: {e}"));
                assert_eq!(v.manifest().hash, hash);
                assert!(!v.manifest().resources.keys().any(|n| n.starts_with(".git")));
                // Flip one byte of a large file: must fail.
                let w = m.join("weights.bin");
                let mut bytes = std::fs::read(&w).unwrap();
                bytes[50_000] ^= 1;
                std::fs::write(&w, &bytes).unwrap();
                let e = oms::verify_model(
                    &m,
                    &s.bundle,
                    &k.public_key(),
                    &VerifyOptions::default(),
                    None,
                )
                .unwrap_err();
                assert!(
                    matches!(e, Error::Verification(Failure::Manifest(_))),
                    "{e}"
                );
                bytes[50_000] ^= 1;
                std::fs::write(&w, &bytes).unwrap();
            }
        }
    }
}

#[test]
fn resources_are_in_code_point_order_and_signature_in_model_is_excluded() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    std::fs::create_dir_all(m.join("a")).unwrap();
    std::fs::write(m.join("a/b"), b"1").unwrap();
    std::fs::write(m.join("a.b"), b"2").unwrap();
    let k = SigningKey::generate(Curve::P256);
    let sig = m.join("model.sig");
    let opts = SignOptions {
        signature_path: Some(sig.clone()),
        ..Default::default()
    };
    let s = oms::sign_model(&m, &k, &opts, None).unwrap();
    let names: Vec<_> = s.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a.b", "a/b"]);
    std::fs::write(&sig, &s.bundle).unwrap();
    let vopts = VerifyOptions {
        signature_path: Some(sig),
        ..Default::default()
    };
    oms::verify_model(&m, &s.bundle, &k.public_key(), &vopts, None).unwrap();
}

#[test]
fn single_file_models_and_empty_models() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("model.onnx");
    std::fs::write(&f, b"onnx").unwrap();
    let k = SigningKey::generate(Curve::P256);
    let s = oms::sign_model(&f, &k, &SignOptions::default(), None).unwrap();
    assert_eq!(s.resources[0].name, "model.onnx");
    oms::verify_model(
        &f,
        &s.bundle,
        &k.public_key(),
        &VerifyOptions::default(),
        None,
    )
    .unwrap();
    let e = d.path().join("empty");
    std::fs::create_dir(&e).unwrap();
    let err = oms::sign_model(&e, &k, &SignOptions::default(), None).unwrap_err();
    assert!(err.to_string().contains("no file to sign"), "{err}");
}

#[cfg(unix)]
#[test]
fn symlink_policy_is_recorded_and_enforced() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(d.path().join("outside"), b"target").unwrap();
    std::fs::write(m.join("w"), b"w").unwrap();
    std::os::unix::fs::symlink(d.path().join("outside"), m.join("link")).unwrap();
    let k = SigningKey::generate(Curve::P256);
    let e = oms::sign_model(&m, &k, &SignOptions::default(), None).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let opts = SignOptions {
        allow_symlinks: true,
        ..Default::default()
    };
    let s = oms::sign_model(&m, &k, &opts, None).unwrap();
    assert!(s.resources.iter().any(|r| r.name == "link"));
    oms::verify_model(
        &m,
        &s.bundle,
        &k.public_key(),
        &VerifyOptions::default(),
        None,
    )
    .unwrap();
    std::fs::write(d.path().join("outside"), b"changed").unwrap();
    assert!(
        oms::verify_model(
            &m,
            &s.bundle,
            &k.public_key(),
            &VerifyOptions::default(),
            None
        )
        .is_err()
    );
}

#[test]
fn a_shard_file_that_grew_fails() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("w"), vec![1u8; 100]).unwrap();
    let k = SigningKey::generate(Curve::P384);
    let opts = SignOptions {
        serialization: Serialization::Shards { shard_size: 64 },
        ..Default::default()
    };
    let s = oms::sign_model(&m, &k, &opts, None).unwrap();
    std::fs::write(m.join("w"), vec![1u8; 140]).unwrap();
    let e = oms::verify_model(
        &m,
        &s.bundle,
        &k.public_key(),
        &VerifyOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("w:64:128"), "{e}");
}
