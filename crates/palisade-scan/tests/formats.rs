//! Containers and formats: archives and their tricks, tensor formats checked strictly, Keras,
//! TensorFlow, ONNX, GGUF; directories, the proof token and SARIF.

mod util;

use palisade_scan::{FileStatus, FindingKind as K, Format, ScanOptions, Severity as S, scan_path};
use util::{Pickle, dump, has, pb, raw_zip, safetensors, scan, torch_state_dict, zip_of};

#[test]
fn torch_zip_scans_every_pickle_member() {
    let clean = zip_of(
        &[
            ("archive/data.pkl", &torch_state_dict()),
            ("archive/data/0", &[0u8; 16]),
            ("archive/version", b"3\n"),
        ],
        false,
    );
    let r = scan("m.pt", clean);
    assert!(r.is_clean(), "{}", dump(&r));
    assert_eq!(r.files[0].format, Format::TorchZip);

    // A referenced storage that is missing, or shorter than its tensor needs.
    let missing = zip_of(&[("archive/data.pkl", &torch_state_dict())], false);
    assert!(has(&scan("m.pt", missing), S::Error, K::MalformedTensors));
    let short = zip_of(
        &[
            ("archive/data.pkl", &torch_state_dict()),
            ("archive/data/0", &[0u8; 15]),
        ],
        false,
    );
    assert!(has(&scan("m.pt", short), S::Error, K::MalformedTensors));

    // The payload is in a second pickle member, compressed.
    let bad = zip_of(
        &[
            ("archive/data.pkl", &torch_state_dict()),
            ("archive/extra/x.pkl", &Pickle::os_system("id")),
        ],
        true,
    );
    let r = scan("m.pt", bad);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    assert!(
        r.files[0]
            .findings
            .iter()
            .any(|f| f.member == "archive/extra/x.pkl")
    );
}

#[test]
fn encrypted_flag_on_plaintext_member() {
    let z = raw_zip(&[("archive/data.pkl", &Pickle::os_system("id"), 1)]);
    let r = scan("m.pt", z);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    assert!(has(&r, S::Suspicious, K::ContainerAnomaly));
}

#[test]
fn really_encrypted_member_is_unscannable() {
    let z = raw_zip(&[(
        "secret.bin",
        &[0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x11],
        1,
    )]);
    let r = scan("x.zip", z);
    assert_eq!(r.files[0].status, FileStatus::Unscannable, "{}", dump(&r));
}

#[test]
fn duplicate_member_names_are_all_scanned() {
    let z = raw_zip(&[
        ("archive/data.pkl", &torch_state_dict(), 0),
        ("archive/data.pkl", &Pickle::os_system("id"), 0),
    ]);
    let r = scan("m.pt", z);
    assert!(has(&r, S::Suspicious, K::ContainerAnomaly), "{}", dump(&r));
    assert!(has(&r, S::Dangerous, K::PickleCall));
}

#[test]
fn broken_central_directory_falls_back_to_local_headers() {
    let mut z = raw_zip(&[("archive/data.pkl", &Pickle::os_system("id"), 0)]);
    let n = z.len();
    z.truncate(n - 22); // no end-of-central-directory record
    let r = scan("m.pt", z);
    assert!(has(&r, S::Error, K::Unparsable), "{}", dump(&r));
    assert!(has(&r, S::Dangerous, K::PickleCall));
}

#[test]
fn pickle_zip_polyglot() {
    // A harmless pickle for readers from the start, a zip with a payload for readers from the end.
    let mut b = Pickle::new().proto(2).empty_list().stop().bytes();
    b.extend(zip_of(
        &[("archive/data.pkl", &Pickle::os_system("id"))],
        false,
    ));
    let r = scan("m.bin", b);
    assert!(
        has(&r, S::Suspicious, K::ParserDifferential),
        "{}",
        dump(&r)
    );
    assert!(has(&r, S::Dangerous, K::PickleCall));
}

#[test]
fn unknown_format_is_an_error_not_clean() {
    let r = scan(
        "model.pt",
        b"7z\xbc\xaf\x27\x1c this is not a model".to_vec(),
    );
    assert_eq!(r.files[0].status, FileStatus::Unscannable);
    assert!(has(&r, S::Error, K::UnknownFormat));
    let r = scan("empty.pt", Vec::new());
    assert!(!r.is_clean());
}

#[test]
fn format_is_detected_by_content_not_extension() {
    let r = scan("weights.safetensors", Pickle::os_system("id"));
    assert_eq!(r.files[0].format, Format::Pickle);
    assert!(has(&r, S::Dangerous, K::PickleCall));
}

