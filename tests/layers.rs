//! The layer table of ARCHITECTURE.md, enforced: every `crate::X` a module of `src/` names must
//! be allowed by its row ("may import"). Adding a dependency between modules means changing
//! the table, in review, not drifting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module -> allowed modules`, from the "## Layers" table.
fn table() -> BTreeMap<String, BTreeSet<String>> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let section = text
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a '## Layers' section");
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split(',')
            .map(|c| c.trim().trim_matches('`').to_string())
            .filter(|c| !c.is_empty() && c != "—" && c != "-")
            .collect()
    };
    let mut rows = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        if cells.len() < 2 || cells[0].contains("---") || cells[0].contains("module") {
            continue;
        }
        let module = cells[0].trim().trim_matches('`').to_string();
        rows.insert(module, names(cells[1]));
    }
    assert!(
        rows.len() >= 10,
        "the layer table lists every module: {rows:?}"
    );
    rows
}

/// The crate modules named in Rust source (comments dropped): `crate::a`, `crate::{a, b::c}`.
fn imports(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_what_the_layer_table_allows() {
    let rows = table();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&src, &mut files);
    let mut violations = vec![];
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" {
            continue; // the CLI edge and the crate root may name every module
        }
        let allowed = rows
            .get(&module)
            .unwrap_or_else(|| panic!("module {module} is missing from the layer table"));
        for import in imports(&std::fs::read_to_string(&file).unwrap()) {
            if import != module && !allowed.contains(&import) {
                violations.push(format!("{} imports crate::{import}", rel.display()));
            }
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} files checked");
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_import_scanner_sees_grouped_and_plain_paths() {
    let found = imports(
        "use crate::{fsm, journal::Journal};\nlet x = crate::host::now_ms(); // crate::server\n",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["fsm".to_string(), "host".into(), "journal".into()]
    );
}
