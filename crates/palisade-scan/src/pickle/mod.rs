//! Pickle streams: raw pickles (joblib, dill), several pickles in a row, and PyTorch's legacy
//! format (five pickles then raw storages).

pub(crate) mod policy;
pub(crate) mod vm;

use std::io::BufRead;

use crate::report::{FindingKind, Format, Severity};
use crate::sink::Sink;
use vm::{Input, Limits, Nested, Outcome, PickleError, StorageRef, Vm};

/// Everything the emulator is configured with: resource limits and user-allowed globals.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    pub(crate) limits: Limits,
    pub(crate) allow: policy::Allow,
}

/// `torch.serialization.MAGIC_NUMBER`, the first pickle of a legacy checkpoint.
const TORCH_LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// Most pickles read from one stream before giving up (fail closed).
const MAX_PICKLES: usize = 10_000;

/// What a pickle stream turned out to be.
#[derive(Debug)]
pub(crate) struct StreamResult {
    /// `Pickle` or `TorchLegacy`.
    pub(crate) format: Format,
    /// Models embedded as bytes, to be scanned by the caller.
    pub(crate) nested: Vec<Nested>,
    /// Whether the first pickle was emulated to its STOP.
    pub(crate) first_ok: bool,
    /// Storages the first pickle references through persistent ids (torch).
    pub(crate) storages: Vec<StorageRef>,
}

fn report_error(sink: &mut Sink, e: &PickleError, what: &str) {
    let offset = match e {
        PickleError::Truncated(o) => Some(*o),
        PickleError::Malformed { offset, .. } | PickleError::Limit { offset, .. } => Some(*offset),
        PickleError::Io(_) => None,
    };
    sink.error(FindingKind::Unparsable, offset, format!("{what}: {e}"));
}

/// Emulates one pickle; `Ok(None)` at end of stream.
fn one(
    input: &mut Input<'_>,
    sink: &mut Sink,
    policy: &Policy,
) -> Result<Option<Outcome>, PickleError> {
    // The input's positions are absolute within the stream, so the VM needs no base offset.
    Vm::new(sink, policy, 0).run(input)
}

/// Scans a pickle stream to its end. Every finding goes to `sink`; a stream that cannot be
/// emulated to its end gets an error finding.
pub(crate) fn scan_stream(r: &mut dyn BufRead, sink: &mut Sink, policy: &Policy) -> StreamResult {
    let mut input = Input::new(r);
    let mut result = StreamResult {
        format: Format::Pickle,
        nested: Vec::new(),
        first_ok: false,
        storages: Vec::new(),
    };
    let first = match one(&mut input, sink, policy) {
        Ok(Some(o)) => o,
        Ok(None) => {
            sink.error(FindingKind::Unparsable, Some(0), "empty pickle stream");
            return result;
        }
        Err(e) => {
            report_error(sink, &e, "pickle");
            return result;
        }
    };
    result.first_ok = true;
    if first.top_int == Some(TORCH_LEGACY_MAGIC) {
        result.format = Format::TorchLegacy;
        legacy(&mut input, sink, policy, &mut result);
        return result;
    }
    result.nested.extend(first.nested);
    result.storages = first.storages;
    // Data after STOP: `pickle.load` stops at STOP, but a loader that calls it again (or another
    // parser) reads on. Scan whatever follows as further pickles.
    let mut count = 1;
    loop {
        match input.at_eof() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                sink.error(
                    FindingKind::Unparsable,
                    Some(input.pos()),
                    format!("read error: {e}"),
                );
                break;
            }
        }
        let at = input.pos();
        if count >= MAX_PICKLES {
            sink.error(
                FindingKind::Unparsable,
                Some(at),
                "too many pickles in one stream",
            );
            break;
        }
        let before = sink.len();
        match one(&mut input, sink, policy) {
            Ok(Some(o)) => {
                count += 1;
                more_after_stop(
                    sink,
                    before,
                    at,
                    "a second pickle follows STOP (pickle.load reads only the first)",
                );
                result.nested.extend(o.nested);
            }
            Ok(None) => break,
            Err(_) => {
                // Keep only the differential; the VM's partial findings stay.
                sink.push(
                    Severity::Suspicious,
                    FindingKind::ParserDifferential,
                    Some(at),
                    format!("trailing data after STOP at offset {at} is not a pickle"),
                    Vec::new(),
                );
                break;
            }
        }
    }
    result
}

