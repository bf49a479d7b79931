//! End-to-end with a real Docker Engine: two namespace hosts, each with its router and Docker
//! proxy in front of the machine's one engine. `docker run` through either proxy puts a
//! busybox container (an image built FROM scratch) on the overlay with a name in weftDNS;
//! containers ping each other by name across hosts; `docker rm -f` removes the name and the
//! address; `WEFT_CIDR=none` stays off; the network plugin carries traffic across hosts.
//!
//! Needs root and a running dockerd (`.ci/run` starts one; set WEFT_REQUIRE_DOCKER=1 to fail
//! rather than skip without it) and the static weft-wait next to weft
//! (`scripts/build-wait.sh`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_testbed::{DockerObject, Testbed};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn testbed(tag: &str, n: usize) -> Option<Testbed> {
    if !weft_testbed::require() || !weft_testbed::docker_available() {
        return None;
    }
    let wait = Path::new(WEFT).with_file_name("weft-wait");
    assert!(
        wait.is_file(),
        "{} is missing: run scripts/build-wait.sh first",
        wait.display()
    );
    let mut tb = Testbed::new(tag, n, Path::new(WEFT)).expect("building the test bed");
    tb.with_docker();
    Some(tb)
}

/// Hosts 1..=n launched as in the tutorial, each with an overlay address so containers reach
/// its weftDNS. The routers live in namespaces whose docker0 (the test bed's Docker posture)
/// is not the engine's, so weftDNS listens everywhere rather than on that docker0.
fn launch(tb: &Testbed, n: usize) -> Result<()> {
    for i in 1..=n {
        let peers: Vec<String> = (1..i).map(|j| tb.host(j).ip.to_string()).collect();
        let mut args: Vec<&str> = vec!["--dns-listen-address=0.0.0.0:53"];
        args.extend(peers.iter().map(String::as_str));
        tb.launch(i, &args)?;
    }
    let want = format!("Peers: {n} (with {} established connections)", n * (n - 1));
    for i in 1..=n {
        Testbed::wait_for(Duration::from_secs(30), || {
            let s = tb.weft_ok(i, &["status"])?;
            if s.contains(&want) {
                Ok(())
            } else {
                bail!("h{i}:\n{s}")
            }
        })?;
        tb.weft_ok(i, &["expose"])?;
    }
    Ok(())
}

/// `docker exec C ARGS` straight at the engine; stdout, or the failure with its output.
fn exec(tb: &Testbed, c: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["exec", c];
    a.extend_from_slice(args);
    tb.docker_ok(0, &a)
}

