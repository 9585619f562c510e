//! End-to-end: the `palisade` binary's supply-chain commands in a temp dir (keygen, sign, verify,
//! seal, unseal, registry, provenance), checking exit codes and outputs.

use std::path::Path;
use std::process::{Command, Output};

mod common;

fn palisade(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(dir)
        .env("PALISADE_REGISTRY", dir.join("reg"))
        .env("PALISADE_ACTOR", "ci")
        .output()
        .unwrap()
}

#[track_caller]
fn expect(dir: &Path, args: &[&str], code: i32) -> String {
    let o = palisade(dir, args);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(code),
        "palisade {args:?}\nstdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A minimal safetensors file (the scanner finds it clean).
fn safetensors(fill: u8, n: usize) -> Vec<u8> {
    let h = format!(r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#);
    let mut v = (h.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(h.as_bytes());
    v.extend(std::iter::repeat_n(fill, n));
    v
}

#[test]
fn sign_verify_seal_registry_provenance() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("model/sub")).unwrap();
    std::fs::write(d.join("model/w.safetensors"), safetensors(1, 4096)).unwrap();
    std::fs::write(d.join("model/sub/b.safetensors"), safetensors(2, 10)).unwrap();
    std::fs::write(d.join("pw"), "s3cret\n").unwrap();

    // keygen never prints the private key.
    let out = expect(
        d,
        &[
            "keygen",
            "--curve",
            "p384",
            "--private-key",
            "k.pem",
            "--public-key",
            "k.pub",
            "--password-file",
            "pw",
        ],
        0,
    );
    let pem = std::fs::read_to_string(d.join("k.pem")).unwrap();
    assert!(pem.contains("ENCRYPTED PRIVATE KEY"));
    assert!(!out.contains(pem.lines().nth(1).unwrap()));
    expect(
        d,
        &["keygen", "--private-key", "k.pem", "--public-key", "x.pub"],
        2,
    );

    // sign / verify / exit codes.
    expect(
        d,
        &[
            "sign",
            "model",
            "--private-key",
            "k.pem",
            "--signature",
            "m.sig",
        ],
        2,
    );
    expect(
        d,
        &[
            "sign",
            "model",
            "--private-key",
            "k.pem",
            "--signature",
            "m.sig",
            "--password-file",
            "pw",
            "--hash",
            "blake3",
        ],
        0,
    );
    let v = expect(
        d,
        &[
            "--json",
            "verify",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "k.pub",
        ],
        0,
    );
    assert!(v.contains("\"verified\": true"), "{v}");
    expect(
        d,
        &["keygen", "--private-key", "o.pem", "--public-key", "o.pub"],
        0,
    );
    expect(
        d,
        &[
            "verify",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "o.pub",
        ],
        1,
    );
    expect(
        d,
        &[
            "verify",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "o.pem",
        ],
        2,
    );
    std::fs::write(d.join("model/extra.bin"), b"x").unwrap();
    let v = expect(
        d,
        &[
            "verify",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "k.pub",
        ],
        1,
    );
    assert!(v.contains("extra.bin: present but not signed"), "{v}");
    expect(
        d,
        &[
            "verify",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "k.pub",
            "--ignore-unsigned-files",
        ],
        0,
    );
    std::fs::remove_file(d.join("model/extra.bin")).unwrap();

    // seal / unseal.
    expect(
        d,
        &[
            "keygen",
            "--curve",
            "x25519",
            "--private-key",
            "id.txt",
            "--public-key",
            "r.txt",
        ],
        0,
    );
    expect(
        d,
        &[
            "seal",
            "model/w.safetensors",
            "-o",
            "w.age",
            "--recipients-file",
            "r.txt",
        ],
        0,
    );
    expect(d, &["unseal", "w.age", "-o", "w.out", "-i", "id.txt"], 0);
    assert_eq!(
        std::fs::read(d.join("w.out")).unwrap(),
        safetensors(1, 4096)
    );
    expect(d, &["unseal", "w.age", "-o", "w2.out", "-i", "o.pem"], 2);
    assert!(!d.join("w2.out").exists());

    // registry: add (verified + clean), refuse a tampered model, aliases, rollback, export.
    expect(
        d,
        &[
            "registry",
            "add",
            "demo",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "k.pub",
        ],
        0,
    );
    std::fs::write(d.join("model/w.safetensors"), safetensors(9, 4096)).unwrap();
    expect(
        d,
        &[
            "registry",
            "add",
            "demo",
            "model",
            "--signature",
            "m.sig",
            "--public-key",
            "k.pub",
        ],
        1,
    );
    expect(
        d,
        &[
            "sign",
            "model",
            "--private-key",
            "k.pem",
            "--signature",
            "m2.sig",
            "--password-file",
            "pw",
        ],
        0,
    );
    expect(
        d,
        &[
            "registry",
            "add",
            "demo",
            "model",
            "--signature",
            "m2.sig",
            "--public-key",
            "k.pub",
            "--seal-to",
            std::fs::read_to_string(d.join("r.txt")).unwrap().trim(),
        ],
        0,
    );
    expect(d, &["registry", "alias", "demo", "production", "1"], 0);
    expect(d, &["registry", "alias", "demo", "production", "2"], 0);
    let r = expect(
        d,
        &["--json", "registry", "rollback", "demo", "production"],
        0,
    );
    assert!(r.contains("\"to\": 1"), "{r}");
    let h = expect(d, &["registry", "history", "demo"], 0);
    assert_eq!(h.lines().count(), 5, "{h}");
    assert!(h.lines().all(|l| l.contains(" ci ")), "{h}");
    expect(
        d,
        &[
            "registry",
            "export",
            "demo",
            "production",
            "-o",
            "out1",
            "--signature",
            "out1.sig",
        ],
        0,
    );
    expect(
        d,
        &[
            "verify",
            "out1",
            "--signature",
            "out1.sig",
            "--public-key",
            "k.pub",
        ],
        0,
    );
    expect(d, &["registry", "export", "demo", "2", "-o", "out2"], 2);
    expect(
        d,
        &[
            "registry", "export", "demo", "2", "-o", "out2", "-i", "id.txt",
        ],
        0,
    );
    assert_eq!(
        std::fs::read(d.join("out2/w.safetensors")).unwrap(),
        safetensors(9, 4096)
    );

    // provenance: dataset -> training -> model, and attach to the registry version.
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::write(d.join("data/train.csv"), b"1,0\n").unwrap();
    std::fs::write(d.join("cfg.json"), br#"{"epochs": 2}"#).unwrap();
    std::fs::write(d.join("metrics.json"), br#"{"accuracy": 0.9}"#).unwrap();
    expect(d, &["provenance", "dataset", "data", "-o", "ds.json"], 0);
    let model = [
        "--model",
        "model",
        "--model-signature",
        "m2.sig",
        "--model-key",
        "k.pub",
    ];
    let mut rec = vec![
        "provenance",
        "record",
        "--name",
        "demo",
        "--dataset-manifest",
        "ds.json",
        "--config",
        "cfg.json",
        "--metrics",
        "metrics.json",
        "--code-version",
        "abc",
        "--private-key",
        "o.pem",
        "-o",
        "prov.sig",
    ];
    rec.extend(model);
    expect(d, &rec, 0);
    let mut ver = vec![
        "provenance",
        "verify",
        "--provenance",
        "prov.sig",
        "--public-key",
        "o.pub",
        "--dataset-manifest",
        "ds.json",
        "--dataset",
        "data",
    ];
    ver.extend(model);
    expect(d, &ver, 0);
    std::fs::write(d.join("data/train.csv"), b"1,1\n").unwrap();
    expect(d, &ver, 1);
    expect(
        d,
        &[
            "registry",
            "attach-provenance",
            "demo",
            "2",
            "--provenance",
            "prov.sig",
            "--public-key",
            "o.pub",
            "--dataset-manifest",
            "ds.json",
        ],
        0,
    );
    expect(
        d,
        &[
            "registry",
            "attach-provenance",
            "demo",
            "1",
            "--provenance",
            "prov.sig",
            "--public-key",
            "o.pub",
            "--dataset-manifest",
            "ds.json",
        ],
        1,
    );
    let s = expect(d, &["--json", "registry", "show", "demo", "2"], 0);
    assert!(s.contains("\"has_provenance\": true"), "{s}");
}

/// `serve --require-signed-names` refuses a version whose signature names only the version
/// (which verifies for a copy of the folder under any model's name), saying how to re-sign, and
/// serves it once signed as `model/version`.
#[test]
fn serve_can_require_signatures_that_name_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::repository(d, "[input]\nrange = [0.0, 1.0]\n");
    expect(
        d,
        &["keygen", "--private-key", "k.pem", "--public-key", "k.pub"],
        0,
    );
    let sig = "repo/mnist/1/model.sig";
    let sign = |name: Option<&str>| {
        let mut args = vec!["sign", "--private-key", "k.pem", "--signature", sig];
        args.extend(name.map(|n| ["--name", n]).iter().flatten());
        args.push("repo/mnist/1");
        expect(d, &args, 0);
    };
    let serve = |state: &str| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args([
                "--json",
                "serve",
                "--models",
                "repo",
                "--trusted-key",
                "k.pub",
            ])
            .args(["--require-signed-names", "--state", state])
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "none"])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Signed as its folder ("1"): refused, and the error says how to sign it.
    sign(None);
    let out = serve("st1").wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("names only version '1'") && stderr.contains("--name mnist/1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Signed as mnist/1: it serves (the first JSON value on stdout says what, once loaded).
    sign(Some("mnist/1"));
    let mut gw = serve("st2");
    let mut stdout = std::io::BufReader::new(gw.stdout.take().unwrap());
    let mut text = String::new();
    let started = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        if n == 0 {
            break None;
        }
        text.push_str(&line);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            break Some(v);
        }
    };
    let _ = gw.kill();
    let _ = gw.wait();
    let started = started.unwrap_or_else(|| panic!("the gateway exited: {text}"));
    assert_eq!(
        started["models"],
        serde_json::json!(["mnist/1"]),
        "{started}"
    );
    // The address bound, not the port 0 asked for.
    let at = started["listening"].as_str().unwrap();
    assert!(
        at.starts_with("127.0.0.1:") && !at.ends_with(":0"),
        "{started}"
    );
}
