//! safetensors, strictly: only the header is read (the tensors are never loaded), and every
//! offset is checked against the file size.
//!
//! Checks: header length within bounds; the header is one JSON object without duplicate keys;
//! each tensor has a known dtype, a shape and `data_offsets` `[begin, end]`; `end - begin` equals
//! `prod(shape) * size(dtype)` with no overflow; the spans, sorted, start at 0, are contiguous and
//! non-overlapping and end exactly at the end of the file; `__metadata__` maps strings to strings.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::blob::{Blob, read_exact_at};
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

/// The largest header accepted (the reference implementation's limit).
pub(crate) const MAX_HEADER: u64 = 100_000_000;

/// Size in bits of one element of a safetensors dtype.
fn dtype_bits(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// A JSON object kept in order, with duplicate keys preserved so they can be rejected.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// One tensor's span in the data buffer.
#[derive(Debug)]
struct Span {
    name: String,
    begin: u64,
    end: u64,
}

/// Checks a safetensors header; returns the problems found (empty: valid).
pub(crate) fn check(blob: &dyn Blob) -> Result<(), String> {
    let len = blob.len();
    let n = u64::from_le_bytes(
        read_exact_at(blob, 0, 8)
            .map_err(|_| "shorter than 8 bytes".to_string())?
            .try_into()
            .map_err(|_| "header length".to_string())?,
    );
    if n > MAX_HEADER {
        return Err(format!("header length {n} exceeds {MAX_HEADER}"));
    }
    if n.checked_add(8).is_none_or(|e| e > len) {
        return Err(format!(
            "header length {n} runs past the end of the file ({len} bytes)"
        ));
    }
    let header = read_exact_at(blob, 8, n as usize).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&header).map_err(|_| "header is not UTF-8".to_string())?;
    if !text.starts_with('{') {
        return Err("header does not start with '{'".into());
    }
    let entries: Entries = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut names = std::collections::HashSet::new();
    let buffer = len - 8 - n;
    let mut spans = Vec::new();
    for (name, v) in entries.0 {
        if !names.insert(name.clone()) {
            return Err(format!("duplicate key {name:?}"));
        }
        if name == "__metadata__" {
            let ok = v
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string()));
            if !ok {
                return Err("__metadata__ is not a map of strings to strings".into());
            }
            continue;
        }
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{name}: tensor info is not an object"))?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "dtype" | "shape" | "data_offsets") {
                return Err(format!("{name}: unknown field {k:?}"));
            }
        }
        let dtype = obj
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| format!("{name}: no dtype"))?;
        let bits = dtype_bits(dtype).ok_or_else(|| format!("{name}: unknown dtype {dtype:?}"))?;
        let shape = obj
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("{name}: no shape"))?;
        let mut numel: u64 = 1;
        for d in shape {
            let d = d
                .as_u64()
                .ok_or_else(|| format!("{name}: shape entries must be non-negative integers"))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| format!("{name}: shape overflows"))?;
        }
        let total_bits = numel
            .checked_mul(bits)
            .ok_or_else(|| format!("{name}: size overflows"))?;
        if total_bits % 8 != 0 {
            return Err(format!(
                "{name}: {numel} elements of {bits} bits is not a whole number of bytes"
            ));
        }
        let size = total_bits / 8;
        let offs = obj
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .ok_or_else(|| format!("{name}: no data_offsets"))?;
        let (begin, end) = match offs.as_slice() {
            [b, e] => (
                b.as_u64()
                    .ok_or_else(|| format!("{name}: bad data_offsets"))?,
                e.as_u64()
                    .ok_or_else(|| format!("{name}: bad data_offsets"))?,
            ),
            _ => return Err(format!("{name}: data_offsets must be [begin, end]")),
        };
        if end < begin {
            return Err(format!("{name}: data_offsets end before they begin"));
        }
        if end - begin != size {
            return Err(format!(
                "{name}: span of {} bytes but dtype × shape is {size}",
                end - begin
            ));
        }
        if end > buffer {
            return Err(format!(
                "{name}: data ends at {end}, past the {buffer}-byte buffer"
            ));
        }
        spans.push(Span { name, begin, end });
    }
    spans.sort_by_key(|s| (s.begin, s.end));
    let mut at = 0u64;
    for s in &spans {
        if s.begin < at {
            return Err(format!("{}: overlaps the previous tensor", s.name));
        }
        if s.begin > at {
            return Err(format!(
                "{}: gap of {} bytes before it (hidden data)",
                s.name,
                s.begin - at
            ));
        }
        at = s.end;
    }
    if at != buffer {
        return Err(format!(
            "{} bytes after the last tensor (hidden data)",
            buffer - at
        ));
    }
    Ok(())
}

/// Scans a safetensors file.
pub(crate) fn scan(blob: &dyn Blob, sink: &mut Sink) {
    if let Err(e) = check(blob) {
        sink.push(
            Severity::Error,
            FindingKind::MalformedTensors,
            Some(0),
            format!("safetensors: {e}"),
            Vec::new(),
        );
    }
}