#[test]
fn docker_run_through_the_proxy_joins_the_overlay_and_dns() -> Result<()> {
    let Some(mut tb) = testbed("dk", 2) else {
        return Ok(());
    };
    launch(&tb, 2)?;
    let image = tb.busybox_image()?;

    // `eval $(weft env)` and `weft config` point the client at the proxy; status shows it.
    let env = tb.weft_ok(1, &["env"])?;
    assert_eq!(
        env.trim(),
        format!("export DOCKER_HOST={} ORIG_DOCKER_HOST=", tb.proxy(1))
    );
    assert_eq!(
        tb.weft_ok(1, &["config"])?.trim(),
        format!("-H={}", tb.proxy(1))
    );
    let status = tb.weft_ok(1, &["status"])?;
    assert!(
        status.contains(&format!(
            "        Service: proxy\n        Address: {}\n",
            tb.proxy(1)
        )),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "        Service: plugin (legacy)\n     DriverName: {}\n",
            tb.plugin_driver(1)
        )),
        "{status}"
    );

    // The tutorial: service1 on host 1, service2 on host 2, each through its host's proxy.
    let s1 = tb.docker_name(DockerObject::Container, "service1");
    let s2 = tb.docker_name(DockerObject::Container, "service2");
    tb.docker_ok(1, &["run", "-d", "--name", &s1, &image, "sleep", "600"])?;
    tb.docker_ok(2, &["run", "-d", "--name", &s2, &image, "sleep", "600"])?;
    let addr = exec(&tb, &s1, &["ip", "-4", "-o", "addr", "show", "ethwe"])?;
    assert!(addr.contains("inet 10."), "{addr}");
    assert_eq!(
        exec(&tb, &s1, &["hostname"])?,
        s1,
        "hostname is the container name"
    );
    let resolv = exec(&tb, &s1, &["cat", "/etc/resolv.conf"])?;
    assert!(resolv.contains("search weave.local"), "{resolv}");
    let hosts = exec(&tb, &s1, &["cat", "/etc/hosts"])?;
    assert!(hosts.contains(&format!("{s1}.weave.local {s1}")), "{hosts}");
    // By name, across hosts, resolved by weftDNS.
    let ping = exec(&tb, &s1, &["ping", "-c", "3", "-W", "2", &s2])?;
    assert!(ping.contains(" 0% packet loss"), "{ping}");
    let ping = exec(
        &tb,
        &s2,
        &["ping", "-c", "2", "-W", "2", &format!("{s1}.weave.local")],
    )?;
    assert!(ping.contains(" 0% packet loss"), "{ping}");

    // weft's own commands take Docker names.
    // Named as given, as Weave's ps echoed its arguments; by id when listing all.
    let ps = tb.weft_ok(1, &["ps", &s1])?;
    assert!(ps.starts_with(&format!("{s1} ")), "{ps}");
    let id = tb.docker_ok(0, &["inspect", "-f", "{{.Id}}", &s1])?;
    let all = tb.weft_ok(1, &["ps"])?;
    assert!(all.lines().any(|l| l.starts_with(&id[..12])), "{all}");
    let dns = tb.weft_ok(2, &["status", "dns"])?;
    assert!(dns.contains(&s1) && dns.contains(&s2), "{dns}");

    // Removing a container removes its name (everywhere) and frees its address.
    let s2_ip = exec(&tb, &s2, &["ip", "-4", "-o", "addr", "show", "ethwe"])?;
    tb.docker_ok(2, &["rm", "-f", &s2])?;
    Testbed::wait_for(Duration::from_secs(5), || {
        let d = tb.weft_ok(1, &["status", "dns"])?;
        if d.contains(&s2) {
            bail!("{s2} still in weftDNS:\n{d}")
        }
        Ok(())
    })?;
    let ps2 = tb.weft_ok(2, &["ps"])?;
    assert!(
        ps2.lines().count() == 1,
        "only weave:expose left on h2:\n{ps2}\n(was {s2_ip})"
    );

    // Opting out, and a bad address request stops the container with the reason.
    let out = tb.docker_ok(
        1,
        &["run", "--rm", "-e", "WEAVE_CIDR=none", &image, "ip", "link"],
    )?;
    assert!(!out.contains("ethwe"), "{out}");
    let sub = tb.docker_ok(
        1,
        &[
            "run",
            "--rm",
            "-e",
            "WEFT_CIDR=net:10.36.0.0/16",
            &image,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "ethwe",
        ],
    )?;
    assert!(sub.contains("inet 10.36."), "{sub}");
    let bad = tb
        .docker_cmd(1, &["run", "--rm", "-e", "WEFT_CIDR=bogus", &image, "true"])
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("could not attach") && err.contains("bogus"),
        "{err}"
    );

    // Through the proxy: exec (an upgraded connection), logs, a long poll (wait), and a build
    // (a chunked request body with a streamed answer).
    assert_eq!(tb.docker_ok(1, &["exec", &s1, "hostname"])?, s1);
    let w = tb.docker_name(DockerObject::Container, "waited");
    tb.docker_ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            &w,
            &image,
            "sh",
            "-c",
            "echo done; sleep 1; exit 3",
        ],
    )?;
    assert_eq!(tb.docker_ok(1, &["wait", &w])?, "3");
    assert_eq!(tb.docker_ok(1, &["logs", &w])?, "done");
    let built = tb.docker_name(DockerObject::Image, "built");
    let ctx = std::env::temp_dir().join(format!("{built}-ctx"));
    std::fs::create_dir_all(&ctx)?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {image}\nRUN echo built > /built\n"),
    )?;
    let ctx_s = ctx.display().to_string();
    let b = tb.docker_ok(1, &["build", "-q", "-t", &built, &ctx_s]);
    let _ = std::fs::remove_dir_all(&ctx);
    b?;
    let out = tb.docker_ok(1, &["run", "--rm", &built, "cat", "/built"])?;
    assert_eq!(out, "built");

    // Streams through the proxy: attach (stdin).
    let mut child = tb
        .docker_cmd(1, &["run", "--rm", "-i", &image, "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"through the proxy\n")?;
    }
    let out = child.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the proxy\n");
    Ok(())
}