#[test]
fn safetensors_strict_checks() {
    let ok = safetensors(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#,
        &[0; 8],
    );
    let r = scan("m.safetensors", ok);
    assert!(r.is_clean(), "{}", dump(&r));
    assert_eq!(r.files[0].format, Format::Safetensors);
    let bad = [
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        ),
        (
            "gap",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        ),
        (
            "trailing",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            8,
        ),
        (
            "span",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        ),
        (
            "past end",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
        ),
        (
            "duplicate",
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        ),
        (
            "overflow",
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            8,
        ),
        (
            "dtype",
            r#"{"a":{"dtype":"OBJ","shape":[1],"data_offsets":[0,8]}}"#,
            8,
        ),
        ("not object", r#"["a"]"#, 0),
        ("metadata", r#"{"__metadata__":{"k":1}}"#, 0),
    ];
    for (what, h, n) in bad {
        let r = scan("m.safetensors", safetensors(h, &vec![0; n]));
        let error = r.files[0].findings.iter().any(|f| f.severity == S::Error);
        assert!(
            error && r.files[0].status == FileStatus::Unscannable,
            "{what}: {}",
            dump(&r)
        );
    }
    // Header length beyond the file.
    let mut b = safetensors(r#"{}"#, &[]);
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    b[8] = b'{';
    assert!(!scan("m.safetensors", b).is_clean());
}

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (h.len() + 11) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn numpy_arrays() {
    assert!(scan("a.npy", npy("<i4", "(2, 2)", &[0; 16])).is_clean());
    let r = scan("a.npy", npy("<i4", "(2, 2)", &[0; 12]));
    assert!(has(&r, S::Error, K::MalformedTensors), "{}", dump(&r));
    let r = scan("a.npy", npy("|O", "(1,)", &Pickle::os_system("id")));
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    // Inside an npz, compressed.
    let z = zip_of(
        &[
            ("a.npy", &npy("<f8", "(1,)", &[0; 8])),
            ("b.npy", &npy("|O", "(1,)", &Pickle::os_system("id"))),
        ],
        true,
    );
    let r = scan("a.npz", z);
    assert_eq!(r.files[0].format, Format::Npz);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
}

#[test]
fn keras_archive_lambda_at_depth() {
    let config = br#"{"module":"keras","class_name":"Sequential","config":{"layers":[{"module":"keras.layers","class_name":"Dense","config":{}},{"class_name":"Sequential","config":{"layers":[{"module":"keras.layers","class_name":"Lambda","config":{"function":{"class_name":"__lambda__","config":{"code":"4wEAAA"}}}}]}}]}}"#;
    let z = zip_of(
        &[
            ("metadata.json", b"{}"),
            ("config.json", config),
            ("model.weights.h5", b"\x89HDF\r\n\x1a\n"),
        ],
        true,
    );
    let r = scan("m.keras", z);
    assert_eq!(r.files[0].format, Format::Keras);
    assert!(has(&r, S::Dangerous, K::KerasCode), "{}", dump(&r));
    let f = r.files[0]
        .findings
        .iter()
        .find(|f| f.kind == K::KerasCode)
        .unwrap();
    assert!(
        f.message.contains("layers[1].config.layers[0]"),
        "{}",
        f.message
    );
}

#[test]
fn keras_pickled_as_bytes_is_scanned_inside() {
    let config = br#"{"class_name":"Lambda","config":{}}"#;
    let inner = zip_of(&[("metadata.json", b"{}"), ("config.json", config)], false);
    let b = Pickle::new()
        .proto(4)
        .short_unicode("keras.src.saving.pickle_utils")
        .short_unicode("deserialize_model_from_bytecode")
        .stack_global()
        .binbytes(&inner)
        .tuple1()
        .reduce()
        .stop()
        .bytes();
    let r = scan("m.pkl", b);
    assert!(has(&r, S::Dangerous, K::KerasCode), "{}", dump(&r));
    assert!(!has(&r, S::Dangerous, K::PickleCall));
}

#[test]
fn hdf5_model_config() {
    let mut h5 = b"\x89HDF\r\n\x1a\n\0\0\0\0model_config\0\0".to_vec();
    h5.extend_from_slice(br#"{"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda", "config": {}}]}}"#);
    h5.extend([0u8; 32]);
    let r = scan("m.h5", h5);
    assert!(has(&r, S::Dangerous, K::KerasCode), "{}", dump(&r));
    // A model_config that cannot be parsed is not clean.
    let r = scan(
        "m.h5",
        b"\x89HDF\r\n\x1a\n\0\0model_config\0{\"class_name\": broken".to_vec(),
    );
    assert!(has(&r, S::Error, K::Unparsable), "{}", dump(&r));
}

fn node(name: &str, op: &str, domain: Option<&str>) -> Vec<u8> {
    let mut n = Vec::new();
    pb::field_bytes(3, name.as_bytes(), &mut n);
    pb::field_bytes(4, op.as_bytes(), &mut n);
    if let Some(d) = domain {
        pb::field_bytes(7, d.as_bytes(), &mut n);
    }
    n
}

fn onnx(nodes: &[Vec<u8>], external: Option<&str>) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        pb::field_bytes(1, n, &mut g);
    }
    if let Some(loc) = external {
        let mut kv = Vec::new();
        pb::field_bytes(1, b"location", &mut kv);
        pb::field_bytes(2, loc.as_bytes(), &mut kv);
        let mut t = Vec::new();
        pb::field_bytes(8, b"w", &mut t);
        pb::field_bytes(13, &kv, &mut t);
        pb::field_varint(14, 1, &mut t);
        pb::field_bytes(5, &t, &mut g);
    }
    let mut m = Vec::new();
    pb::field_varint(1, 8, &mut m);
    pb::field_bytes(2, b"test", &mut m);
    pb::field_bytes(7, &g, &mut m);
    let mut opset = Vec::new();
    pb::field_varint(2, 17, &mut opset);
    pb::field_bytes(8, &opset, &mut m);
    m
}

#[test]
fn onnx_external_data_and_custom_domains() {
    let r = scan(
        "m.onnx",
        onnx(&[node("r", "Relu", None)], Some("weights.bin")),
    );
    assert_eq!(r.files[0].format, Format::Onnx, "{}", dump(&r));
    assert!(r.is_clean(), "{}", dump(&r));
    for loc in ["../../etc/passwd", "/etc/shadow", "a/../../b"] {
        let r = scan("m.onnx", onnx(&[node("r", "Relu", None)], Some(loc)));
        assert!(
            has(&r, S::Dangerous, K::OnnxExternalData),
            "{loc}: {}",
            dump(&r)
        );
    }
    let r = scan(
        "m.onnx",
        onnx(&[node("c", "Evil", Some("com.attacker"))], None),
    );
    assert!(has(&r, S::Suspicious, K::OnnxCustomOp), "{}", dump(&r));
}

#[cfg(unix)]
#[test]
fn onnx_external_data_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"x").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        dir.path().join("weights.bin"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m.onnx"),
        onnx(&[node("r", "Relu", None)], Some("weights.bin")),
    )
    .unwrap();
    let r = scan_path(&dir.path().join("m.onnx"), &ScanOptions::default()).unwrap();
    assert!(has(&r, S::Dangerous, K::OnnxExternalData), "{}", dump(&r));
}

