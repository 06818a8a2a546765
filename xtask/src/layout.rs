//! `cargo xtask layout`: no import cycles between the modules of any crate.
//!
//! Each module (a file, or an inline `mod { }` block) is a node; module A
//! has an edge to module B when A names an item of B (`use crate::b::X`,
//! `super::X`, `b::X` for a child `b`, in a `use` or anywhere in the code).
//! A cycle means two modules that cannot be read, moved or tested apart;
//! the check lists each cycle with one line per edge. Cargo already refuses
//! cycles between crates.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use syn::visit::Visit;

use crate::repo::Repo;

/// A module: its path from the crate root (empty for the root) and the
/// paths it names, each with the file and line that names it.
struct Module {
    file: PathBuf,
    children: BTreeSet<String>,
    named: Vec<(Vec<String>, usize)>,
}

type Tree = BTreeMap<Vec<String>, Module>;

pub fn check(repo: &Repo) -> Result<()> {
    let roots = crate_roots(repo)?;
    let mut cycles = Vec::new();
    for root in &roots {
        let mut tree = Tree::new();
        read_module(&mut tree, Vec::new(), root)?;
        let edges = edges(&tree);
        for cycle in find_cycles(&tree, &edges) {
            cycles.push(describe(repo, &tree, &edges, &cycle));
        }
    }
    if !cycles.is_empty() {
        bail!(
            "import cycles between modules:\n\n{}\n\nMove what both sides need into a module of its own, or invert one dependency.",
            cycles.join("\n\n")
        );
    }
    eprintln!("xtask: no import cycles in {} crate targets", roots.len());
    Ok(())
}

/// The root file of every target of every workspace crate.
fn crate_roots(repo: &Repo) -> Result<Vec<PathBuf>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(&repo.root)
        .output()
        .context("cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut roots = BTreeSet::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            // Build scripts are one file each.
            if target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "custom-build"))
            {
                continue;
            }
            if let Some(path) = target["src_path"].as_str() {
                roots.insert(PathBuf::from(path));
            }
        }
    }
    Ok(roots.into_iter().collect())
}

/// Reads the module at `file` and, recursively, its children.
fn read_module(tree: &mut Tree, path: Vec<String>, file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let syntax =
        syn::parse_file(&text).with_context(|| format!("cannot parse {}", file.display()))?;
    // Children of `a.rs` live in `a/`; of `mod.rs`, `lib.rs`, `main.rs` and
    // a crate root beside it.
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let dir = if path.is_empty() || stem == "mod" {
        file.parent().unwrap().to_path_buf()
    } else {
        file.with_extension("")
    };
    read_items(tree, path, file, &dir, &syntax.items)
}

fn read_items(
    tree: &mut Tree,
    path: Vec<String>,
    file: &Path,
    dir: &Path,
    items: &[syn::Item],
) -> Result<()> {
    let mut module = Module {
        file: file.to_path_buf(),
        children: BTreeSet::new(),
        named: Vec::new(),
    };
    for item in items {
        let syn::Item::Mod(child) = item else {
            Names::collect(item, &mut module.named);
            continue;
        };
        let name = child.ident.to_string();
        module.children.insert(name.clone());
        let mut child_path = path.clone();
        child_path.push(name.clone());
        match &child.content {
            Some((_, items)) => read_items(tree, child_path, file, &dir.join(&name), items)?,
            None => {
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let child_file = if flat.exists() { flat } else { nested };
                read_module(tree, child_path, &child_file)?;
            }
        }
    }
    tree.insert(path, module);
    Ok(())
}

/// Every path named in an item: `use` trees, and paths in types and
/// expressions.
struct Names<'a> {
    named: &'a mut Vec<(Vec<String>, usize)>,
}

