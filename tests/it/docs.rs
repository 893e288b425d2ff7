//! The documents name what exists (issue 21): every file of `src/` is in ARCHITECTURE.md's code
//! map under its folder, every integration-test module is in its `tests/` section, and every
//! repository path a document names exists. Reads files only.

use std::collections::BTreeSet;
use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The text of the section whose heading starts with `heading`, up to the next heading of
/// the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let rest = &doc[start + heading.len()..];
    let end = rest
        .lines()
        .scan(0, |at, line| {
            let here = *at;
            *at += line.len() + 1;
            Some((here, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && line.chars().nth(hashes) == Some(' ')
        })
        .map_or(rest.len(), |(at, _)| at);
    &rest[..end]
}

/// The `.rs` files directly in `dir` (a path from the repository's root), by name.
fn rust_files(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".rs"))
        .collect()
}

/// Every backticked span of `text`.
fn spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

#[test]
fn every_source_file_is_in_the_code_map_under_its_folder() {
    let doc = read("ARCHITECTURE.md");
    let mut missing = Vec::new();
    for (dir, heading) in [
        ("src/engine", "### `src/engine/`"),
        ("src/worker", "### `src/worker/`"),
        ("src/tools", "### `src/tools/`"),
        ("src/cli", "### `src/cli/`"),
    ] {
        let named: BTreeSet<&str> = spans(section(&doc, heading)).collect();
        for file in rust_files(dir) {
            if file != "mod.rs" && !named.contains(file.as_str()) {
                missing.push(format!("{dir}/{file}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in ARCHITECTURE.md's code map: {missing:?}"
    );
}

#[test]
fn every_integration_test_module_is_named_in_the_tests_section() {
    let doc = read("ARCHITECTURE.md");
    let named: BTreeSet<&str> = spans(section(&doc, "### `tests/`")).collect();
    let missing: Vec<String> = rust_files("tests/it")
        .into_iter()
        .filter(|f| f != "main.rs")
        .map(|f| f.trim_end_matches(".rs").to_string())
        .filter(|module| !named.contains(module.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "modules not in ARCHITECTURE.md's tests section: {missing:?}"
    );
}

#[test]
fn every_repository_path_the_documents_name_exists() {
    let roots = [
        "src/",
        "tests/",
        "scripts/",
        "monitoring/",
        "deploy/",
        "examples/",
        "contracts/",
    ];
    let mut gone = Vec::new();
    for doc in ["ARCHITECTURE.md", "README.md"] {
        for span in spans(&read(doc)) {
            let path = span.trim_end_matches([':', ',', '.']);
            let plain = !path.contains(['{', '*', '<', ' ', '$']);
            // `make contracts` writes contracts/html/; it is not in the repository.
            let generated = path.starts_with("contracts/html");
            if plain && !generated && roots.iter().any(|r| path.starts_with(r)) {
                let path = path.split("::").next().unwrap_or(path);
                if !Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists() {
                    gone.push(format!("{doc}: {path}"));
                }
            }
        }
    }
    assert!(gone.is_empty(), "named but missing: {gone:?}");
}
