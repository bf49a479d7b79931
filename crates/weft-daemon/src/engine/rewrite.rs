//! What the Docker proxy changes in a container's configuration, as pure functions over the
//! Docker API's JSON (so they are tested without an engine).
//!
//! A container qualifies unless its network mode is the host's or another container's, or
//! its environment says `WEFT_CIDR=none` (Weave's `WEAVE_CIDR=none`). A qualifying container's
//! command is wrapped in `/w/w` (weft-wait, bind-mounted from the host), which holds it until
//! the router has attached `ethwe`; it gets a hostname in the weft domain and weftDNS as its
//! resolver.

use std::net::IpAddr;

use serde_json::{Map, Value, json};
use weft_api::types::AddrSpec;

/// Where weft-wait is mounted in containers (Weave's path, so `Entrypoint[0]` marks them).
pub const WAIT_PATH: &str = "/w/w";
/// Longest `hostname.domain` a container's UTS name can carry.
const MAX_FQDN: usize = 64;

/// How the proxy rewrites `POST /containers/create`.
#[derive(Clone, Debug, Default)]
pub struct CreateSettings {
    /// Host path of the static weft-wait binary.
    pub wait_binary: String,
    /// weftDNS as containers reach it, and the domain without its trailing dot; `None`: no
    /// DNS rewriting (`--without-dns`, `--no-dns`, or no address containers can reach).
    pub dns: Option<(IpAddr, String)>,
    pub no_multicast_route: bool,
    /// Take the hostname from this label's value when it is set (Weave's
    /// `--hostname-from-label`).
    pub hostname_from_label: Option<String>,
    /// `(label, value)` marking the container as made through this router's proxy.
    pub router_label: Option<(String, String)>,
    /// Container names become hostnames through this pattern and replacement (Weave's
    /// `--hostname-match` and `--hostname-replacement`); `None`: as they are.
    pub hostname_match: Option<(regex_lite::Regex, String)>,
}

/// Compiles `--hostname-match`; the default (`(.*)` → `$1`) needs no pattern at all.
pub fn hostname_match(
    pattern: &str,
    replacement: &str,
) -> Result<Option<(regex_lite::Regex, String)>, super::EngineError> {
    if pattern == "(.*)" && replacement == "$1" {
        return Ok(None);
    }
    let re = regex_lite::Regex::new(pattern).map_err(|e| super::EngineError::HostnameMatch {
        pattern: pattern.to_string(),
        detail: e.to_string(),
    })?;
    Ok(Some((re, replacement.to_string())))
}

/// The value of `WEFT_CIDR` or `WEAVE_CIDR` in a Docker `Env` list (`KEY=VALUE` strings).
pub fn cidr_env(env: &[String]) -> Option<&str> {
    ["WEFT_CIDR=", "WEAVE_CIDR="]
        .iter()
        .find_map(|k| env.iter().find_map(|e| e.strip_prefix(k)))
}

