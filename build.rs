//! Generates the C header `mario.h` with cbindgen from `src/ffi/` and the
//! hand-written parts in `cbindgen.toml`, with the library's version from
//! `Cargo.toml` (`MARIO_VERSION_*`), and gives the shared library its
//! soname, `libmario.so.<major>`.
//!
//! The header is always written to `$OUT_DIR/mario.h`; the test suite
//! compares it with the committed `include/mario/mario.h` and fails when the
//! committed one is stale. `make header` (which sets `MARIO_WRITE_HEADER=1`)
//! writes it into `include/mario/` as well.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=MARIO_WRITE_HEADER");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // The version lives in Cargo.toml alone.
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let (major, minor, patch) = (
        var("CARGO_PKG_VERSION_MAJOR"),
        var("CARGO_PKG_VERSION_MINOR"),
        var("CARGO_PKG_VERSION_PATCH"),
    );
    let version = format!(
        "\n/* The library's version (its ABI major is the soname's: libmario.so.{major}). */\n\
         #define MARIO_VERSION_MAJOR {major}\n#define MARIO_VERSION_MINOR {minor}\n\
         #define MARIO_VERSION_PATCH {patch}\n#define MARIO_VERSION_STRING \"{major}.{minor}.{patch}\"\n"
    );
    config.after_includes = Some(config.after_includes.unwrap_or_default() + &version);
    // An application linked with -lmario records the soname and needs only
    // a library of the same major at run time.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmario.so.{major}");
    let bindings = match cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
    {
        Ok(b) => b,
        Err(e) => panic!("cbindgen failed: {e}"),
    };
    bindings.write_to_file(out.join("mario.h"));
    if std::env::var_os("MARIO_WRITE_HEADER").is_some_and(|v| v != "0") {
        bindings.write_to_file(dir.join("include/mario/mario.h"));
    }
}
