//! Tests of the module structure itself: no dependency cycles, a pure domain.
//!
//! The graph is read from the sources at test time: every `crate::a::b` path, inside a module
//! directory every `super::x` path, and in `grpc/mod.rs` and `http/mod.rs` every `child::…` path
//! to one of their submodules, all in code (comments are skipped, so doc links do not count).
//! Nodes are the top-level modules, and the submodules of `grpc/` and `http/` (whose `mod.rs` is
//! the node `grpc` or `http` itself: the routers, which use the handlers). `cargo test --lib architecture -- --nocapture`
//! prints the listing in layered order (each module after everything it uses).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directories whose submodules are nodes of their own.
const SPLIT: [&str; 2] = ["grpc", "http"];

/// The domain (ARCHITECTURE.md): free of protocol and database types.
const DOMAIN: [&str; 22] = [
    "assertion",
    "authorizer",
    "bearer",
    "cache",
    "catalog",
    "clock",
    "duration",
    "gateway_headers",
    "identity",
    "ids",
    "key",
    "keys",
    "known_keys",
    "last_used",
    "ledger",
    "limits",
    "lookup_budget",
    "minting",
    "money",
    "policy",
    "request_path",
    "usage",
];

/// Crates the domain must not name. The Kubernetes client crates belong to the edge that
/// watches the cluster (`kube_policy`), never to the policy compiler or any other domain module.
const PROTOCOL_CRATES: [&str; 6] = [
    "tonic",
    "envoy_types",
    "axum",
    "tokio_postgres",
    "kube",
    "k8s_openapi",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// A library source file: its module path (`["grpc", "ext_authz"]`) and its code, comments removed.
struct Source {
    module: Vec<String>,
    code: String,
}

fn library_sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect_rs_files(&root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).ok()?.to_path_buf();
            let parts: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            // Binaries use the library by its crate name, not `crate::`.
            if parts[0] == "bin" || parts[0] == "main.rs" {
                return None;
            }
            let mut module: Vec<String> = parts
                .iter()
                .map(|part| part.trim_end_matches(".rs").to_owned())
                .collect();
            if module
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).ok()?;
            Some(Source {
                module,
                code: without_comments(&text),
            })
        })
        .collect()
}

fn collect_rs_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// Drops `//` comments (doc comments included); string literals holding `//` are rare enough
/// here that cutting them short only loses paths no code uses.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The node a module belongs to: its top-level module, or `grpc::x`/`http::x` for a submodule
/// of a split directory.
fn node_of(module: &[String]) -> Option<String> {
    let top = module.first()?;
    match module.get(1) {
        Some(sub) if SPLIT.contains(&top.as_str()) => Some(format!("{top}::{sub}")),
        _ => Some(top.clone()),
    }
}

/// The module paths after each `prefix` (`crate::`, `super::`) in `code`, as segments.
fn paths_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    code.match_indices(prefix).filter_map(move |(at, _)| {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let segments: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        (!segments.is_empty()).then_some(segments)
    })
}

