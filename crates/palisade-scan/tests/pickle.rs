//! The pickle VM and its policy, one test per evasion class, on samples built opcode by opcode.

mod util;

use palisade_scan::{FileStatus, FindingKind as K, Format, Severity as S};
use util::{Pickle, dump, has, scan, torch_state_dict};

#[test]
fn torch_state_dict_is_clean() {
    let r = scan("sd.pkl", torch_state_dict());
    assert!(r.is_clean(), "{}", dump(&r));
    assert!(r.clean().is_some());
}

#[test]
fn plain_data_in_every_protocol_is_clean() {
    let p0 = Pickle::new().raw(b"(lp0\nI1\naI2\na.").bytes();
    let p4 = Pickle::new()
        .proto(4)
        .frame(7)
        .empty_list()
        .memoize()
        .mark()
        .int1(1)
        .int1(2)
        .appends()
        .stop()
        .bytes();
    for (name, b) in [("p0", p0), ("p4", p4)] {
        let r = scan(name, b);
        assert!(r.is_clean(), "{name}: {}", dump(&r));
    }
}

#[test]
fn call_outside_the_allowlist_is_dangerous_with_its_arguments() {
    let r = scan("x.pkl", Pickle::os_system("id"));
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    let call = r.files[0]
        .findings
        .iter()
        .find(|f| f.kind == K::PickleCall)
        .unwrap();
    assert!(
        call.message.contains("os.system(\"id\")"),
        "{}",
        call.message
    );
    assert!(call.offset.is_some());
    assert_eq!(r.files[0].status, FileStatus::Flagged);
}

#[test]
fn python2_names_are_mapped_before_the_policy() {
    let b = Pickle::new()
        .global("__builtin__", "eval")
        .string("1")
        .tuple1()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(
        r.files[0]
            .findings
            .iter()
            .any(|f| f.message.contains("builtins.eval")),
        "{}",
        dump(&r)
    );
}

#[test]
fn stack_global_fed_by_protocol0_strings() {
    // STRING and UNICODE operands (not SHORT_BINUNICODE) feeding STACK_GLOBAL.
    let b = Pickle::new()
        .string("os")
        .unicode("sy\\u0073tem")
        .stack_global()
        .string("id")
        .tuple1()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    assert!(
        r.files[0]
            .findings
            .iter()
            .any(|f| f.message.contains("os.system"))
    );
}

#[test]
fn memo_aliasing_is_followed() {
    // "os" and "system" are memoized under innocent values first, then overwritten, then fetched.
    let b = Pickle::new()
        .proto(4)
        .short_unicode("collections")
        .put(0)
        .pop()
        .short_unicode("os")
        .put(0)
        .pop()
        .short_unicode("system")
        .put(1)
        .pop()
        .get(0)
        .get(1)
        .stack_global()
        .short_unicode("id")
        .tuple1()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(
        r.files[0]
            .findings
            .iter()
            .any(|f| f.message.contains("os.system")),
        "{}",
        dump(&r)
    );
}

#[test]
fn computed_stack_global_operands_are_dangerous() {
    // The module name is the result of a call: no static resolution possible.
    let b = Pickle::new()
        .proto(4)
        .global("builtins", "str")
        .short_unicode("os")
        .tuple1()
        .reduce()
        .short_unicode("system")
        .stack_global()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(
        has(&r, S::Dangerous, K::PickleDynamicImport),
        "{}",
        dump(&r)
    );
}

#[test]
fn getattr_chain_reports_the_call_chain() {
    // getattr(__import__("os"), "system")("id")
    let b = Pickle::new()
        .proto(2)
        .global("builtins", "getattr")
        .global("builtins", "__import__")
        .binunicode("os")
        .tuple1()
        .reduce()
        .binunicode("system")
        .tuple2()
        .reduce()
        .binunicode("id")
        .tuple1()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    let last = r.files[0]
        .findings
        .iter()
        .rfind(|f| f.kind == K::PickleCall)
        .unwrap();
    assert!(
        last.chain
            .iter()
            .any(|c| c.contains("import builtins.getattr")),
        "{}",
        dump(&r)
    );
    assert!(
        last.chain.iter().any(|c| c.contains("__import__")),
        "{}",
        dump(&r)
    );
}

#[test]
fn indirect_import_primitives() {
    for (m, n) in [
        ("importlib", "import_module"),
        ("pkgutil", "resolve_name"),
        ("torch", "__builtins__"),
        ("operator", "attrgetter"),
    ] {
        let b = Pickle::new()
            .proto(2)
            .global(m, n)
            .binunicode("os")
            .tuple1()
            .reduce()
            .stop()
            .bytes();
        let r = scan("x", b);
        assert!(
            has(&r, S::Dangerous, K::PickleImport) && has(&r, S::Dangerous, K::PickleCall),
            "{m}.{n}: {}",
            dump(&r)
        );
    }
    // Attribute walks through an allowlisted module (protocol-4 dotted names).
    let b = Pickle::new()
        .proto(4)
        .short_unicode("torch._utils")
        .short_unicode("_rebuild_tensor.__globals__")
        .stack_global()
        .stop()
        .bytes();
    assert!(has(&scan("x", b), S::Dangerous, K::PickleImport));
}

