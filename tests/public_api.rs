//! The crate's public Rust API, item by item, stays what
//! `tests/public-api.txt` says, so that a change to it is deliberate.
//!
//! The test builds the rustdoc JSON of the library with its default
//! features (as a user of the crate gets it; not `harness`), renders each
//! public item on a line with the `public-api` crate, and compares the lines
//! with the committed snapshot. An added, removed or changed item (a
//! signature, a trait implementation, an auto trait such as `Send`) fails
//! it with the lines that differ.
//!
//! After a deliberate change, regenerate the snapshot and commit it with the
//! change:
//!
//! ```sh
//! UPDATE_PUBLIC_API=1 cargo test --test public_api
//! ```
//!
//! rustdoc's JSON output is unstable: the toolchain that runs the tests
//! (stable is fine) builds it with `RUSTC_BOOTSTRAP=1`, into
//! `target/public-api` (the outer `cargo test` holds the lock of
//! `target/debug`). `PUBLIC_API_TOOLCHAIN=nightly` builds it with another
//! rustup toolchain instead. The JSON's `format_version` must be the one
//! the pinned `public-api` reads (`rustdoc_types::FORMAT_VERSION`); when a
//! new toolchain emits another, the test says so: move `public-api` (in
//! Cargo.toml's dev-dependencies) to the release that reads it, then
//! regenerate the snapshot and review its diff.

use std::collections::BTreeSet;
use std::path::Path;

const SNAPSHOT: &str = "tests/public-api.txt";
const UPDATE: &str = "UPDATE_PUBLIC_API";

/// The `format_version` field of a rustdoc JSON document (the last field
/// rustdoc writes; read without parsing the whole document).
fn format_version(json: &str) -> Option<u32> {
    let key = "\"format_version\":";
    let at = json.rfind(key)? + key.len();
    let digits: String = json[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The public API of the library with its default features, one item a
/// line, sorted.
fn current_api(root: &Path) -> String {
    let mut build = rustdoc_json::Builder::default()
        .manifest_path(root.join("Cargo.toml"))
        .package("mario")
        .target_dir(root.join("target/public-api"))
        .env("RUSTC_BOOTSTRAP", "1")
        .quiet(true);
    build = match std::env::var("PUBLIC_API_TOOLCHAIN") {
        Ok(t) if !t.is_empty() => build.toolchain(t),
        _ => build.clear_toolchain(),
    };
    let json = build.build().unwrap_or_else(|e| {
        panic!("building the rustdoc JSON of the crate (cargo rustdoc -- --output-format json) failed: {e}")
    });
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let wanted = public_api::rustdoc_types::FORMAT_VERSION;
    let got = format_version(&text);
    assert_eq!(
        got,
        Some(wanted),
        "{}: rustdoc JSON format_version {got:?}, but the public-api dev-dependency reads \
         version {wanted}. Build with a toolchain that emits {wanted} \
         (PUBLIC_API_TOOLCHAIN=<rustup toolchain>), or move public-api in Cargo.toml to the \
         release that reads {got:?}, then regenerate the snapshot ({UPDATE}=1 cargo test --test \
         public_api) and review its diff.",
        json.display()
    );
    let api = public_api::Builder::from_rustdoc_json(&json)
        // `impl<T> From<T> for T` and the like: every type has them.
        .omit_blanket_impls(true)
        .build()
        .unwrap_or_else(|e| panic!("public-api could not read {}: {e}", json.display()));
    let mut out = String::new();
    for item in api.items() {
        out.push_str(&item.to_string());
        out.push('\n');
    }
    out
}

#[test]
fn public_api_is_the_snapshot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(SNAPSHOT);
    let current = current_api(root);
    if std::env::var_os(UPDATE).is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &current).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("wrote {SNAPSHOT} ({} items)", current.lines().count());
        return;
    }
    let snapshot = std::fs::read_to_string(&path).unwrap_or_default();
    if snapshot == current {
        return;
    }
    let old: BTreeSet<&str> = snapshot.lines().collect();
    let new: BTreeSet<&str> = current.lines().collect();
    let mut diff = String::new();
    for line in old.difference(&new) {
        diff.push_str(&format!("- {line}\n"));
    }
    for line in new.difference(&old) {
        diff.push_str(&format!("+ {line}\n"));
    }
    if diff.is_empty() {
        diff.push_str("(the same items in another order)\n");
    }
    panic!(
        "The public API of the crate is not {SNAPSHOT} (- only in the snapshot, + only in the \
         code):\n\n{diff}\nIf the change is deliberate, regenerate the snapshot and commit it with \
         the change:\n\n    {UPDATE}=1 cargo test --test public_api\n\nand consider what it \
         means for the version (a removed or changed item is a breaking change).\n"
    );
}

#[test]
fn format_version_is_read() {
    assert_eq!(format_version(r#"{"index":{},"format_version":57}"#), Some(57));
    assert_eq!(format_version(r#"{"format_version": 9 }"#), Some(9));
    assert_eq!(format_version("{}"), None);
}