fn module_graph() -> Graph {
    let sources = library_sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let is_module = |path: &[String]| modules.contains(path);
    let mut graph = Graph::new();
    for source in &sources {
        let Some(from) = node_of(&source.module) else {
            continue; // lib.rs only declares the modules.
        };
        if from == "architecture" {
            continue; // these tests, not a part of the product
        }
        graph.entry(from.clone()).or_default();
        let mut targets = Vec::new();
        for segments in paths_after(&source.code, "crate::") {
            targets.push(segments.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        }
        // `super::` names the parent module of this file's module.
        if source.module.len() >= 2 {
            let parent = &source.module[..source.module.len() - 1];
            for segments in paths_after(&source.code, "super::") {
                if segments[0] == "super" {
                    continue; // `super::super::…`: rare, and never across split directories here.
                }
                let mut path = parent.to_vec();
                path.extend(segments.iter().map(|s| (*s).to_owned()));
                targets.push(path);
            }
        }
        // A split directory's `mod.rs` names its own submodules without a prefix.
        if source.module.len() == 1 && SPLIT.contains(&source.module[0].as_str()) {
            for child in modules
                .iter()
                .filter(|m| m.len() == 2 && m[0] == source.module[0])
            {
                if names_crate(&source.code, &child[1]) {
                    targets.push(child.clone());
                }
            }
        }
        for path in targets {
            // The longest prefix that is a module: `crate::grpc::ext_authz::X` is grpc::ext_authz.
            let module = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|candidate| is_module(candidate))
                .unwrap_or_else(|| path[..1].to_vec());
            if let Some(to) = node_of(&module)
                && to != from
            {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// A cycle in `graph`, as the nodes along it (first repeated at the end), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Visiting);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// The nodes in layers: layer 0 uses nothing, each later layer only earlier ones.
fn layers(graph: &Graph) -> Vec<Vec<String>> {
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    let mut layers: Vec<Vec<String>> = Vec::new();
    while placed.len() < graph.len() {
        let ready: Vec<String> = graph
            .iter()
            .filter(|(node, uses)| {
                !placed.contains_key(*node)
                    && uses
                        .iter()
                        .all(|used| placed.contains_key(used) || !graph.contains_key(used))
            })
            .map(|(node, _)| node.clone())
            .collect();
        if ready.is_empty() {
            break; // a cycle; `module_graph_has_no_cycles` names it
        }
        for node in &ready {
            placed.insert(node.clone(), layers.len());
        }
        layers.push(ready);
    }
    layers
}

#[test]
fn module_graph_has_no_cycles() {
    let graph = module_graph();

    let cycle = find_cycle(&graph);

    assert!(
        cycle.is_none(),
        "module dependency cycle: {}",
        cycle.unwrap_or_default().join(" -> ")
    );
}

#[test]
fn the_graph_sees_the_modules_and_their_uses() {
    let graph = module_graph();

    // A parser that found nothing would pass the cycle test vacuously.
    assert!(graph["app"].contains("http"), "{graph:#?}");
    assert!(
        graph["grpc::check_server"].contains("grpc::ext_authz"),
        "{graph:#?}"
    );
    assert!(
        graph["http::api_keys"].contains("http::extract"),
        "{graph:#?}"
    );
    assert!(graph["http"].contains("http::api_keys"), "{graph:#?}");
    assert!(graph["authorizer"].contains("policy"), "{graph:#?}");
}

#[test]
fn the_domain_names_no_protocol_or_database_crate() {
    let offenders: Vec<String> = library_sources()
        .iter()
        .filter(|source| {
            source
                .module
                .first()
                .is_some_and(|top| DOMAIN.contains(&top.as_str()))
        })
        .flat_map(|source| {
            PROTOCOL_CRATES
                .iter()
                .filter(|name| {
                    names_crate(&source.code, name) && !declares_module(&source.code, name)
                })
                .map(|name| format!("{} uses {name}", source.module.join("::")))
                .collect::<Vec<_>>()
        })
        .collect();

    assert!(offenders.is_empty(), "{offenders:#?}");
}

/// Whether `code` declares a submodule `name` (`mod name;`), whose paths then shadow the crate
/// of that name (`identity` has its own `kube` module, which speaks plain HTTP).
fn declares_module(code: &str, name: &str) -> bool {
    code.lines().any(|line| {
        let line = line.trim();
        let line = line.strip_prefix("pub ").unwrap_or(line);
        let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
        line == format!("mod {name};")
    })
}

/// Whether `code` names the crate `name` in a path (`name::…`).
fn names_crate(code: &str, name: &str) -> bool {
    code.match_indices(&format!("{name}::")).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

#[test]
#[allow(clippy::print_stdout)] // printing the listing is this test's purpose (`--nocapture`)
fn prints_the_module_dependencies_in_layered_order() {
    let graph = module_graph();

    let layers = layers(&graph);

    let mut listing = String::from("module dependencies, each layer using only earlier ones:\n");
    for (depth, layer) in layers.iter().enumerate() {
        for node in layer {
            let uses: Vec<&str> = graph[node].iter().map(String::as_str).collect();
            listing.push_str(&format!(
                "  {depth:>2}  {node:<24} -> {}\n",
                uses.join(", ")
            ));
        }
    }
    println!("{listing}");
    assert_eq!(
        layers.iter().map(Vec::len).sum::<usize>(),
        graph.len(),
        "every module is in a layer"
    );
}
