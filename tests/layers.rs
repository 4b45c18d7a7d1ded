//! The layer rule: a module refers only to layers at or below its own, and
//! no two handlers refer to each other. Every `crate::` path counts, in
//! `use` lines, inline and in doc links alike (unit-test modules do not).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer. Foundations (0-4) may use lower foundations;
/// state (5) uses foundations; handlers (6) use state and foundations but
/// not each other; the server (7) picks a handler; fuzzing (9) is a test
/// harness over everything.
const LAYERS: &[(&str, u8)] = &[
    ("certs", 0),
    ("credentials", 0),
    ("digest", 0),
    ("durable", 0),
    ("echo", 0),
    ("header_names", 0),
    ("net", 0),
    ("outbound", 0),
    ("request_target", 0),
    // valet's state store (names nothing of valet's).
    ("store", 0),
    ("revocation", 1),
    ("saml", 1),
    ("oauth1_signature", 1),
    ("tokens", 2),
    ("metrics", 3),
    ("config", 4),
    // Bodies and JSON answers (a body's minimum rate comes from the config).
    ("bodies", 4),
    // Refusals of non-OAuth requests and their responses (RFC 6750).
    ("refusal", 4),
    ("app", 5),
    ("oauth1", 6),
    ("oauth2", 6),
    ("proxy", 6),
    ("server", 7),
    ("cli", 8),
    ("fuzzing", 9),
];

const HANDLERS: u8 = 6;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `text` without the items marked `#[cfg(test)]`: each marked item ends
/// at its first `;` or at the brace that closes its first `{`, counted
/// outside string and character literals and comments, so a marked item in
/// the middle of a file hides nothing after it. A marked item that never
/// ends is an error, not a way to hide the rest of a file.
fn without_test_items(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i]);
        rest = &rest[i + MARK.len()..];
        let end = item_end(rest).unwrap_or_else(|| {
            panic!(
                "a #[cfg(test)] item does not end: {:.80}",
                rest.trim_start()
            )
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where the item at the start of `s` ends (just past its `;` or closing
/// brace), skipping literals and comments.
fn item_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i += s[i..].find('\n')?;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += s[i..].find("*/")? + 1;
            }
            b'"' => {
                i += 1;
                while b.get(i)? != &b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A character literal (`'{'`, `'\''`), not a lifetime (`'a`).
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                // The escape, then the closing quote (`'\u{7f}'` too).
                i += 3 + s[i + 3..].find('\'')?;
            }
            b';' if depth == 0 => return Some(i + 1),
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Every module named right after `crate::`, outside `#[cfg(test)]` items.
fn references(text: &str) -> BTreeSet<String> {
    let text = without_test_items(text);
    let text = text.as_str();
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        // `valet_crate::` or `some_crate::` are other names, not ours.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            // `crate::{a, b}`: every name in the braces.
            if let Some(body) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
                for part in body.split(',') {
                    let n: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !n.is_empty() {
                        out.insert(n);
                    }
                }
            }
        } else {
            out.insert(name);
        }
    }
    out
}

#[test]
fn no_module_refers_to_a_layer_above_it() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut found = BTreeSet::new();
    let mut unknown = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let top = rel
            .trim_start_matches("src/")
            .split(['/', '.'])
            .next()
            .unwrap()
            .to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let Some(&own) = layers.get(top.as_str()) else {
            unknown.push(rel);
            continue;
        };
        for r in references(&std::fs::read_to_string(f).unwrap()) {
            if r == top {
                continue;
            }
            let Some(&theirs) = layers.get(r.as_str()) else {
                unknown.push(format!("{rel} -> {r}"));
                continue;
            };
            if theirs > own || (theirs == own && own == HANDLERS) {
                found.insert((rel.clone(), r));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer (add them to LAYERS): {unknown:?}"
    );
    assert!(
        found.is_empty(),
        "references to a layer above (or to another handler): {found:?}"
    );
}

