//! The layering of `src/` stays as designed: no module uses one above it.
//!
//! The layers are the module map of `src/lib.rs` (the table under "Module
//! map": a layer number, then the modules of that layer). Each source file
//! says what it may use on a line `//! Uses: a, b (why), c::d.` (or
//! "nothing of the crate"). This test reads both and fails when
//!
//! * a file has no `Uses:` line;
//! * a file's code names a module (`crate::x`, `super::x` for a sibling
//!   file) that its `Uses:` line does not list;
//! * a listed top-level module is not in a lower layer than the file's own
//!   (so the permission itself cannot point up);
//! * a file of a folder uses a top-level module that the folder's
//!   `mod.rs` does not list;
//! * the sibling files of a folder use each other in a cycle;
//! * code names an item through the crate root (`crate::Foo`) instead of
//!   its defining module.
//!
//! `cargo test --test layering -- --nocapture` prints the map (module ->
//! what it may use) it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layer of each top-level module, from lib.rs's module map.
fn layers() -> BTreeMap<String, u32> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let mut map = BTreeMap::new();
    let mut layer = None;
    let mut in_table = false;
    // The first table after the heading (the crate docs have other tables).
    let map_at = lib
        .find("//! # Module map")
        .expect("lib.rs: a \"# Module map\" heading");
    for line in lib[map_at..].lines() {
        let Some(row) = line.strip_prefix("//! |") else {
            if in_table {
                break;
            }
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[0] == "layer" || cells[0].starts_with("---") {
            continue;
        }
        in_table = true;
        if let Some(n) = cells[0].split_whitespace().next().filter(|s| !s.is_empty()) {
            layer = Some(
                n.parse::<u32>()
                    .unwrap_or_else(|_| panic!("lib.rs module map: bad layer in {line}")),
            );
        }
        let name: String = cells[1]
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let layer = layer.unwrap_or_else(|| panic!("lib.rs module map: no layer before {line}"));
        assert!(map.insert(name.clone(), layer).is_none(), "{name} listed twice");
    }
    assert!(map.len() >= 10, "lib.rs module map not found: {map:?}");
    map
}

/// One source file.
struct File {
    /// Module path below the crate root, e.g. `["conn", "table"]`
    /// (`["conn"]` for conn/mod.rs).
    path: Vec<String>,
    /// The folder's `mod.rs`, or a file directly in `src/`.
    is_mod: bool,
    /// Declared uses, normalised to full paths (`conn::record`, `logq`).
    uses: BTreeSet<String>,
    /// `(line number, full path named)` for each module named in code.
    named: Vec<(usize, String)>,
    rel: String,
    /// What reading it found wrong already.
    errors: Vec<String>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Identifiers after `prefix` in `line` (`crate::` or `super::`), each
/// with the identifier that follows it, if any (`crate::conn::table`).
fn paths_after<'a>(line: &'a str, prefix: &str) -> Vec<(&'a str, Option<&'a str>)> {
    let ident = |s: &'a str| -> &'a str {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    };
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // `super::super::`, `foo_crate::`
        }
        let first = ident(rest);
        let second = rest[first.len()..]
            .strip_prefix("::")
            .map(ident)
            .filter(|s| !s.is_empty());
        out.push((first, second));
    }
    out
}

/// The files (stems) and folders next to `rel` in `src/`.
fn siblings_on_disk(rel: &str) -> BTreeSet<String> {
    let dir = src().join(rel).parent().unwrap().to_path_buf();
    let mut s = BTreeSet::new();
    if dir != src() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            if stem != "mod" && (p.is_dir() || p.extension().is_some_and(|e| e == "rs")) {
                s.insert(stem);
            }
        }
    }
    s
}