#[test]
fn saved_model_file_ops() {
    let mut nd = Vec::new();
    pb::field_bytes(1, b"rf", &mut nd);
    pb::field_bytes(2, b"ReadFile", &mut nd);
    let mut graph = Vec::new();
    pb::field_bytes(1, &nd, &mut graph);
    let mut mg = Vec::new();
    pb::field_bytes(2, &graph, &mut mg);
    let mut sm = Vec::new();
    pb::field_varint(1, 1, &mut sm);
    pb::field_bytes(2, &mg, &mut sm);
    let r = scan("saved_model.pb", sm);
    assert_eq!(r.files[0].format, Format::SavedModel, "{}", dump(&r));
    assert!(has(&r, S::Dangerous, K::TensorflowOp), "{}", dump(&r));
}

fn gguf(template: &str, n_tensors_claimed: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors_claimed.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    let key = b"tokenizer.chat_template";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend(8u32.to_le_bytes());
    b.extend((template.len() as u64).to_le_bytes());
    b.extend_from_slice(template.as_bytes());
    b
}

#[test]
fn gguf_templates_and_counts() {
    let r = scan(
        "m.gguf",
        gguf("{% for m in messages %}{{ m['content'] }}{% endfor %}", 0),
    );
    assert!(r.is_clean(), "{}", dump(&r));
    let r = scan(
        "m.gguf",
        gguf("{{ cycler.__init__.__globals__.os.popen('id').read() }}", 0),
    );
    assert!(has(&r, S::Dangerous, K::GgufTemplate), "{}", dump(&r));
    let r = scan("m.gguf", gguf("x", u64::MAX));
    assert!(has(&r, S::Error, K::MalformedTensors), "{}", dump(&r));
}

