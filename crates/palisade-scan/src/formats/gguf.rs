//! GGUF (llama.cpp), strictly: every count and length is bounded by the bytes that remain, tensor
//! infos are checked against the data section, and chat templates (Jinja) are checked for
//! expressions that reach Python internals (server-side template injection).

use std::io::{BufReader, Read};

use crate::blob::{Blob, BlobReader};
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

struct Cur<'a> {
    r: BufReader<BlobReader<'a>>,
    pos: u64,
    len: u64,
}

type R<T> = Result<T, String>;

impl Cur<'_> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| format!("truncated at offset {}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>()?))
    }

    fn skip(&mut self, n: u64) -> R<()> {
        if n > self.remaining() {
            return Err(format!(
                "length {n} at offset {} runs past the end",
                self.pos
            ));
        }
        let got = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if got != n {
            return Err("truncated".into());
        }
        self.pos += n;
        Ok(())
    }

    /// A GGUF string; kept only when `keep` and at most `max` bytes, else skipped.
    fn string(&mut self, keep: bool, max: u64) -> R<Option<String>> {
        let n = self.u64()?;
        if n > self.remaining() {
            return Err(format!(
                "string of {n} bytes at offset {} runs past the end",
                self.pos
            ));
        }
        if !keep || n > max {
            self.skip(n)?;
            return Ok(None);
        }
        let mut v = Vec::with_capacity(n as usize);
        (&mut self.r)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| e.to_string())?;
        self.pos += n;
        String::from_utf8(v)
            .map(Some)
            .map_err(|_| format!("string at offset {} is not UTF-8", self.pos))
    }
}

fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

/// (block size in elements, bytes per block) of a ggml tensor type.
fn ggml_type(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 36),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        16 => (256, 66),
        17 => (256, 74),
        18 => (256, 98),
        19 => (256, 50),
        20 => (32, 18),
        21 => (256, 110),
        22 => (256, 82),
        23 => (256, 136),
        24 => (1, 1),
        25 => (1, 2),
        26 => (1, 4),
        27 | 28 => (1, 8),
        29 => (256, 56),
        30 => (1, 2),
        34 => (256, 54),
        35 => (256, 66),
        39 => (32, 17),
        _ => return None,
    })
}

/// Markers of Jinja server-side template injection: dunder attributes and the objects through
/// which templates reach Python's globals.
pub(crate) fn template_findings(t: &str) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    let bytes = t.as_bytes();
    let mut i = 0;
    while let Some(p) = t[i..].find("__") {
        let s = i + p;
        let rest = &bytes[s + 2..];
        let ident_len = rest
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        if ident_len >= 3 && rest[..ident_len].ends_with(b"__") {
            let name = String::from_utf8_lossy(&bytes[s..s + 2 + ident_len]).into_owned();
            out.push((
                Severity::Dangerous,
                format!("chat template accesses {name} (reaches Python internals)"),
            ));
            i = s + 2 + ident_len;
        } else {
            i = s + 2;
        }
        if out.len() > 20 {
            break;
        }
    }
    for (needle, what) in [
        (
            "|attr",
            "the attr filter (attribute access by computed name)",
        ),
        (
            "attr(",
            "the attr filter (attribute access by computed name)",
        ),
        ("lipsum", "lipsum (a route to Python globals)"),
        ("cycler", "cycler (a route to Python globals)"),
        ("joiner", "joiner (a route to Python globals)"),
        ("_TemplateReference", "the template context internals"),
        ("import os", "an import"),
        ("popen", "popen"),
        ("subprocess", "subprocess"),
    ] {
        if t.contains(needle) {
            out.push((Severity::Suspicious, format!("chat template uses {what}")));
        }
    }
    out
}

