//! Keras model configs: `config.json` in a `.keras` archive, the `model_config` attribute of a
//! legacy `.h5`, and the metadata JSON inside a SavedModel. A config runs code through Lambda
//! layers (marshalled bytecode) and through references to objects outside Keras (`module`,
//! `registered_name`, serialized functions), at any depth.

use std::io::{BufReader, Read};

use serde_json::Value;

use crate::blob::{Blob, BlobReader};
use crate::pickle::policy;
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

/// Module roots whose objects a Keras config may name.
const KERAS_MODULES: &[&str] = &[
    "keras",
    "tf_keras",
    "keras_core",
    "keras_nlp",
    "keras_cv",
    "keras_hub",
];

/// Checks a parsed Keras config, pushing findings for code-running constructs.
pub(crate) fn check_config(v: &Value, sink: &mut Sink) {
    let mut path = String::from("$");
    walk(v, &mut path, sink, 0);
}

fn walk(v: &Value, path: &mut String, sink: &mut Sink, depth: usize) {
    if depth > 200 {
        sink.error(
            FindingKind::Unparsable,
            None,
            format!("{path}: config nested too deeply"),
        );
        return;
    }
    match v {
        Value::Object(m) => {
            let class = m.get("class_name").and_then(Value::as_str);
            let module = m.get("module").and_then(Value::as_str);
            let registered = m.get("registered_name").and_then(Value::as_str);
            if let Some(c) = class {
                if c == "Lambda" || c == "__lambda__" {
                    let detail = m
                        .get("config")
                        .and_then(|c| c.get("function"))
                        .map(|f| {
                            let s = f.to_string();
                            s.chars().take(120).collect::<String>()
                        })
                        .unwrap_or_default();
                    sink.push(
                        Severity::Dangerous,
                        FindingKind::KerasCode,
                        None,
                        format!("{c} layer at {path}: runs serialized Python code when the model is loaded {detail}"),
                        vec![path.clone()],
                    );
                } else if c == "TFOpLambda" || c == "SlicingOpLambda" {
                    sink.push(
                        Severity::Info,
                        FindingKind::KerasCode,
                        None,
                        format!("{c} at {path} calls a TensorFlow op by name"),
                        vec![path.clone()],
                    );
                }
            }
            if let Some(module) = module {
                let top = module.split('.').next().unwrap_or(module);
                if !KERAS_MODULES.contains(&top) {
                    let name = class.map(|c| format!(".{c}")).unwrap_or_default();
                    let (sev, why) = if policy::dangerous_import(module, class.unwrap_or(""))
                        || module == "builtins"
                        || class == Some("function")
                    {
                        (
                            Severity::Dangerous,
                            "reaches the system or Python internals",
                        )
                    } else {
                        (
                            Severity::Suspicious,
                            "is a custom object outside Keras (its code is imported on load)",
                        )
                    };
                    sink.push(
                        Severity::max(sev, Severity::Suspicious),
                        FindingKind::KerasCode,
                        None,
                        format!("{path} references {module}{name}, which {why}"),
                        vec![path.clone()],
                    );
                }
            }
            if let Some(r) = registered
                && module.is_none()
                && (r.contains('>') || r.contains('.'))
                && !r.starts_with("keras")
            {
                sink.push(
                    Severity::Suspicious,
                    FindingKind::KerasCode,
                    None,
                    format!("{path} uses the registered custom object {r:?}"),
                    vec![path.clone()],
                );
            }
            for (k, x) in m {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                walk(x, path, sink, depth + 1);
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(x, path, sink, depth + 1);
                path.truncate(len);
            }
        }
        Value::String(s) if s.trim_start().starts_with('{') && s.contains("class_name") => {
            // Configs nested as JSON strings (SavedModel metadata).
            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                walk(&inner, path, sink, depth + 1);
            }
        }
        _ => {}
    }
}

/// Scans a `.keras` `config.json`.
pub(crate) fn scan_config_blob(b: &dyn Blob, sink: &mut Sink) {
    let mut text = Vec::new();
    if let Err(e) = BlobReader::new(b, 0, b.len())
        .take(64 << 20)
        .read_to_end(&mut text)
    {
        sink.error(
            FindingKind::Unparsable,
            None,
            format!("cannot read config: {e}"),
        );
        return;
    }
    match serde_json::from_slice::<Value>(&text) {
        Ok(v) => check_config(&v, sink),
        Err(e) => sink.error(
            FindingKind::Unparsable,
            None,
            format!("config.json is not JSON: {e}"),
        ),
    }
}

