//! The architecture's rules as a test: the dependency table in docs/ARCHITECTURE.md ("Rules")
//! is read and checked against `cargo metadata`, and herald-core's sources are checked for I/O,
//! tasks and clocks. A new edge the table forbids fails here, and so does a table that no longer
//! describes the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A crate's normal dependencies (dev-dependencies aside): workspace crates and the others.
#[derive(Debug, Clone, Default)]
struct Deps {
    workspace: BTreeSet<String>,
    external: BTreeSet<String>,
}

fn metadata() -> BTreeMap<String, Deps> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = m["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let mut deps = Deps::default();
            for d in p["dependencies"].as_array().unwrap() {
                // Normal and build dependencies; dev-dependencies may use anything.
                if d["kind"].as_str() == Some("dev") {
                    continue;
                }
                let name = d["name"].as_str().unwrap().to_owned();
                if names.contains(&name) {
                    deps.workspace.insert(name);
                } else {
                    deps.external.insert(name);
                }
            }
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

/// What docs/ARCHITECTURE.md allows: per crate, the workspace crates it may use (`None`: any)
/// and the external crates it must not use.
#[derive(Debug, Default)]
struct Rules {
    may_use: BTreeMap<String, Option<BTreeSet<String>>>,
    must_not_use: BTreeMap<String, BTreeSet<String>>,
}

fn backticked(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Reads the "Rules" section: `- **group**: a, b, c` lines name groups of crates, and the table
/// `| crate | may use | must not use |` gives the rules.
fn rules(doc: &str) -> Rules {
    let section = doc
        .split("\n## Rules")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a ## Rules section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("- **")
            && let Some((name, list)) = rest.split_once("**:")
        {
            groups.insert(name.to_owned(), backticked(list));
        }
    }
    let mut r = Rules::default();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let krate = backticked(cells[1]).into_iter().next().unwrap();
        let may = if cells[2] == "any" {
            None
        } else {
            Some(backticked(cells[2]))
        };
        let mut not = BTreeSet::new();
        for part in cells[3].split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match groups.get(part.trim_matches('*')) {
                Some(g) => not.extend(g.iter().cloned()),
                None => not.extend(backticked(part)),
            }
        }
        r.may_use.insert(krate.clone(), may);
        r.must_not_use.insert(krate, not);
    }
    r
}

fn violations(deps: &BTreeMap<String, Deps>, rules: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    for (krate, d) in deps {
        let Some(may) = rules.may_use.get(krate) else {
            out.push(format!("{krate} is not in the rules table"));
            continue;
        };
        if let Some(may) = may {
            for w in d.workspace.difference(may) {
                out.push(format!(
                    "{krate} depends on {w}, which the table does not allow"
                ));
            }
        }
        for e in d.external.intersection(&rules.must_not_use[krate]) {
            out.push(format!("{krate} depends on {e}, which the table forbids"));
        }
    }
    for krate in rules.may_use.keys() {
        if !deps.contains_key(krate) {
            out.push(format!(
                "the table names {krate}, which is not in the workspace"
            ));
        }
    }
    out
}

fn doc() -> String {
    std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md")
}

#[test]
fn crate_dependencies_follow_the_table_in_architecture_md() {
    let v = violations(&metadata(), &rules(&doc()));
    assert!(v.is_empty(), "architecture rules broken:\n{}", v.join("\n"));
}

#[test]
fn a_forbidden_edge_is_caught() {
    let rules = rules(&doc());
    let clean = metadata();
    for (krate, edge, external) in [
        ("herald-gateway", "herald-embedded", false),
        ("herald-projector", "herald-postgres", false),
        ("herald-ports", "herald-kafka", false),
        ("herald-core", "tokio", true),
        ("herald-core", "rusqlite", true),
        ("herald-gateway", "rusqlite", true),
    ] {
        let mut deps = clean.clone();
        let d = deps.get_mut(krate).unwrap();
        if external {
            d.external.insert(edge.into());
        } else {
            d.workspace.insert(edge.into());
        }
        let v = violations(&deps, &rules);
        assert!(
            v.iter().any(|m| m.contains(krate) && m.contains(edge)),
            "{krate} -> {edge} should be refused: {v:?}"
        );
    }
}

/// herald-core must not do I/O, spawn tasks or read clocks: callers pass times in.
#[test]
fn herald_core_does_no_io_spawns_nothing_and_reads_no_clock() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
        "std::env",
        "SystemTime::now",
        "Instant::now",
        "tokio",
        "File::open",
    ];
    let mut found = Vec::new();
    let src = root().join("services/herald-core/src");
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for f in forbidden {
                        if code.contains(f) {
                            found.push(format!("{}:{}: {f}", path.display(), i + 1));
                        }
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "herald-core does I/O:\n{}",
        found.join("\n")
    );
}

/// The gateway's modules form no cycle (the issue it was split to solve): each top-level
/// module's `crate::…` uses, with the crate root's re-exports resolved, make a graph that must be
/// acyclic.
#[test]
fn the_gateway_modules_have_no_cycles() {
    let src = root().join("services/herald-gateway/src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))
                .map(|m| m.trim_end_matches(';').to_owned())
        })
        .collect();
    // `pub use error::AppError;` → AppError lives in error.
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    for l in lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use "))
    {
        let (module, names) = l.split_once("::").unwrap();
        for name in names
            .trim_end_matches(';')
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
        {
            reexports.insert(name.trim().to_owned(), module.to_owned());
        }
    }
    let files_of = |m: &str| -> Vec<PathBuf> {
        let file = src.join(format!("{m}.rs"));
        if file.exists() {
            return vec![file];
        }
        std::fs::read_dir(src.join(m))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect()
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &modules {
        let used = edges.entry(m.clone()).or_default();
        for f in files_of(m) {
            let text = std::fs::read_to_string(f).unwrap();
            for part in text.split("crate::").skip(1) {
                let ident: String = part
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let target = if modules.contains(&ident) {
                    Some(ident)
                } else {
                    reexports.get(&ident).cloned()
                };
                if let Some(t) = target.filter(|t| t != m) {
                    used.insert(t);
                }
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("a module cycle in herald-gateway: {}", cycle.join(" -> "));
        }
    }
    assert!(
        edges["routes"].contains("state"),
        "the graph was read: {edges:?}"
    );
}