/// Reads file `rel` (a path below `src/`) with contents `text`, whose
/// folder holds the modules `siblings`.
fn parse(rel: &str, text: &str, siblings: &BTreeSet<String>) -> File {
    let rel = rel.to_string();
    let mut path: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
    let is_mod = path.last().is_some_and(|p| p == "mod") || path.len() == 1;
    if path.last().is_some_and(|p| p == "mod") {
        path.pop();
    }
    let folder: Vec<String> = if is_mod {
        path.clone()
    } else {
        path[..path.len() - 1].to_vec()
    };
    // The `Uses:` paragraph.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("//! Uses:"))
        .unwrap_or_else(|| panic!("src/{rel}: no `//! Uses:` line (say what the file may use)"));
    let mut decl = String::new();
    for l in &lines[start..] {
        let Some(t) = l.strip_prefix("//!") else { break };
        if t.trim().is_empty() {
            break;
        }
        decl.push(' ');
        decl.push_str(t.trim());
    }
    let decl = decl.trim().trim_start_matches("Uses:").to_string();
    // Drop what is in parentheses, backticks and the final period.
    let mut plain = String::new();
    let mut depth = 0;
    for c in decl.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '`' => {}
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let mut uses = BTreeSet::new();
    if !plain.trim().starts_with("nothing of the crate") {
        for item in plain.trim().trim_end_matches('.').split(',') {
            let item = item.trim();
            assert!(
                !item.is_empty()
                    && item
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "src/{rel}: cannot read `{item}` in its Uses line: {decl}"
            );
            let full = match item.strip_prefix("super::") {
                Some(sib) => format!("{}::{sib}", folder.join("::")),
                None => item.to_string(),
            };
            uses.insert(full);
        }
    }
    // Modules named in code (comment lines excluded).
    let mut named = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for (first, second) in paths_after(code, "crate::") {
            if first.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                errors.push(format!(
                    "src/{rel}:{}: `crate::{first}` goes through the crate root; name the defining module",
                    n + 1
                ));
                continue;
            }
            if first.is_empty() {
                errors.push(format!(
                    "src/{rel}:{}: `crate::{{...}}`: write one `use` per module so this check can read it",
                    n + 1
                ));
                continue;
            }
            // A file of folder `first` naming a sibling through `crate::`.
            match second {
                Some(sub) if folder.first().is_some_and(|f| f == first) && siblings.contains(sub) => {
                    named.push((n + 1, format!("{first}::{sub}")))
                }
                _ => named.push((n + 1, first.to_string())),
            }
        }
        if !folder.is_empty() {
            for (first, _) in paths_after(code, "super::") {
                if siblings.contains(first) && !is_mod {
                    named.push((n + 1, format!("{}::{first}", folder.join("::"))));
                }
            }
        }
    }
    File {
        path,
        is_mod,
        uses,
        named,
        rel,
        errors,
    }
}

/// Everything wrong with `files` against `layers`.
fn check(files: &[File], layers: &BTreeMap<String, u32>) -> Vec<String> {
    let mut errors: Vec<String> = files.iter().flat_map(|f| f.errors.clone()).collect();
    let top = |p: &str| p.split("::").next().unwrap().to_string();
    let folder_uses: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .filter(|f| f.is_mod)
        .map(|f| (f.path.join("::"), f.uses.clone()))
        .collect();
    // sibling graph per folder: file -> siblings it names
    let mut sibling_edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let me = top(&f.path[0]);
        let Some(&my_layer) = layers.get(&me) else {
            errors.push(format!(
                "src/{}: module `{me}` is not in lib.rs's module map",
                f.rel
            ));
            continue;
        };
        for u in &f.uses {
            let t = top(u);
            if t == me {
                continue;
            }
            match layers.get(&t) {
                None => errors.push(format!(
                    "src/{}: its Uses line names `{u}`, not a module of the map",
                    f.rel
                )),
                Some(&l) if l >= my_layer => errors.push(format!(
                    "src/{}: may use `{u}` (layer {l}), which is not below `{me}` (layer {my_layer})",
                    f.rel
                )),
                _ => {}
            }
            if !f.is_mod
                && let Some(allowed) = folder_uses.get(&me)
                && !allowed.contains(&t)
            {
                errors.push(format!(
                    "src/{}: may use `{t}`, which src/{me}/mod.rs does not list for its folder",
                    f.rel
                ));
            }
        }
        for (line, n) in &f.named {
            let t = top(n);
            let ok = if t == me {
                // A sibling: listed by its full path (files of a folder),
                // or the folder's own name (naming itself).
                !n.contains("::") || f.uses.contains(n) || *n == f.path.join("::")
            } else {
                f.uses.iter().any(|u| top(u) == t)
            };
            if !ok {
                errors.push(format!(
                    "src/{}:{line}: uses `{n}`, which its Uses line does not list",
                    f.rel
                ));
            }
            if t == me && n.contains("::") && *n != f.path.join("::") {
                sibling_edges
                    .entry(f.path.join("::"))
                    .or_default()
                    .insert(n.clone());
            }
        }
    }
    // No cycle among the files of a folder.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        errors: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == n) {
            errors.push(format!("cycle: {} -> {n}", stack[i..].join(" -> ")));
            return;
        }
        if !seen.insert(n.to_string()) {
            return;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, seen, stack, errors);
        }
        stack.pop();
    }
    let mut seen = BTreeSet::new();
    for n in sibling_edges.keys() {
        visit(n, &sibling_edges, &mut seen, &mut Vec::new(), &mut errors);
    }
    errors
}

