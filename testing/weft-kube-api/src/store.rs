//! The stand-in's objects, as the API server keeps them: one resourceVersion counter for
//! everything, optimistic concurrency on writes, and an event log that watches replay from a
//! resourceVersion (or refuse with 410 Gone once it has been trimmed past it).
//!
//! Objects are kept as JSON values: the stand-in checks what the API server's machinery
//! checks (names, namespaces, versions), not the schema of each kind.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// A resource the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    /// "v1" (core) or "networking.k8s.io/v1".
    pub api_version: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
}

pub const RESOURCES: [Resource; 5] = [
    Resource {
        plural: "nodes",
        singular: "node",
        kind: "Node",
        api_version: "v1",
        namespaced: false,
        short_names: &["no"],
    },
    Resource {
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        api_version: "v1",
        namespaced: false,
        short_names: &["ns"],
    },
    Resource {
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        api_version: "v1",
        namespaced: true,
        short_names: &["po"],
    },
    Resource {
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        api_version: "v1",
        namespaced: true,
        short_names: &["cm"],
    },
    Resource {
        plural: "networkpolicies",
        singular: "networkpolicy",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
        short_names: &["netpol"],
    },
];

pub fn resource(api_version: &str, plural: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.api_version == api_version && r.plural == plural)
}

/// An API error, as the server reports it in a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.plural),
        )
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub resource: Resource,
    pub kind: &'static str,
    pub object: Value,
}

impl Event {
    pub fn namespace(&self) -> &str {
        self.object["metadata"]["namespace"].as_str().unwrap_or("")
    }

    pub fn to_json(&self) -> Value {
        json!({"type": self.kind, "object": self.object})
    }
}

/// Which objects a list or watch wants: a namespace (or all), and label and field
/// selectors (equality-based: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: Vec<Requirement>,
    pub fields: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

pub fn parse_selector(s: &str) -> ApiResult<Vec<Requirement>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = part.split_once("!=") {
            Requirement::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::Absent(k.trim().into())
        } else if part.contains(' ') || part.contains('(') {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "unsupported selector {part:?}: the stand-in takes equality-based selectors only"
                ),
            ));
        } else {
            Requirement::Exists(part.into())
        };
        out.push(r);
    }
    Ok(out)
}

impl Requirement {
    fn holds(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Eq(k, v) => get(k).as_deref() == Some(v),
            Requirement::Ne(k, v) => get(k).as_deref() != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::Absent(k) => get(k).is_none(),
        }
    }
}

impl Filter {
    pub fn matches(&self, o: &Value) -> bool {
        let meta = &o["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str().map(str::to_string);
        // Field paths such as metadata.name or spec.nodeName.
        let field = |k: &str| {
            let mut v = o;
            for part in k.split('.') {
                v = &v[part];
            }
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        };
        self.labels.iter().all(|r| r.holds(label)) && self.fields.iter().all(|r| r.holds(field))
    }
}

type Key = (&'static str, String, String);

/// What a new watch starts with: the events to send first, and the live feed after them.
pub struct WatchStart {
    pub initial: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<Event>,
    /// Events kept for watches that resume from a resourceVersion.
    log_cap: usize,
    tx: broadcast::Sender<Event>,
    next_uid: u64,
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // `2006-01-02 15:04:05` → `2006-01-02T15:04:05Z`.
    format!(
        "{}Z",
        weft_api::render::utc_timestamp(secs).replace(' ', "T")
    )
}

fn name_of(o: &Value) -> Option<&str> {
    o["metadata"]["name"].as_str()
}

/// RFC 7386 JSON merge patch (what kubectl's strategic merge patches amount to for the
/// objects the stand-in serves: lists are replaced, maps merged, nulls delete).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                // Strategic merge patch directives are not data.
                if k.starts_with("$setElementOrder") || k == "$patch" || k == "$retainKeys" {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, test (what `kubectl patch --type=json` and
/// most clients send).
pub fn json_patch(target: &mut Value, ops: &Value) -> ApiResult<()> {
    let bad = |m: String| ApiError::new(422, "Invalid", m);
    let ops = ops
        .as_array()
        .ok_or_else(|| bad("a JSON patch is a list of operations".into()))?;
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| bad("operation without a path".into()))?;
        let parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let Some((last, parents)) = parts.split_last() else {
            return Err(bad("the root cannot be patched".into()));
        };
        let mut parent = &mut *target;
        for p in parents {
            parent = match parent {
                Value::Object(m) => m
                    .get_mut(p)
                    .ok_or_else(|| bad(format!("path {path} does not exist")))?,
                Value::Array(a) => p
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get_mut(i))
                    .ok_or_else(|| bad(format!("path {path} does not exist")))?,
                _ => return Err(bad(format!("path {path} does not exist"))),
            };
        }
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match (op["op"].as_str(), parent) {
            (Some("add" | "replace"), Value::Object(m)) => {
                m.insert(last.clone(), value);
            }
            (Some("add"), Value::Array(a)) if last == "-" => a.push(value),
            (Some("add"), Value::Array(a)) => {
                let i: usize = last
                    .parse()
                    .map_err(|_| bad(format!("bad index in {path}")))?;
                if i > a.len() {
                    return Err(bad(format!("index out of range in {path}")));
                }
                a.insert(i, value);
            }
            (Some("replace"), Value::Array(a)) => {
                let slot = last
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get_mut(i))
                    .ok_or_else(|| bad(format!("path {path} does not exist")))?;
                *slot = value;
            }
            (Some("remove"), Value::Object(m)) => {
                m.remove(last)
                    .ok_or_else(|| bad(format!("path {path} does not exist")))?;
            }
            (Some("remove"), Value::Array(a)) => {
                let i = last
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < a.len())
                    .ok_or_else(|| bad(format!("path {path} does not exist")))?;
                a.remove(i);
            }
            (Some("test"), Value::Object(m)) => {
                if m.get(last) != Some(&value) {
                    return Err(bad(format!("test failed at {path}")));
                }
            }
            (op, _) => return Err(bad(format!("unsupported operation {op:?} at {path}"))),
        }
    }
    Ok(())
}