#[test]
fn build_on_a_module_is_dangerous_and_taints_the_allowlist() {
    // torch._utils.__dict__.update({"_rebuild_tensor": eval}) then "_rebuild_tensor"(...).
    let b = Pickle::new()
        .proto(4)
        .short_unicode("torch")
        .short_unicode("_utils")
        .stack_global()
        .none()
        .empty_dict()
        .short_unicode("_rebuild_tensor")
        .global("builtins", "eval")
        .setitem()
        .tuple2()
        .build()
        .pop()
        .global("torch._utils", "_rebuild_tensor")
        .short_unicode("print(1)")
        .tuple1()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(has(&r, S::Dangerous, K::PickleMutation), "{}", dump(&r));
    let tainted = r.files[0]
        .findings
        .iter()
        .any(|f| f.kind == K::PickleCall && f.message.contains("_rebuild_tensor"));
    assert!(tainted, "{}", dump(&r));
}

#[test]
fn implicit_method_calls_on_imported_objects() {
    // APPENDS on a global calls its `extend`.
    let b = Pickle::new()
        .proto(2)
        .global("collections", "OrderedDict")
        .mark()
        .int1(1)
        .appends()
        .stop()
        .bytes();
    assert!(has(&scan("x", b), S::Dangerous, K::PickleMutation));
}

#[test]
fn ext_opcodes_are_unresolvable() {
    let b = Pickle::new()
        .proto(2)
        .raw(&[0x82, 7])
        .empty_tuple()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(
        has(&r, S::Suspicious, K::PickleDynamicImport),
        "{}",
        dump(&r)
    );
    assert!(has(&r, S::Dangerous, K::PickleCall));
}

#[test]
fn opcode_straddling_a_frame_boundary() {
    // FRAME says 3 bytes, but the SHORT_BINUNICODE that starts inside it is 8 bytes long.
    let b = Pickle::new()
        .proto(4)
        .frame(3)
        .short_unicode("benign")
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(
        has(&r, S::Suspicious, K::ParserDifferential),
        "{}",
        dump(&r)
    );
}

#[test]
fn second_pickle_after_stop_is_scanned() {
    let mut b = Pickle::new().proto(2).empty_list().stop().bytes();
    b.extend(Pickle::os_system("id"));
    let r = scan("x", b);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    assert!(has(&r, S::Dangerous, K::ParserDifferential));
}

#[test]
fn trailing_garbage_is_reported() {
    let mut b = Pickle::new().proto(2).empty_list().stop().bytes();
    b.extend(b"\xff\xfe\xfd");
    let r = scan("x", b);
    assert!(
        has(&r, S::Suspicious, K::ParserDifferential),
        "{}",
        dump(&r)
    );
    assert!(!r.is_clean());
}

#[test]
fn truncated_pickle_is_never_clean() {
    let mut b = Pickle::os_system("id");
    b.truncate(b.len() - 3);
    // The import already happened before the truncation: reported, and the file is incomplete.
    let r = scan("x", b);
    assert!(has(&r, S::Error, K::Unparsable), "{}", dump(&r));
    assert!(!r.files[0].complete && !r.is_clean() && r.clean().is_none());

    let r = scan("x", Pickle::new().proto(2).empty_list().bytes());
    assert_eq!(r.files[0].status, FileStatus::Unscannable, "{}", dump(&r));
}

#[test]
fn higher_order_allowlisted_functions_check_their_arguments() {
    // torch._tensor._rebuild_from_type_v2(os.system, ...) calls its first argument.
    let b = Pickle::new()
        .proto(2)
        .global("torch._tensor", "_rebuild_from_type_v2")
        .mark()
        .global("os", "system")
        .global("torch", "Tensor")
        .mark()
        .binunicode("id")
        .tuple()
        .empty_dict()
        .tuple()
        .reduce()
        .stop()
        .bytes();
    let r = scan("x", b);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
}

#[test]
fn legacy_torch_checkpoint_is_parsed_to_the_last_storage() {
    let magic = Pickle::new()
        .proto(2)
        .raw(&[
            0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ])
        .stop()
        .bytes();
    let version = Pickle::new()
        .proto(2)
        .raw(&[b'M', 0xe9, 0x03])
        .stop()
        .bytes();
    let info = Pickle::new().proto(2).empty_dict().stop().bytes();
    let keys = Pickle::new()
        .proto(2)
        .mark()
        .binunicode("0")
        .op(b'l')
        .stop()
        .bytes();
    let mut file = [magic, version, info, torch_state_dict(), keys].concat();
    file.extend(4u64.to_le_bytes());
    file.extend([0u8; 16]);
    let r = scan("legacy.pt", file.clone());
    assert!(r.is_clean(), "{}", dump(&r));
    assert_eq!(r.files[0].format, Format::TorchLegacy);

    // A payload appended after the last storage is found.
    file.extend(Pickle::os_system("id"));
    let r = scan("legacy.pt", file.clone());
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));

    // A storage cut short is an error.
    let short = file[..file.len() - Pickle::os_system("id").len() - 4].to_vec();
    let r = scan("legacy.pt", short);
    assert!(has(&r, S::Error, K::Unparsable), "{}", dump(&r));
}

