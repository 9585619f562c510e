//! SARIF 2.1.0 output for code-scanning tools: one run, one rule per [`FindingKind`], one result
//! per finding of severity `suspicious` or above (`info` findings are left out).
//!
//! Levels: `dangerous` and `error` (unscannable) map to `error`, `suspicious` to `warning`.

use serde::Serialize;

use crate::report::{FindingKind, ScanReport, Severity};

/// The SARIF schema this output follows.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// A SARIF log.
#[derive(Debug, Serialize)]
pub struct Log {
    /// The schema URI.
    #[serde(rename = "$schema")]
    pub schema: &'static str,
    /// Always `2.1.0`.
    pub version: &'static str,
    /// One run.
    pub runs: Vec<Run>,
}

/// One run of the tool.
#[derive(Debug, Serialize)]
pub struct Run {
    /// The tool.
    pub tool: Tool,
    /// What it found.
    pub results: Vec<SarifResult>,
}

/// The tool.
#[derive(Debug, Serialize)]
pub struct Tool {
    /// Its driver.
    pub driver: Driver,
}

/// The tool's driver.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Driver {
    /// `palisade`.
    pub name: &'static str,
    /// Version.
    pub version: String,
    /// Where to read about it.
    pub information_uri: &'static str,
    /// One rule per finding kind.
    pub rules: Vec<Rule>,
}

/// A rule (a finding kind).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Stable id (`pickle-call`).
    pub id: &'static str,
    /// Name.
    pub name: &'static str,
    /// One-line description.
    pub short_description: Text,
    /// Default level.
    pub default_configuration: Config,
}

/// A rule's configuration.
#[derive(Debug, Serialize)]
pub struct Config {
    /// `error`, `warning` or `note`.
    pub level: &'static str,
}

/// A message.
#[derive(Debug, Serialize)]
pub struct Text {
    /// Plain text.
    pub text: String,
}

/// One result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SarifResult {
    /// The rule id.
    pub rule_id: &'static str,
    /// Index of the rule in `driver.rules`.
    pub rule_index: usize,
    /// `error`, `warning` or `note`.
    pub level: &'static str,
    /// What was found.
    pub message: Text,
    /// Where.
    pub locations: Vec<Location>,
}

/// A location.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// The file and region.
    pub physical_location: PhysicalLocation,
}

/// A file and a region in it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalLocation {
    /// The file.
    pub artifact_location: ArtifactLocation,
    /// The byte offset, when known (and not inside a compressed member).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
}

/// A file.
#[derive(Debug, Serialize)]
pub struct ArtifactLocation {
    /// URI reference of the file.
    pub uri: String,
}

/// A byte region.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    /// Offset of the first byte.
    pub byte_offset: u64,
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Dangerous | Severity::Error => "error",
        Severity::Suspicious => "warning",
        Severity::Info => "note",
    }
}

fn default_level(k: FindingKind) -> &'static str {
    match k {
        FindingKind::PickleImport
        | FindingKind::ParserDifferential
        | FindingKind::ContainerAnomaly
        | FindingKind::OnnxCustomOp => "warning",
        _ => "error",
    }
}

/// Percent-encodes a path into a URI reference (unreserved characters and `/` kept).
fn uri(path: &std::path::Path) -> String {
    let s = path.to_string_lossy().replace('\\', "/");
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Converts a report to a SARIF log.
pub fn to_sarif(report: &ScanReport) -> Log {
    let rules = FindingKind::ALL
        .iter()
        .map(|k| Rule {
            id: k.id(),
            name: k.id(),
            short_description: Text {
                text: k.description().to_string(),
            },
            default_configuration: Config {
                level: default_level(*k),
            },
        })
        .collect();
    let mut results = Vec::new();
    for f in &report.files {
        for x in &f.findings {
            if x.severity == Severity::Info {
                continue;
            }
            let rule_index = FindingKind::ALL
                .iter()
                .position(|k| *k == x.kind)
                .unwrap_or(0);
            let mut text = if x.member.is_empty() {
                x.message.clone()
            } else {
                format!("[{}] {}", x.member, x.message)
            };
            if !x.chain.is_empty() {
                text.push_str(" (via: ");
                text.push_str(&x.chain.join(" -> "));
                text.push(')');
            }
            let region = if x.member.is_empty() {
                x.offset.map(|o| Region { byte_offset: o })
            } else {
                None
            };
            results.push(SarifResult {
                rule_id: x.kind.id(),
                rule_index,
                level: level(x.severity),
                message: Text { text },
                locations: vec![Location {
                    physical_location: PhysicalLocation {
                        artifact_location: ArtifactLocation { uri: uri(&f.path) },
                        region,
                    },
                }],
            });
        }
    }
    Log {
        schema: SCHEMA,
        version: "2.1.0",
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: "palisade",
                    version: report.scanner_version.clone(),
                    information_uri: "https://example.invalid/palisade",
                    rules,
                },
            },
            results,
        }],
    }
}
