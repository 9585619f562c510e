//! One module per format family.

pub(crate) mod archive;
pub(crate) mod gguf;
pub(crate) mod keras;
pub(crate) mod numpy;
pub(crate) mod onnx;
pub(crate) mod proto;
pub(crate) mod safetensors;
pub(crate) mod tf;

use crate::blob::{Blob, read_exact_at};
use crate::detect::Ctx;
use crate::report::{FindingKind, Format, Severity};
use crate::sink::Sink;
use proto::Field;

/// The magic number at the end of a LevelDB-style table (TensorFlow checkpoint index).
const SSTABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;

/// Formats without a magic number at the start, recognised by structure: TensorFlow checkpoint
/// indexes (a footer magic), and protobuf messages whose top-level fields match ONNX, SavedModel,
/// Keras metadata or a SavedModel fingerprint. Scans what it recognises.
pub(crate) fn probe(blob: &dyn Blob, head: &[u8], sink: &mut Sink, ctx: &Ctx<'_>) -> Format {
    let len = blob.len();
    if len >= 48
        && let Ok(tail) = read_exact_at(blob, len - 8, 8)
        && u64::from_le_bytes(tail.try_into().unwrap_or([0; 8])) == SSTABLE_MAGIC
    {
        sink.push(
            Severity::Info,
            FindingKind::UnknownFormat,
            None,
            "TensorFlow checkpoint index (tensor names and offsets; no code)",
            Vec::new(),
        );
        return Format::TfCheckpointIndex;
    }
    // Protobuf messages start with a small field key.
    if !matches!(head.first(), Some(0x08 | 0x0a | 0x10 | 0x12 | 0x1a)) {
        return Format::Unknown;
    }
    let Some(fields) = proto::top_level(blob, 1 << 20) else {
        return Format::Unknown;
    };
    let has = |n: u64, len: bool| {
        fields
            .iter()
            .any(|(k, f)| *k == n && matches!(f, Field::Len { .. }) == len)
    };
    let only = |allowed: &[u64]| fields.iter().all(|(k, _)| allowed.contains(k));
    let varint = |k: u64| {
        fields
            .iter()
            .filter(|(n, _)| *n == k)
            .all(|(_, f)| matches!(f, Field::Varint(_)))
    };
    let lendel = |k: u64| {
        fields
            .iter()
            .filter(|(n, _)| *n == k)
            .all(|(_, f)| matches!(f, Field::Len { .. }))
    };
    if !fields.is_empty()
        && only(&[1, 2, 3, 4, 5, 6, 7])
        && (1..=5).all(varint)
        && lendel(6)
        && lendel(7)
    {
        sink.push(
            Severity::Info,
            FindingKind::UnknownFormat,
            None,
            "SavedModel fingerprint (hashes only; no code)",
            Vec::new(),
        );
        return Format::TfFingerprint;
    }
    if has(1, false)
        && has(7, true)
        && only(&[1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25])
        && varint(1)
        && varint(5)
        && [2, 3, 4, 6, 7, 8, 14, 20, 25].into_iter().all(lendel)
    {
        onnx::scan(blob, sink, ctx);
        return Format::Onnx;
    }
    if has(2, true) && only(&[1, 2]) {
        tf::scan_saved_model(blob, sink);
        return Format::SavedModel;
    }
    if has(1, true) && only(&[1]) {
        tf::scan_keras_metadata(blob, sink);
        return Format::KerasMetadata;
    }
    Format::Unknown
}

/// Whether `name` is a TensorFlow checkpoint data shard (`variables.data-00000-of-00001`).
fn tf_data_shard_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("variables.data-") else {
        return false;
    };
    let mut p = rest.split("-of-");
    matches!((p.next(), p.next(), p.next()), (Some(a), Some(b), None)
        if a.len() == 5 && b.len() == 5 && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()))
}

/// A checkpoint data shard has no format of its own (raw tensor bytes addressed by the index):
/// it is recognised by its name together with a sibling `variables.index` that is a real
/// checkpoint index.
pub(crate) fn tf_data_shard(sink: &mut Sink, ctx: &Ctx<'_>) -> bool {
    let (Some(name), Some(dir)) = (&ctx.file_name, &ctx.dir) else {
        return false;
    };
    if !tf_data_shard_name(name) {
        return false;
    }
    let Ok(f) = std::fs::File::open(dir.join("variables.index")) else {
        return false;
    };
    let Ok(idx) = crate::blob::FileBlob::new(f) else {
        return false;
    };
    let len = idx.len();
    let ok = len >= 48
        && read_exact_at(&idx, len - 8, 8)
            .is_ok_and(|t| u64::from_le_bytes(t.try_into().unwrap_or([0; 8])) == SSTABLE_MAGIC);
    if ok {
        sink.push(
            Severity::Info,
            FindingKind::UnknownFormat,
            None,
            "TensorFlow checkpoint data shard (raw tensor bytes addressed by variables.index; no code)",
            Vec::new(),
        );
    }
    ok
}