#[test]
fn resource_limits_fail_closed_without_panicking() {
    // 200k nested MARKs, an unbounded memo index, a LONG4 of absurd length.
    let marks = Pickle::new().raw(&vec![b'('; 200_000]).stop().bytes();
    assert!(!scan("x", marks).is_clean());
    let b = Pickle::new()
        .proto(2)
        .raw(&[0x8b, 0xff, 0xff, 0xff, 0x7f])
        .stop()
        .bytes();
    assert!(!scan("x", b).is_clean());
    let b = Pickle::new()
        .proto(4)
        .raw(&[0x8e])
        .raw(&u64::MAX.to_le_bytes())
        .stop()
        .bytes();
    assert!(!scan("x", b).is_clean());
}

/// A joblib `NumpyArrayWrapper` for an array of `count` elements of `dtype`, as joblib writes it
/// (the array bytes follow, outside the pickle opcodes).
fn joblib_wrapper(dtype: &str, count: u8) -> Pickle {
    Pickle::new()
        .proto(4)
        .short_unicode("joblib.numpy_pickle")
        .short_unicode("NumpyArrayWrapper")
        .stack_global()
        .empty_tuple()
        .newobj()
        .empty_dict()
        .mark()
        .short_unicode("shape")
        .int1(count)
        .tuple1()
        .short_unicode("dtype")
        .short_unicode("numpy")
        .short_unicode("dtype")
        .stack_global()
        .short_unicode(dtype)
        .op(0x89)
        .op(0x88)
        .op(0x87)
        .reduce()
        .short_unicode("numpy_array_alignment_bytes")
        .int1(16)
        .setitems()
        .build()
}

#[test]
fn joblib_arrays_are_skipped_and_object_arrays_emulated() {
    // 3 float64 = 24 raw bytes that look like a payload to a parser that reads them as opcodes.
    let mut raw = b"cos\nsystem\n(S'id'\ntR.".to_vec();
    raw.resize(24, b'.');
    let b = joblib_wrapper("f8", 3)
        .raw(&[2, 0xff, 0xff])
        .raw(&raw)
        .stop()
        .bytes();
    let r = scan("m.joblib", b);
    assert!(r.is_clean(), "{}", dump(&r));

    // An object array is a nested pickle, emulated like any other.
    let b = joblib_wrapper("O8", 1)
        .raw(&Pickle::os_system("id"))
        .stop()
        .bytes();
    let r = scan("m.joblib", b);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));

    // Array bytes cut short.
    let b = joblib_wrapper("f8", 3).raw(&[0]).raw(&[0; 10]).bytes();
    assert!(!scan("m.joblib", b).is_clean());
}

#[test]
fn compressed_joblib_streams() {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&Pickle::os_system("id")).unwrap();
    let r = scan("m.joblib", z.finish().unwrap());
    assert_eq!(r.files[0].format, Format::Compressed);
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));

    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    g.write_all(&torch_state_dict()).unwrap();
    assert!(scan("m.joblib", g.finish().unwrap()).is_clean());

    // A stream that is not what its header says.
    assert!(!scan("m.joblib", b"\x1f\x8b\x08\x00garbage".to_vec()).is_clean());
}

#[test]
fn user_allowlist_extends_the_policy() {
    use palisade_scan::{ScanOptions, scan_bytes};
    // A scikit-learn estimator: instantiated through NEWOBJ, then its state set by BUILD.
    let b = Pickle::new()
        .proto(4)
        .short_unicode("sklearn.linear_model._logistic")
        .short_unicode("LogisticRegression")
        .stack_global()
        .empty_tuple()
        .newobj()
        .empty_dict()
        .build()
        .stop()
        .bytes();
    let r = scan("m.pkl", b.clone());
    assert!(has(&r, S::Dangerous, K::PickleCall), "{}", dump(&r));
    let opts = ScanOptions::default().allow(vec!["sklearn.*".into()]);
    let r = scan_bytes(std::path::Path::new("m.pkl"), b.clone(), &opts);
    assert!(r.is_clean(), "{}", dump(&r));
    // The allowance is exactly what was asked for.
    let opts = ScanOptions::default().allow(vec![
        "sklearn.linear_model._logistic.LogisticRegressionCV".into(),
    ]);
    assert!(!scan_bytes(std::path::Path::new("m.pkl"), b, &opts).is_clean());
}
