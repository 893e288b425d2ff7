//! The documents name what exists (issue 21): every file of `src/` is in ARCHITECTURE.md's code
//! map under its folder, every integration-test module is in its `tests/` section, every
//! repository path a document names exists, and the README's settings are those of
//! docs/operations.md. Reads files only. (Links and anchors: `scripts/check-links.py`, in CI.)

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

/// The `.rs` files of `dir` and of its subfolders, named from `dir` (`ops.rs`,
/// `bench/direct.rs`): a folder module's files are in the code map with their folder, and its
/// `mod.rs` with the folder (`bench/`).
fn rust_files_within(dir: &str) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("list {dir}: {e}")) {
        let entry = entry.expect("a folder entry");
        let name = entry.file_name().into_string().expect("a UTF-8 name");
        if entry.path().is_dir() {
            for file in rust_files(&format!("{dir}/{name}")) {
                out.insert(match file.as_str() {
                    "mod.rs" => format!("{name}/"),
                    _ => format!("{name}/{file}"),
                });
            }
        } else if name.ends_with(".rs") {
            out.insert(name);
        }
    }
    out
}

/// The documents that describe the project: the README, ARCHITECTURE.md and every page of
/// `docs/`.
fn documents() -> Vec<String> {
    let mut docs = vec!["ARCHITECTURE.md".to_string(), "README.md".to_string()];
    let mut pages: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
            .expect("list docs/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".md"))
            .map(|name| format!("docs/{name}"))
            .collect();
    pages.sort();
    docs.extend(pages);
    docs
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
        for file in rust_files_within(dir) {
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
    for doc in documents() {
        for span in spans(&read(&doc)) {
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

/// The rows of the first Markdown table in `text`, each as its cells, header and rule left out.
fn table_rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// The README shows the settings a first deployment sets; docs/operations.md has them all.
/// A row of the README's table names the same flag, variable and default as the full table.
#[test]
fn the_readmes_settings_are_those_of_the_operations_guide() {
    let readme = read("README.md");
    let operations = read("docs/operations.md");
    let full = table_rows(section(&operations, "## Configuration"));
    let shown = table_rows(section(&readme, "## Configuration"));
    assert!(
        shown.len() >= 3,
        "no settings table in the README: {shown:?}"
    );
    let mut differ = Vec::new();
    for row in &shown {
        let same = full.iter().find(|r| r.first() == row.first());
        if same.is_none_or(|r| r.get(1..3) != row.get(1..3)) {
            differ.push(format!(
                "README {:?} vs docs/operations.md {:?}",
                row.get(..3),
                same
            ));
        }
    }
    assert!(differ.is_empty(), "settings that differ: {differ:?}");
}

/// The metric names a worker exports: every family the registry renders, with the suffixes a
/// histogram's series carry.
fn exported_metric_names() -> BTreeSet<String> {
    let metrics = wallet_transfer::worker::metrics::Metrics::new();
    // Per-partition families render only once a partition has a series.
    metrics.set_committed(0, 0);
    metrics.set_lag(0, 0);
    metrics.health().set_watermarks(&[(0, 0, 1)]);
    // What a scrape does first (the readiness gauges, the stalled watermarks).
    metrics.check_readiness();
    let text = metrics.render();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `wallet_...` name in `text` (metric names and prefixes alike), leaving out Rust paths
/// (`wallet_transfer::...`, the crate).
fn wallet_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("wallet_") {
        let start = at + found;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        let path = text[end..].starts_with("::");
        if !path && !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The alert rules, the dashboard and `wallet top` query only names the worker exports (a
/// renamed metric would leave an alert that can never fire, or a panel with no data).
/// `wallet top` queries by the exporter's constants (`worker::metrics::names`), so those are
/// checked here too; its source is still read for the names its tests' sample scrape writes.
#[test]
fn the_alerts_the_dashboard_and_wallet_top_query_only_exported_metrics() {
    let exported = exported_metric_names();
    let mut unknown: Vec<String> = wallet_transfer::worker::metrics::names::ALL
        .iter()
        .filter(|name| !exported.contains(**name))
        .map(|name| format!("worker::metrics::names: {name}"))
        .collect();
    for path in [
        "monitoring/alerts.yml",
        "monitoring/alerts_test.yml",
        "monitoring/grafana/wallet-transfer.json",
        "src/cli/top.rs",
    ] {
        for name in wallet_names(&read(path)) {
            if !exported.contains(&name) {
                unknown.push(format!("{path}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by the worker: {unknown:?}"
    );
}