#[test]
fn the_network_plugin_carries_traffic_across_hosts() -> Result<()> {
    let Some(mut tb) = testbed("dkp", 2) else {
        return Ok(());
    };
    launch(&tb, 2)?;
    let image = tb.busybox_image()?;
    // One network per host's driver (one engine, two "hosts"): same default subnet, one
    // allocator. Host 1's is the ready-made one launch makes (Weave's `weave`).
    let (n1, n2) = (
        tb.docker_name(DockerObject::Network, "n1"),
        tb.docker_name(DockerObject::Network, "n2"),
    );
    let dns = "--dns-listen-address=0.0.0.0:53";
    let with_network = format!("--plugin-network={n1}");
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &[dns, &with_network])?;
    Testbed::wait_for(Duration::from_secs(10), || {
        let d = tb.docker_ok(0, &["network", "inspect", "-f", "{{.Driver}}", &n1])?;
        if d.trim() == tb.plugin_driver(1) {
            Ok(())
        } else {
            bail!("{n1} has driver {d}")
        }
    })?;
    tb.wait_full_mesh(2)?;
    let d = tb.plugin_driver(2);
    tb.docker_ok(
        0,
        &[
            "network",
            "create",
            "-d",
            &d,
            "--ipam-driver",
            &d,
            n2.as_str(),
        ],
    )?;
    let (a, b) = (
        tb.docker_name(DockerObject::Container, "pa"),
        tb.docker_name(DockerObject::Container, "pb"),
    );
    // Docker 20.10 keeps a hostname with its domain whole: registered once, as given.
    let a_fqdn = format!("{a}.weave.local");
    tb.docker_ok(
        0,
        &[
            "run",
            "-d",
            "--net",
            &n1,
            "--hostname",
            &a_fqdn,
            "--name",
            &a,
            &image,
            "sleep",
            "600",
        ],
    )?;
    tb.docker_ok(
        0,
        &[
            "run", "-d", "--net", &n2, "--name", &b, &image, "sleep", "600",
        ],
    )?;
    let ip_of = |c: &str| {
        tb.docker_ok(
            0,
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                c,
            ],
        )
    };
    let (ipa, ipb) = (ip_of(&a)?, ip_of(&b)?);
    assert!(
        ipa.starts_with("10.") && ipb.starts_with("10.") && ipa != ipb,
        "{ipa} {ipb}"
    );
    let ping = exec(&tb, &a, &["ping", "-c", "3", "-W", "2", &ipb])?;
    assert!(ping.contains(" 0% packet loss"), "{ping}");
    let mtu = exec(&tb, &a, &["cat", "/sys/class/net/ethwe0/mtu"])?;
    assert_eq!(mtu, "1450", "the overlay MTU");
    // Its name is in weftDNS on the other host.
    Testbed::wait_for(Duration::from_secs(5), || {
        let d = tb.weft_ok(2, &["status", "dns"])?;
        if d.contains(&a) {
            Ok(())
        } else {
            bail!("{a} not in weftDNS:\n{d}")
        }
    })?;
    let d = tb.weft_ok(2, &["status", "dns"])?;
    assert!(!d.contains("weave.local.weave.local"), "{d}");
    // weft ps lists plugin containers: all by id, or one by the name given.
    let id = tb.docker_ok(0, &["inspect", "-f", "{{.Id}}", &a])?;
    let ps = tb.weft_ok(1, &["ps"])?;
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id[..12]) && l.contains(ipa.trim())),
        "{ps}"
    );
    let ps = tb.weft_ok(1, &["ps", &a])?;
    assert!(
        ps.starts_with(&format!("{a} ")) && ps.contains(ipa.trim()),
        "{ps}"
    );
    // A router restart brings the plugin containers' names back.
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &[dns, &with_network])?;
    Testbed::wait_for(Duration::from_secs(10), || {
        let d = tb.weft_ok(1, &["status", "dns"])?;
        if d.contains(&a) {
            Ok(())
        } else {
            bail!("{a} not back in weftDNS after a restart:\n{d}")
        }
    })?;
    // Addresses go back when containers and networks go.
    tb.docker_ok(0, &["rm", "-f", &a, &b])?;
    tb.docker_ok(0, &["network", "rm", &n1, &n2])?;
    let ipam = tb.weft_ok(1, &["status", "ipam"])?;
    assert!(
        ipam.contains("(1 active)"),
        "only weave:expose left:\n{ipam}"
    );
    Ok(())
}

#[test]
fn launch_without_docker_says_so_and_works() -> Result<()> {
    if !weft_testbed::require() {
        return Ok(());
    }
    let tb = Testbed::new("dkn", 1, Path::new(WEFT))?;
    let out = tb
        .weft_cmd(
            1,
            &[
                "launch",
                "--docker-api=unix:///nonexistent/docker.sock",
                "--plugin=false",
            ],
        )
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("launched without the Docker proxy and plugin"),
        "{err}"
    );
    let status = tb.weft_ok(1, &["status"])?;
    assert!(!status.contains("Service: proxy"), "{status}");
    let env = tb.weft(1, &["env"]);
    let e = String::from_utf8_lossy(&env.stderr);
    assert!(!env.status.success() && e.contains("Docker"), "{e}");
    // Unknown containers are named in the error.
    let a = tb.weft(1, &["attach", "no-such-container"]);
    let e = String::from_utf8_lossy(&a.stderr);
    assert!(
        !a.status.success() && e.contains("no-such-container"),
        "{e}"
    );
    Ok(())
}

