//! weftDNS end to end: `dig` from inside container namespaces against the routers' DNS servers.
//!
//! Needs root, dig (dnsutils) and dnsmasq (dnsmasq-base, the upstream test resolver).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);

/// Launches weft on hosts 1..=n (each given the previous ones), each exposed so that its
/// containers can reach its DNS server; returns each host's DNS address.
fn launch(tb: &Testbed, n: usize, extra: &[&str]) -> Result<Vec<String>> {
    let mut peers: Vec<String> = Vec::new();
    let mut dns = Vec::new();
    for i in 1..=n {
        // The test's containers are bare namespaces on the overlay only, with no leg on
        // docker0 (where weftDNS listens by default on a Docker host): serve them everywhere.
        let mut args: Vec<&str> = vec!["--dns-listen-address=0.0.0.0:53"];
        args.extend_from_slice(extra);
        args.extend(peers.iter().map(String::as_str));
        tb.launch(i, &args)?;
        peers.push(tb.host(i).ip.to_string());
    }
    let want = format!("Peers: {n} (with {} established connections)", n * (n - 1));
    for i in 1..=n {
        Testbed::wait_for(CONVERGE, || {
            let s = tb.weft_ok(i, &["status"])?;
            if s.contains(&want) {
                Ok(())
            } else {
                bail!("h{i}: {s}")
            }
        })?;
    }
    for i in 1..=n {
        tb.weft_ok(i, &["expose"])?;
        let args = tb.weft_ok(i, &["dns-args"])?;
        let ip = args
            .split_whitespace()
            .find_map(|a| a.strip_prefix("--dns="))
            .unwrap_or_default()
            .to_string();
        assert!(args.contains("--dns-search=weave.local."), "{args}");
        dns.push(ip);
    }
    Ok(dns)
}

/// `dig @server ARGS` in namespace `ns`; returns stdout.
fn dig(tb: &Testbed, ns: &str, server: &str, args: &[&str]) -> String {
    let at = format!("@{server}");
    let mut a = vec![at.as_str(), "+time=2", "+tries=1"];
    a.extend_from_slice(args);
    String::from_utf8_lossy(&tb.exec(ns, "dig", &a).stdout).into_owned()
}