impl Store {
    /// A store with the namespaces every cluster has.
    pub fn new(log_cap: usize) -> Store {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            rv: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            log_cap,
            tx,
            next_uid: 1,
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let r = resource("v1", "namespaces").expect("known");
            s.create(&r, "", json!({"metadata": {"name": ns}}))
                .expect("fresh store");
        }
        s
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn key(r: &Resource, ns: &str, name: &str) -> Key {
        (
            r.plural,
            if r.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    fn record(&mut self, r: Resource, kind: &'static str, object: Value) {
        let e = Event {
            rv: self.rv,
            resource: r,
            kind,
            object,
        };
        self.log.push_back(e.clone());
        while self.log.len() > self.log_cap {
            self.log.pop_front();
        }
        let _ = self.tx.send(e);
    }

    fn bump(&mut self, o: &mut Value) {
        self.rv += 1;
        o["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
    }

    fn check_namespace(&self, r: &Resource, ns: &str) -> ApiResult<()> {
        if !r.namespaced {
            return Ok(());
        }
        let key = ("namespaces", String::new(), ns.to_string());
        if self.objects.contains_key(&key) {
            Ok(())
        } else {
            Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ))
        }
    }

    pub fn get(&self, r: &Resource, ns: &str, name: &str) -> ApiResult<Value> {
        self.objects
            .get(&Self::key(r, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, name))
    }

    pub fn list(&self, r: &Resource, filter: &Filter) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((p, _, _), o)| *p == r.plural && filter.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version,
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        })
    }

    pub fn create(&mut self, r: &Resource, ns: &str, mut o: Value) -> ApiResult<Value> {
        if !o.is_object() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the body is not an object",
            ));
        }
        if name_of(&o).is_none()
            && let Some(prefix) = o["metadata"]["generateName"].as_str()
        {
            let name = format!("{prefix}{:05x}", self.next_uid);
            o["metadata"]["name"] = Value::String(name);
        }
        let name = name_of(&o)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?
            .to_string();
        self.check_namespace(r, ns)?;
        let key = Self::key(r, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.plural),
            ));
        }
        o["kind"] = Value::String(r.kind.into());
        o["apiVersion"] = Value::String(r.api_version.into());
        let meta = &mut o["metadata"];
        if r.namespaced {
            meta["namespace"] = Value::String(ns.into());
        }
        meta["uid"] = Value::String(format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
        self.next_uid += 1;
        meta["creationTimestamp"] = Value::String(now_rfc3339());
        meta["generation"] = json!(1);
        if r.plural == "namespaces" {
            o["status"] = json!({"phase": "Active"});
        }
        self.bump(&mut o);
        self.objects.insert(key, o.clone());
        self.record(*r, "ADDED", o.clone());
        Ok(o)
    }

    /// Replaces an object; a resourceVersion in the body must be the current one.
    pub fn update(&mut self, r: &Resource, ns: &str, name: &str, mut o: Value) -> ApiResult<Value> {
        let key = Self::key(r, ns, name);
        let cur = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(r, name))?;
        if name_of(&o).is_some_and(|n| n != name) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        if let Some(rv) = o["metadata"]["resourceVersion"].as_str()
            && Some(rv) != cur["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    r.plural
                ),
            ));
        }
        for f in ["uid", "creationTimestamp", "namespace", "generation"] {
            o["metadata"][f] = cur["metadata"][f].clone();
        }
        if o["metadata"]["namespace"].is_null()
            && let Some(m) = o["metadata"].as_object_mut()
        {
            m.remove("namespace");
        }
        o["metadata"]["name"] = Value::String(name.into());
        o["kind"] = Value::String(r.kind.into());
        o["apiVersion"] = Value::String(r.api_version.into());
        if o.get("spec") != cur.get("spec") {
            let g = cur["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
            o["metadata"]["generation"] = json!(g);
        }
        if o == *cur {
            // Nothing changed: no new version, no event (as the API server does).
            return Ok(o);
        }
        self.bump(&mut o);
        self.objects.insert(key, o.clone());
        self.record(*r, "MODIFIED", o.clone());
        Ok(o)
    }

    /// Applies `patch` with `apply` to the current object, then updates it.
    pub fn patch(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        apply: impl FnOnce(&mut Value) -> ApiResult<()>,
    ) -> ApiResult<Value> {
        let mut o = self.get(r, ns, name)?;
        let before = o["metadata"]["resourceVersion"].clone();
        apply(&mut o)?;
        // A patch that names a resourceVersion is conditional on it; one that does not
        // applies to whatever is current.
        if o["metadata"]["resourceVersion"] == before
            && let Some(m) = o["metadata"].as_object_mut()
        {
            m.remove("resourceVersion");
        }
        self.update(r, ns, name, o)
    }

    pub fn delete(&mut self, r: &Resource, ns: &str, name: &str) -> ApiResult<Value> {
        let key = Self::key(r, ns, name);
        let mut o = self
            .objects
            .remove(&key)
            .ok_or_else(|| ApiError::not_found(r, name))?;
        if r.plural == "namespaces" {
            // The API server empties a namespace in the background; here it happens at once.
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|(_, n, _)| n == name)
                .cloned()
                .collect();
            for k in inside {
                if let Some(mut child) = self.objects.remove(&k)
                    && let Some(cr) = RESOURCES.iter().find(|x| x.plural == k.0)
                {
                    self.bump(&mut child);
                    self.record(*cr, "DELETED", child);
                }
            }
        }
        self.bump(&mut o);
        self.record(*r, "DELETED", o.clone());
        Ok(o)
    }

    /// Starts a watch on `r` from resourceVersion `from` (`None` or 0: the current objects
    /// as ADDED events first, as the API server does).
    pub fn watch(&self, r: &Resource, filter: &Filter, from: Option<u64>) -> ApiResult<WatchStart> {
        let live = self.tx.subscribe();
        let initial = match from {
            None | Some(0) => self
                .objects
                .iter()
                .filter(|((p, _, _), o)| *p == r.plural && filter.matches(o))
                .map(|(_, o)| Event {
                    rv: self.rv,
                    resource: *r,
                    kind: "ADDED",
                    object: o.clone(),
                })
                .collect(),
            Some(v) => {
                let oldest = self.log.front().map_or(self.rv + 1, |e| e.rv);
                if v + 1 < oldest {
                    return Err(ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {v} ({})", oldest - 1),
                    ));
                }
                self.log
                    .iter()
                    .filter(|e| e.rv > v && e.resource == *r && filter.matches(&e.object))
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart { initial, live })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm() -> Resource {
        resource("v1", "configmaps").unwrap()
    }

    #[test]
    fn stale_writes_conflict_and_fresh_ones_bump_the_version() {
        let mut s = Store::new(100);
        let o = s
            .create(
                &cm(),
                "default",
                json!({"metadata": {"name": "a"}, "data": {"x": "1"}}),
            )
            .unwrap();
        let rv = o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let mut newer = o.clone();
        newer["data"]["x"] = json!("2");
        let newer = s.update(&cm(), "default", "a", newer).unwrap();
        assert_ne!(newer["metadata"]["resourceVersion"].as_str().unwrap(), rv);
        let mut stale = o.clone();
        stale["data"]["x"] = json!("3");
        assert_eq!(
            s.update(&cm(), "default", "a", stale).unwrap_err().code,
            409
        );
        assert_eq!(
            s.create(&cm(), "default", json!({"metadata": {"name": "a"}}))
                .unwrap_err()
                .reason,
            "AlreadyExists"
        );
        assert_eq!(
            s.create(&cm(), "nowhere", json!({"metadata": {"name": "b"}}))
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn watches_resume_from_a_version_until_it_is_trimmed() {
        let mut s = Store::new(3);
        let first = s.resource_version();
        for i in 0..5 {
            s.create(
                &cm(),
                "default",
                json!({"metadata": {"name": format!("c{i}")}}),
            )
            .unwrap();
        }
        assert_eq!(
            s.watch(&cm(), &Filter::default(), Some(first))
                .err()
                .unwrap()
                .code,
            410
        );
        let w = s
            .watch(&cm(), &Filter::default(), Some(s.resource_version() - 2))
            .unwrap();
        assert_eq!(w.initial.len(), 2);
        let all = s.watch(&cm(), &Filter::default(), None).unwrap();
        assert_eq!(all.initial.len(), 5);
    }

    #[test]
    fn selectors_and_patches() {
        let o = json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}});
        let f = Filter {
            labels: parse_selector("app=web,!tier").unwrap(),
            fields: parse_selector("spec.nodeName=n1").unwrap(),
            ..Default::default()
        };
        assert!(f.matches(&o));
        let f = Filter {
            labels: parse_selector("app!=web").unwrap(),
            ..Default::default()
        };
        assert!(!f.matches(&o));
        let mut t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(t, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
        json_patch(
            &mut t,
            &json!([{"op": "add", "path": "/l/-", "value": 4}, {"op": "remove", "path": "/a/c"}]),
        )
        .unwrap();
        assert_eq!(t, json!({"a": {"d": 3}, "l": [3, 4]}));
    }

    #[test]
    fn the_date_is_a_date() {
        let d = now_rfc3339();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
