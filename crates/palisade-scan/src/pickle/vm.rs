//! A pickle virtual machine that runs nothing: it emulates the unpickler's stack, memo, marks and
//! frames over protocols 0–5, resolves every import and records every call with its arguments,
//! and hands each to the policy.

use std::collections::HashMap;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use super::policy::{self, Rule};
use crate::report::{FindingKind, Severity};
use crate::sink::Sink;

/// Limits on what one pickle may make the emulator hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most container elements alive at once, over all containers.
    pub(crate) max_elements: usize,
    /// Most memo entries.
    pub(crate) max_memo: usize,
    /// Longest protocol-0 line (GLOBAL, INT, STRING...).
    pub(crate) max_line: usize,
    /// Bytes/str operands longer than this are skipped, not kept (their length is).
    pub(crate) keep_bytes: u64,
    /// Most operand bytes kept over the whole pickle; beyond it, operands are skipped.
    pub(crate) keep_total: u64,
    /// Deepest mark nesting.
    pub(crate) max_marks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_elements: 20_000_000,
            max_memo: 10_000_000,
            max_line: 1 << 20,
            keep_bytes: 64 << 20,
            keep_total: 256 << 20,
            max_marks: 100_000,
        }
    }
}

/// Why a pickle could not be emulated to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PickleError {
    /// The stream ended in the middle of an opcode or before STOP.
    #[error("truncated at offset {0}")]
    Truncated(u64),
    /// An opcode that no unpickler accepts, or operands that make no sense.
    #[error("offset {offset}: {msg}")]
    Malformed {
        /// Where.
        offset: u64,
        /// What.
        msg: String,
    },
    /// A resource limit was hit (fail closed: the rest is not analysed).
    #[error("offset {offset}: resource limit: {msg}")]
    Limit {
        /// Where.
        offset: u64,
        /// Which.
        msg: &'static str,
    },
    /// Reading failed.
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

impl PickleError {
    fn malformed(offset: u64, msg: impl Into<String>) -> Self {
        PickleError::Malformed {
            offset,
            msg: msg.into(),
        }
    }
}

type R<T> = Result<T, PickleError>;

/// A byte stream with a position.
pub(crate) struct Input<'r> {
    r: &'r mut dyn BufRead,
    pos: u64,
}

impl<'r> Input<'r> {
    pub(crate) fn new(r: &'r mut dyn BufRead) -> Self {
        Input { r, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether the stream is exhausted.
    pub(crate) fn at_eof(&mut self) -> io::Result<bool> {
        Ok(self.r.fill_buf()?.is_empty())
    }

    /// The next bytes without consuming them (at most what is buffered).
    pub(crate) fn peek(&mut self) -> io::Result<&[u8]> {
        self.r.fill_buf()
    }

    fn byte(&mut self) -> R<Option<u8>> {
        let buf = self.r.fill_buf()?;
        match buf.first() {
            None => Ok(None),
            Some(&b) => {
                self.r.consume(1);
                self.pos += 1;
                Ok(Some(b))
            }
        }
    }

    fn exact(&mut self, n: usize) -> R<Vec<u8>> {
        let start = self.pos;
        let mut v = Vec::with_capacity(n.min(1 << 16));
        let got = (&mut self.r).take(n as u64).read_to_end(&mut v)?;
        self.pos += got as u64;
        if got < n {
            return Err(PickleError::Truncated(start));
        }
        Ok(v)
    }

    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let start = self.pos;
        let mut a = [0u8; N];
        let mut filled = 0;
        while filled < N {
            let n = self.r.read(&mut a[filled..])?;
            if n == 0 {
                return Err(PickleError::Truncated(start));
            }
            filled += n;
        }
        self.pos += N as u64;
        Ok(a)
    }

    /// Skips `n` bytes; errors if fewer remain.
    pub(crate) fn skip(&mut self, n: u64) -> R<()> {
        let start = self.pos;
        let got = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += got;
        if got < n {
            return Err(PickleError::Truncated(start));
        }
        Ok(())
    }

    fn line(&mut self, max: usize) -> R<Vec<u8>> {
        let start = self.pos;
        let mut v = Vec::new();
        let n = (&mut self.r)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut v)?;
        self.pos += n as u64;
        if v.last() != Some(&b'\n') {
            if n > max {
                return Err(PickleError::Limit {
                    offset: start,
                    msg: "protocol-0 line too long",
                });
            }
            return Err(PickleError::Truncated(start));
        }
        v.pop();
        Ok(v)
    }
}

/// Index into the arena of containers and call results.
type ObjId = usize;

/// A value on the emulated stack. Cheap to clone: containers live in the arena.
#[derive(Debug, Clone)]
enum V {
    None,
    Bool(bool),
    Int(i128),
    BigInt,
    Float,
    Str(Rc<str>),
    /// Bytes; the content is kept up to `Limits::keep_bytes`.
    Bytes(u64, Option<Rc<Vec<u8>>>),
    /// An imported name.
    Global(Rc<Global>),
    Obj(ObjId),
    /// Out-of-band buffer (protocol 5).
    Buffer,
}

#[derive(Debug)]
struct Global {
    module: String,
    name: String,
    offset: u64,
    rule: Option<Rule>,
}

impl Global {
    fn path(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }
}

#[derive(Debug)]
enum Obj {
    List(Vec<V>),
    Tuple(Vec<V>),
    Dict(Vec<(V, V)>),
    Set(Vec<V>),
    /// The result of calling `func` (REDUCE, INST, OBJ, NEWOBJ...).
    Call {
        func: V,
        args: V,
        offset: u64,
        allowed: bool,
    },
    /// `persistent_load(pid)`.
    Persistent(V),
}

