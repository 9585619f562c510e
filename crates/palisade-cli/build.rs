//! Link flags for the `palisade` binary.
//!
//! The binary is position independent (the kernel loads it at a random address) and carries
//! ~90,000 relative relocations — vtables, string tables, panic locations of every crate linked
//! in. As RELA entries they are 2.1 MB that the dynamic loader reads at every start; packed as
//! DT_RELR (`-z pack-relative-relocs`), 21 KB. Measured on a 2-core VM
//! (`hyperfine -N 'palisade --version'`): 3.7 ms → 3.3 ms per start, which a `palisade scan` of
//! a directory of small files pays in full.
//!
//! The linker marks such a binary as needing `GLIBC_ABI_DT_RELR`, which glibc provides from 2.36
//! on. So the flag is passed only when building on and for x86-64 or aarch64 Linux whose glibc
//! (`getconf GNU_LIBC_VERSION`) is 2.36 or later; elsewhere, and with `PALISADE_NO_RELR=1`, the
//! binary is linked the classic way.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PALISADE_NO_RELR");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let arch = matches!(var("CARGO_CFG_TARGET_ARCH").as_str(), "x86_64" | "aarch64");
    let opted_out = std::env::var_os("PALISADE_NO_RELR").is_some_and(|v| v != "0");
    if native && linux_gnu && arch && !opted_out && glibc().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The version of this machine's glibc, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = s.trim().strip_prefix("glibc ")?.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
