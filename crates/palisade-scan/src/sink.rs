//! Where scanners put what they find.

use crate::report::{Finding, FindingKind, Severity};

/// Collects the findings for one file. `member` is the current location inside the file
/// (archive member, embedded object), prefixed to every finding pushed through it.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub(crate) findings: Vec<Finding>,
    /// Pickle imports outside the allowlist whose module is a valid Python dotted name (an
    /// import Python could actually perform).
    pub(crate) importable_imports: usize,
    member: String,
}

impl Sink {
    pub(crate) fn new() -> Self {
        Sink::default()
    }

    /// The current member path ("" for the file itself).
    pub(crate) fn member(&self) -> &str {
        &self.member
    }

    /// Runs `f` with `name` appended to the member path (`outer/inner`).
    pub(crate) fn within<T>(&mut self, name: &str, f: impl FnOnce(&mut Sink) -> T) -> T {
        let saved = self.member.len();
        if !self.member.is_empty() {
            self.member.push('!');
        }
        self.member.push_str(name);
        let r = f(self);
        self.member.truncate(saved);
        r
    }

    /// Records a finding at the current member.
    pub(crate) fn push(
        &mut self,
        severity: Severity,
        kind: FindingKind,
        offset: Option<u64>,
        message: impl Into<String>,
        chain: Vec<String>,
    ) {
        self.findings.push(Finding {
            severity,
            kind,
            member: self.member.clone(),
            offset,
            message: message.into(),
            chain,
        });
    }

    /// Records an error finding (the thing could not be analysed).
    pub(crate) fn error(
        &mut self,
        kind: FindingKind,
        offset: Option<u64>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, kind, offset, message, Vec::new());
    }

    /// Number of findings so far.
    pub(crate) fn len(&self) -> usize {
        self.findings.len()
    }

    /// Whether any finding since index `from` is dangerous.
    pub(crate) fn any_dangerous_since(&self, from: usize) -> bool {
        self.findings
            .get(from..)
            .is_some_and(|s| s.iter().any(|f| f.severity == Severity::Dangerous))
    }
}
