//! Format detection by content, and dispatch to the format scanners.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use crate::blob::{Blob, BlobReader, read_upto_at};
use crate::formats;
use crate::pickle;
use crate::report::{FindingKind, Format, Severity};
use crate::sink::Sink;
use crate::{ScanOptions, zip};

/// What a scanner needs to know besides the bytes.
pub(crate) struct Ctx<'o> {
    pub(crate) opts: &'o ScanOptions,
    /// Directory of the file being scanned (ONNX external data, SavedModel siblings).
    pub(crate) dir: Option<PathBuf>,
    /// Name of the file being scanned.
    pub(crate) file_name: Option<String>,
    /// Pickle emulation settings.
    pub(crate) policy: pickle::Policy,
}

impl<'o> Ctx<'o> {
    pub(crate) fn new(opts: &'o ScanOptions, path: Option<&std::path::Path>) -> Self {
        Ctx {
            opts,
            dir: path
                .and_then(|p| p.parent())
                .map(std::path::Path::to_path_buf),
            file_name: path
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
            policy: pickle::Policy {
                limits: pickle::vm::Limits::default(),
                allow: pickle::policy::Allow::new(&opts.allow),
            },
        }
    }
}

/// Formats recognisable from the first bytes alone.
pub(crate) fn sniff(head: &[u8]) -> Format {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Format::Zip;
    }
    if head.starts_with(b"\x93NUMPY") {
        return Format::Npy;
    }
    if head.starts_with(b"\x89HDF\r\n\x1a\n") {
        return Format::Hdf5;
    }
    if head.starts_with(b"GGUF") {
        return Format::Gguf;
    }
    if head.len() >= 9 && head[8] == b'{' && head[..8] != [0; 8] {
        return Format::Safetensors;
    }
    if let [0x80, p, ..] = head
        && *p <= 5
    {
        return Format::Pickle;
    }
    if head.starts_with(b"\x1f\x8b\x08") {
        return Format::Compressed;
    }
    if let [0x78, b, ..] = head
        && (0x7800u16 | u16::from(*b)).is_multiple_of(31)
    {
        return Format::Compressed;
    }
    Format::Unknown
}

/// Scans `blob` by its content; `depth` is 0 for a file, more for archive members and embedded
/// models. Returns the detected format.
pub(crate) fn scan_blob(blob: &dyn Blob, sink: &mut Sink, ctx: &Ctx<'_>, depth: u32) -> Format {
    if depth > ctx.opts.max_depth {
        sink.error(FindingKind::Unparsable, None, "nested too deeply");
        return Format::Unknown;
    }
    let head = match read_upto_at(blob, 0, 64) {
        Ok(h) => h,
        Err(e) => {
            sink.error(FindingKind::Unparsable, None, format!("cannot read: {e}"));
            return Format::Unknown;
        }
    };
    if head.is_empty() {
        if depth == 0 {
            sink.error(FindingKind::UnknownFormat, None, "empty file");
        }
        return Format::Unknown;
    }
    let mut format = sniff(&head);
    match format {
        Format::Zip => return formats::archive::scan_zip(blob, sink, ctx, depth),
        Format::Npy => formats::numpy::scan_npy_blob(blob, sink, ctx),
        Format::Safetensors => formats::safetensors::scan(blob, sink),
        Format::Gguf => formats::gguf::scan(blob, sink),
        Format::Hdf5 => formats::keras::scan_hdf5(blob, sink),
        Format::Pickle => format = scan_pickle_blob(blob, sink, ctx, depth),
        Format::Compressed => scan_compressed(blob, &head, sink, ctx, depth),
        _ => {
            format = formats::probe(blob, &head, sink, ctx);
            if format == Format::Unknown && depth == 0 && formats::tf_data_shard(sink, ctx) {
                format = Format::TfCheckpointData;
            } else if format == Format::Unknown {
                format = try_protocol0_pickle(blob, &head, sink, ctx, depth);
            }
            if format == Format::Unknown {
                format = text_or_json(blob, sink, ctx, depth, &head);
            }
        }
    }
    // A zip archive appended to something else (a pickle/zip polyglot): loaders that look for
    // the central directory at the end see a different file than loaders that read from the start.
    polyglot_tail(blob, sink, ctx, depth, format);
    format
}