/// A torch storage referenced by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub(crate) type_name: String,
    pub(crate) key: String,
    pub(crate) numel: Option<u64>,
}

/// Bytes a call passes to a loader of another model format (a Keras archive inside a pickle).
#[derive(Debug)]
pub(crate) struct Nested {
    pub(crate) offset: u64,
    pub(crate) loader: String,
    pub(crate) data: Rc<Vec<u8>>,
}

/// What one emulated pickle left behind, beyond its findings.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Storages referenced through persistent ids.
    pub(crate) storages: Vec<StorageRef>,
    /// Embedded models to scan.
    pub(crate) nested: Vec<Nested>,
    /// The top-level value when it is a list of strings (legacy torch storage keys).
    pub(crate) top_strings: Option<Vec<String>>,
    /// The top-level value when it is an integer (legacy torch magic and protocol pickles).
    pub(crate) top_int: Option<i128>,
    /// Whether the top-level value was a big integer.
    pub(crate) top_bigint: bool,
    /// Highest protocol seen (PROTO opcode), if any.
    pub(crate) protocol: Option<u8>,
}

/// The emulator for one pickle (up to and including its STOP).
pub(crate) struct Vm<'s> {
    sink: &'s mut Sink,
    limits: Limits,
    policy: &'s super::Policy,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u64, V>,
    arena: Vec<Obj>,
    elements: usize,
    /// Operand bytes kept so far.
    kept: u64,
    /// Base offset added to every reported offset (where this pickle starts in its member).
    base: u64,
    /// End of the current frame, if inside one.
    frame_end: Option<u64>,
    frame_differential_reported: bool,
    /// Set once the pickle mutates an imported object: allowlisted names can no longer be trusted.
    tainted: bool,
    out: Outcome,
    /// Nesting of pickles inside pickles (joblib object arrays).
    depth: u32,
}

impl<'s> Vm<'s> {
    pub(crate) fn new(sink: &'s mut Sink, policy: &'s super::Policy, base: u64) -> Self {
        Vm {
            sink,
            limits: policy.limits,
            policy,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            elements: 0,
            kept: 0,
            base,
            frame_end: None,
            frame_differential_reported: false,
            tainted: false,
            out: Outcome::default(),
            depth: 0,
        }
    }