/// What a container asks for: `None` to stay off the overlay (`none`), else the address
/// specifications (empty: the default subnet, or nothing with `--no-default-ipalloc`).
pub fn cidr_specs(value: Option<&str>, no_default: bool) -> Result<Option<Vec<AddrSpec>>, String> {
    match value.map(str::trim) {
        Some("none") => Ok(None),
        // Weave: an empty WEAVE_CIDR means the default allocation even with
        // --no-default-ipalloc.
        Some("") => Ok(Some(vec![AddrSpec::DefaultSubnet])),
        None if no_default => Ok(None),
        None => Ok(Some(vec![AddrSpec::DefaultSubnet])),
        Some(list) => list
            .split_whitespace()
            .map(|s| s.parse().map_err(|e: String| format!("WEFT_CIDR: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

fn str_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Null => None,
        // The API accepts a single string where it means a one-element list.
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// The container's environment from a create body or an inspected `Config`.
pub fn env_of(config: &Value) -> Vec<String> {
    str_list(config.get("Env")).unwrap_or_default()
}

/// Why the proxy leaves this container alone, if it does.
pub fn leave_alone(body: &Value, no_default: bool) -> Option<String> {
    let mode = body
        .pointer("/HostConfig/NetworkMode")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !attachable_mode(mode) {
        return Some(format!("the container has '--net={mode}'"));
    }
    match cidr_specs(cidr_env(&env_of(body)), no_default) {
        Ok(None) => Some("WEFT_CIDR=none".into()),
        // A bad WEFT_CIDR is reported when the container starts, where the user sees it.
        Ok(Some(_)) | Err(_) => None,
    }
}

/// Whether the create body names its own entrypoint (else the image's is needed).
pub fn has_entrypoint(body: &Value) -> bool {
    str_list(body.get("Entrypoint")).is_some_and(|e| !e.is_empty())
}

/// A label-safe hostname from a container or namespace name (`/web_1` → `web-1`).
pub fn hostname_from_name(name: &str) -> String {
    let h: String = name
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    h.trim_matches('-').to_string()
}

/// Rewrites a qualifying container's create body in place. `image` is the image's
/// `(Entrypoint, Cmd)`, needed when the body names no entrypoint.
pub fn rewrite_create(
    body: &mut Value,
    name: Option<&str>,
    image: Option<(Vec<String>, Vec<String>)>,
    s: &CreateSettings,
) -> Result<(), String> {
    let Some(obj) = body.as_object_mut() else {
        return Err("the container configuration is not a JSON object".into());
    };
    // Docker's rule: a container's own entrypoint replaces the image's and, unless it also
    // names a command, the image's command too.
    let own_ep = str_list(obj.get("Entrypoint")).filter(|e| !e.is_empty());
    let own_cmd = str_list(obj.get("Cmd"));
    let (ep, cmd) = match own_ep {
        Some(ep) => (ep, own_cmd.unwrap_or_default()),
        None => {
            let (iep, icmd) = image.unwrap_or_default();
            (iep, own_cmd.unwrap_or(icmd))
        }
    };
    if ep.is_empty() && cmd.is_empty() {
        return Err("No command specified".into());
    }
    let mut wrapped: Vec<String> = Vec::new();
    if s.no_multicast_route {
        wrapped.push("--no-mcast".into());
    }
    wrapped.extend(ep);
    wrapped.extend(cmd);
    obj.insert("Entrypoint".into(), json!([WAIT_PATH]));
    obj.insert("Cmd".into(), json!(wrapped));
    if let Some((k, v)) = &s.router_label {
        let labels = obj
            .entry("Labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        labels[k.as_str()] = json!(v);
    }

    if let Some((_, domain)) = &s.dns {
        let has_hostname = obj
            .get("Hostname")
            .and_then(Value::as_str)
            .is_some_and(|h| !h.is_empty());
        if !has_hostname {
            let from_label = s.hostname_from_label.as_ref().and_then(|l| {
                obj.get("Labels")?
                    .get(l)?
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            });
            let derived = from_label
                .or_else(|| name.map(str::to_string))
                .map(|n| match &s.hostname_match {
                    Some((re, rep)) => re.replace_all(&n, rep.as_str()).into_owned(),
                    None => n,
                })
                .map(|n| hostname_from_name(&n))
                .filter(|h| !h.is_empty());
            if let Some(h) = derived {
                if h.len() + 1 + domain.len() <= MAX_FQDN {
                    obj.insert("Hostname".into(), json!(h));
                    obj.insert("Domainname".into(), json!(domain));
                } else {
                    tracing::info!(
                        "container name {h}.{domain} is too long to be used as hostname"
                    );
                }
            }
        }
    }

    let host = obj
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    if host.is_null() {
        *host = Value::Object(Map::new());
    }
    let Some(host) = host.as_object_mut() else {
        return Err("HostConfig is not a JSON object".into());
    };
    rewrite_host_config(host, s, true);
    Ok(())
}

/// Whether a network mode is one the proxy attaches containers in (Weave's rule: the default
/// bridge, or none).
pub fn attachable_mode(mode: &str) -> bool {
    matches!(mode, "" | "default" | "bridge" | "none")
}

/// Where weft-wait looks for the sign that it must not wait (a container started into the
/// host's or another container's network, or another network: weft does not attach it).
pub const NOOP_PATH: &str = "/w/noop";

/// The HostConfig part of the rewrite: weft-wait mounted, and for a container weft attaches,
/// weftDNS as resolver with the domain as search path; for one it does not, the sign that
/// tells weft-wait to run the command at once.
fn rewrite_host_config(host: &mut Map<String, Value>, s: &CreateSettings, attach: bool) {
    let mut binds = str_list(host.get("Binds")).unwrap_or_default();
    let wait = format!("{}:{WAIT_PATH}:ro", s.wait_binary);
    if !binds.contains(&wait) {
        binds.push(wait);
    }
    if !attach {
        let noop = format!("{}:{NOOP_PATH}:ro", s.wait_binary);
        if !binds.contains(&noop) {
            binds.push(noop);
        }
    }
    host.insert("Binds".into(), json!(binds));
    if !attach {
        return;
    }
    if let Some((dns_ip, domain)) = &s.dns {
        let mut dns = str_list(host.get("Dns")).unwrap_or_default();
        let ip = dns_ip.to_string();
        if !dns.contains(&ip) {
            dns.push(ip);
        }
        host.insert("Dns".into(), json!(dns));
        let search = str_list(host.get("DnsSearch")).unwrap_or_default();
        if search.is_empty() {
            host.insert("DnsSearch".into(), json!([domain]));
        }
    }
}

/// Rewrites the body of `POST /containers/{id}/start` for a container the proxy made. Old
/// clients (API < 1.24) send the HostConfig there, and Docker then replaces the one given at
/// create: without this, the weft-wait mount and weftDNS would be lost, and a network mode
/// set only here would go unnoticed. As Weave's proxy, a body with a `HostConfig` object is
/// taken as one, and so is any other non-empty top-level object. Returns `None` when there
/// is nothing to change.
pub fn rewrite_start(body: &[u8], s: &CreateSettings) -> Option<Vec<u8>> {
    let mut params: Value = serde_json::from_slice(body).ok()?;
    let obj = params.as_object_mut()?;
    let host = if obj.contains_key("HostConfig") {
        let h = obj.get_mut("HostConfig")?;
        if h.is_null() {
            *h = Value::Object(Map::new());
        }
        h.as_object_mut()?
    } else if !obj.is_empty() {
        obj
    } else {
        return None;
    };
    let mode = host
        .get("NetworkMode")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    rewrite_host_config(host, s, attachable_mode(&mode));
    Some(params.to_string().into_bytes())
}

/// The container's `/etc/hosts` once attached: its overlay addresses name it, and Docker's
/// own (bridge) address no longer does, so `hostname -i` and local lookups agree with weftDNS.
pub fn hosts_file(hostname: &str, domain: &str, ips: &[IpAddr], extra: &[String]) -> String {
    let mut s = String::from("# created by weft - BEGIN\n# container hostname\n");
    let short = hostname.split('.').next().unwrap_or(hostname);
    for ip in ips {
        let ip = ip.to_string();
        if domain.is_empty() || hostname.contains('.') {
            if short != hostname {
                s.push_str(&format!("{ip:<15} {hostname} {short}\n"));
            } else {
                s.push_str(&format!("{ip:<15} {hostname}\n"));
            }
        } else {
            s.push_str(&format!("{ip:<15} {hostname}.{domain} {hostname}\n"));
        }
    }
    s.push_str("\n# static names added with --add-host\n");
    for e in extra {
        // Docker's form is NAME:IP.
        if let Some((name, ip)) = e.split_once(':') {
            s.push_str(&format!("{ip:<15} {name}\n"));
        }
    }
    s.push_str(
        "\n# default localhost entries\n\
127.0.0.1       localhost\n\
::1             ip6-localhost ip6-loopback\n\
fe00::0         ip6-localnet\n\
ff00::0         ip6-mcastprefix\n\
ff02::1         ip6-allnodes\n\
ff02::2         ip6-allrouters\n\
# created by weft - END\n",
    );
    s
}

/// Matches `[/vX.Y]/containers/{id}/{action}` and `[/vX.Y]/containers/create`; returns the
/// path without its version prefix.
pub fn unversioned(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(slash) = rest.find('/')
        && rest[..slash]
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return &rest[slash..];
    }
    path
}

/// `/containers/{id}/start` or `/restart` → the id.
pub fn started_container(path: &str) -> Option<&str> {
    let rest = unversioned(path).strip_prefix("/containers/")?;
    let (id, action) = rest.split_once('/')?;
    (matches!(action, "start" | "restart") && !id.is_empty()).then_some(id)
}

/// Matches `[/vX.Y]/containers/{id}/json` (`docker inspect`); returns the id.
pub fn inspected_container(path: &str) -> Option<&str> {
    let rest = unversioned(path).strip_prefix("/containers/")?;
    let (id, action) = rest.split_once('/')?;
    (action == "json" && !id.is_empty()).then_some(id)
}

/// `--rewrite-inspect`: the inspected container's NetworkSettings show its weft interface
/// (MAC, first address and prefix length) instead of Docker's, as Weave's proxy did.
pub fn rewrite_inspect(body: &mut Value, mac: &str, first: ipnet::Ipv4Net) {
    if let Some(ns) = body
        .get_mut("NetworkSettings")
        .and_then(Value::as_object_mut)
    {
        ns.insert("MacAddress".into(), json!(mac));
        ns.insert("IPAddress".into(), json!(first.addr().to_string()));
        ns.insert("IPPrefixLen".into(), json!(first.prefix_len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_shows_the_weft_interface() {
        assert_eq!(
            inspected_container("/v1.41/containers/abc/json"),
            Some("abc")
        );
        assert_eq!(inspected_container("/containers/abc/logs"), None);
        let mut b = json!({"Id": "abc", "NetworkSettings": {"IPAddress": "172.17.0.2", "IPPrefixLen": 16, "MacAddress": "02:42:ac:11:00:02", "Networks": {}}});
        rewrite_inspect(&mut b, "aa:bb:cc:dd:ee:ff", "10.32.0.5/12".parse().unwrap());
        assert_eq!(b["NetworkSettings"]["IPAddress"], json!("10.32.0.5"));
        assert_eq!(b["NetworkSettings"]["IPPrefixLen"], json!(12));
        assert_eq!(
            b["NetworkSettings"]["MacAddress"],
            json!("aa:bb:cc:dd:ee:ff")
        );
        assert!(b["NetworkSettings"]["Networks"].is_object());
    }

    fn settings() -> CreateSettings {
        CreateSettings {
            wait_binary: "/opt/weft/weft-wait".into(),
            dns: Some(("10.32.0.1".parse().unwrap(), "weave.local".into())),
            ..Default::default()
        }
    }

    #[test]
    fn paths_with_and_without_versions() {
        assert_eq!(
            unversioned("/v1.41/containers/create"),
            "/containers/create"
        );
        assert_eq!(unversioned("/containers/create"), "/containers/create");
        assert_eq!(unversioned("/version"), "/version");
        assert_eq!(unversioned("/vx/containers"), "/vx/containers");
        assert_eq!(
            started_container("/v1.41/containers/abc/start"),
            Some("abc")
        );
        assert_eq!(started_container("/containers/abc/restart"), Some("abc"));
        assert_eq!(started_container("/containers/abc/stop"), None);
        assert_eq!(started_container("/containers/create"), None);
    }

    #[test]
    fn hostname_match_and_replacement_as_weaves() {
        let mut s = settings();
        s.hostname_match = hostname_match("^aws-[0-9]+-(.*)$", "my-app-$1").unwrap();
        let mut b = json!({"Image": "bb", "Cmd": ["true"]});
        rewrite_create(&mut b, Some("aws-12798186823-foo"), None, &s).unwrap();
        assert_eq!(b["Hostname"], json!("my-app-foo"));
        // A name the pattern does not match stays as it is.
        let mut b = json!({"Image": "bb", "Cmd": ["true"]});
        rewrite_create(&mut b, Some("web"), None, &s).unwrap();
        assert_eq!(b["Hostname"], json!("web"));
        assert!(hostname_match("(.*)", "$1").unwrap().is_none());
        let e = hostname_match("(", "$1").unwrap_err().to_string();
        assert!(e.contains("--hostname-match"), "{e}");
    }

    #[test]
    fn old_clients_start_bodies_keep_the_rewrite_and_their_network_mode() {
        let s = settings();
        let parse = |b: Vec<u8>| serde_json::from_slice::<Value>(&b).unwrap();
        // A HostConfig that drops our DNS (`"Dns": null`) gets it back.
        let b = parse(rewrite_start(br#"{"HostConfig":{"Dns":null}}"#, &s).unwrap());
        assert_eq!(b["HostConfig"]["Dns"], json!(["10.32.0.1"]));
        assert_eq!(b["HostConfig"]["DnsSearch"], json!(["weave.local"]));
        assert_eq!(
            b["HostConfig"]["Binds"],
            json!(["/opt/weft/weft-wait:/w/w:ro"])
        );
        // An unnamed, top-level HostConfig, as some clients send it.
        let b = parse(rewrite_start(br#"{"Binds":["/a:/b"]}"#, &s).unwrap());
        assert_eq!(b["Binds"], json!(["/a:/b", "/opt/weft/weft-wait:/w/w:ro"]));
        // The host's network: no DNS, and weft-wait is told not to wait.
        for mode in ["host", "container:abc", "mynet"] {
            let body = format!(r#"{{"HostConfig":{{"NetworkMode":"{mode}"}}}}"#);
            let b = parse(rewrite_start(body.as_bytes(), &s).unwrap());
            assert_eq!(
                b["HostConfig"]["Binds"],
                json!([
                    "/opt/weft/weft-wait:/w/w:ro",
                    "/opt/weft/weft-wait:/w/noop:ro"
                ]),
                "{mode}"
            );
            assert!(b["HostConfig"].get("Dns").is_none(), "{mode}");
        }
        // Nothing to change.
        assert!(rewrite_start(b"", &s).is_none());
        assert!(rewrite_start(b"{}", &s).is_none());
        assert!(rewrite_start(b"not json", &s).is_none());
    }

    #[test]
    fn the_image_command_is_wrapped() {
        let mut b = json!({"Image": "bb", "Cmd": null, "Entrypoint": null, "HostConfig": {"NetworkMode": "default"}});
        let image = (vec![], vec!["sh".into(), "-c".into(), "sleep 1".into()]);
        rewrite_create(&mut b, Some("service1"), Some(image), &settings()).unwrap();
        assert_eq!(b["Entrypoint"], json!(["/w/w"]));
        assert_eq!(b["Cmd"], json!(["sh", "-c", "sleep 1"]));
        assert_eq!(b["Hostname"], json!("service1"));
        assert_eq!(b["Domainname"], json!("weave.local"));
        assert_eq!(
            b["HostConfig"]["Binds"],
            json!(["/opt/weft/weft-wait:/w/w:ro"])
        );
        assert_eq!(b["HostConfig"]["Dns"], json!(["10.32.0.1"]));
        assert_eq!(b["HostConfig"]["DnsSearch"], json!(["weave.local"]));
    }

    #[test]
    fn docker_entrypoint_rules_are_kept() {
        // Own command, image entrypoint: entrypoint + own command.
        let mut b = json!({"Cmd": ["ping", "x"], "Env": ["A=1"]});
        let image = (vec!["/init".into()], vec!["default".into()]);
        rewrite_create(&mut b, None, Some(image.clone()), &settings()).unwrap();
        assert_eq!(b["Cmd"], json!(["/init", "ping", "x"]));
        // Own entrypoint: the image's command is not used.
        let mut b = json!({"Entrypoint": "top", "Cmd": null});
        rewrite_create(&mut b, None, Some(image), &settings()).unwrap();
        assert_eq!(b["Cmd"], json!(["top"]));
        assert!(b.get("Hostname").is_none());
        // Nothing at all to run.
        let mut b = json!({});
        let e = rewrite_create(&mut b, None, None, &settings()).unwrap_err();
        assert_eq!(e, "No command specified");
    }

    #[test]
    fn user_choices_are_respected() {
        let mut b = json!({"Cmd": ["x"], "Hostname": "mine", "HostConfig": {"Dns": ["1.1.1.1"], "DnsSearch": ["corp"], "Binds": ["/a:/b"]}});
        let s = CreateSettings {
            no_multicast_route: true,
            ..settings()
        };
        rewrite_create(&mut b, Some("c"), None, &s).unwrap();
        assert_eq!(b["Hostname"], json!("mine"));
        assert!(b.get("Domainname").is_none());
        assert_eq!(b["Cmd"], json!(["--no-mcast", "x"]));
        assert_eq!(b["HostConfig"]["Dns"], json!(["1.1.1.1", "10.32.0.1"]));
        assert_eq!(b["HostConfig"]["DnsSearch"], json!(["corp"]));
        assert_eq!(
            b["HostConfig"]["Binds"],
            json!(["/a:/b", "/opt/weft/weft-wait:/w/w:ro"])
        );
        // Without DNS nothing about names changes.
        let mut b = json!({"Cmd": ["x"]});
        let s = CreateSettings {
            dns: None,
            ..settings()
        };
        rewrite_create(&mut b, Some("c"), None, &s).unwrap();
        assert!(b.get("Hostname").is_none());
        assert!(b["HostConfig"].get("Dns").is_none());
    }

    #[test]
    fn hostnames_come_from_labels_or_names_and_fit() {
        let mut b = json!({"Cmd": ["x"], "Labels": {"svc": "db"}});
        let s = CreateSettings {
            hostname_from_label: Some("svc".into()),
            ..settings()
        };
        rewrite_create(&mut b, Some("/web_1"), None, &s).unwrap();
        assert_eq!(b["Hostname"], json!("db"));
        assert_eq!(hostname_from_name("/web_1"), "web-1");
        let long = "x".repeat(60);
        let mut b = json!({"Cmd": ["x"]});
        rewrite_create(&mut b, Some(&long), None, &settings()).unwrap();
        assert!(b.get("Hostname").is_none());
    }

    #[test]
    fn which_containers_qualify() {
        let none = json!({"Env": ["WEAVE_CIDR=none"]});
        assert_eq!(leave_alone(&none, false).as_deref(), Some("WEFT_CIDR=none"));
        let host = json!({"HostConfig": {"NetworkMode": "host"}});
        assert!(leave_alone(&host, false).unwrap().contains("--net=host"));
        let other = json!({"HostConfig": {"NetworkMode": "container:abc"}});
        assert!(leave_alone(&other, false).is_some());
        assert!(leave_alone(&json!({"HostConfig": {"NetworkMode": "bridge"}}), false).is_none());
        assert!(leave_alone(&json!({}), true).is_some());
        assert!(leave_alone(&json!({"Env": ["WEFT_CIDR="]}), true).is_none());
    }

    #[test]
    fn cidr_specifications() {
        let env = vec![
            "A=b".to_string(),
            "WEFT_CIDR=10.32.1.2/12 net:10.40.0.0/16".into(),
        ];
        let specs = cidr_specs(cidr_env(&env), false).unwrap().unwrap();
        assert_eq!(specs.len(), 2);
        assert!(matches!(specs[1], AddrSpec::Subnet(_)));
        assert!(cidr_specs(Some("nonsense"), false).is_err());
        assert!(cidr_specs(Some("none"), false).unwrap().is_none());
        assert_eq!(cidr_specs(None, false).unwrap().unwrap().len(), 1);
    }

    #[test]
    fn hosts_file_layout() {
        let ips = ["10.32.0.1".parse().unwrap()];
        let h = hosts_file("service1", "weave.local", &ips, &["db:10.0.0.9".into()]);
        assert!(
            h.contains("10.32.0.1       service1.weave.local service1\n"),
            "{h}"
        );
        assert!(h.contains("10.0.0.9        db\n"), "{h}");
        assert!(h.starts_with("# created by weft - BEGIN\n"));
        assert!(h.ends_with("# created by weft - END\n"));
    }
}