#[test]
fn directory_scan_and_proof_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.pkl"), torch_state_dict()).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/b.safetensors"),
        safetensors(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            &[7],
        ),
    )
    .unwrap();
    let r = scan_path(dir.path(), &ScanOptions::default()).unwrap();
    assert_eq!(r.files.len(), 2);
    let proof = r.clean().expect("clean");
    let f = &r.files[0];
    assert!(proof.covers(&f.path, &f.sha256));
    assert!(!proof.covers(&f.path, "00"));

    let unhashed = scan_path(dir.path(), &ScanOptions::default().hash(false)).unwrap();
    assert!(
        unhashed.is_clean() && unhashed.clean().is_none() && unhashed.files[0].sha256.is_empty()
    );

    std::fs::write(dir.path().join("sub/c.bin"), Pickle::os_system("id")).unwrap();
    let r = scan_path(dir.path(), &ScanOptions::default()).unwrap();
    assert!(r.clean().is_none() && r.has_findings());
    assert_eq!(r.summary.flagged, 1);
}

#[test]
fn sarif_shape() {
    let r = scan("x.pkl", Pickle::os_system("id"));
    let v = serde_json::to_value(palisade_scan::sarif::to_sarif(&r)).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &v["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "palisade");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let res = &run["results"].as_array().unwrap()[0];
    let idx = res["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(rules[idx]["id"], res["ruleId"]);
    assert!(["error", "warning", "note"].contains(&res["level"].as_str().unwrap()));
    assert!(
        res["message"]["text"]
            .as_str()
            .unwrap()
            .contains("os.system")
    );
    assert_eq!(
        res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "x.pkl"
    );
}

#[test]
fn text_and_json_are_data_but_keras_configs_are_checked() {
    let r = scan("README.md", b"# A model\n\nTrained on MNIST.\n".to_vec());
    assert_eq!(r.files[0].format, Format::Text);
    assert!(r.is_clean(), "{}", dump(&r));
    let strict = palisade_scan::scan_bytes(
        "README.md".as_ref(),
        b"# A model\n".to_vec(),
        &ScanOptions::default().strict(true),
    );
    assert!(!strict.is_clean());
    let r = scan(
        "config.json",
        br#"{"class_name": "Lambda", "config": {}}"#.to_vec(),
    );
    assert_eq!(r.files[0].format, Format::Json);
    assert!(has(&r, S::Dangerous, K::KerasCode), "{}", dump(&r));
    // A text pickle is still a pickle, even when it breaks off after an import Python performs.
    let r = scan("notes.txt", b"cos\nsystem\n(S'id'\ntR.".to_vec());
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    let r = scan("notes.txt", b"cevilpkg.hooks\nrun\nzzz".to_vec());
    assert!(
        has(&r, S::Suspicious, K::PickleImport) && !r.is_clean(),
        "{}",
        dump(&r)
    );
    // Text that only starts like one is text.
    let r = scan(
        "NOTICE",
        b"copyright (c) 2026 the authors\nall rights reserved\n".to_vec(),
    );
    assert_eq!(r.files[0].format, Format::Text, "{}", dump(&r));
}

#[test]
fn torchscript_archive_classes_are_not_python_imports() {
    // data.pkl of a scripted module: a TorchScript class instantiated and given its state.
    let data = Pickle::new()
        .proto(2)
        .global("__torch__.___torch_mangle_0", "Net")
        .empty_tuple()
        .newobj()
        .empty_dict()
        .binunicode("training")
        .op(0x88)
        .setitem()
        .build()
        .stop()
        .bytes();
    let constants = Pickle::new().proto(2).empty_tuple().stop().bytes();
    let z = zip_of(
        &[
            ("net/data.pkl", &data),
            ("net/constants.pkl", &constants),
            ("net/code/__torch__.py", b"class Net(Module):\n  pass\n"),
        ],
        false,
    );
    let r = scan("net.pt", z);
    assert_eq!(r.files[0].format, Format::TorchZip);
    assert!(r.is_clean(), "{}", dump(&r));
    // The exemption is for TorchScript classes only, not for dunder attribute walks.
    let b = Pickle::new()
        .proto(2)
        .global("__torch__.x", "__globals__")
        .stop()
        .bytes();
    assert!(has(&scan("x", b), S::Dangerous, K::PickleImport));
}