#[test]
fn the_reference_finder_sees_every_spelling() {
    let text = "use crate::a::b;\nfn f() { crate::b::c(); }\nuse crate::{c, d::e};\n/// [`crate::f`]\nmod x { use other_crate::g; }\n#[cfg(test)]\nuse crate::h;\n#[cfg(test)]\nmod tests { fn t() { if x { crate::i(); } let _ = ('{', \"{\", '\\'', b'{'); /* { */ } // {\n}\nfn after() { crate::j(); }";
    let r: Vec<String> = references(text).into_iter().collect();
    assert_eq!(r, ["a", "b", "c", "d", "f", "j"]);
}

/// Sibling files a file inside a module names: `super::NAME` and
/// `crate::MODULE::NAME` (braces too), outside `#[cfg(test)]` items.
fn sibling_references(text: &str, module: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let text = without_test_items(text);
    let mut out = BTreeSet::new();
    let full = format!("crate::{module}::");
    for prefix in ["super::", full.as_str()] {
        for (i, _) in text.match_indices(prefix) {
            let before = text[..i].chars().last();
            let rest = &text[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::`, `other::super::`, `x_crate::`
            }
            let mut names = Vec::new();
            if let Some(body) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
                names.extend(body.split(',').map(|p| p.trim().to_string()));
            } else {
                names.push(rest.to_string());
            }
            for n in names {
                let n: String = n
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&n) {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// Imports among the files of one module that close a circle, allowed
/// for now: `(module, from, to)`. None: oauth2's circle through
/// `endpoints` went when its writes to the state store moved to
/// `oauth2/state.rs`. An entry that no longer closes a circle fails the
/// test, so the list only shrinks.
const KNOWN_CIRCLES: &[(&str, &str, &str)] = &[];

/// Within a module, files import one way: no file reaches itself through
/// its siblings. `mod.rs` is the module's face (declarations, re-exports,
/// what every file shares) and takes no part.
#[test]
fn files_inside_a_module_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut circles = BTreeSet::new();
    let mut dirs = vec![root.clone()];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        let mut siblings = BTreeSet::new();
        let mut files = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                dirs.push(p.clone());
                siblings.insert(stem);
            } else if p.extension().is_some_and(|x| x == "rs") && stem != "mod" {
                siblings.insert(stem.clone());
                files.push((stem, p));
            }
        }
        if dir == root {
            continue; // top-level modules: the layer test
        }
        let module = dir
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('/', "::");
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (stem, p) in &files {
            let text = std::fs::read_to_string(p).unwrap();
            let mut refs = sibling_references(&text, &module, &siblings);
            refs.remove(stem);
            edges.insert(stem.clone(), refs);
            checked += 1;
        }
        // An edge a -> b closes a circle when b reaches a.
        let reaches = |from: &str, to: &str| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from.to_string()];
            while let Some(n) = stack.pop() {
                if n == to {
                    return true;
                }
                if seen.insert(n.clone()) {
                    stack.extend(edges.get(&n).into_iter().flatten().cloned());
                }
            }
            false
        };
        for (a, bs) in &edges {
            for b in bs {
                if reaches(b, a) {
                    circles.insert((module.clone(), a.clone(), b.clone()));
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} files were read");
    let known: BTreeSet<(String, String, String)> = KNOWN_CIRCLES
        .iter()
        .map(|(m, a, b)| (m.to_string(), a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = circles.difference(&known).collect();
    assert!(
        new.is_empty(),
        "imports that close a circle among a module's files: {new:?}"
    );
    let gone: Vec<_> = known.difference(&circles).collect();
    assert!(
        gone.is_empty(),
        "known circles that no longer exist (remove them from KNOWN_CIRCLES): {gone:?}"
    );
}

#[test]
fn the_sibling_finder_sees_every_spelling() {
    let siblings: BTreeSet<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use super::a::X;\nuse super::{b, c::Y};\nfn f() { crate::config::d::g(); super::super::e::h(); }\nuse super::*;\n#[cfg(test)]\nmod tests { use super::e; }\n";
    let r: Vec<String> = sibling_references(text, "config", &siblings)
        .into_iter()
        .collect();
    assert_eq!(r, ["a", "b", "c", "d"]);
}
