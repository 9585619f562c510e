//! Zip-based formats: PyTorch zip checkpoints and TorchScript archives, NumPy `.npz`, Keras
//! `.keras`, and any other zip (members scanned by content).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use crate::blob::{Blob, SubBlob};
use crate::detect::{self, Ctx};
use crate::formats;
use crate::pickle::{self, policy, vm::StorageRef};
use crate::report::{FindingKind, Format, Severity};
use crate::sink::Sink;
use crate::zip::{self, Archive, Entry};

/// Scans a blob that starts like a zip archive.
pub(crate) fn scan_zip(blob: &dyn Blob, sink: &mut Sink, ctx: &Ctx<'_>, depth: u32) -> Format {
    match zip::read_archive(blob) {
        Ok(a) => scan_zip_archive(blob, a, sink, ctx, depth),
        Err(e) => {
            sink.error(FindingKind::Unparsable, None, format!("zip archive: {e}"));
            // Loaders differ in how they read a broken archive: scan what the local headers hold.
            let entries = zip::walk_local_headers(blob);
            if !entries.is_empty() {
                let archive = Archive { entries, prefix: 0 };
                let kind = classify(&archive);
                let mut refs = Vec::new();
                for e in &archive.entries {
                    scan_member(blob, e, kind, sink, ctx, depth, &mut refs);
                }
            }
            Format::Zip
        }
    }
}

/// The kind of zip, from its member names.
fn classify(a: &Archive) -> Format {
    let names: Vec<&str> = a
        .entries
        .iter()
        .filter(|e| !e.is_dir())
        .map(|e| e.name.as_str())
        .collect();
    if names
        .iter()
        .any(|n| *n == "data.pkl" || n.ends_with("/data.pkl") || n.ends_with("/constants.pkl"))
    {
        return Format::TorchZip;
    }
    if names.contains(&"config.json") && names.contains(&"metadata.json") {
        return Format::Keras;
    }
    if !names.is_empty() && names.iter().all(|n| n.ends_with(".npy")) {
        return Format::Npz;
    }
    Format::Zip
}

/// Whether a torch member holds raw storage bytes (`archive/data/0`, `.data/...` storages).
fn torch_storage(name: &str) -> bool {
    let mut parts = name.rsplit('/');
    let last = parts.next().unwrap_or("");
    let parent = parts.next().unwrap_or("");
    parent == "data" && !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())
}

