//! Builders for the samples the tests scan: pickle opcodes written by hand, zip archives (with the
//! `zip` crate or by hand where a library would refuse the trick), protobuf, safetensors, GGUF.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use palisade_scan::{FindingKind, ScanOptions, ScanReport, Severity, scan_bytes};

/// Writes pickle opcodes.
#[derive(Default, Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(Vec::new())
    }
    pub fn proto(mut self, v: u8) -> Self {
        self.0.extend([0x80, v]);
        self
    }
    pub fn op(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Protocol-0 GLOBAL.
    pub fn global(self, m: &str, n: &str) -> Self {
        self.raw(format!("c{m}\n{n}\n").as_bytes())
    }
    /// Protocol-0 INST (after a MARK and the arguments).
    pub fn inst(self, m: &str, n: &str) -> Self {
        self.raw(format!("i{m}\n{n}\n").as_bytes())
    }
    pub fn short_unicode(mut self, s: &str) -> Self {
        self.0.push(0x8c);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn binunicode(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// Protocol-0 STRING (a quoted repr).
    pub fn string(self, s: &str) -> Self {
        self.raw(format!("S'{s}'\n").as_bytes())
    }
    /// Protocol-0 UNICODE (raw-unicode-escape).
    pub fn unicode(self, s: &str) -> Self {
        self.raw(format!("V{s}\n").as_bytes())
    }
    pub fn binbytes(mut self, b: &[u8]) -> Self {
        self.0.push(b'B');
        self.0.extend((b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    pub fn int1(mut self, v: u8) -> Self {
        self.0.extend([b'K', v]);
        self
    }
    pub fn stack_global(self) -> Self {
        self.op(0x93)
    }
    pub fn mark(self) -> Self {
        self.op(b'(')
    }
    pub fn tuple(self) -> Self {
        self.op(b't')
    }
    pub fn tuple1(self) -> Self {
        self.op(0x85)
    }
    pub fn tuple2(self) -> Self {
        self.op(0x86)
    }
    pub fn empty_tuple(self) -> Self {
        self.op(b')')
    }
    pub fn empty_dict(self) -> Self {
        self.op(b'}')
    }
    pub fn empty_list(self) -> Self {
        self.op(b']')
    }
    pub fn reduce(self) -> Self {
        self.op(b'R')
    }
    pub fn build(self) -> Self {
        self.op(b'b')
    }
    pub fn setitem(self) -> Self {
        self.op(b's')
    }
    pub fn setitems(self) -> Self {
        self.op(b'u')
    }
    pub fn appends(self) -> Self {
        self.op(b'e')
    }
    pub fn newobj(self) -> Self {
        self.op(0x81)
    }
    pub fn binpersid(self) -> Self {
        self.op(b'Q')
    }
    pub fn none(self) -> Self {
        self.op(b'N')
    }
    pub fn pop(self) -> Self {
        self.op(b'0')
    }
    pub fn memoize(self) -> Self {
        self.op(0x94)
    }
    pub fn put(mut self, i: u8) -> Self {
        self.0.extend([b'q', i]);
        self
    }
    pub fn get(mut self, i: u8) -> Self {
        self.0.extend([b'h', i]);
        self
    }
    pub fn frame(mut self, len: u64) -> Self {
        self.0.push(0x95);
        self.0.extend(len.to_le_bytes());
        self
    }
    pub fn stop(self) -> Self {
        self.op(b'.')
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0
    }
    /// `os.system(cmd)` via protocol-2 GLOBAL.
    pub fn os_system(cmd: &str) -> Vec<u8> {
        Pickle::new()
            .proto(2)
            .global("os", "system")
            .binunicode(cmd)
            .tuple1()
            .reduce()
            .stop()
            .bytes()
    }
}

/// A protocol-2 torch state dict `{"w": tensor}` as `torch.save` writes it into `data.pkl`.
pub fn torch_state_dict() -> Vec<u8> {
    Pickle::new()
        .proto(2)
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce()
        .mark()
        .binunicode("w")
        .global("torch._utils", "_rebuild_tensor_v2")
        .mark()
        .mark()
        .binunicode("storage")
        .global("torch", "FloatStorage")
        .binunicode("0")
        .binunicode("cpu")
        .int1(4)
        .tuple()
        .binpersid()
        .int1(0)
        .int1(2)
        .int1(2)
        .tuple2()
        .int1(2)
        .int1(1)
        .tuple2()
        .op(0x89)
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce()
        .tuple()
        .reduce()
        .setitems()
        .stop()
        .bytes()
}

/// A zip built with the `zip` crate: `(name, bytes)` stored (no compression) or deflated.
pub fn zip_of(members: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A stored zip written by hand, so that flags and duplicate names can be set freely.
pub fn raw_zip(members: &[(&str, &[u8], u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, flags) in members {
        let crc = crc32(data);
        let off = out.len() as u32;
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(flags.to_le_bytes());
        out.extend(0u16.to_le_bytes()); // stored
        out.extend([0u8; 4]); // time, date
        out.extend(crc.to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(flags.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend([0u8; 4]);
        central.extend(crc.to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 8]); // extra, comment, disk, internal attrs
        central.extend([0u8; 4]); // external attrs
        central.extend(off.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_off.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn crc32(d: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in d {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Protobuf encoding helpers.
pub mod pb {
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    pub fn field_varint(n: u64, v: u64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v, out);
    }
    pub fn field_bytes(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint((n << 3) | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
}

/// A safetensors file from a header JSON and a data buffer.
pub fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Scans bytes as a file of the given name.
pub fn scan(name: &str, bytes: Vec<u8>) -> ScanReport {
    scan_bytes(Path::new(name), bytes, &ScanOptions::default())
}

/// Every (severity, kind) of a one-file report.
pub fn verdicts(r: &ScanReport) -> Vec<(Severity, FindingKind)> {
    r.files[0]
        .findings
        .iter()
        .map(|f| (f.severity, f.kind))
        .collect()
}

pub fn has(r: &ScanReport, sev: Severity, kind: FindingKind) -> bool {
    verdicts(r).contains(&(sev, kind))
}

/// Prints the report when an assertion is about to fail.
pub fn dump(r: &ScanReport) -> String {
    serde_json::to_string_pretty(r).unwrap()
}