impl Names<'_> {
    fn collect(item: &syn::Item, named: &mut Vec<(Vec<String>, usize)>) {
        Names { named }.visit_item(item);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.push(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.push(prefix, &r.ident),
            syn::UseTree::Glob(g) => {
                let line = g.star_token.spans[0].start().line;
                self.named.push((prefix.clone(), line));
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn push(&mut self, prefix: &[String], last: &syn::Ident) {
        let mut path = prefix.to_vec();
        if last != "self" {
            path.push(last.to_string());
        }
        self.named.push((path, last.span().start().line));
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.named.push((segments, first.ident.span().start().line));
        }
        syn::visit::visit_path(self, path);
    }

    // `pub(super)` names where an item is visible, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    // Paths inside macro calls are not seen, and modules nested in
    // functions count as their parent.
}

/// The module a path names an item of, seen from `from`: the deepest
/// module along it. `None` for other crates and for `from` itself.
fn target(tree: &Tree, from: &[String], path: &[String]) -> Option<Vec<String>> {
    let (mut base, rest): (Vec<String>, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.to_vec(), &path[1..]),
        Some("super") => {
            let mut base = from.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        // `child::Item`; a lone name is a variable or an item in scope.
        Some(first) if path.len() > 1 && tree[from].children.contains(first) => {
            (from.to_vec(), path)
        }
        _ => return None,
    };
    let mut found = base.clone();
    for segment in rest {
        base.push(segment.clone());
        if tree.contains_key(&base) {
            found = base.clone();
        } else {
            break;
        }
    }
    (found != from).then_some(found)
}

/// Edges `from -> to` with the line of the first place that makes each.
type Edges = BTreeMap<Vec<String>, BTreeMap<Vec<String>, usize>>;

fn edges(tree: &Tree) -> Edges {
    let mut edges: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for (from, module) in tree {
        for (path, line) in &module.named {
            if let Some(to) = target(tree, from, path) {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert(*line);
            }
        }
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn find_cycles(tree: &Tree, edges: &Edges) -> Vec<Vec<Vec<String>>> {
    struct Walk<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a [String], (usize, usize)>,
        stack: Vec<&'a [String]>,
        next: usize,
        found: Vec<Vec<Vec<String>>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a [String]) {
            let mine = self.next;
            self.next += 1;
            self.index.insert(node, (mine, mine));
            self.stack.push(node);
            let edges = self.edges;
            for to in edges.get(node).into_iter().flat_map(|e| e.keys()) {
                let low = match self.index.get(to.as_slice()) {
                    None => {
                        self.visit(to);
                        self.index[to.as_slice()].1
                    }
                    Some(&(index, _)) if self.stack.contains(&to.as_slice()) => index,
                    Some(_) => continue,
                };
                let entry = self.index.get_mut(node).unwrap();
                entry.1 = entry.1.min(low);
            }
            if self.index[node].1 == mine {
                let at = self.stack.iter().rposition(|n| *n == node).unwrap();
                let component: Vec<Vec<String>> =
                    self.stack.drain(at..).map(<[String]>::to_vec).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in tree.keys() {
        if !walk.index.contains_key(node.as_slice()) {
            walk.visit(node);
        }
    }
    walk.found
}

/// One cycle, as the edges between its modules with the line that makes
/// each.
fn describe(repo: &Repo, tree: &Tree, edges: &Edges, cycle: &[Vec<String>]) -> String {
    let name = |m: &[String]| {
        if m.is_empty() {
            "crate".to_string()
        } else {
            m.join("::")
        }
    };
    let mut lines = Vec::new();
    for from in cycle {
        for (to, line) in edges.get(from).into_iter().flatten() {
            if cycle.contains(to) {
                let file = &tree[from].file;
                let file = file.strip_prefix(&repo.root).unwrap_or(file);
                lines.push(format!(
                    "  {} -> {}  ({}:{line})",
                    name(from),
                    name(to),
                    file.display()
                ));
            }
        }
    }
    format!("a cycle of {} modules:\n{}", cycle.len(), lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycles_in(files: &[(&str, &str)]) -> Vec<Vec<Vec<String>>> {
        let dir = std::env::temp_dir().join(format!("layout-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let mut tree = Tree::new();
        read_module(&mut tree, Vec::new(), &dir.join("lib.rs")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        find_cycles(&tree, &edges(&tree))
    }

    #[test]
    fn a_cycle_through_a_parent_is_found_and_one_way_imports_are_not() {
        let found = cycles_in(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            (
                "a/mod.rs",
                "mod child;\npub struct A;\nfn f() { child::g(); }\n",
            ),
            ("a/child.rs", "use super::A;\npub fn g() {}\n"),
            ("b.rs", "use crate::a::A;\npub(super) fn h(_: A) {}\n"),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        let mut cycle = found[0].clone();
        cycle.sort();
        assert_eq!(
            cycle,
            vec![vec!["a".to_string()], vec!["a".into(), "child".into()]]
        );
    }
}