/// `-H tcp://127.0.0.1:PORT` next to the unix socket: both serve the API (status lists
/// both, `weft env` points at the first), and a `-H` that is neither is refused with the form.
#[test]
fn the_proxy_also_listens_on_tcp() -> Result<()> {
    let Some(mut tb) = testbed("dkt", 1) else {
        return Ok(());
    };
    let image = tb.busybox_image()?;
    let unix = tb.proxy(1);
    let tcp = "tcp://127.0.0.1:12375";
    tb.launch(1, &["-H", &unix, "-H", tcp])?;
    let status = tb.weft_ok(1, &["status"])?;
    assert!(status.contains(&unix) && status.contains(tcp), "{status}");
    let env = tb.weft_ok(1, &["env"])?;
    assert!(env.contains(&format!("DOCKER_HOST={unix}")), "{env}");
    let c = tb.docker_name(DockerObject::Container, "tcp");
    // The client runs next to the router, in its namespace, where 127.0.0.1 is the router's.
    let out = weft_testbed::run(tb.cmd_in(&tb.host(1).netns, "docker").args([
        "-H", tcp, "run", "--rm", "--name", &c, &image, "ip", "-4", "-o", "addr", "show", "ethwe",
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("inet 10."), "{text}");
    tb.weft_ok(1, &["stop"])?;
    let bad = tb
        .weft_cmd(1, &["launch", "-H", "tcp://nowhere"])
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("tcp://IP:PORT"),
        "{err}"
    );
    Ok(())
}

/// The proxy without weft-wait refuses to create containers and says what to do; following
/// the advice (relaunch with --wait-binary PATH) works.
#[test]
fn a_missing_weft_wait_is_reported_with_advice_that_works() -> Result<()> {
    let Some(mut tb) = testbed("dkw", 1) else {
        return Ok(());
    };
    let image = tb.busybox_image()?;
    tb.launch(1, &["--wait-binary=/nonexistent/weft-wait"])?;
    let c = tb.docker_name(DockerObject::Container, "w");
    let out = tb
        .docker_cmd(1, &["create", "--name", &c, &image, "true"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("relaunch with --wait-binary PATH"),
        "{err}"
    );
    tb.weft_ok(1, &["stop"])?;
    let wait = Path::new(WEFT).with_file_name("weft-wait");
    tb.launch(1, &[&format!("--wait-binary={}", wait.display())])?;
    tb.docker_ok(1, &["create", "--name", &c, &image, "true"])?;
    Ok(())
}

/// `curl` against a proxy socket: `(status, body)`.
fn curl(sock: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            sock,
        ])
        .args(["-X", method, "-H", "Content-Type: application/json"])
        .args(["--data-binary", body])
        .arg(format!("http://docker{path}"))
        .output()
        .context("running curl (apt-get install curl)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// Old clients (API < 1.24) send the HostConfig with `start`. One that says `--net=host` is
/// honoured: nothing of weft's appears in the host's namespace at any moment (watched with
/// `ip monitor`), and the command runs at once. One that drops weftDNS (`"Dns": null`) gets it
/// back, and the container is attached as any.
#[test]
fn old_clients_start_bodies_are_rewritten_and_their_network_mode_honoured() -> Result<()> {
    let Some(mut tb) = testbed("dko", 1) else {
        return Ok(());
    };
    tb.launch(1, &["--dns-listen-address=0.0.0.0:53"])?;
    tb.weft_ok(1, &["expose"])?;
    let image = tb.busybox_image()?;
    let proxy = tb.proxy(1);
    let sock = proxy.trim_start_matches("unix://").to_string();
    // The machine's own namespace, where a --net=host container lives: watched throughout.
    let log = tb.dir().join("monitor.log");
    let mut monitor = std::process::Command::new("ip")
        .args(["-o", "monitor", "link", "address"])
        .stdout(std::fs::File::create(&log)?)
        .spawn()?;
    let result = (|| -> Result<()> {
        let host = tb.docker_name(DockerObject::Container, "oldhost");
        let create = format!(r#"{{"Image":"{image}","Cmd":["sh","-c","echo started; sleep 60"]}}"#);
        let (code, body) = curl(
            &sock,
            "POST",
            &format!("/v1.23/containers/create?name={host}"),
            &create,
        )?;
        assert_eq!(code, 201, "{body}");
        let (code, body) = curl(
            &sock,
            "POST",
            &format!("/v1.23/containers/{host}/start"),
            r#"{"HostConfig":{"NetworkMode":"host"}}"#,
        )?;
        assert_eq!(code, 204, "{body}");
        Testbed::wait_for(Duration::from_secs(20), || {
            let logs = tb.docker_ok(0, &["logs", &host])?;
            if logs.contains("started") {
                Ok(())
            } else {
                bail!("the --net=host container's command has not run: {logs:?}")
            }
        })?;
        let mode = tb.docker_ok(0, &["inspect", "-f", "{{.HostConfig.NetworkMode}}", &host])?;
        assert_eq!(mode.trim(), "host");
        let ps = tb.weft_ok(1, &["ps"])?;
        assert!(
            !ps.contains(&host[..12.min(host.len())]) && ps.lines().count() == 1,
            "{ps}"
        );

        // "Dns": null would lose weftDNS; the proxy puts it back, and attaches as any.
        let plain = tb.docker_name(DockerObject::Container, "oldplain");
        let (code, body) = curl(
            &sock,
            "POST",
            &format!("/v1.23/containers/create?name={plain}"),
            &create,
        )?;
        assert_eq!(code, 201, "{body}");
        let (code, body) = curl(
            &sock,
            "POST",
            &format!("/v1.23/containers/{plain}/start"),
            r#"{"HostConfig":{"Dns":null}}"#,
        )?;
        assert_eq!(code, 204, "{body}");
        let dns = tb.weft_ok(1, &["dns-args"])?;
        let ip = dns
            .split_whitespace()
            .find_map(|a| a.strip_prefix("--dns="))
            .context("dns-args names the DNS address")?
            .to_string();
        let resolv = exec(&tb, &plain, &["cat", "/etc/resolv.conf"])?;
        assert!(resolv.contains(&ip), "{resolv}");
        let addr = exec(&tb, &plain, &["ip", "-4", "-o", "addr", "show", "ethwe"])?;
        assert!(addr.contains("inet 10."), "{addr}");
        Ok(())
    })();
    std::thread::sleep(Duration::from_millis(300));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let seen = std::fs::read_to_string(&log)?;
    assert!(
        !seen.contains("ethwe") && !seen.contains("inet 10."),
        "weft touched the host's namespace:\n{seen}"
    );
    result
}

/// The weft address of a Docker container (its `ethwe`).
fn ethwe_addr(tb: &Testbed, c: &str) -> Result<String> {
    let out = exec(tb, c, &["ip", "-4", "-o", "addr", "show", "ethwe"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .with_context(|| format!("no address on ethwe: {out}"))
}

/// Addresses follow Docker's container lifecycle as Weave's did: a `--restart=always`
/// container killed and restarted by Docker keeps its address while another container
/// starts in between; `docker stop` / `docker start` keeps it; `docker rm` releases it.
#[test]
fn addresses_follow_the_containers_lifecycle() -> Result<()> {
    let Some(mut tb) = testbed("dkl", 1) else {
        return Ok(());
    };
    tb.launch(1, &["--dns-listen-address=0.0.0.0:53"])?;
    let image = tb.busybox_image()?;
    let x = tb.docker_name(DockerObject::Container, "x");
    let y = tb.docker_name(DockerObject::Container, "y");
    tb.docker_ok(
        1,
        &[
            "run",
            "-d",
            "--restart=always",
            "--name",
            &x,
            &image,
            "sleep",
            "600",
        ],
    )?;
    let a = ethwe_addr(&tb, &x)?;
    let id = tb
        .docker_ok(0, &["inspect", "-f", "{{.Id}}", &x])?
        .trim()
        .to_string();
    let pid = tb
        .docker_ok(0, &["inspect", "-f", "{{.State.Pid}}", &x])?
        .trim()
        .to_string();
    // Killed from outside: Docker's restart policy brings it back.
    weft_testbed::run(std::process::Command::new("kill").args(["-9", &pid]))?;
    tb.docker_ok(1, &["run", "-d", "--name", &y, &image, "sleep", "600"])?;
    let b = ethwe_addr(&tb, &y)?;
    assert_ne!(a, b, "the restarting container's address went to another");
    Testbed::wait_for(Duration::from_secs(20), || {
        let n = tb.docker_ok(
            0,
            &["inspect", "-f", "{{.RestartCount}} {{.State.Running}}", &x],
        )?;
        if n.trim() != "0 true" && n.trim().ends_with("true") {
            Ok(())
        } else {
            bail!("not restarted yet: {n}")
        }
    })?;
    Testbed::wait_for(Duration::from_secs(20), || {
        let now = ethwe_addr(&tb, &x)?;
        if now == a {
            Ok(())
        } else {
            bail!("came back with {now}, not {a}")
        }
    })?;
    // Stopped and started again.
    tb.docker_ok(0, &["stop", "-t", "1", &x])?;
    tb.docker_ok(1, &["start", &x])?;
    assert_eq!(ethwe_addr(&tb, &x)?, a);
    // Stopped while the router is away, started after it is back.
    let dns = "--dns-listen-address=0.0.0.0:53";
    tb.weft_ok(1, &["stop"])?;
    tb.docker_ok(0, &["stop", "-t", "1", &x])?;
    tb.launch(1, &[dns])?;
    tb.docker_ok(1, &["start", &x])?;
    assert_eq!(ethwe_addr(&tb, &x)?, a);
    // Removed: released, whether the router saw it or not.
    tb.docker_ok(0, &["rm", "-f", &x])?;
    released(&tb, &id)?;
    let yid = tb
        .docker_ok(0, &["inspect", "-f", "{{.Id}}", &y])?
        .trim()
        .to_string();
    tb.weft_ok(1, &["stop"])?;
    tb.docker_ok(0, &["rm", "-f", &y])?;
    tb.launch(1, &[dns])?;
    released(&tb, &yid)?;
    Ok(())
}

/// Waits until host 1's allocator holds nothing for `id` (`GET /ip/{id}` answers 404).
fn released(tb: &Testbed, id: &str) -> Result<()> {
    let ns = tb.host(1).netns.clone();
    Testbed::wait_for(Duration::from_secs(10), || {
        let url = format!("http://127.0.0.1:6784/ip/{id}");
        let out = tb.exec(
            &ns,
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
        );
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "404" {
            Ok(())
        } else {
            bail!("GET /ip/{id}: {code}")
        }
    })
}

/// `--docker-api tcp://HOST:PORT`, as Weave took it: the router talks to an engine over TCP
/// (here host 1's proxy, listening on TCP in front of the machine's engine), resolves Docker
/// names through it and attaches their containers.
#[test]
fn an_engine_over_tcp_is_used() -> Result<()> {
    let Some(mut tb) = testbed("dkc", 2) else {
        return Ok(());
    };
    let image = tb.busybox_image()?;
    let listen = format!("tcp://{}:12376", tb.host(1).ip);
    // Plain TCP on purpose: this test is about the engine side.
    tb.launch(1, &["-H", &listen, "--insecure-proxy-without-tls"])?;
    let api = format!("--docker-api={listen}");
    let out = tb
        .weft_cmd(2, &["launch", &api, "--proxy=false", "--plugin=false"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("without the Docker"), "{err}");
    let c = tb.docker_name(DockerObject::Container, "tcpc");
    tb.docker_ok(
        0,
        &[
            "run",
            "-d",
            "--net=none",
            "--name",
            &c,
            &image,
            "sleep",
            "600",
        ],
    )?;
    let addr = tb.weft_ok(2, &["attach", &c])?;
    assert!(addr.trim().starts_with("10."), "{addr}");
    assert_eq!(ethwe_addr(&tb, &c)?, addr.trim());
    Ok(())
}

/// Weave's `--hostname-match`/`--hostname-replacement` and `--rewrite-inspect`: a container
/// name becomes the hostname the pattern makes of it, and `docker inspect` through the proxy
/// shows the weft address and MAC.
#[test]
fn hostname_match_and_rewrite_inspect() -> Result<()> {
    let Some(mut tb) = testbed("dkm", 1) else {
        return Ok(());
    };
    let image = tb.busybox_image()?;
    tb.launch(
        1,
        &[
            "--dns-listen-address=0.0.0.0:53",
            "--rewrite-inspect",
            "--hostname-match=^.*-aws-[0-9]+-(.*)$",
            "--hostname-replacement=my-app-$1",
        ],
    )?;
    tb.weft_ok(1, &["expose"])?;
    let c = tb.docker_name(DockerObject::Container, "aws-12798186823-foo");
    tb.docker_ok(1, &["run", "-d", "--name", &c, &image, "sleep", "600"])?;
    assert_eq!(exec(&tb, &c, &["hostname"])?, "my-app-foo");
    let dns = tb.weft_ok(1, &["status", "dns"])?;
    assert!(dns.contains("my-app-foo"), "{dns}");
    let ip = ethwe_addr(&tb, &c)?;
    let mac = exec(&tb, &c, &["cat", "/sys/class/net/ethwe/address"])?;
    let shown = tb.docker_ok(
        1,
        &[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}}/{{.NetworkSettings.IPPrefixLen}} {{.NetworkSettings.MacAddress}}",
            &c,
        ],
    )?;
    assert_eq!(shown.trim(), format!("{ip}/12 {}", mac.trim()));
    // Straight at the engine: Docker's own.
    let raw = tb.docker_ok(0, &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &c])?;
    assert_ne!(raw.trim(), ip);
    // A command that is not there fails in Docker's (and Weave's) words.
    let m = tb.docker_name(DockerObject::Container, "nocmd");
    let out = tb
        .docker_cmd(1, &["run", "--name", &m, &image, "no-such-command"])
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(127), "{text}");
    // A pattern that does not compile is refused at launch.
    tb.weft_ok(1, &["stop"])?;
    let bad = tb.weft(1, &["launch", "--hostname-match=("]);
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && e.contains("--hostname-match"),
        "{e}"
    );
    Ok(())
}

/// A CA, certificates for `names` (server) or a client, made with openssl in `dir`.
mod certs {
    use super::*;

    fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
        weft_testbed::run(
            std::process::Command::new("openssl")
                .current_dir(dir)
                .args(args),
        )
        .context("running openssl (apt-get install openssl)")?;
        Ok(())
    }

    /// `<name>-ca.pem` and `<name>-ca-key.pem`.
    pub fn ca(dir: &Path, name: &str) -> Result<()> {
        let (cert, key) = (format!("{name}-ca.pem"), format!("{name}-ca-key.pem"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} CA"),
                "-keyout",
                &key,
                "-out",
                &cert,
            ],
        )
    }

    /// `<name>.pem` and `<name>-key.pem`, signed by `<ca>-ca.pem`; `ips` as subject
    /// alternative names (a server), or none (a client).
    pub fn signed(dir: &Path, ca: &str, name: &str, ips: &[&str]) -> Result<()> {
        let (cert, key, csr) = (
            format!("{name}.pem"),
            format!("{name}-key.pem"),
            format!("{name}.csr"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        let ext = format!("{name}.ext");
        let usage = if ips.is_empty() {
            "extendedKeyUsage=clientAuth\n".to_string()
        } else {
            let san: Vec<String> = ips.iter().map(|i| format!("IP:{i}")).collect();
            format!(
                "extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                san.join(",")
            )
        };
        std::fs::write(dir.join(&ext), usage)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}-ca.pem"),
                "-CAkey",
                &format!("{ca}-ca-key.pem"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        )
    }
}