fn polyglot_tail(blob: &dyn Blob, sink: &mut Sink, ctx: &Ctx<'_>, depth: u32, format: Format) {
    if zip::find_exact_eocd(blob).is_none() {
        return;
    }
    let Ok(archive) = zip::read_archive(blob) else {
        return;
    };
    if archive.entries.is_empty() {
        return;
    }
    sink.push(
        Severity::Suspicious,
        FindingKind::ParserDifferential,
        Some(archive.prefix),
        format!(
            "the file is both {} and a zip archive (polyglot); scanning both",
            format.as_str()
        ),
        Vec::new(),
    );
    sink.within("zip-polyglot", |s| {
        formats::archive::scan_zip_archive(blob, archive, s, ctx, depth + 1)
    });
}

fn scan_pickle_blob(blob: &dyn Blob, sink: &mut Sink, ctx: &Ctx<'_>, depth: u32) -> Format {
    let mut r = BufReader::with_capacity(1 << 16, BlobReader::new(blob, 0, blob.len()));
    let res = pickle::scan_stream(&mut r, sink, &ctx.policy);
    scan_nested(res.nested, sink, ctx, depth);
    res.format
}

/// A zlib or gzip stream (joblib's `compress=`): pickles are emulated as they are decompressed;
/// anything else is decompressed into memory (bounded) and scanned by content.
fn scan_compressed(blob: &dyn Blob, head: &[u8], sink: &mut Sink, ctx: &Ctx<'_>, depth: u32) {
    let raw = BlobReader::new(blob, 0, blob.len());
    let (name, dec): (&str, Box<dyn Read + '_>) = if head.starts_with(b"\x1f\x8b") {
        ("gzip", Box::new(flate2::read::MultiGzDecoder::new(raw)))
    } else {
        ("zlib", Box::new(flate2::read::ZlibDecoder::new(raw)))
    };
    let mut r = BufReader::with_capacity(1 << 16, dec.take(ctx.opts.max_member_size));
    sink.within(name, |s| {
        let inner = match r.fill_buf() {
            Ok(h) => h.get(..64).unwrap_or(h).to_vec(),
            Err(e) => {
                s.error(
                    FindingKind::Unparsable,
                    Some(0),
                    format!("cannot decompress: {e}"),
                );
                return;
            }
        };
        if sniff(&inner) == Format::Pickle {
            let res = pickle::scan_stream(&mut r, s, &ctx.policy);
            scan_nested(res.nested, s, ctx, depth);
            return;
        }
        let mut data = Vec::new();
        match r.take(ctx.opts.max_in_memory + 1).read_to_end(&mut data) {
            Ok(n) if n as u64 > ctx.opts.max_in_memory => s.error(
                FindingKind::Unparsable,
                Some(0),
                "decompressed content too large to analyse in memory",
            ),
            Ok(_) => {
                if scan_blob(&data, s, ctx, depth + 1) == Format::Unknown && !ctx.opts.strict {
                    // At depth > 0 unknown content is only `info`: a compressed file of unknown
                    // content is still unscannable.
                    s.error(
                        FindingKind::UnknownFormat,
                        Some(0),
                        "compressed content of unknown format",
                    );
                }
            }
            Err(e) => s.error(
                FindingKind::Unparsable,
                Some(0),
                format!("cannot decompress: {e}"),
            ),
        }
    });
}

/// Scans models embedded as bytes in a pickle (a Keras archive inside a pickle).
pub(crate) fn scan_nested(
    nested: Vec<pickle::vm::Nested>,
    sink: &mut Sink,
    ctx: &Ctx<'_>,
    depth: u32,
) {
    for n in nested {
        let data: Vec<u8> = n.data.as_ref().clone();
        let name = format!("{}@{}", n.loader, n.offset);
        sink.within(&name, |s| {
            let f = scan_blob(&data, s, ctx, depth + 1);
            if f == Format::Unknown {
                s.error(
                    FindingKind::UnknownFormat,
                    Some(n.offset),
                    "embedded model of unknown format",
                );
            }
        });
    }
}

