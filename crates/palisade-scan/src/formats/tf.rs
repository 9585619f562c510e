//! TensorFlow SavedModel: ops that read or write files or run Python, in the graph and in every
//! function of its library; Keras configs embedded in its object graph and in
//! `keras_metadata.pb`.

use super::keras;
use super::proto::{Field, Msg};
use crate::blob::Blob;
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

/// Ops that run Python code.
const PYTHON_OPS: &[&str] = &["PyFunc", "PyFuncStateless", "EagerPyFunc"];
/// Ops that touch the file system at inference time.
const FILE_OPS: &[&str] = &[
    "ReadFile",
    "WriteFile",
    "MatchingFiles",
    "DeleteFile",
    "WholeFileReader",
    "WholeFileReaderV2",
];

type R<T> = Result<T, String>;

/// Scans a `saved_model.pb` (SavedModel: meta_graphs = 2; MetaGraphDef: graph_def = 2;
/// GraphDef: node = 1, library = 2; FunctionDefLibrary: function = 1; FunctionDef: node_def = 3;
/// NodeDef: name = 1, op = 2).
pub(crate) fn scan_saved_model(blob: &dyn Blob, sink: &mut Sink) {
    if let Err(e) = saved_model(blob, sink) {
        sink.error(
            FindingKind::Unparsable,
            None,
            format!("saved_model.pb: {e}"),
        );
    }
    keras::scan_embedded_configs(blob, sink, b"");
}

fn saved_model(blob: &dyn Blob, sink: &mut Sink) -> R<()> {
    let mut m = Msg::new(blob, 0, blob.len());
    while let Some((num, f)) = m.next_field()? {
        if let (2, Field::Len { off, len }) = (num, f) {
            let mut mg = Msg::new(blob, off, len);
            while let Some((n, x)) = mg.next_field()? {
                if let (2, Field::Len { off, len }) = (n, x) {
                    graph(blob, off, len, sink)?;
                }
            }
        }
    }
    Ok(())
}

fn graph(blob: &dyn Blob, off: u64, len: u64, sink: &mut Sink) -> R<()> {
    let mut g = Msg::new(blob, off, len);
    while let Some((num, f)) = g.next_field()? {
        match (num, f) {
            (1, Field::Len { off, len }) => node(blob, off, len, "graph", sink)?,
            (2, Field::Len { off, len }) => {
                let mut lib = Msg::new(blob, off, len);
                while let Some((n, x)) = lib.next_field()? {
                    if let (1, Field::Len { off, len }) = (n, x) {
                        function(blob, off, len, sink)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn function(blob: &dyn Blob, off: u64, len: u64, sink: &mut Sink) -> R<()> {
    let mut f = Msg::new(blob, off, len);
    let mut name = String::from("?");
    let mut nodes = Vec::new();
    while let Some((num, x)) = f.next_field()? {
        match (num, x) {
            // OpDef signature: name = 1.
            (1, Field::Len { off, len }) => {
                let mut sig = Msg::new(blob, off, len);
                while let Some((n, y)) = sig.next_field()? {
                    if let (1, Field::Len { off, len }) = (n, y) {
                        name = sig.string(off, len)?;
                    }
                }
            }
            (3, Field::Len { off, len }) => nodes.push((off, len)),
            _ => {}
        }
    }
    for (off, len) in nodes {
        node(blob, off, len, &format!("function {name}"), sink)?;
    }
    Ok(())
}

fn node(blob: &dyn Blob, off: u64, len: u64, within: &str, sink: &mut Sink) -> R<()> {
    let mut n = Msg::new(blob, off, len);
    let (mut name, mut op) = (String::new(), String::new());
    while let Some((num, f)) = n.next_field()? {
        match (num, f) {
            (1, Field::Len { off, len }) => name = n.string(off, len)?,
            (2, Field::Len { off, len }) => op = n.string(off, len)?,
            _ => {}
        }
    }
    let what = if PYTHON_OPS.contains(&op.as_str()) {
        Some("runs Python code")
    } else if FILE_OPS.contains(&op.as_str()) {
        Some("reads or writes files")
    } else {
        None
    };
    if let Some(what) = what {
        sink.push(
            Severity::Dangerous,
            FindingKind::TensorflowOp,
            Some(off),
            format!("op {op} (node {name:?} in {within}) {what}"),
            vec![within.to_string(), name],
        );
    }
    Ok(())
}

/// Scans a `keras_metadata.pb` (the Keras configs of a SavedModel's objects).
pub(crate) fn scan_keras_metadata(blob: &dyn Blob, sink: &mut Sink) {
    keras::scan_embedded_configs(blob, sink, b"");
}