/// The proxy on TCP with TLS, as Weave's and Docker's: the docker CLI with a good client
/// certificate runs ps, run (attached, streamed) through it, and the container gets a weft
/// address; no client certificate, one from another CA, or plain HTTP get nothing. A TCP
/// listener beyond loopback without TLS is refused at launch unless the insecure opt-in says
/// so (which warns on the terminal); unreadable or mismatched key files are refused before
/// anything on the host is made.
#[test]
fn the_proxy_serves_tcp_with_tls() -> Result<()> {
    let Some(mut tb) = testbed("dks", 3) else {
        return Ok(());
    };
    let image = tb.busybox_image()?;
    let dir = tb.dir().join("tls");
    std::fs::create_dir_all(&dir)?;
    let h1 = tb.host(1).ip.to_string();
    certs::ca(&dir, "good")?;
    certs::ca(&dir, "other")?;
    certs::signed(&dir, "good", "server", &[&h1, "127.0.0.1"])?;
    certs::signed(&dir, "good", "client", &[])?;
    certs::signed(&dir, "other", "stranger", &[])?;
    let f = |n: &str| dir.join(n).display().to_string();
    let tcp = format!("tcp://{h1}:12377");
    tb.launch(
        1,
        &[
            "--dns-listen-address=0.0.0.0:53",
            "-H",
            &tcp,
            "-H",
            &tb.proxy(1),
            "--tlsverify",
            &format!("--tlscacert={}", f("good-ca.pem")),
            &format!("--tlscert={}", f("server.pem")),
            &format!("--tlskey={}", f("server-key.pem")),
        ],
    )?;
    tb.weft_ok(1, &["expose"])?;
    let env = tb.weft_ok(1, &["env"])?;
    assert!(
        env.contains(&format!(
            "DOCKER_HOST={tcp} DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={}",
            dir.display()
        )),
        "{env}"
    );
    // The docker CLI on another host, with a client certificate.
    let ns2 = tb.host(2).netns.clone();
    let c = tb.docker_name(DockerObject::Container, "tls");
    let docker = |extra: &[&str], args: &[&str]| {
        let mut c = tb.cmd_in(&ns2, "docker");
        c.args(["-H", &tcp])
            .args(extra)
            .args(args)
            .env_remove("DOCKER_HOST");
        c.output()
    };
    let good = [
        "--tlsverify".to_string(),
        format!("--tlscacert={}", f("good-ca.pem")),
        format!("--tlscert={}", f("client.pem")),
        format!("--tlskey={}", f("client-key.pem")),
    ];
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let out = docker(&good, &["ps"])?;
    assert!(out.status.success(), "{out:?}");
    let out = docker(
        &good,
        &[
            "run", "--rm", "--name", &c, &image, "ip", "-4", "-o", "addr", "show", "ethwe",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("inet 10."), "{out:?}");
    // Without a good client certificate, or without TLS: nothing.
    let stranger = [
        "--tlsverify".to_string(),
        format!("--tlscacert={}", f("good-ca.pem")),
        format!("--tlscert={}", f("stranger.pem")),
        format!("--tlskey={}", f("stranger-key.pem")),
    ];
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    let no_cert = [
        "--tlsverify".to_string(),
        format!("--tlscacert={}", f("good-ca.pem")),
    ];
    let no_cert: Vec<&str> = no_cert.iter().map(String::as_str).collect();
    for (what, extra) in [
        ("another CA", &stranger[..]),
        ("no certificate", &no_cert[..]),
        ("plain HTTP", &[][..]),
    ] {
        let out = docker(extra, &["ps"])?;
        assert!(!out.status.success(), "{what}: {out:?}");
    }

    // No TLS beyond loopback: refused, unless asked for in so many words.
    let h2 = format!("tcp://{}:12378", tb.host(2).ip);
    let out = tb.weft(2, &["launch", "-H", &h2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tlsverify"),
        "{err}"
    );
    let out = tb.weft(2, &["launch", "-H", &h2, "--insecure-proxy-without-tls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("WITHOUT TLS"), "{err}");
    // Loopback without TLS stays allowed.
    tb.weft_ok(2, &["stop"])?;
    tb.launch(2, &["-H", "tcp://127.0.0.1:12379"])?;

    // Bad files: refused before anything on the host is made.
    let ns3 = tb.host(3).netns.clone();
    let h3 = format!("tcp://{}:12380", tb.host(3).ip);
    for (key, want) in [
        (
            "/nonexistent/key.pem".to_string(),
            "--tlskey /nonexistent/key.pem",
        ),
        (f("client-key.pem"), "do not go together"),
    ] {
        let out = tb.weft(
            3,
            &[
                "launch",
                "-H",
                &h3,
                "--tlsverify",
                &format!("--tlscacert={}", f("good-ca.pem")),
                &format!("--tlscert={}", f("server.pem")),
                &format!("--tlskey={key}"),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{err}");
        assert!(
            !tb.exec(&ns3, "ip", &["link", "show", "weft"])
                .status
                .success()
        );
        assert!(!tb.host(3).run_dir.exists(), "nothing made");
    }
    Ok(())
}

/// TLS detection as Weave's launch did it: with no TLS flag, the proxy takes the settings of
/// the Docker daemon it fronts (one started with --tlsverify on TCP), so a TCP listener
/// beyond loopback is served with them; `--no-detect-tls` leaves them alone (and such a
/// listener is refused without TLS).
#[test]
fn the_proxy_takes_the_docker_daemons_tls_settings() -> Result<()> {
    let Some(mut tb) = testbed("dkd", 2) else {
        return Ok(());
    };
    let dir = tb.dir().join("d2");
    std::fs::create_dir_all(&dir)?;
    let h1 = tb.host(1).ip.to_string();
    certs::ca(&dir, "good")?;
    certs::signed(&dir, "good", "server", &[&h1, "127.0.0.1"])?;
    certs::signed(&dir, "good", "client", &[])?;
    let f = |n: &str| dir.join(n).display().to_string();
    let tag = format!(
        "weft-{}",
        tb.dir()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("test")
    );
    let own = tb.container("dockerd")?;
    // A second Docker daemon, with TLS on TCP.
    let daemon = weft_testbed::dockerd::Dockerd::start(
        &own,
        &dir,
        &tag,
        &[
            "-H".into(),
            "tcp://127.0.0.1:23761".into(),
            "--tlsverify".into(),
            format!("--tlscacert={}", f("good-ca.pem")),
            format!("--tlscert={}", f("server.pem")),
            format!("--tlskey={}", f("server-key.pem")),
        ],
    )?;
    let api = format!("--docker-api=unix://{}", daemon.socket.display());
    let tcp = format!("tcp://{h1}:12382");
    let refused = tb.weft(
        1,
        &[
            "launch",
            &api,
            "-H",
            &tcp,
            "--no-detect-tls",
            "--plugin=false",
        ],
    );
    assert!(!refused.status.success(), "{refused:?}");
    tb.launch(1, &[&api, "-H", &tcp, "--plugin=false"])?;
    let env = tb.weft_ok(1, &["env"])?;
    assert!(env.contains("DOCKER_TLS_VERIFY=1"), "{env}");
    let ns2 = tb.host(2).netns.clone();
    let docker = |extra: &[String]| {
        tb.cmd_in(&ns2, "docker")
            .args(["-H", &tcp])
            .args(extra)
            .arg("version")
            .env_remove("DOCKER_HOST")
            .output()
    };
    let out = docker(&[
        "--tlsverify".into(),
        format!("--tlscacert={}", f("good-ca.pem")),
        format!("--tlscert={}", f("client.pem")),
        format!("--tlskey={}", f("client-key.pem")),
    ])?;
    assert!(out.status.success(), "{out:?}");
    assert!(!docker(&[])?.status.success(), "plain HTTP is refused");

    // TLS towards an engine on TCP, as the docker CLI decides it (DOCKER_TLS_VERIFY,
    // DOCKER_CERT_PATH): host 2 takes host 1's TLS proxy as its engine.
    let client = dir.join("client-dir");
    std::fs::create_dir_all(&client)?;
    for (from, to) in [
        ("good-ca.pem", "ca.pem"),
        ("client.pem", "cert.pem"),
        ("client-key.pem", "key.pem"),
    ] {
        std::fs::copy(dir.join(from), client.join(to))?;
    }
    let engine = format!("--docker-api={tcp}");
    let args = ["launch", engine.as_str(), "--proxy=false", "--plugin=false"];
    let out = tb
        .weft_cmd(2, &args)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &client)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("without the Docker"),
        "{err}"
    );
    tb.weft_ok(2, &["stop"])?;
    let out = tb
        .weft_cmd(2, &args)
        .env_remove("DOCKER_TLS_VERIFY")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without the Docker"),
        "plain HTTP to a TLS engine: {err}"
    );
    tb.weft_ok(2, &["stop"])?;
    tb.weft_ok(1, &["stop"])?;
    drop(daemon);
    Ok(())
}