/// Scans an HDF5 file for a Keras `model_config` (legacy `.h5`). HDF5 stores attribute values
/// uncompressed, so the JSON config is found in the raw bytes and parsed; a file that names a
/// `model_config` attribute but yields no parsable config is unscannable.
pub(crate) fn scan_hdf5(blob: &dyn Blob, sink: &mut Sink) {
    let (found_attr, parsed) = scan_embedded_configs(blob, sink, b"model_config");
    if found_attr && parsed == 0 {
        sink.error(
            FindingKind::Unparsable,
            None,
            "HDF5 file names a model_config attribute but no config could be parsed",
        );
    }
}

/// Finds Keras configs (JSON objects with a `class_name`) embedded anywhere in `blob` and checks
/// them. Returns whether `marker` occurs in the blob and how many configs were parsed.
pub(crate) fn scan_embedded_configs(
    blob: &dyn Blob,
    sink: &mut Sink,
    marker: &[u8],
) -> (bool, usize) {
    const KEY: &[u8] = b"\"class_name\"";
    // Read straight into `chunk`: a BufReader in between would only add a copy (and zero its
    // whole buffer before the first read).
    let mut r = BlobReader::new(blob, 0, blob.len());
    let mut window: Vec<u8> = Vec::new();
    let mut base = 0u64;
    let mut found_attr = false;
    let mut parsed = 0usize;
    let mut skip_until = 0u64;
    let mut chunk = vec![0u8; 1 << 16];
    // Configs are searched in a sliding window; a config longer than the window's overlap is
    // read from the blob directly.
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                sink.error(FindingKind::Unparsable, None, format!("read error: {e}"));
                return (found_attr, parsed);
            }
        };
        window.extend_from_slice(&chunk[..n]);
        if memfind(&window, marker).is_some() {
            found_attr = true;
        }
        let mut i = 0;
        while let Some(p) = memfind(&window[i..], KEY) {
            let at = i + p;
            i = at + KEY.len();
            if base + (at as u64) < skip_until {
                continue;
            }
            if let Some(start) = window[..at].iter().rposition(|&c| !c.is_ascii_whitespace())
                && window[start] == b'{'
                && let Some((v, raw_len)) = extract_json(blob, base + start as u64)
            {
                parsed += 1;
                check_config(&v, sink);
                // Nested objects were walked with this one.
                skip_until = base + start as u64 + raw_len;
            }
        }
        // Keep a tail so a key split across reads is still found.
        let keep = 64.min(window.len());
        base += (window.len() - keep) as u64;
        window.drain(..window.len() - keep);
    }
    (found_attr, parsed)
}

/// Reads a JSON object starting at `at` (string-aware brace matching, up to 64 MiB).
fn extract_json(blob: &dyn Blob, at: u64) -> Option<(Value, u64)> {
    let mut r = BufReader::new(BlobReader::new(blob, at, blob.len()));
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc) = (0i64, false, false);
    let mut byte = [0u8; 1];
    while out.len() < 64 << 20 {
        if r.read(&mut byte).ok()? == 0 {
            return None;
        }
        let c = byte[0];
        out.push(c);
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return serde_json::from_slice(&out)
                        .ok()
                        .map(|v| (v, out.len() as u64));
                }
            }
            _ => {}
        }
    }
    None
}

pub(crate) fn memfind(h: &[u8], n: &[u8]) -> Option<usize> {
    if n.is_empty() {
        return None;
    }
    memchr::memmem::find(h, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &str) -> Vec<Severity> {
        let mut s = Sink::new();
        check_config(&serde_json::from_str(v).unwrap(), &mut s);
        s.findings.iter().map(|f| f.severity).collect()
    }

    #[test]
    fn lambda_at_depth_and_foreign_modules() {
        let deep = r#"{"class_name":"Functional","config":{"layers":[{"class_name":"Sequential","config":{"layers":[{"class_name":"Lambda","config":{"function":"abc"}}]}}]}}"#;
        assert_eq!(kinds(deep), vec![Severity::Dangerous]);
        let builtins = r#"{"module":"builtins","class_name":"function","config":"exec","registered_name":"function"}"#;
        assert_eq!(kinds(builtins), vec![Severity::Dangerous]);
        let custom = r#"{"module":"mylib.layers","class_name":"Foo","config":{}}"#;
        assert_eq!(kinds(custom), vec![Severity::Suspicious]);
        let fine = r#"{"module":"keras.layers","class_name":"Dense","config":{"units":3}}"#;
        assert!(kinds(fine).is_empty());
    }
}