/// Protocol-0/1 pickles have no magic: try to emulate one; if that fails it is unknown.
fn try_protocol0_pickle(
    blob: &dyn Blob,
    head: &[u8],
    sink: &mut Sink,
    ctx: &Ctx<'_>,
    depth: u32,
) -> Format {
    if pickle::looks_like_pickle(head) {
        let mut trial = Sink::new();
        let mut r = BufReader::with_capacity(1 << 16, BlobReader::new(blob, 0, blob.len()));
        let res = pickle::scan_stream(&mut r, &mut trial, &ctx.policy);
        // Text that merely starts like a pickle (a README beginning with "c") fails early with
        // nothing importable. Anything else is treated as the pickle it may be: a dangerous
        // finding, an import Python could perform, a resource limit hit.
        let dangerous = trial
            .findings
            .iter()
            .any(|f| f.severity == Severity::Dangerous);
        let limit = trial
            .findings
            .iter()
            .any(|f| f.kind == FindingKind::Unparsable && f.message.contains("resource limit"));
        if res.first_ok || dangerous || limit || trial.importable_imports > 0 {
            let member = sink.member().to_string();
            for mut f in trial.findings {
                if !member.is_empty() {
                    f.member = if f.member.is_empty() {
                        member.clone()
                    } else {
                        format!("{member}!{}", f.member)
                    };
                }
                sink.findings.push(f);
            }
            scan_nested(res.nested, sink, ctx, depth);
            return res.format;
        }
    }
    unknown(sink, ctx, depth, head)
}

/// Largest text file read to tell JSON and text apart.
const MAX_TEXT: u64 = 64 << 20;

/// JSON and plain text are data no model loader executes (a Keras config excepted, which is
/// checked). Called after the protocol-0 pickle trial, so a text pickle never lands here; the
/// unknown-format finding that trial made is replaced.
fn text_or_json(
    blob: &dyn Blob,
    sink: &mut Sink,
    ctx: &Ctx<'_>,
    depth: u32,
    head: &[u8],
) -> Format {
    if blob.len() > MAX_TEXT || head.contains(&0) {
        return Format::Unknown;
    }
    let Ok(bytes) = read_upto_at(blob, 0, blob.len() as usize) else {
        return Format::Unknown;
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Format::Unknown;
    };
    if text
        .bytes()
        .any(|b| b == 0 || (b < 0x20 && !b"\t\n\r\x0c".contains(&b)))
    {
        return Format::Unknown;
    }
    // Drop the unknown-format finding the pickle trial left for this blob.
    let member = sink.member().to_string();
    sink.findings.retain(|f| {
        !(f.kind == FindingKind::UnknownFormat && f.member == member && f.offset == Some(0))
    });
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        formats::keras::check_config(&v, sink);
        return Format::Json;
    }
    let sev = if ctx.opts.strict {
        Severity::Error
    } else {
        Severity::Info
    };
    let _ = depth;
    sink.push(
        sev,
        FindingKind::UnknownFormat,
        Some(0),
        "text file: no model format (not analysed further)",
        Vec::new(),
    );
    Format::Text
}

/// Reports content of unknown format: an error for a file (fail closed), `info` for an archive
/// member unless strict.
pub(crate) fn unknown(sink: &mut Sink, ctx: &Ctx<'_>, depth: u32, head: &[u8]) -> Format {
    let hex: String = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if depth == 0 || ctx.opts.strict {
        sink.error(
            FindingKind::UnknownFormat,
            Some(0),
            format!("unknown format (starts with {hex}): not analysed"),
        );
    } else {
        sink.push(
            Severity::Info,
            FindingKind::UnknownFormat,
            Some(0),
            format!("member of unknown format (starts with {hex}) not analysed (--strict makes this an error)"),
            Vec::new(),
        );
    }
    Format::Unknown
}
