//! libmario installed as distributions and build systems expect: `make
//! install DESTDIR=...` lays out the headers, `libmario.a`, the real file
//! `libmario.so.X.Y.Z` with its soname link and development link, and
//! `mario.pc`; the sample server builds from c-examples/ with nothing but
//! `pkg-config`, linked shared and linked static, and answers LOGIN; a C++
//! program builds and runs against it; `make uninstall` removes it all. The
//! shared library exports exactly the C interface of the header, and the
//! version agrees everywhere.

mod common;
mod protocol;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use protocol::*;

/// `make install` into a fresh DESTDIR with PREFIX=/usr/local (once per
/// test binary); returns the DESTDIR.
fn installed() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        ensure_built();
        let dest = scratch_dir("install");
        make(&[
            "install",
            "PREFIX=/usr/local",
            &format!("DESTDIR={}", dest.display()),
        ]);
        dest
    })
    .clone()
}

/// `pkg-config ARGS mario` against the DESTDIR `dest` (its paths prefixed
/// with `dest`, as a sysroot); the words it printed.
fn pkg_config(dest: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("mario")
        .env("PKG_CONFIG_PATH", dest.join("usr/local/lib/pkgconfig"))
        .env("PKG_CONFIG_SYSROOT_DIR", dest)
        .output()
        .expect("pkg-config (Debian: apt-get install pkgconf)");
    assert!(
        out.status.success(),
        "pkg-config {args:?} mario: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn major() -> &'static str {
    version().split('.').next().unwrap()
}

/// What `readelf -d` says of `file`.
fn dynamic_section(file: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(file)
        .output()
        .expect("readelf");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Compiles c-examples/ into `out` with the flags pkg-config gives.
fn build_maritcp(dest: &Path, out: &Path, libs: &[String]) {
    let ex = root().join("c-examples");
    let st = Command::new("gcc")
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-DLINUX64"])
        .args(pkg_config(dest, &["--cflags"]))
        .arg("-o")
        .arg(out)
        .args(["mario.c", "config.c", "function.c", "collect.c"].map(|f| ex.join(f)))
        .args(libs)
        .status()
        .expect("gcc");
    assert!(st.success(), "building maritcp with {libs:?} failed");
}

#[test]
fn make_install_lays_out_a_c_library_with_its_soname_links_and_pkg_config_file() {
    let dest = installed();
    let lib = dest.join("usr/local/lib");
    let real = format!("libmario.so.{}", version());
    assert!(lib.join(&real).is_file(), "no {real}");
    let link = |name: &str| std::fs::read_link(lib.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(link(&format!("libmario.so.{}", major())), PathBuf::from(&real));
    assert_eq!(
        link("libmario.so"),
        PathBuf::from(format!("libmario.so.{}", major()))
    );
    assert!(lib.join("libmario.a").is_file());
    assert!(dest.join("usr/local/include/mario/mario.h").is_file());
    assert!(dest.join("usr/local/include/mario/mario_akg.h").is_file());
    let dynamic = dynamic_section(&lib.join(&real));
    assert!(
        dynamic.contains(&format!("Library soname: [libmario.so.{}]", major())),
        "{dynamic}"
    );
    let inc = dest.join("usr/local/include");
    assert_eq!(
        pkg_config(&dest, &["--cflags"]),
        vec![format!("-I{}", inc.display())]
    );
    let l = format!("-L{}", lib.display());
    assert_eq!(pkg_config(&dest, &["--libs"]), vec![l.clone(), "-lmario".into()]);
    assert_eq!(
        pkg_config(&dest, &["--static", "--libs"]),
        vec![
            l,
            "-lmario".into(),
            "-lpthread".into(),
            "-ldl".into(),
            "-lm".into()
        ]
    );
    assert_eq!(pkg_config(&dest, &["--modversion"]), vec![version().to_string()]);
}

#[test]
fn the_sample_server_builds_from_pkg_config_shared_and_static_and_answers_login() {
    let dest = installed();
    let lib = dest.join("usr/local/lib");
    let dir = scratch_dir("pkg-maritcp");
    // Shared: the program needs libmario.so.<major>, found at run time.
    let shared = dir.join("maritcp-shared");
    build_maritcp(&dest, &shared, &pkg_config(&dest, &["--libs"]));
    let needed = dynamic_section(&shared);
    assert!(
        needed.contains(&format!("Shared library: [libmario.so.{}]", major())),
        "{needed}"
    );
    // Static: pkg-config's static line, with libmario taken from its
    // archive (the linker prefers the .so when both are there).
    let libs: Vec<String> = pkg_config(&dest, &["--static", "--libs"])
        .into_iter()
        .flat_map(|w| {
            if w == "-lmario" {
                vec!["-Wl,-Bstatic".into(), w, "-Wl,-Bdynamic".into()]
            } else {
                vec![w]
            }
        })
        .collect();
    let fixed = dir.join("maritcp-static");
    build_maritcp(&dest, &fixed, &libs);
    assert!(
        !dynamic_section(&fixed).contains("libmario"),
        "the static build needs libmario.so"
    );
    for (bin, env) in [
        (&shared, vec![("LD_LIBRARY_PATH", lib.display().to_string())]),
        (&fixed, vec![]),
    ] {
        let p = Proc::maritcp_at(bin, "TIMEOUT 0\nWORKERNUM 2\nCONNNUM 64", &env);
        check_login_exact(p.port);
        p.stop_clean();
    }
}

#[test]
fn a_cplusplus_program_builds_with_pkg_config_and_runs() {
    let dest = installed();
    let dir = scratch_dir("pkg-cxx");
    let src = dir.join("version.cc");
    std::fs::write(
        &src,
        r#"#include "mario/mario.h"
#include <cstring>
#include <string>
int main() {
    std::string v(mario_version());
    if (v != MARIO_VERSION_STRING) return 1;
    if (v != std::to_string(MARIO_VERSION_MAJOR) + "." + std::to_string(MARIO_VERSION_MINOR) + "."
            + std::to_string(MARIO_VERSION_PATCH)) return 2;
    SERVER *s = init_server(0, 1, 16, 0, 0);
    if (s == nullptr) return 3;
    mario_stats st;
    if (mario_get_stats(s, &st, sizeof st) != (sint32) sizeof st || st.accepted != 0) return 4;
    std::printf("%s\n", v.c_str());
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("version");
    let st = Command::new("g++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(pkg_config(&dest, &["--cflags", "--libs"]))
        .status()
        .expect("g++");
    assert!(st.success(), "the C++ program does not build");
    let out = Command::new(&exe)
        .env("LD_LIBRARY_PATH", dest.join("usr/local/lib"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), version());
}

/// The functions and variables the header declares.
fn header_symbols() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("include/mario/mario.h")).unwrap();
    // The prototypes sit inside the `extern "C"` block cbindgen writes.
    let start = text.find("extern \"C\" {").expect("extern \"C\" block");
    let end = text[start..].find("#ifdef __cplusplus\n}").expect("its end") + start;
    // Comments and preprocessor lines out, then one declaration per `;`.
    let mut body = String::new();
    let mut rest = &text[start + "extern \"C\" {".len()..end];
    while let Some(i) = rest.find("/*") {
        body.push_str(&rest[..i]);
        rest = &rest[i + rest[i..].find("*/").expect("comment end") + 2..];
    }
    body.push_str(rest);
    let body: String = body
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join(" ");
    let ident = |s: &str| -> String {
        let s = s.trim_end();
        let from = s
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        s[from..].to_string()
    };
    let mut names = BTreeSet::new();
    for decl in body.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let name = if let Some(var) = decl.strip_prefix("extern ") {
            ident(var.split('[').next().unwrap())
        } else {
            ident(
                &decl[..decl
                    .find('(')
                    .unwrap_or_else(|| panic!("not a prototype: {decl}"))],
            )
        };
        assert!(!name.is_empty(), "no name in {decl}");
        names.insert(name);
    }
    names
}

#[test]
fn the_shared_library_exports_exactly_the_c_interface_of_the_header() {
    ensure_built();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(root().join("target/release/libmario.so"))
        .output()
        .expect("nm");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|s| s.split('@').next().unwrap().to_string())
        .collect();
    let declared = header_symbols();
    assert!(declared.contains("init_server") && declared.contains("AKG_FUNC"));
    let extra: Vec<_> = exported.difference(&declared).collect();
    let missing: Vec<_> = declared.difference(&exported).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "exported but not in mario.h: {extra:?}\nin mario.h but not exported: {missing:?}"
    );
    eprintln!("libmario.so exports {} symbols, all of mario.h", exported.len());
}

#[test]
fn the_version_agrees_in_cargo_toml_the_header_and_the_library() {
    let h = std::fs::read_to_string(root().join("include/mario/mario.h")).unwrap();
    let parts: Vec<&str> = version().split('.').collect();
    for (name, want) in [
        ("MARIO_VERSION_MAJOR", parts[0].to_string()),
        ("MARIO_VERSION_MINOR", parts[1].to_string()),
        ("MARIO_VERSION_PATCH", parts[2].to_string()),
        ("MARIO_VERSION_STRING", format!("\"{}\"", version())),
    ] {
        assert!(
            h.contains(&format!("#define {name} {want}\n")),
            "{name} is not {want}"
        );
    }
    // SAFETY: `mario_version` returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(mario::ffi::mario_version()) };
    assert_eq!(v.to_str().unwrap(), version());
}

#[test]
fn make_uninstall_removes_what_make_install_put() {
    ensure_built();
    let dest = scratch_dir("uninstall");
    let d = format!("DESTDIR={}", dest.display());
    make(&["install", "PREFIX=/opt/mario", &d]);
    assert!(dest.join("opt/mario/lib/pkgconfig/mario.pc").is_file());
    make(&["uninstall", "PREFIX=/opt/mario", &d]);
    let left: Vec<_> = walk(&dest).into_iter().filter(|p| !p.is_dir()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Every path under `dir` (symbolic links not followed).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            all.extend(walk(&p));
        }
        all.push(p);
    }
    all
}