#[test]
fn no_module_uses_one_above_it() {
    let layers = layers();
    let mut paths = Vec::new();
    rs_files(&src(), &mut paths);
    paths.sort();
    let files: Vec<File> = paths
        .iter()
        .filter(|p| !p.ends_with("lib.rs"))
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap().to_string_lossy().into_owned();
            parse(
                &rel,
                &std::fs::read_to_string(p).unwrap(),
                &siblings_on_disk(&rel),
            )
        })
        .collect();
    let errors = check(&files, &layers);
    let mut by_layer: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.is_mod) {
        let name = f.path.join("::");
        let uses: Vec<&str> = f.uses.iter().map(String::as_str).collect();
        let uses = if uses.is_empty() {
            "nothing".to_string()
        } else {
            uses.join(", ")
        };
        by_layer
            .entry(layers[&name])
            .or_default()
            .push(format!("{name} -> {uses}"));
    }
    for (l, mods) in &by_layer {
        for m in mods {
            println!("layer {l}: {m}");
        }
    }
    assert!(errors.is_empty(), "layering violations:\n{}", errors.join("\n"));
}

/// The check itself can fail: each kind of violation is reported.
#[test]
fn the_check_reports_each_kind_of_violation() {
    let layers = layers();
    let none = BTreeSet::new();
    let one = |rel: &str, text: &str| check(&[parse(rel, text, &none)], &layers);
    // Clean.
    assert!(one("sys.rs", "//! Uses: nothing of the crate.\nfn f() {}").is_empty());
    assert!(
        one(
            "worker.rs",
            "//! Uses: conn (the record).\nuse crate::conn::Conn;"
        )
        .is_empty()
    );
    // Naming an unlisted module.
    let e = one(
        "sys.rs",
        "//! Uses: nothing of the crate.\nuse crate::worker::Ctx;",
    );
    assert!(e.iter().any(|e| e.contains("uses `worker`")), "{e:?}");
    // Listing a module of the same or a higher layer.
    let e = one("conn.rs", "//! Uses: worker, proto.\nuse crate::proto::Head;");
    assert!(e.iter().any(|e| e.contains("may use `worker`")), "{e:?}");
    let e = one("api.rs", "//! Uses: ffi.\n");
    assert!(e.iter().any(|e| e.contains("may use `ffi`")), "{e:?}");
    // Through the crate root, or grouped.
    let e = one("worker.rs", "//! Uses: conn.\nuse crate::Conn;");
    assert!(e.iter().any(|e| e.contains("crate root")), "{e:?}");
    let e = one("worker.rs", "//! Uses: conn.\nuse crate::{conn::Conn};");
    assert!(e.iter().any(|e| e.contains("one `use` per module")), "{e:?}");
    // Comments do not count.
    assert!(one("sys.rs", "//! Uses: nothing of the crate.\n// see crate::worker").is_empty());
    // A folder's file beyond its mod.rs, and siblings in a cycle.
    let sib: BTreeSet<String> = ["a", "b"].into_iter().map(String::from).collect();
    let files = [
        parse("conn/mod.rs", "//! Uses: proto.\nmod a; mod b;", &sib),
        parse(
            "conn/a.rs",
            "//! Uses: sys, super::b.\nuse super::b::X; use crate::sys::Io;",
            &sib,
        ),
        parse("conn/b.rs", "//! Uses: conn::a.\nuse crate::conn::a::Y;", &sib),
    ];
    let e = check(&files, &layers);
    assert!(
        e.iter().any(|e| e.contains("src/conn/mod.rs does not list")),
        "{e:?}"
    );
    assert!(e.iter().any(|e| e.starts_with("cycle:")), "{e:?}");
    assert_eq!(
        paths_after("a::super::b; super::ring::X", "super::"),
        vec![("ring", Some("X"))]
    );
}