    fn flag(&mut self, sev: Severity, kind: FindingKind, at: u64, msg: String, chain: Vec<String>) {
        self.sink.push(sev, kind, Some(self.base + at), msg, chain);
    }

    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: u64) -> R<V> {
        if self.stack.len() <= self.fence() {
            return Err(PickleError::malformed(self.base + at, "stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError::malformed(self.base + at, "stack underflow"))
    }

    fn top(&mut self, at: u64) -> R<&mut V> {
        let fence = self.fence();
        let base = self.base;
        if self.stack.len() <= fence {
            return Err(PickleError::malformed(base + at, "stack underflow"));
        }
        self.stack
            .last_mut()
            .ok_or_else(|| PickleError::malformed(base + at, "stack underflow"))
    }

    fn pop_mark(&mut self, at: u64) -> R<Vec<V>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| PickleError::malformed(self.base + at, "no MARK to pop to"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn alloc(&mut self, obj: Obj, at: u64) -> R<V> {
        let n = match &obj {
            Obj::List(v) | Obj::Tuple(v) | Obj::Set(v) => v.len(),
            Obj::Dict(v) => v.len() * 2,
            _ => 1,
        };
        self.count(n, at)?;
        self.arena.push(obj);
        Ok(V::Obj(self.arena.len() - 1))
    }

    fn count(&mut self, n: usize, at: u64) -> R<()> {
        self.elements = self.elements.saturating_add(n.max(1));
        if self.elements > self.limits.max_elements {
            return Err(PickleError::Limit {
                offset: self.base + at,
                msg: "too many values",
            });
        }
        Ok(())
    }

    fn obj(&self, v: &V) -> Option<&Obj> {
        match v {
            V::Obj(i) => self.arena.get(*i),
            _ => None,
        }
    }

    fn items<'a>(&'a self, v: &'a V) -> &'a [V] {
        match self.obj(v) {
            Some(Obj::Tuple(x) | Obj::List(x)) => x,
            _ => &[],
        }
    }

    /// A bounded, human-readable rendering of a value.
    fn render(&self, v: &V, depth: usize) -> String {
        let mut s = String::new();
        self.render_into(v, depth, &mut s);
        if s.len() > 300 {
            let mut cut = 297;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }

    fn render_into(&self, v: &V, depth: usize, s: &mut String) {
        if s.len() > 400 {
            return;
        }
        match v {
            V::None => s.push_str("None"),
            V::Bool(b) => s.push_str(if *b { "True" } else { "False" }),
            V::Int(i) => s.push_str(&i.to_string()),
            V::BigInt => s.push_str("<int>"),
            V::Float => s.push_str("<float>"),
            V::Str(x) => {
                let t: String = x.chars().take(120).collect();
                s.push_str(&format!("{t:?}"));
            }
            V::Bytes(n, d) => match d {
                Some(d) if d.len() <= 48 => {
                    s.push_str(&format!("b{:?}", String::from_utf8_lossy(d)))
                }
                _ => s.push_str(&format!("<{n} bytes>")),
            },
            V::Global(g) => s.push_str(&g.path()),
            V::Buffer => s.push_str("<buffer>"),
            V::Obj(_) if depth == 0 => s.push_str("..."),
            V::Obj(_) => match self.obj(v) {
                None => s.push('?'),
                Some(Obj::List(x)) => self.render_seq("[", x, "]", depth, s),
                Some(Obj::Tuple(x)) => self.render_seq("(", x, ")", depth, s),
                Some(Obj::Set(x)) => self.render_seq("{", x, "}", depth, s),
                Some(Obj::Dict(x)) => {
                    s.push('{');
                    for (i, (k, val)) in x.iter().take(8).enumerate() {
                        if i > 0 {
                            s.push_str(", ");
                        }
                        self.render_into(k, depth - 1, s);
                        s.push_str(": ");
                        self.render_into(val, depth - 1, s);
                    }
                    if x.len() > 8 {
                        s.push_str(", ...");
                    }
                    s.push('}');
                }
                Some(Obj::Call { func, args, .. }) => {
                    self.render_into(func, depth - 1, s);
                    match self.obj(args) {
                        Some(Obj::Tuple(x)) => self.render_seq("(", x, ")", depth, s),
                        _ => {
                            s.push('(');
                            self.render_into(args, depth - 1, s);
                            s.push(')');
                        }
                    }
                }
                Some(Obj::Persistent(pid)) => {
                    s.push_str("persistent_load(");
                    self.render_into(pid, depth - 1, s);
                    s.push(')');
                }
            },
        }
    }

    fn render_seq(&self, open: &str, x: &[V], close: &str, depth: usize, s: &mut String) {
        s.push_str(open);
        for (i, e) in x.iter().take(8).enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            self.render_into(e, depth.saturating_sub(1), s);
        }
        if x.len() > 8 {
            s.push_str(", ...");
        }
        s.push_str(close);
    }

    /// How a callable was obtained, outermost first: where it was imported, which calls made it.
    fn provenance(&self, v: &V, chain: &mut Vec<String>, depth: usize) {
        if depth == 0 || chain.len() > 8 {
            return;
        }
        match v {
            V::Global(g) => chain.push(format!(
                "offset {}: import {}",
                self.base + g.offset,
                g.path()
            )),
            V::Obj(_) => {
                if let Some(Obj::Call { func, offset, .. }) = self.obj(v) {
                    self.provenance(func, chain, depth - 1);
                    chain.push(format!(
                        "offset {}: call {}",
                        self.base + offset,
                        self.render(v, 3)
                    ));
                }
            }
            _ => {}
        }
    }

    fn import(&mut self, module: &str, name: &str, at: u64, op: &str) -> V {
        let rule = policy::rule(module, name)
            .or_else(|| self.policy.allow.allows(module, name).then_some(Rule::Call));
        let path = format!("{module}.{name}");
        if rule.is_none() {
            let ident = |s: &str| {
                !s.is_empty()
                    && s.split('.').all(|c| {
                        c.chars()
                            .next()
                            .is_some_and(|ch| ch.is_alphabetic() || ch == '_')
                            && c.chars().all(|ch| ch.is_alphanumeric() || ch == '_')
                    })
            };
            if ident(module) && ident(name) {
                self.sink.importable_imports += 1;
            }
            let (sev, why) = if policy::dangerous_import(module, name) {
                (
                    Severity::Dangerous,
                    "reaches the system or interpreter internals",
                )
            } else {
                (Severity::Suspicious, "is outside the allowlist")
            };
            self.flag(
                sev,
                FindingKind::PickleImport,
                at,
                format!("{op} imports {path}, which {why}"),
                Vec::new(),
            );
        }
        V::Global(Rc::new(Global {
            module: module.to_string(),
            name: name.to_string(),
            offset: at,
            rule,
        }))
    }

    /// Whether `v` is an allowlisted callable or class (for higher-order arguments).
    fn allowlisted_callable(&self, v: &V) -> bool {
        matches!(v, V::Global(g) if matches!(g.rule, Some(Rule::Call | Rule::HigherOrder(_) | Rule::ImportOnly)))
    }

    /// Emulates a call of `func` with positional `args` (a tuple value).
    fn call(&mut self, func: V, args: V, at: u64, op: &str) -> R<V> {
        let mut allowed = false;
        let mut reason: Option<String> = None;
        match &func {
            V::Global(g) => match g.rule {
                Some(Rule::Call) => allowed = true,
                Some(Rule::HigherOrder(pos)) => {
                    let items = self.items(&args).to_vec();
                    let bad: Vec<usize> = pos
                        .iter()
                        .copied()
                        .filter(|&i| items.get(i).is_some_and(|a| !self.allowlisted_callable(a)))
                        .collect();
                    if bad.is_empty() {
                        allowed = true;
                    } else {
                        reason = Some(format!(
                            "{} calls its argument {} which is not an allowlisted callable",
                            g.path(),
                            bad.iter()
                                .map(|i| self.render(&items[*i], 2))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                }
                Some(Rule::Nested(pos)) => {
                    let items = self.items(&args).to_vec();
                    match items.get(pos) {
                        Some(V::Bytes(_, Some(data))) => {
                            allowed = true;
                            self.out.nested.push(Nested {
                                offset: self.base + at,
                                loader: g.path(),
                                data: data.clone(),
                            });
                        }
                        _ => {
                            reason = Some(format!(
                                "{} loads a model from bytes that could not be extracted",
                                g.path()
                            ))
                        }
                    }
                }
                Some(Rule::ImportOnly) => {
                    reason = Some(format!(
                        "{} is allowlisted as a name, not as a callable",
                        g.path()
                    ))
                }
                None => {}
            },
            V::Obj(_) if matches!(self.obj(&func), Some(Obj::Call { .. })) => {
                reason = Some("calls the result of another call (indirect call)".to_string());
            }
            _ => {
                reason = Some(format!(
                    "calls a non-callable value {}",
                    self.render(&func, 2)
                ))
            }
        }
        if allowed && self.tainted {
            allowed = false;
            reason = Some(
                "allowlisted name called after the pickle mutated an imported object".to_string(),
            );
        }
        let call = self.alloc(
            Obj::Call {
                func: func.clone(),
                args: args.clone(),
                offset: at,
                allowed,
            },
            at,
        )?;
        if !allowed {
            let mut chain = Vec::new();
            self.provenance(&func, &mut chain, 6);
            for a in self.items(&args) {
                if matches!(self.obj(a), Some(Obj::Call { .. })) {
                    self.provenance(a, &mut chain, 4);
                }
            }
            if let Some(r) = reason {
                chain.push(r);
            }
            let msg = format!("{op} calls {}", self.render(&call, 4));
            self.flag(Severity::Dangerous, FindingKind::PickleCall, at, msg, chain);
        }
        Ok(call)
    }

    /// A mutation of `target` (BUILD, SETITEM, APPEND...). Mutating a data container is fine;
    /// mutating an imported module or class is how pickles rewire functions.
    fn mutate(&mut self, target: &V, at: u64, op: &str) {
        match target {
            V::Global(g) => {
                let msg = format!(
                    "{op} mutates the imported object {} (setattr on a module or class)",
                    g.path()
                );
                self.tainted = true;
                self.flag(
                    Severity::Dangerous,
                    FindingKind::PickleMutation,
                    at,
                    msg,
                    Vec::new(),
                );
            }
            V::Obj(_) => match self.obj(target) {
                Some(Obj::Call { allowed: true, .. }) => {}
                Some(Obj::Call { allowed: false, .. }) => {
                    // Already reported as a dangerous call; its result may be a module.
                    self.tainted = true;
                }
                Some(Obj::Persistent(_)) => {
                    let msg =
                        format!("{op} on a persistent-load result (calls loader-defined methods)");
                    self.flag(
                        Severity::Suspicious,
                        FindingKind::PickleMutation,
                        at,
                        msg,
                        Vec::new(),
                    );
                }
                _ => {}
            },
            other => {
                let msg = format!(
                    "{op} on {} (the unpickler calls methods of this value)",
                    self.render(other, 1)
                );
                self.flag(
                    Severity::Suspicious,
                    FindingKind::PickleMutation,
                    at,
                    msg,
                    Vec::new(),
                );
            }
        }
    }

    fn memo_put(&mut self, key: u64, v: V, at: u64) -> R<()> {
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&key) {
            return Err(PickleError::Limit {
                offset: self.base + at,
                msg: "memo too large",
            });
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64, at: u64) -> R<()> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| {
            PickleError::malformed(self.base + at, format!("memo key {key} not found"))
        })?;
        self.stack.push(v);
        Ok(())
    }

    /// Whether an operand of `n` bytes may be kept in memory (and counts it if so).
    fn keep(&mut self, n: u64) -> bool {
        if n <= self.limits.keep_bytes && self.kept.saturating_add(n) <= self.limits.keep_total {
            self.kept += n;
            true
        } else {
            false
        }
    }

    fn bytes(&mut self, input: &mut Input<'_>, n: u64, at: u64) -> R<V> {
        if self.keep(n) {
            let len = usize::try_from(n).map_err(|_| PickleError::Limit {
                offset: self.base + at,
                msg: "length",
            })?;
            let d = input.exact(len)?;
            Ok(V::Bytes(n, Some(Rc::new(d))))
        } else {
            input.skip(n)?;
            Ok(V::Bytes(n, None))
        }
    }

    fn text(&mut self, input: &mut Input<'_>, n: u64, at: u64) -> R<V> {
        if self.keep(n) {
            let len = usize::try_from(n).map_err(|_| PickleError::Limit {
                offset: self.base + at,
                msg: "length",
            })?;
            let d = input.exact(len)?;
            let s = String::from_utf8(d)
                .map_err(|_| PickleError::malformed(self.base + at, "invalid UTF-8 in string"))?;
            Ok(V::Str(Rc::from(s)))
        } else {
            input.skip(n)?;
            Ok(V::Str(Rc::from("<long string>")))
        }
    }

    fn global_line(&mut self, input: &mut Input<'_>, at: u64, proto: u8) -> R<(String, String)> {
        let m = input.line(self.limits.max_line)?;
        let n = input.line(self.limits.max_line)?;
        let m = String::from_utf8(m)
            .map_err(|_| PickleError::malformed(self.base + at, "GLOBAL module is not UTF-8"))?;
        let n = String::from_utf8(n)
            .map_err(|_| PickleError::malformed(self.base + at, "GLOBAL name is not UTF-8"))?;
        Ok(if proto < 3 {
            policy::fix_import(&m, &n)
        } else {
            (m, n)
        })
    }

    fn check_frame(&mut self, input: &Input<'_>, op_at: u64) {
        if let Some(end) = self.frame_end {
            let pos = input.pos();
            if pos > end && op_at < end && !self.frame_differential_reported {
                self.frame_differential_reported = true;
                self.flag(
                    Severity::Suspicious,
                    FindingKind::ParserDifferential,
                    op_at,
                    format!(
                        "opcode at {} straddles the end of its FRAME at {}: unpicklers disagree",
                        self.base + op_at,
                        self.base + end
                    ),
                    Vec::new(),
                );
            }
            if pos >= end {
                self.frame_end = None;
            }
        }
    }

    /// Runs until STOP. Returns `Ok(None)` if the stream was already at its end (no pickle).
    pub(crate) fn run(mut self, input: &mut Input<'_>) -> R<Option<Outcome>> {
        let mut proto: u8 = 0;
        let mut first = true;
        loop {
            let at = input.pos();
            let Some(op) = input.byte()? else {
                if first {
                    return Ok(None);
                }
                return Err(PickleError::Truncated(self.base + at));
            };
            first = false;
            self.step(input, op, at, &mut proto)?;
            self.check_frame(input, at);
            if op == b'.' {
                let top = self.stack.pop();
                if let Some(t) = &top {
                    match t {
                        V::Int(i) => self.out.top_int = Some(*i),
                        V::BigInt => self.out.top_bigint = true,
                        V::Obj(_) => {
                            if let Some(Obj::List(items)) = self.obj(t) {
                                let strs: Option<Vec<String>> = items
                                    .iter()
                                    .map(|x| {
                                        if let V::Str(s) = x {
                                            Some(s.to_string())
                                        } else {
                                            None
                                        }
                                    })
                                    .collect();
                                self.out.top_strings = strs;
                            }
                        }
                        _ => {}
                    }
                }
                if proto > 0 {
                    self.out.protocol = Some(proto);
                }
                return Ok(Some(self.out));
            }
        }
    }

    fn step(&mut self, input: &mut Input<'_>, op: u8, at: u64, proto: &mut u8) -> R<()> {
        let limit = |msg| PickleError::Limit {
            offset: self.base + at,
            msg,
        };
        match op {
            b'(' => {
                if self.marks.len() >= self.limits.max_marks {
                    return Err(limit("too many MARKs"));
                }
                self.marks.push(self.stack.len());
            }
            b'.' => {
                // STOP: the top of the stack is the result.
                if self.stack.is_empty() {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "STOP with an empty stack",
                    ));
                }
            }
            b'0' => {
                if self.stack.len() > self.fence() {
                    self.stack.pop();
                } else if self.marks.pop().is_none() {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "POP on an empty stack",
                    ));
                }
            }
            b'1' => {
                self.pop_mark(at)?;
            }
            b'2' => {
                let v = self.top(at)?.clone();
                self.stack.push(v);
            }
            b'F' => {
                let l = input.line(self.limits.max_line)?;
                let s = String::from_utf8_lossy(&l);
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| PickleError::malformed(self.base + at, "bad FLOAT"))?;
                self.stack.push(V::Float);
            }
            b'I' => {
                let l = input.line(self.limits.max_line)?;
                let v = match &l[..] {
                    b"00" => V::Bool(false),
                    b"01" => V::Bool(true),
                    _ => parse_int(&l)
                        .ok_or_else(|| PickleError::malformed(self.base + at, "bad INT"))?,
                };
                self.stack.push(v);
            }
            b'J' => {
                let b = input.array::<4>()?;
                self.stack.push(V::Int(i128::from(i32::from_le_bytes(b))));
            }
            b'K' => {
                let b = input.array::<1>()?;
                self.stack.push(V::Int(i128::from(b[0])));
            }
            b'M' => {
                let b = input.array::<2>()?;
                self.stack.push(V::Int(i128::from(u16::from_le_bytes(b))));
            }
            b'L' => {
                let mut l = input.line(self.limits.max_line)?;
                if l.last() == Some(&b'L') {
                    l.pop();
                }
                let v = parse_int(&l)
                    .ok_or_else(|| PickleError::malformed(self.base + at, "bad LONG"))?;
                self.stack.push(v);
            }
            0x8a => {
                let n = input.array::<1>()?[0] as usize;
                let d = input.exact(n)?;
                self.stack.push(long_le(&d));
            }
            0x8b => {
                let n = i32::from_le_bytes(input.array::<4>()?);
                if n < 0 {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "LONG4 with negative length",
                    ));
                }
                if n > 1 << 20 {
                    return Err(limit("LONG4 too long"));
                }
                let d = input.exact(n as usize)?;
                self.stack.push(long_le(&d));
            }
            b'N' => self.stack.push(V::None),
            0x88 => self.stack.push(V::Bool(true)),
            0x89 => self.stack.push(V::Bool(false)),
            b'G' => {
                input.array::<8>()?;
                self.stack.push(V::Float);
            }
            b'S' => {
                let l = input.line(self.limits.max_line)?;
                let s = decode_string_repr(&l)
                    .ok_or_else(|| PickleError::malformed(self.base + at, "bad STRING"))?;
                self.stack.push(V::Str(Rc::from(s)));
            }
            b'T' => {
                let n = i32::from_le_bytes(input.array::<4>()?);
                if n < 0 {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "BINSTRING with negative length",
                    ));
                }
                let v = self.bytes(input, n as u64, at)?;
                self.stack.push(bytes_to_str(v));
            }
            b'U' => {
                let n = input.array::<1>()?[0];
                let v = self.bytes(input, u64::from(n), at)?;
                self.stack.push(bytes_to_str(v));
            }
            b'V' => {
                let l = input.line(self.limits.max_line)?;
                self.stack
                    .push(V::Str(Rc::from(decode_raw_unicode_escape(&l))));
            }
            b'X' => {
                let n = u32::from_le_bytes(input.array::<4>()?);
                let v = self.text(input, u64::from(n), at)?;
                self.stack.push(v);
            }
            0x8c => {
                let n = input.array::<1>()?[0];
                let v = self.text(input, u64::from(n), at)?;
                self.stack.push(v);
            }
            0x8d => {
                let n = u64::from_le_bytes(input.array::<8>()?);
                let v = self.text(input, n, at)?;
                self.stack.push(v);
            }
            b'B' => {
                let n = u32::from_le_bytes(input.array::<4>()?);
                let v = self.bytes(input, u64::from(n), at)?;
                self.stack.push(v);
            }
            b'C' => {
                let n = input.array::<1>()?[0];
                let v = self.bytes(input, u64::from(n), at)?;
                self.stack.push(v);
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(input.array::<8>()?);
                let v = self.bytes(input, n, at)?;
                self.stack.push(v);
            }
            0x97 => {
                self.flag(
                    Severity::Info,
                    FindingKind::ParserDifferential,
                    at,
                    "NEXT_BUFFER: out-of-band buffer (plain pickle.load rejects this stream)"
                        .to_string(),
                    Vec::new(),
                );
                self.stack.push(V::Buffer);
            }
            0x98 => {
                self.top(at)?;
            }
            b')' => {
                let v = self.alloc(Obj::Tuple(Vec::new()), at)?;
                self.stack.push(v);
            }
            b't' => {
                let items = self.pop_mark(at)?;
                let v = self.alloc(Obj::Tuple(items), at)?;
                self.stack.push(v);
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop(at)?);
                }
                items.reverse();
                let v = self.alloc(Obj::Tuple(items), at)?;
                self.stack.push(v);
            }
            b']' => {
                let v = self.alloc(Obj::List(Vec::new()), at)?;
                self.stack.push(v);
            }
            b'l' => {
                let items = self.pop_mark(at)?;
                let v = self.alloc(Obj::List(items), at)?;
                self.stack.push(v);
            }
            b'}' => {
                let v = self.alloc(Obj::Dict(Vec::new()), at)?;
                self.stack.push(v);
            }
            b'd' => {
                let items = self.pop_mark(at)?;
                if items.len() % 2 != 0 {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "DICT with an odd number of items",
                    ));
                }
                let pairs = pairs(items);
                let v = self.alloc(Obj::Dict(pairs), at)?;
                self.stack.push(v);
            }
            0x8f => {
                let v = self.alloc(Obj::Set(Vec::new()), at)?;
                self.stack.push(v);
            }
            0x91 => {
                let items = self.pop_mark(at)?;
                let v = self.alloc(Obj::Set(items), at)?;
                self.stack.push(v);
            }
            b'a' => {
                let x = self.pop(at)?;
                let target = self.top(at)?.clone();
                self.extend(&target, vec![x], at, "APPEND")?;
            }
            b'e' => {
                let items = self.pop_mark(at)?;
                let target = self.top(at)?.clone();
                self.extend(&target, items, at, "APPENDS")?;
            }
            0x90 => {
                let items = self.pop_mark(at)?;
                let target = self.top(at)?.clone();
                self.extend(&target, items, at, "ADDITEMS")?;
            }
            b's' => {
                let v = self.pop(at)?;
                let k = self.pop(at)?;
                let target = self.top(at)?.clone();
                self.set_items(&target, vec![(k, v)], at, "SETITEM")?;
            }
            b'u' => {
                let items = self.pop_mark(at)?;
                if items.len() % 2 != 0 {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "SETITEMS with an odd number of items",
                    ));
                }
                let target = self.top(at)?.clone();
                self.set_items(&target, pairs(items), at, "SETITEMS")?;
            }
            b'g' => {
                let l = input.line(self.limits.max_line)?;
                let k = parse_u64(&l)
                    .ok_or_else(|| PickleError::malformed(self.base + at, "bad GET index"))?;
                self.memo_get(k, at)?;
            }
            b'h' => {
                let k = input.array::<1>()?[0];
                self.memo_get(u64::from(k), at)?;
            }
            b'j' => {
                let k = u32::from_le_bytes(input.array::<4>()?);
                self.memo_get(u64::from(k), at)?;
            }
            b'p' => {
                let l = input.line(self.limits.max_line)?;
                let k = parse_u64(&l)
                    .ok_or_else(|| PickleError::malformed(self.base + at, "bad PUT index"))?;
                let v = self.top(at)?.clone();
                self.memo_put(k, v, at)?;
            }
            b'q' => {
                let k = input.array::<1>()?[0];
                let v = self.top(at)?.clone();
                self.memo_put(u64::from(k), v, at)?;
            }
            b'r' => {
                let k = u32::from_le_bytes(input.array::<4>()?);
                let v = self.top(at)?.clone();
                self.memo_put(u64::from(k), v, at)?;
            }
            0x94 => {
                let k = self.memo.len() as u64;
                let v = self.top(at)?.clone();
                self.memo_put(k, v, at)?;
            }
            b'c' => {
                let (m, n) = self.global_line(input, at, *proto)?;
                let v = self.import(&m, &n, at, "GLOBAL");
                self.stack.push(v);
            }
            0x93 => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                match (&module, &name) {
                    (V::Str(m), V::Str(n)) => {
                        let (m, n) = (m.to_string(), n.to_string());
                        let v = self.import(&m, &n, at, "STACK_GLOBAL");
                        self.stack.push(v);
                    }
                    _ => {
                        let msg = format!(
                            "STACK_GLOBAL with computed operands {} . {}: the import cannot be resolved statically",
                            self.render(&module, 2),
                            self.render(&name, 2)
                        );
                        let mut chain = Vec::new();
                        self.provenance(&module, &mut chain, 4);
                        self.provenance(&name, &mut chain, 4);
                        self.flag(
                            Severity::Dangerous,
                            FindingKind::PickleDynamicImport,
                            at,
                            msg,
                            chain,
                        );
                        self.stack.push(V::Global(Rc::new(Global {
                            module: "<dynamic>".into(),
                            name: "<dynamic>".into(),
                            offset: at,
                            rule: None,
                        })));
                    }
                }
            }
            0x82..=0x84 => {
                let code = match op {
                    0x82 => u32::from(input.array::<1>()?[0]),
                    0x83 => u32::from(u16::from_le_bytes(input.array::<2>()?)),
                    _ => u32::from_le_bytes(input.array::<4>()?),
                };
                let msg = format!(
                    "EXT opcode imports extension code {code} from copyreg's registry: not resolvable statically"
                );
                self.flag(
                    Severity::Suspicious,
                    FindingKind::PickleDynamicImport,
                    at,
                    msg,
                    Vec::new(),
                );
                self.stack.push(V::Global(Rc::new(Global {
                    module: "<copyreg-extension>".into(),
                    name: code.to_string(),
                    offset: at,
                    rule: None,
                })));
            }
            b'R' => {
                let args = self.pop(at)?;
                let func = self.pop(at)?;
                let v = self.call(func, args, at, "REDUCE")?;
                self.stack.push(v);
            }
            b'i' => {
                let (m, n) = self.global_line(input, at, *proto)?;
                let items = self.pop_mark(at)?;
                let cls = self.import(&m, &n, at, "INST");
                let args = self.alloc(Obj::Tuple(items), at)?;
                let v = self.call(cls, args, at, "INST")?;
                self.stack.push(v);
            }
            b'o' => {
                let mut items = self.pop_mark(at)?;
                if items.is_empty() {
                    return Err(PickleError::malformed(
                        self.base + at,
                        "OBJ without a class",
                    ));
                }
                let cls = items.remove(0);
                let args = self.alloc(Obj::Tuple(items), at)?;
                let v = self.call(cls, args, at, "OBJ")?;
                self.stack.push(v);
            }
            0x81 => {
                let args = self.pop(at)?;
                let cls = self.pop(at)?;
                let v = self.call(cls, args, at, "NEWOBJ")?;
                self.stack.push(v);
            }
            0x92 => {
                // Keyword arguments go to `__new__` of the same class: the class decides.
                let _kwargs = self.pop(at)?;
                let args = self.pop(at)?;
                let cls = self.pop(at)?;
                let v = self.call(cls, args, at, "NEWOBJ_EX")?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop(at)?;
                let target = self.top(at)?.clone();
                self.mutate(&target, at, "BUILD");
                if self.is_joblib_wrapper(&target) {
                    // joblib commits the frame before writing an array: the array bytes follow
                    // the frame, never sit inside it.
                    if self.frame_end.is_some_and(|end| input.pos() < end) {
                        return Err(PickleError::malformed(
                            self.base + at,
                            "joblib array data inside a pickle frame",
                        ));
                    }
                    self.frame_end = None;
                    self.joblib_array(input, &state, at)?;
                }
            }
            b'P' => {
                let l = input.line(self.limits.max_line)?;
                let pid = V::Str(Rc::from(String::from_utf8_lossy(&l).into_owned()));
                let v = self.alloc(Obj::Persistent(pid), at)?;
                self.stack.push(v);
            }
            b'Q' => {
                let pid = self.pop(at)?;
                self.record_storage(&pid);
                let v = self.alloc(Obj::Persistent(pid), at)?;
                self.stack.push(v);
            }
            0x80 => {
                let v = input.array::<1>()?[0];
                if v > 5 {
                    return Err(PickleError::malformed(
                        self.base + at,
                        format!("unsupported pickle protocol {v}"),
                    ));
                }
                *proto = v;
            }
            0x95 => {
                let n = u64::from_le_bytes(input.array::<8>()?);
                if let Some(end) = self.frame_end
                    && input.pos() <= end
                    && !self.frame_differential_reported
                {
                    self.frame_differential_reported = true;
                    self.flag(
                        Severity::Suspicious,
                        FindingKind::ParserDifferential,
                        at,
                        "FRAME starts inside another frame: unpicklers disagree".to_string(),
                        Vec::new(),
                    );
                }
                self.frame_end = Some(input.pos().saturating_add(n));
            }
            other => {
                return Err(PickleError::malformed(
                    self.base + at,
                    format!("invalid opcode 0x{other:02x}"),
                ));
            }
        }
        Ok(())
    }

    fn is_joblib_wrapper(&self, v: &V) -> bool {
        matches!(self.obj(v), Some(Obj::Call { func: V::Global(g), allowed: true, .. })
            if g.name == "NumpyArrayWrapper" && g.module.ends_with("joblib.numpy_pickle"))
    }

    /// The value under `key` in a dict value.
    fn dict_get(&self, d: &V, key: &str) -> Option<V> {
        match self.obj(d) {
            Some(Obj::Dict(items)) => items
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, V::Str(s) if &**s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// joblib writes each array's bytes into the stream right after the BUILD of its
    /// `NumpyArrayWrapper` (`NumpyArrayWrapper.read_array`): an alignment padding when the state
    /// has `numpy_array_alignment_bytes`, then `prod(shape) * itemsize` raw bytes, or, for object
    /// arrays, a whole nested pickle. Skip the bytes; emulate the nested pickle.
    fn joblib_array(&mut self, input: &mut Input<'_>, state: &V, at: u64) -> R<()> {
        let bad =
            |msg: &str| PickleError::malformed(self.base + at, format!("joblib array: {msg}"));
        let shape = self
            .dict_get(state, "shape")
            .ok_or_else(|| bad("no shape"))?;
        let mut count: u64 = 1;
        for d in self.items(&shape) {
            let V::Int(d) = d else {
                return Err(bad("shape is not integers"));
            };
            let d = u64::try_from(*d).map_err(|_| bad("negative dimension"))?;
            count = count.checked_mul(d).ok_or_else(|| bad("shape overflows"))?;
        }
        let dtype = self
            .dict_get(state, "dtype")
            .ok_or_else(|| bad("no dtype"))?;
        let descr = match self.obj(&dtype) {
            Some(Obj::Call {
                func: V::Global(g),
                args,
                allowed: true,
                ..
            }) if g.name == "dtype" => match self.items(args).first() {
                Some(V::Str(s)) => s.to_string(),
                _ => return Err(bad("dtype without a type string")),
            },
            _ => return Err(bad("dtype is not numpy.dtype(...)")),
        };
        if descr.starts_with('O') {
            if self.depth >= 8 {
                return Err(PickleError::Limit {
                    offset: self.base + at,
                    msg: "joblib object arrays nested too deeply",
                });
            }
            let mut inner = Vm::new(&mut *self.sink, self.policy, 0);
            inner.depth = self.depth + 1;
            match inner.run(input)? {
                Some(o) => self.out.nested.extend(o.nested),
                None => return Err(PickleError::Truncated(input.pos())),
            }
            return Ok(());
        }
        let item = crate::formats::numpy::itemsize(&descr).ok_or_else(|| bad("unknown dtype"))?;
        if self
            .dict_get(state, "numpy_array_alignment_bytes")
            .is_some_and(|v| !matches!(v, V::None))
        {
            let pad = input.array::<1>()?[0];
            input.skip(u64::from(pad))?;
        }
        input.skip(
            count
                .checked_mul(item)
                .ok_or_else(|| bad("size overflows"))?,
        )
    }

    fn extend(&mut self, target: &V, items: Vec<V>, at: u64, op: &str) -> R<()> {
        self.count(items.len(), at)?;
        if let V::Obj(i) = target
            && let Some(Obj::List(v) | Obj::Set(v)) = self.arena.get_mut(*i)
        {
            v.extend(items);
            return Ok(());
        }
        self.mutate(target, at, op);
        Ok(())
    }

    fn set_items(&mut self, target: &V, items: Vec<(V, V)>, at: u64, op: &str) -> R<()> {
        self.count(items.len() * 2, at)?;
        if let V::Obj(i) = target
            && let Some(Obj::Dict(v)) = self.arena.get_mut(*i)
        {
            v.extend(items);
            return Ok(());
        }
        self.mutate(target, at, op);
        Ok(())
    }

    fn record_storage(&mut self, pid: &V) {
        let items = self.items(pid);
        if items.len() < 5 {
            return;
        }
        let (V::Str(tag), V::Global(ty), V::Str(key)) = (&items[0], &items[1], &items[2]) else {
            return;
        };
        if &**tag != "storage" {
            return;
        }
        let numel = match items[4] {
            V::Int(n) => u64::try_from(n).ok(),
            _ => None,
        };
        let s = StorageRef {
            type_name: ty.name.clone(),
            key: key.to_string(),
            numel,
        };
        self.out.storages.push(s);
    }
}

fn pairs(items: Vec<V>) -> Vec<(V, V)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

fn bytes_to_str(v: V) -> V {
    // Python 3 decodes protocol-2 byte strings to `str` (ASCII by default).
    match v {
        V::Bytes(_, Some(d)) => V::Str(Rc::from(String::from_utf8_lossy(&d).into_owned())),
        V::Bytes(_, None) => V::Str(Rc::from("<long string>")),
        other => other,
    }
}

fn parse_int(l: &[u8]) -> Option<V> {
    let s = std::str::from_utf8(l).ok()?.trim();
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    Some(
        s.replace('_', "")
            .parse::<i128>()
            .map(V::Int)
            .unwrap_or(V::BigInt),
    )
}

fn parse_u64(l: &[u8]) -> Option<u64> {
    std::str::from_utf8(l).ok()?.trim().parse().ok()
}

fn long_le(d: &[u8]) -> V {
    if d.is_empty() {
        return V::Int(0);
    }
    if d.len() > 16 {
        return V::BigInt;
    }
    let neg = d[d.len() - 1] & 0x80 != 0;
    let mut b = if neg { [0xffu8; 16] } else { [0u8; 16] };
    b[..d.len()].copy_from_slice(d);
    V::Int(i128::from_le_bytes(b))
}

/// Decodes a protocol-0 STRING operand: a Python repr in single or double quotes.
fn decode_string_repr(l: &[u8]) -> Option<String> {
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    if l.len() < 2 {
        return None;
    }
    let q = l[0];
    if (q != b'\'' && q != b'"') || l[l.len() - 1] != q {
        return None;
    }
    let body = &l[1..l.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        let e = *body.get(i)?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\n' => {}
            b'x' => {
                let h = body.get(i..i + 2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                let mut k = 0;
                while k < 2 && i < body.len() && (b'0'..=b'7').contains(&body[i]) {
                    v = v * 8 + u32::from(body[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Decodes a protocol-0 UNICODE operand (raw-unicode-escape).
fn decode_raw_unicode_escape(l: &[u8]) -> String {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while i < l.len() {
        let c = l[i];
        if c == b'\\' && i + 1 < l.len() && (l[i + 1] == b'u' || l[i + 1] == b'U') {
            let n = if l[i + 1] == b'u' { 4 } else { 8 };
            if let Some(h) = l.get(i + 2..i + 2 + n)
                && let Ok(s) = std::str::from_utf8(h)
                && let Ok(v) = u32::from_str_radix(s, 16)
                && let Some(ch) = char::from_u32(v)
            {
                out.push(ch);
                i += 2 + n;
                continue;
            }
        }
        out.push(char::from(c));
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_repr_decoding() {
        assert_eq!(decode_string_repr(b"'os'").as_deref(), Some("os"));
        assert_eq!(decode_string_repr(b"'a\\x41\\n'").as_deref(), Some("aA\n"));
        assert_eq!(decode_string_repr(b"\"q'\"").as_deref(), Some("q'"));
        assert_eq!(decode_string_repr(b"'open").as_deref(), None);
        assert_eq!(decode_raw_unicode_escape(b"sy\\u0073tem"), "system");
    }

    #[test]
    fn long_decoding() {
        assert!(matches!(long_le(&[0xff]), V::Int(-1)));
        assert!(matches!(long_le(&[0x01, 0x00]), V::Int(1)));
        assert!(matches!(long_le(&[0; 17]), V::BigInt));
    }
}
