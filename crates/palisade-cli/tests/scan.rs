//! `palisade scan` end to end: the built binary on files in a temporary directory, with the same
//! cases as the standalone `palisade-scan` (they live beside that binary's test).

#[path = "../../palisade-scan-cli/tests/cases/mod.rs"]
mod cases;

#[test]
fn exit_codes_and_formats() {
    cases::exit_codes_reports_and_errors(env!("CARGO_BIN_EXE_palisade").as_ref(), &["scan"]);
}
