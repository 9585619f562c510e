//! `palisade-scan` end to end: the built standalone binary on files in a temporary directory.

mod cases;

#[test]
fn exit_codes_reports_and_errors() {
    cases::exit_codes_reports_and_errors(env!("CARGO_BIN_EXE_palisade-scan").as_ref(), &[]);
}