fn parse(blob: &dyn Blob, sink: &mut Sink) -> R<()> {
    let len = blob.len();
    let mut c = Cur {
        r: BufReader::with_capacity(1 << 16, BlobReader::new(blob, 0, len)),
        pos: 0,
        len,
    };
    let magic = c.bytes::<4>()?;
    if &magic != b"GGUF" {
        return Err("bad magic".into());
    }
    let version = c.u32()?;
    if !(1..=3).contains(&version) {
        return Err(format!("unsupported GGUF version {version}"));
    }
    let (n_tensors, n_kv) = if version == 1 {
        (u64::from(c.u32()?), u64::from(c.u32()?))
    } else {
        (c.u64()?, c.u64()?)
    };
    // Every KV takes at least 12 bytes and every tensor info at least 24: bound the counts by
    // what remains before looping.
    if n_kv.saturating_mul(12) > c.remaining() || n_tensors.saturating_mul(24) > c.remaining() {
        return Err(format!(
            "{n_kv} metadata entries and {n_tensors} tensors cannot fit in {len} bytes"
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = c.string(true, 1 << 16)?.ok_or("metadata key too long")?;
        let t = c.u32()?;
        let template = key.starts_with("tokenizer.chat_template");
        match t {
            8 => {
                let v = c.string(template, 16 << 20)?;
                if let Some(tpl) = v {
                    for (sev, msg) in template_findings(&tpl) {
                        sink.push(
                            sev,
                            FindingKind::GgufTemplate,
                            Some(c.pos),
                            format!("{key}: {msg}"),
                            vec![key.clone()],
                        );
                    }
                }
            }
            9 => {
                let et = c.u32()?;
                let n = c.u64()?;
                if et == 8 {
                    if n.saturating_mul(8) > c.remaining() {
                        return Err(format!("{key}: array of {n} strings cannot fit"));
                    }
                    for _ in 0..n {
                        c.string(false, 0)?;
                    }
                } else {
                    let sz = scalar_size(et)
                        .ok_or_else(|| format!("{key}: array of unsupported type {et}"))?;
                    c.skip(n.checked_mul(sz).ok_or("array size overflows")?)?;
                }
            }
            _ => {
                let sz = scalar_size(t).ok_or_else(|| format!("{key}: unknown value type {t}"))?;
                if key == "general.alignment" && t == 4 {
                    alignment = u64::from(c.u32()?);
                    if alignment == 0 || !alignment.is_power_of_two() {
                        return Err(format!(
                            "general.alignment {alignment} is not a power of two"
                        ));
                    }
                } else {
                    c.skip(sz)?;
                }
            }
        }
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string(true, 1 << 16)?.ok_or("tensor name too long")?;
        let n_dims = c.u32()?;
        if n_dims > 8 {
            return Err(format!("{name}: {n_dims} dimensions"));
        }
        let mut dims = Vec::new();
        for _ in 0..n_dims {
            dims.push(c.u64()?);
        }
        let t = c.u32()?;
        let offset = c.u64()?;
        tensors.push((name, dims, t, offset));
    }
    let data_start = c
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or("alignment overflows")?;
    if data_start > len && !tensors.is_empty() {
        return Err("data section starts past the end of the file".into());
    }
    let data_len = len.saturating_sub(data_start);
    let mut spans = Vec::new();
    for (name, dims, t, offset) in tensors {
        let (block, bytes) =
            ggml_type(t).ok_or_else(|| format!("{name}: unknown tensor type {t}"))?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{name}: shape overflows"))?;
        if dims.first().is_some_and(|d| d % block != 0) {
            return Err(format!(
                "{name}: first dimension is not a multiple of the block size {block}"
            ));
        }
        let size = (numel / block)
            .checked_mul(bytes)
            .ok_or_else(|| format!("{name}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "{name}: offset {offset} is not aligned to {alignment}"
            ));
        }
        if offset.checked_add(size).is_none_or(|e| e > data_len) {
            return Err(format!(
                "{name}: data [{offset}, +{size}) runs past the data section ({data_len} bytes)"
            ));
        }
        spans.push((offset, offset + size, name));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok(())
}

/// Scans a GGUF file.
pub(crate) fn scan(blob: &dyn Blob, sink: &mut Sink) {
    if let Err(e) = parse(blob, sink) {
        sink.push(
            Severity::Error,
            FindingKind::MalformedTensors,
            None,
            format!("gguf: {e}"),
            Vec::new(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_markers() {
        let bad =
            "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('id').read() }}";
        let f = template_findings(bad);
        assert!(f.iter().any(|(s, _)| *s == Severity::Dangerous));
        let good = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}";
        assert!(template_findings(good).is_empty());
    }
}
