//! The NetworkPolicy cases (tests/npc): the e2e suite's cluster of namespaces x, y, z with
//! pods a, b, c in each, each case's policies (and objects it changes), and the truth table
//! it expects, which NCA confirms independently (tests/npc/nca_check.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
pub const PORTS: [(&str, u16); 4] = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81)];

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/npc")
}

/// The documents of a YAML file, as JSON (through Python's yaml, which CI has with the
/// kubernetes client).
pub fn yaml_docs(path: &Path) -> Result<Vec<Value>> {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .context("running python3 (apt-get install python3-yaml)")?;
    if !out.status.success() {
        bail!(
            "reading {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// (protocol, port) → (source, destination) → allowed; the diagonal is left out.
pub type Table = BTreeMap<(String, u16), BTreeMap<(String, String), bool>>;

pub fn parse_table(text: &str) -> Result<Table> {
    let mut t = Table::new();
    let mut block: Option<(String, u16)> = None;
    let mut columns: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((proto, port)) = line.split_once('/')
            && !line.contains(' ')
            && let Ok(port) = port.parse()
        {
            block = Some((proto.to_string(), port));
            columns.clear();
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(b) = &block else {
            bail!("a row before any PROTO/PORT line: {line:?}");
        };
        if columns.is_empty() {
            columns = words.iter().map(|s| s.to_string()).collect();
            continue;
        }
        let (src, cells) = words.split_first().context("an empty row")?;
        if cells.len() != columns.len() {
            bail!(
                "row {src}: {} cells for {} columns",
                cells.len(),
                columns.len()
            );
        }
        for (dst, cell) in columns.iter().zip(cells) {
            let allowed = match *cell {
                "." => true,
                "X" => false,
                "-" => continue,
                other => bail!("cell {other:?} in row {src}"),
            };
            t.entry(b.clone())
                .or_default()
                .insert((src.to_string(), dst.clone()), allowed);
        }
    }
    Ok(t)
}

pub fn render_table(t: &Table) -> String {
    let mut s = String::new();
    for ((proto, port), cells) in t {
        s.push_str(&format!("{proto}/{port}\n    {}\n", PODS.join(" ")));
        for src in PODS {
            s.push_str(src);
            for dst in PODS {
                let c = match cells.get(&(src.to_string(), dst.to_string())) {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "-",
                };
                s.push_str(&format!("  {c} "));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

pub struct Case {
    pub name: String,
    pub policies: Vec<Value>,
    /// Namespaces and Pods that replace the cluster's own for this case.
    pub replacements: Vec<Value>,
    pub expected: Table,
}

pub fn cases() -> Result<Vec<Case>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir().join("cases"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let docs = yaml_docs(&p)?;
            let (policies, replacements) =
                docs.into_iter().partition(|d| d["kind"] == "NetworkPolicy");
            let expected = parse_table(
                &std::fs::read_to_string(p.with_extension("txt"))
                    .with_context(|| format!("{}'s table", p.display()))?,
            )
            .with_context(|| format!("{}'s table", p.display()))?;
            Ok(Case {
                name: p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                policies,
                replacements,
                expected,
            })
        })
        .collect()
}

/// The cluster's objects, with `replacements` in place of those they name.
pub fn cluster(replacements: &[Value]) -> Result<Vec<Value>> {
    let key = |o: &Value| {
        (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let mut objects = yaml_docs(&dir().join("cluster.yaml"))?;
    for r in replacements {
        match objects.iter_mut().find(|o| key(o) == key(r)) {
            Some(o) => *o = r.clone(),
            None => objects.push(r.clone()),
        }
    }
    Ok(objects)
}
