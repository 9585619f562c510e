//! ONNX: external-data locations that leave the model directory (`..`, absolute paths, symbolic
//! links), and nodes in operator domains outside the standard ones (custom ops are native code
//! a runtime loads from a library).

use std::path::{Component, Path};

use super::proto::{Field, Msg};
use crate::blob::Blob;
use crate::detect::Ctx;
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

/// Operator domains every runtime implements itself.
const STANDARD_DOMAINS: &[&str] = &[
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.training",
    "ai.onnx.preview.training",
    "com.microsoft",
    "com.microsoft.nchwc",
    "com.microsoft.experimental",
    "com.ms.internal.nhwc",
];

type R<T> = Result<T, String>;

struct Walk<'c, 's> {
    ctx: &'c Ctx<'c>,
    sink: &'s mut Sink,
    /// Domains of functions defined in the model itself.
    local_domains: Vec<String>,
    custom_reported: Vec<String>,
    depth: usize,
}

/// Scans an ONNX ModelProto.
pub(crate) fn scan(blob: &dyn Blob, sink: &mut Sink, ctx: &Ctx<'_>) {
    let mut w = Walk {
        ctx,
        sink,
        local_domains: Vec::new(),
        custom_reported: Vec::new(),
        depth: 0,
    };
    if let Err(e) = w.model(blob) {
        w.sink
            .error(FindingKind::Unparsable, None, format!("onnx: {e}"));
    }
}

impl Walk<'_, '_> {
    fn model(&mut self, blob: &dyn Blob) -> R<()> {
        let mut graphs = Vec::new();
        let mut functions = Vec::new();
        let mut m = Msg::new(blob, 0, blob.len());
        while let Some((num, f)) = m.next_field()? {
            match (num, f) {
                (7, Field::Len { off, len }) => graphs.push((off, len)),
                (25, Field::Len { off, len }) => functions.push((off, len)),
                _ => {}
            }
        }
        // FunctionProto: name = 1, node = 7, domain = 10.
        for &(off, len) in &functions {
            let mut f = Msg::new(blob, off, len);
            while let Some((num, x)) = f.next_field()? {
                if let (10, Field::Len { off, len }) = (num, x) {
                    self.local_domains.push(f.string(off, len)?);
                }
            }
        }
        for (off, len) in graphs {
            self.graph(blob, off, len)?;
        }
        for (off, len) in functions {
            let mut f = Msg::new(blob, off, len);
            while let Some((num, x)) = f.next_field()? {
                if let (7, Field::Len { off, len }) = (num, x) {
                    self.node(blob, off, len)?;
                }
            }
        }
        Ok(())
    }

    fn graph(&mut self, blob: &dyn Blob, off: u64, len: u64) -> R<()> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("subgraphs nested too deeply".into());
        }
        let mut g = Msg::new(blob, off, len);
        while let Some((num, f)) = g.next_field()? {
            match (num, f) {
                (1, Field::Len { off, len }) => self.node(blob, off, len)?,
                (5, Field::Len { off, len }) => self.tensor(blob, off, len)?,
                // SparseTensorProto: values = 1, indices = 2.
                (15, Field::Len { off, len }) => {
                    let mut s = Msg::new(blob, off, len);
                    while let Some((n, x)) = s.next_field()? {
                        if let (1 | 2, Field::Len { off, len }) = (n, x) {
                            self.tensor(blob, off, len)?;
                        }
                    }
                }
                _ => {}
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn node(&mut self, blob: &dyn Blob, off: u64, len: u64) -> R<()> {
        let mut n = Msg::new(blob, off, len);
        let (mut op, mut domain) = (String::new(), String::new());
        while let Some((num, f)) = n.next_field()? {
            match (num, f) {
                (4, Field::Len { off, len }) => op = n.string(off, len)?,
                (7, Field::Len { off, len }) => domain = n.string(off, len)?,
                (5, Field::Len { off, len }) => self.attribute(blob, off, len)?,
                _ => {}
            }
        }
        if !STANDARD_DOMAINS.contains(&domain.as_str())
            && !self.local_domains.contains(&domain)
            && !self.custom_reported.contains(&domain)
        {
            self.sink.push(
                Severity::Suspicious,
                FindingKind::OnnxCustomOp,
                Some(off),
                format!("node {op:?} in the non-standard operator domain {domain:?}: runtimes load custom ops as native code"),
                Vec::new(),
            );
            self.custom_reported.push(domain);
        }
        Ok(())
    }

    /// AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11.
    fn attribute(&mut self, blob: &dyn Blob, off: u64, len: u64) -> R<()> {
        let mut a = Msg::new(blob, off, len);
        while let Some((num, f)) = a.next_field()? {
            match (num, f) {
                (5 | 10, Field::Len { off, len }) => self.tensor(blob, off, len)?,
                (6 | 11, Field::Len { off, len }) => self.graph(blob, off, len)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// TensorProto: name = 8, external_data = 13 (key = 1, value = 2), data_location = 14.
    fn tensor(&mut self, blob: &dyn Blob, off: u64, len: u64) -> R<()> {
        let mut t = Msg::new(blob, off, len);
        let mut name = String::new();
        let mut location = None;
        while let Some((num, f)) = t.next_field()? {
            match (num, f) {
                (8, Field::Len { off, len }) => name = t.string(off, len)?,
                (13, Field::Len { off, len }) => {
                    let mut e = Msg::new(blob, off, len);
                    let (mut k, mut v) = (String::new(), String::new());
                    while let Some((n, x)) = e.next_field()? {
                        match (n, x) {
                            (1, Field::Len { off, len }) => k = e.string(off, len)?,
                            (2, Field::Len { off, len }) => v = e.string(off, len)?,
                            _ => {}
                        }
                    }
                    if k == "location" {
                        location = Some(v);
                    }
                }
                _ => {}
            }
        }
        if let Some(loc) = location {
            self.external(&name, &loc, off);
        }
        Ok(())
    }

    fn external(&mut self, tensor: &str, loc: &str, off: u64) {
        let p = Path::new(loc);
        let escapes = p.is_absolute()
            || loc.starts_with('/')
            || loc.starts_with('\\')
            || loc.contains(":\\")
            || p.components().any(|c| {
                matches!(
                    c,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                )
            })
            || loc.split(['/', '\\']).any(|c| c == "..");
        if escapes {
            self.sink.push(
                Severity::Dangerous,
                FindingKind::OnnxExternalData,
                Some(off),
                format!("tensor {tensor:?} reads external data from {loc:?}, outside the model directory"),
                Vec::new(),
            );
            return;
        }
        let Some(dir) = &self.ctx.dir else { return };
        let target = dir.join(p);
        if let (Ok(t), Ok(d)) = (target.canonicalize(), dir.canonicalize())
            && !t.starts_with(&d)
        {
            self.sink.push(
                Severity::Dangerous,
                FindingKind::OnnxExternalData,
                Some(off),
                format!("tensor {tensor:?} reads external data from {loc:?}, a link to {} outside the model directory", t.display()),
                Vec::new(),
            );
        }
    }
}