/// Scans every member of a parsed archive and reports archive-level anomalies.
pub(crate) fn scan_zip_archive(
    blob: &dyn Blob,
    a: Archive,
    sink: &mut Sink,
    ctx: &Ctx<'_>,
    depth: u32,
) -> Format {
    let kind = classify(&a);
    if a.prefix > 0 {
        sink.push(
            Severity::Suspicious,
            FindingKind::ParserDifferential,
            Some(0),
            format!("{} bytes precede the zip archive (polyglot: readers from the start see something else)", a.prefix),
            Vec::new(),
        );
        let pre = SubBlob {
            inner: blob,
            start: 0,
            len: a.prefix,
        };
        sink.within("zip-prefix", |s| {
            let f = detect::scan_blob(&pre, s, ctx, depth + 1);
            let _ = f;
        });
    }
    let mut refs = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in &a.entries {
        *seen.entry(e.name.as_str()).or_default() += 1;
    }
    for (name, n) in &seen {
        if *n > 1 {
            sink.push(
                Severity::Suspicious,
                FindingKind::ContainerAnomaly,
                None,
                format!("member {name:?} appears {n} times: loaders disagree on which one they read (all are scanned)"),
                Vec::new(),
            );
        }
    }
    let mut spans: Vec<(u64, u64, &str)> = a
        .entries
        .iter()
        .map(|e| {
            (
                e.local_offset,
                e.data_offset + e.compressed_size,
                e.name.as_str(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            sink.push(
                Severity::Suspicious,
                FindingKind::ContainerAnomaly,
                Some(w[1].0),
                format!("members {:?} and {:?} overlap", w[0].2, w[1].2),
                Vec::new(),
            );
        }
    }
    for e in &a.entries {
        if let Some(m) = &e.header_mismatch {
            sink.within(&e.name, |s| {
                s.push(
                    Severity::Suspicious,
                    FindingKind::ContainerAnomaly,
                    Some(e.local_offset),
                    format!("central directory and local header disagree: {m}"),
                    Vec::new(),
                )
            });
        }
        scan_member(blob, e, kind, sink, ctx, depth, &mut refs);
    }
    if kind == Format::TorchZip {
        check_storages(&a, &refs, sink);
    }
    kind
}

/// Every storage a torch `data.pkl` references must be a member `<root>/data/<key>` holding at
/// least `numel * element size` bytes (what `torch.load` reads).
fn check_storages(a: &Archive, refs: &[(String, Vec<StorageRef>)], sink: &mut Sink) {
    for (pkl, storages) in refs {
        let root = pkl.strip_suffix("data.pkl").unwrap_or("");
        for s in storages {
            let name = format!("{root}data/{}", s.key);
            match a.entries.iter().find(|e| e.name == name) {
                None => sink.error(
                    FindingKind::MalformedTensors,
                    None,
                    format!(
                        "{pkl} references storage {:?}, but the archive has no {name:?}",
                        s.key
                    ),
                ),
                Some(e) => {
                    let need = s
                        .numel
                        .zip(policy::torch_storage_element_size(&s.type_name))
                        .and_then(|(n, sz)| n.checked_mul(sz));
                    if let Some(need) = need
                        && e.sizes_known
                        && e.size < need
                    {
                        sink.error(
                            FindingKind::MalformedTensors,
                            Some(e.local_offset),
                            format!(
                                "storage {name:?} holds {} bytes, {need} are referenced",
                                e.size
                            ),
                        );
                    }
                }
            }
        }
    }
}

fn scan_member(
    blob: &dyn Blob,
    e: &Entry,
    kind: Format,
    sink: &mut Sink,
    ctx: &Ctx<'_>,
    depth: u32,
    refs: &mut Vec<(String, Vec<StorageRef>)>,
) {
    if e.is_dir() {
        return;
    }
    if kind == Format::TorchZip && torch_storage(&e.name) && !e.encrypted() {
        // Raw tensor bytes: torch reads them with `read_record`, never unpickles them.
        return;
    }
    sink.within(&e.name, |s| {
        scan_member_inner(blob, e, kind, s, ctx, depth, refs)
    });
}

fn scan_member_inner(
    blob: &dyn Blob,
    e: &Entry,
    kind: Format,
    sink: &mut Sink,
    ctx: &Ctx<'_>,
    depth: u32,
    refs: &mut Vec<(String, Vec<StorageRef>)>,
) {
    let Some(mut reader) = open_member(blob, e, ctx.opts.max_member_size, sink) else {
        return;
    };
    let mut buf = BufReader::with_capacity(1 << 16, &mut reader);
    let head = match buf.fill_buf() {
        Ok(h) => h.get(..64).unwrap_or(h).to_vec(),
        Err(err) => {
            if e.encrypted() {
                sink.error(
                    FindingKind::Unparsable,
                    Some(e.local_offset),
                    "encrypted member: cannot be analysed",
                );
            } else {
                sink.error(
                    FindingKind::Unparsable,
                    Some(e.local_offset),
                    format!("cannot decompress: {err}"),
                );
            }
            return;
        }
    };
    let sniffed = detect::sniff(&head);
    let pickle_like =
        sniffed == Format::Pickle || (e.name.ends_with(".pkl") && pickle::looks_like_pickle(&head));
    if e.encrypted() {
        if sniffed == Format::Unknown && !pickle_like {
            sink.error(
                FindingKind::Unparsable,
                Some(e.local_offset),
                "encrypted member: cannot be analysed",
            );
            return;
        }
        sink.push(
            Severity::Suspicious,
            FindingKind::ContainerAnomaly,
            Some(e.local_offset),
            format!("encryption flag (0x{:04x}) set on a member stored in plain text: readers that ignore the flag load it", e.flags),
            Vec::new(),
        );
    }
    if e.flags & 0x20 != 0 {
        sink.push(
            Severity::Suspicious,
            FindingKind::ContainerAnomaly,
            Some(e.local_offset),
            "member flagged as compressed patched data (0x20): readers disagree",
            Vec::new(),
        );
    }
    if pickle_like {
        let res = pickle::scan_stream(&mut buf, sink, &ctx.policy);
        drop(buf);
        // Read to the end so the CRC covers the whole member.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        check_crc(e, &reader, sink);
        detect::scan_nested(res.nested, sink, ctx, depth);
        if e.name.ends_with("data.pkl") {
            refs.push((e.name.clone(), res.storages));
        }
        return;
    }
    if sniffed == Format::Npy {
        let len = e.size;
        formats::numpy::scan_npy_stream(&mut buf, Some(len), sink, ctx);
        return;
    }
    if sniffed == Format::Unknown && e.method != 0 && e.size > ctx.opts.max_in_memory {
        detect::unknown(sink, ctx, depth + 1, &head);
        return;
    }
    // Everything else needs random access: the stored bytes in place, or decompressed in memory.
    drop(buf);
    if e.method == 0 && !e.encrypted() {
        let sub = SubBlob {
            inner: blob,
            start: e.data_offset,
            len: e.compressed_size,
        };
        member_blob(&sub, e, kind, sink, ctx, depth);
        return;
    }
    if e.size > ctx.opts.max_in_memory {
        sink.error(
            FindingKind::Unparsable,
            Some(e.local_offset),
            format!(
                "member of {} bytes is too large to analyse in memory",
                e.size
            ),
        );
        return;
    }
    let mut data = Vec::new();
    let Some(mut reader) = open_member(blob, e, ctx.opts.max_in_memory, sink) else {
        return;
    };
    if let Err(err) = reader.read_to_end(&mut data) {
        sink.error(
            FindingKind::Unparsable,
            Some(e.local_offset),
            format!("cannot decompress: {err}"),
        );
        return;
    }
    check_crc(e, &reader, sink);
    member_blob(&data, e, kind, sink, ctx, depth);
}

/// Opens a member, reporting why it cannot be.
fn open_member<'a>(
    blob: &'a dyn Blob,
    e: &Entry,
    limit: u64,
    sink: &mut Sink,
) -> Option<zip::MemberReader<'a>> {
    match zip::open(blob, e, limit) {
        Ok(r) => Some(r),
        Err(err) => {
            sink.error(
                FindingKind::Unparsable,
                Some(e.local_offset),
                err.to_string(),
            );
            None
        }
    }
}

fn member_blob(b: &dyn Blob, e: &Entry, kind: Format, sink: &mut Sink, ctx: &Ctx<'_>, depth: u32) {
    if kind == Format::Keras && e.name == "config.json" {
        formats::keras::scan_config_blob(b, sink);
        return;
    }
    if e.name.ends_with(".json") {
        // Metadata JSON in archives is data; Keras configs are handled above.
        return;
    }
    detect::scan_blob(b, sink, ctx, depth + 1);
}

fn check_crc(e: &Entry, r: &zip::MemberReader<'_>, sink: &mut Sink) {
    if e.sizes_known && r.read != e.size || r.crc() != e.crc {
        sink.push(
            Severity::Suspicious,
            FindingKind::ContainerAnomaly,
            Some(e.local_offset),
            format!(
                "member size/CRC-32 ({} bytes, {:08x}) differ from the directory ({} bytes, {:08x}): Python's zipfile rejects it, other readers do not",
                r.read,
                r.crc(),
                e.size,
                e.crc
            ),
            Vec::new(),
        );
    }
}