/// The rest of a legacy `torch.save` file after its magic number: protocol version, system info,
/// the object pickle, the storage keys, then each storage as a little-endian element count and
/// raw bytes. Every storage must be accounted for and the file must end exactly after the last.
fn legacy(input: &mut Input<'_>, sink: &mut Sink, policy: &Policy, result: &mut StreamResult) {
    let mut storages: Vec<StorageRef> = Vec::new();
    let mut keys: Option<Vec<String>> = None;
    for (i, what) in ["protocol version", "system info", "objects", "storage keys"]
        .iter()
        .enumerate()
    {
        match one(input, sink, policy) {
            Ok(Some(o)) => {
                if i == 0 && o.top_int != Some(1001) {
                    sink.push(
                        Severity::Suspicious,
                        FindingKind::ParserDifferential,
                        None,
                        "legacy torch file with an unexpected protocol version",
                        Vec::new(),
                    );
                }
                storages.extend(o.storages);
                result.nested.extend(o.nested);
                if i == 3 {
                    keys = o.top_strings;
                }
            }
            Ok(None) => {
                sink.error(
                    FindingKind::Unparsable,
                    Some(input.pos()),
                    format!("legacy torch file ends before its {what} pickle"),
                );
                return;
            }
            Err(e) => {
                report_error(sink, &e, &format!("legacy torch {what} pickle"));
                return;
            }
        }
    }
    let Some(keys) = keys else {
        sink.error(
            FindingKind::Unparsable,
            Some(input.pos()),
            "legacy torch storage keys are not a list of strings",
        );
        return;
    };
    for key in keys {
        let Some(s) = storages.iter().find(|s| s.key == key) else {
            sink.error(
                FindingKind::Unparsable,
                Some(input.pos()),
                format!("legacy torch storage key {key:?} has no storage"),
            );
            return;
        };
        let Some(elem) = policy::torch_storage_element_size(&s.type_name) else {
            sink.error(
                FindingKind::Unparsable,
                Some(input.pos()),
                format!("unknown torch storage type {}", s.type_name),
            );
            return;
        };
        let at = input.pos();
        let mut n = [0u8; 8];
        if read_exact(input, &mut n).is_err() {
            sink.error(
                FindingKind::Unparsable,
                Some(at),
                format!("legacy torch storage {key:?} is truncated"),
            );
            return;
        }
        let numel = u64::from_le_bytes(n);
        let Some(len) = numel.checked_mul(elem) else {
            sink.error(
                FindingKind::Unparsable,
                Some(at),
                format!("legacy torch storage {key:?} size overflows"),
            );
            return;
        };
        if let Err(e) = input.skip(len) {
            report_error(sink, &e, &format!("legacy torch storage {key:?}"));
            return;
        }
    }
    match input.at_eof() {
        Ok(true) => {}
        Ok(false) => {
            let at = input.pos();
            let before = sink.len();
            // Anything after the last storage is never read by torch.load: scan it anyway.
            match one(input, sink, policy) {
                Ok(Some(_)) => more_after_stop(
                    sink,
                    before,
                    at,
                    "a pickle follows the last legacy torch storage",
                ),
                _ => sink.push(
                    Severity::Suspicious,
                    FindingKind::ParserDifferential,
                    Some(at),
                    "trailing data after the last legacy torch storage",
                    Vec::new(),
                ),
            }
        }
        Err(e) => sink.error(
            FindingKind::Unparsable,
            Some(input.pos()),
            format!("read error: {e}"),
        ),
    }
}

/// Reports a pickle found where the loader stops reading: dangerous if it holds something
/// dangerous, suspicious otherwise.
fn more_after_stop(sink: &mut Sink, before: usize, at: u64, what: &str) {
    let sev = if sink.any_dangerous_since(before) {
        Severity::Dangerous
    } else {
        Severity::Suspicious
    };
    sink.push(
        sev,
        FindingKind::ParserDifferential,
        Some(at),
        format!("{what}, at offset {at}"),
        Vec::new(),
    );
}

fn read_exact(input: &mut Input<'_>, buf: &mut [u8]) -> Result<(), PickleError> {
    let start = input.pos();
    let mut filled = 0;
    while filled < buf.len() {
        let avail = input.peek()?;
        if avail.is_empty() {
            return Err(PickleError::Truncated(start));
        }
        let n = avail.len().min(buf.len() - filled);
        buf[filled..filled + n].copy_from_slice(&avail[..n]);
        filled += n;
        input.skip(n as u64)?;
    }
    Ok(())
}

/// Whether `head` (the first bytes of something) looks like a pickle: a PROTO opcode with a
/// known protocol, or a protocol-0/1 opcode that commonly starts one.
pub(crate) fn looks_like_pickle(head: &[u8]) -> bool {
    match head {
        [0x80, p, ..] => *p <= 5,
        [
            b'(' | b'c' | b']' | b'}' | b')' | b'N' | b'I' | b'S' | b'V' | b'U' | b'X' | b'K'
            | b'J' | b'l' | b'd',
            ..,
        ] => true,
        _ => false,
    }
}