fn short(tb: &Testbed, ns: &str, server: &str, name: &str) -> Vec<String> {
    dig(tb, ns, server, &["+short", name])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn names_resolve_across_hosts_with_load_balancing_and_ptr() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("dns", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    let dns = launch(&tb, 3, &[])?;
    let w1 = tb.container("w1")?;
    let w3 = tb.container("w3")?;
    let client = tb.container("cl")?;
    let a1 = tb
        .weft_ok(1, &["attach", "-h", "web", &w1])?
        .trim()
        .to_string();
    let a3 = tb
        .weft_ok(3, &["attach", "-h", "web.weave.local", &w3])?
        .trim()
        .to_string();
    tb.weft_ok(2, &["attach", &client])?;
    // A name registered on h1 (and one on h3) resolves on h2.
    let want: BTreeSet<String> = [a1.clone(), a3.clone()].into();
    Testbed::wait_for(CONVERGE, || {
        let got: BTreeSet<String> = short(&tb, &client, &dns[1], "web.weave.local")
            .into_iter()
            .collect();
        if got == want {
            Ok(())
        } else {
            bail!("{got:?}")
        }
    })?;
    // Both addresses, in varying order (load balancing).
    let mut orders = BTreeSet::new();
    for _ in 0..30 {
        orders.insert(short(&tb, &client, &dns[1], "web.weave.local").join(","));
    }
    assert!(orders.len() >= 2, "always the same order: {orders:?}");
    // Upper case and single-label names work; the answer carries the question's case.
    let out = dig(&tb, &client, &dns[1], &["WEB.Weave.Local"]);
    assert!(
        out.contains("WEB.Weave.Local.") && out.contains("status: NOERROR"),
        "{out}"
    );
    assert!(out.contains("flags: qr aa rd ra"), "{out}");
    assert_eq!(short(&tb, &client, &dns[1], "web").len(), 2);
    // The container's own netns name is its default name.
    assert_eq!(
        short(&tb, &client, &dns[1], &format!("{client}.weave.local")).len(),
        1
    );
    // TTL 1 by default.
    let out = dig(
        &tb,
        &client,
        &dns[1],
        &["+noall", "+answer", "web.weave.local"],
    );
    assert!(
        out.lines()
            .all(|l| l.split_whitespace().nth(1) == Some("1")),
        "{out}"
    );
    // PTR.
    let out = dig(&tb, &client, &dns[1], &["+short", "-x", &a1]);
    assert_eq!(out.trim(), "web.weave.local.");
    // AAAA of a known name: NOERROR and empty; unknown names: NXDOMAIN.
    let out = dig(&tb, &client, &dns[1], &["AAAA", "web.weave.local"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    let out = dig(&tb, &client, &dns[1], &["nope.weave.local"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    // status dns lists the entries in Weave's layout.
    let st = tb.weft_ok(2, &["status", "dns"])?;
    assert!(
        st.lines().any(|l| l.starts_with("web ") && l.contains(&a1)),
        "{st}"
    );
    assert!(
        tb.weft_ok(2, &["status"])?
            .contains("        Service: dns\n         Domain: weave.local.\n")
    );
    // Detach removes the names.
    tb.weft_ok(3, &["detach", &w3])?;
    Testbed::wait_for(CONVERGE, || {
        let got = short(&tb, &client, &dns[1], "web.weave.local");
        if got == vec![a1.clone()] {
            Ok(())
        } else {
            bail!("{got:?}")
        }
    })?;
    Ok(())
}

#[test]
fn a_vanished_container_leaves_the_answers_within_two_seconds() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("dgo", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let dns = launch(&tb, 2, &[])?;
    let victim = tb.container("v")?;
    let client = tb.container("c")?;
    tb.weft_ok(1, &["attach", "-h", "victim", &victim])?;
    tb.weft_ok(2, &["attach", &client])?;
    Testbed::wait_for(CONVERGE, || {
        if short(&tb, &client, &dns[1], "victim.weave.local").len() == 1 {
            Ok(())
        } else {
            bail!("not yet")
        }
    })?;
    let out = std::process::Command::new("ip")
        .args(["netns", "del", &victim])
        .output()?;
    assert!(out.status.success());
    let start = Instant::now();
    Testbed::wait_for(Duration::from_secs(5), || {
        if short(&tb, &client, &dns[1], "victim.weave.local").is_empty() {
            Ok(())
        } else {
            bail!("still there")
        }
    })?;
    let took = start.elapsed();
    eprintln!("gone from answers on the other host after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    Ok(())
}

#[test]
fn fifty_addresses_truncate_over_udp_and_arrive_whole_over_tcp() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("dtc", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let dns = launch(&tb, 2, &[])?;
    let client = tb.container("c")?;
    tb.weft_ok(2, &["attach", &client])?;
    let ips: Vec<String> = (1..=50).map(|i| format!("10.99.0.{i}")).collect();
    let mut args: Vec<&str> = vec!["dns-add"];
    args.extend(ips.iter().map(String::as_str));
    args.extend(["-h", "many.weave.local"]);
    tb.weft_ok(1, &args)?;
    Testbed::wait_for(CONVERGE, || {
        let n = short(&tb, &client, &dns[1], "many.weave.local").len();
        if n == 50 { Ok(()) } else { bail!("{n}") }
    })?;
    // Without EDNS a UDP answer must fit 512 bytes: cut, with TC set.
    let out = dig(
        &tb,
        &client,
        &dns[1],
        &["+noedns", "+ignore", "many.weave.local"],
    );
    assert!(out.contains(" tc "), "TC not set: {out}");
    let n = out
        .lines()
        .filter(|l| l.starts_with("many.weave.local."))
        .count();
    assert!(n > 0 && n < 50, "{n} answers in a 512-byte reply");
    // dig retries over TCP on its own and gets all 50; so does +tcp.
    let all: BTreeSet<String> = dig(
        &tb,
        &client,
        &dns[1],
        &["+noedns", "+short", "many.weave.local"],
    )
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(all.len(), 50);
    let tcp: BTreeSet<String> = dig(
        &tb,
        &client,
        &dns[1],
        &["+tcp", "+short", "many.weave.local"],
    )
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(tcp, ips.iter().cloned().collect());
    // EDNS with a big buffer gets them all over UDP.
    let out = dig(
        &tb,
        &client,
        &dns[1],
        &["+bufsize=4096", "+ignore", "many.weave.local"],
    );
    assert!(!out.contains(" tc "), "{out}");
    // dns-remove takes them away again.
    tb.weft_ok(1, &["dns-remove", "10.99.0.1", "-h", "many.weave.local"])?;
    Testbed::wait_for(CONVERGE, || {
        let n = short(&tb, &client, &dns[1], "many.weave.local").len();
        if n == 49 { Ok(()) } else { bail!("{n}") }
    })?;
    Ok(())
}

#[test]
fn other_names_are_forwarded_to_the_upstream_resolver() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("dup", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    // Host 3 runs no weft, only dnsmasq: the site's resolver.
    let h3 = tb.host(3).netns.clone();
    let up = tb.host(3).ip.to_string();
    tb.spawn(
        &h3,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={up}"),
            "--address=/upstream.test/192.0.2.7",
            "--pid-file=",
            "--user=root",
        ],
    )?;
    let conf = std::env::temp_dir().join(format!("{}-resolv.conf", tb.prefix));
    // Our own address listed too: it must be skipped, not queried in a loop.
    std::fs::write(&conf, format!("nameserver {up}\n"))?;
    let rc = format!("--resolv-conf={}", conf.display());
    let dns = launch(&tb, 2, &[&rc])?;
    let client = tb.container("c")?;
    tb.weft_ok(2, &["attach", &client])?;
    let got = Testbed::wait_for(CONVERGE, || {
        let got = short(&tb, &client, &dns[1], "www.upstream.test");
        if got.is_empty() {
            bail!("no answer yet")
        } else {
            Ok(got)
        }
    })?;
    assert_eq!(got, vec!["192.0.2.7".to_string()]);
    // Over TCP too.
    assert_eq!(
        dig(
            &tb,
            &client,
            &dns[1],
            &["+tcp", "+short", "www.upstream.test"]
        )
        .trim(),
        "192.0.2.7"
    );
    // Not an open resolver: a stranger on the underlay is refused, for our names and others.
    let h2 = tb.host(2).ip.to_string();
    for name in ["www.upstream.test", "c.weave.local"] {
        let out = dig(&tb, &h3, &h2, &[name]);
        assert!(out.contains("status: REFUSED"), "{name}: {out}");
    }
    // Reverse lookups of addresses that are not ours are forwarded as well: we relay exactly
    // the status dnsmasq gives when asked directly.
    let status = |out: &str| {
        out.split("status: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_default()
            .to_string()
    };
    let direct = status(&dig(&tb, &h3, &up, &["-x", "192.0.2.99"]));
    let via = status(&dig(&tb, &client, &dns[1], &["-x", "192.0.2.99"]));
    assert!(!direct.is_empty());
    assert_eq!(via, direct);
    assert!(
        tb.weft_ok(2, &["status"])?
            .contains(&format!("       Upstream: {up}"))
    );
    // With the upstream gone: SERVFAIL, quickly enough (fallback timeout per server).
    std::fs::write(&conf, "nameserver 198.18.0.250\n")?;
    std::thread::sleep(Duration::from_secs(6));
    let out = dig(&tb, &client, &dns[1], &["+time=9", "other.upstream.test"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    let _ = std::fs::remove_file(&conf);
    Ok(())
}

#[test]
fn names_come_back_after_a_restart_and_junk_queries_are_survived() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("drs", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let dns = launch(&tb, 2, &[])?;
    let a = tb.container("a")?;
    let client = tb.container("c")?;
    let addr = tb
        .weft_ok(1, &["attach", "-h", "svc", &a])?
        .trim()
        .to_string();
    tb.weft_ok(2, &["attach", &client])?;
    Testbed::wait_for(CONVERGE, || {
        if short(&tb, &client, &dns[1], "svc.weave.local") == vec![addr.clone()] {
            Ok(())
        } else {
            bail!("not yet")
        }
    })?;
    tb.kill_router(1)?;
    tb.launch(1, &["--resume"])?;
    Testbed::wait_for(CONVERGE, || {
        if short(&tb, &client, &dns[1], "svc.weave.local") == vec![addr.clone()] {
            Ok(())
        } else {
            bail!("not back")
        }
    })?;
    // Junk at the DNS port: a header with garbage after it, a few random bytes, an empty
    // datagram. The server carries on.
    let h2 = tb.host(2).netns.clone();
    let server = &dns[1];
    let script = format!(
        "printf '\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\xff\\xff\\xff' > /dev/udp/{server}/53; \
         head -c 300 /dev/urandom > /dev/udp/{server}/53; printf '' > /dev/udp/{server}/53; \
         head -c 3000 /dev/urandom > /dev/tcp/{server}/53; true"
    );
    tb.exec(&h2, "bash", &["-c", &script]);
    assert_eq!(short(&tb, &client, &dns[1], "svc.weave.local"), vec![addr]);
    Ok(())
}

/// The tutorial's headline: a container pings another, on another host, by its short name.
#[test]
fn containers_ping_each_other_by_name() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("png", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let dns = launch(&tb, 2, &[])?;
    let s1 = tb.container("service1")?;
    let s2 = tb.container("service2")?;
    tb.weft_ok(1, &["attach", "-h", "service1", &s1])?;
    tb.weft_ok(2, &["attach", "-h", "service2", &s2])?;
    tb.set_resolv_conf(&s1, &dns[0], "weave.local")?;
    Testbed::wait_for(CONVERGE, || {
        let out = tb.exec(&s1, "ping", &["-c", "1", "-W", "1", "service2"]);
        if out.status.success() {
            Ok(())
        } else {
            bail!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
    })?;
    Ok(())
}

/// Weave's "with or without DNS": `attach --rewrite-hosts --add-host NAME:IP` writes the
/// container's /etc/hosts (which works with DNS off), and a container attached with `-h`
/// while DNS was off is registered once a later launch turns DNS on; one attached with
/// `--without-dns` is not.
#[test]
fn rewrite_hosts_and_names_kept_while_dns_was_off() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("wod", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &["--no-dns"])?;
    let target = tb.container("c2")?;
    tb.weft_ok(
        1,
        &[
            "attach",
            "10.2.0.78/24",
            "-h",
            "seetwo.weave.local",
            &target,
        ],
    )?;
    let quiet = tb.container("q")?;
    tb.weft_ok(
        1,
        &[
            "attach",
            "--without-dns",
            "-h",
            "quiet.weave.local",
            "10.2.0.79/24",
            &quiet,
        ],
    )?;
    let c = tb.container("c")?;
    let out = tb.weft_ok(
        1,
        &[
            "attach",
            "--rewrite-hosts",
            "--add-host=static.name:10.9.9.9",
            "10.2.0.34/24",
            &c,
        ],
    )?;
    assert_eq!(out.trim(), "10.2.0.34");
    let getent = |name: &str| {
        String::from_utf8_lossy(&tb.exec(&c, "getent", &["hosts", name]).stdout).into_owned()
    };
    assert!(
        getent("static.name").contains("10.9.9.9"),
        "{}",
        getent("static.name")
    );
    assert!(
        getent(&c).contains("10.2.0.34"),
        "the container's own name: {}",
        getent(&c)
    );
    // A process sharing the host's files would have it rewrite the host's /etc/hosts:
    // refused, before anything is attached.
    let p = tb.container("p")?;
    let pid = tb.spawn(&p, "sleep", &["600"])?.to_string();
    let before = std::fs::read("/etc/hosts").ok();
    let shared = tb.weft(1, &["attach", "--rewrite-hosts", "10.2.0.40/24", &pid]);
    assert!(!shared.status.success());
    assert!(
        String::from_utf8_lossy(&shared.stderr).contains("ip netns name"),
        "{shared:?}"
    );
    assert_eq!(std::fs::read("/etc/hosts").ok(), before);
    assert!(!tb.weft_ok(1, &["ps"])?.contains("10.2.0.40"));
    let bad = tb.weft(1, &["attach", "--add-host=nonsense", "net:default", &c]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("NAME:IP"),
        "{bad:?}"
    );

    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &["--dns-listen-address=0.0.0.0:53"])?;
    Testbed::wait_for(CONVERGE, || {
        let st = tb.weft_ok(1, &["status", "dns"])?;
        if st.contains("seetwo") && st.contains("10.2.0.78") {
            Ok(st)
        } else {
            bail!("seetwo is not registered: {st}")
        }
    })?;
    let st = tb.weft_ok(1, &["status", "dns"])?;
    assert!(!st.contains("quiet") && !st.contains("10.2.0.79"), "{st}");

    // The hosts file weft wrote goes with the attachment.
    let file = std::path::Path::new("/etc/netns").join(&c).join("hosts");
    assert!(file.exists());
    tb.weft_ok(1, &["detach", "10.2.0.34/24", &c])?;
    assert!(!file.exists(), "{} left behind", file.display());
    Ok(())
}
