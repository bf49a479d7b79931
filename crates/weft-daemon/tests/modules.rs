//! The daemon's layering, checked: its top-level modules depend on each other in one
//! direction only (no cycles); the front ends (`http/`, `docker/`) reach the router through
//! `service/` and not through each other; the service knows nothing of its callers; and HTTP
//! status codes appear in `http/` alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The front ends and what they may not use. `lib` (the composition root) is exempt.
const FORBIDDEN: [(&str, &[&str]); 3] = [
    ("service", &["http", "docker"]),
    ("http", &["docker", "control", "dataplane", "dataplane_msg"]),
    ("docker", &["http", "control", "dataplane", "dataplane_msg"]),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir)
        .expect("reading the sources")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each top-level module's uses of other top-level modules (`crate::name`).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a path").as_os_str();
        first.to_string_lossy().trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|p| module_of(p)).collect();
    let re = regex_lite::Regex::new(r"crate::([a-z_][a-z0-9_]*)").expect("a valid pattern");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(f);
        let text = std::fs::read_to_string(f).expect("reading a source file");
        let deps = g.entry(m.clone()).or_default();
        for c in re.captures_iter(&text) {
            let d = c[1].to_string();
            if d != m && modules.contains(&d) && d != "lib" {
                deps.insert(d);
            }
        }
    }
    g
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn knots(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                c.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                t.out.push(c);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_cycles_in_the_daemon() {
    let g = graph();
    let knots = knots(&g);
    assert!(
        knots.is_empty(),
        "modules depend on each other in a circle: {knots:?} (graph: {g:#?})"
    );
}

#[test]
fn front_ends_go_through_the_service() {
    let g = graph();
    for (module, forbidden) in FORBIDDEN {
        let deps = g.get(module).expect("the module exists");
        assert!(
            deps.contains("service") || module == "service",
            "{module} should use the service"
        );
        for f in forbidden {
            assert!(
                !deps.contains(*f),
                "{module} must not use {f} (uses {deps:?})"
            );
        }
    }
}

#[test]
fn status_codes_only_in_http() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let outside: Vec<_> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("http")))
        .filter(|f| {
            std::fs::read_to_string(f)
                .expect("reading a source file")
                .contains("StatusCode")
        })
        .collect();
    assert!(
        outside.is_empty(),
        "StatusCode outside http/ (map a ServiceError in http/ instead): {outside:?}"
    );
}

#[test]
fn the_cycle_check_sees_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(knots(&g), vec![["a", "b", "c"].map(String::from).into()]);
}
