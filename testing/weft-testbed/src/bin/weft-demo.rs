//! The tutorial on one machine: three hosts (network namespaces on an isolated underlay),
//! `weft launch` on each as a user would type it, a container on host1 and one on host3, their
//! status, and a ping across the overlay; then, with a Docker Engine, the same by `docker run`
//! through weft's Docker proxy. Everything is removed at the end.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weft_testbed::Testbed;

fn say(host: usize, cmd: &str) {
    println!("host{host}$ {cmd}");
}

fn main() -> Result<()> {
    if !weft_testbed::available() {
        bail!("the demo builds network namespaces and needs root (try: sudo scripts/demo.sh)");
    }
    let weft = weft_testbed::weft_binary()?;
    println!("Building 3 hosts as network namespaces on an isolated underlay (198.18.0.0/24)...");
    let mut tb = Testbed::new("demo", 3, &weft)?;
    let docker = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .env_remove("DOCKER_HOST")
        .output()
        .is_ok_and(|o| o.status.success())
        && weft.with_file_name("weft-wait").is_file();
    if docker {
        tb.with_docker();
    }
    for h in &tb.hosts {
        println!(
            "  host{} = namespace {} with eth0 {}",
            h.index, h.netns, h.ip
        );
    }
    println!();

    println!(
        "Each host is set up as Docker sets up its hosts: a docker0 bridge, br_netfilter, the\n\
         FORWARD policy DROP and Docker's chains. weft installs its own rules next to them.\n\
         The containers below are plain namespaces on the overlay only (no leg on docker0),\n\
         so weftDNS listens on every address rather than docker0's (--dns-listen-address).\n"
    );
    let (h1, h2) = (tb.host(1).ip.to_string(), tb.host(2).ip.to_string());
    let dns = "--dns-listen-address=0.0.0.0:53";
    say(1, &format!("weft launch {dns}"));
    tb.launch(1, &[dns])?;
    say(2, &format!("weft launch {dns} {h1}"));
    tb.launch(2, &[dns, &h1])?;
    say(3, &format!("weft launch {dns} {h1} {h2}"));
    tb.launch(3, &[dns, &h1, &h2])?;

    let start = Instant::now();
    let want = "Peers: 3 (with 6 established connections)";
    for i in 1..=3 {
        Testbed::wait_for(Duration::from_secs(30), || {
            let s = tb.weft_ok(i, &["status"])?;
            if s.contains(want) {
                Ok(())
            } else {
                bail!("host{i} not meshed yet:\n{s}")
            }
        })?;
    }
    println!(
        "\n(all three hosts meshed in {:.1}s)\n",
        start.elapsed().as_secs_f64()
    );

    say(1, "weft status");
    print!(
        "\n{}\n",
        tb.weft_ok(1, &["status"])?.trim_start_matches('\n')
    );
    say(1, "weft status peers");
    print!("{}", tb.weft_ok(1, &["status", "peers"])?);
    say(1, "weft status connections");
    println!("{}", tb.weft_ok(1, &["status", "connections"])?);

    let c1 = tb.container("service1")?;
    let c3 = tb.container("service2")?;
    for i in [1, 3] {
        // The host's own overlay address, where its containers reach weftDNS.
        say(i, "weft expose");
        println!("{}", tb.weft_ok(i, &["expose"])?.trim());
    }
    say(
        1,
        &format!("weft attach -h service1 {c1}      # no address given: weft allocates one"),
    );
    let a1 = tb
        .weft_ok(1, &["attach", "-h", "service1", &c1])?
        .trim()
        .to_string();
    println!("{a1}");
    say(3, &format!("weft attach -h service2 {c3}"));
    let a3 = tb
        .weft_ok(3, &["attach", "-h", "service2", &c3])?
        .trim()
        .to_string();
    println!("{a3}");
    say(1, "weft dns-args");
    let args = tb.weft_ok(1, &["dns-args"])?;
    print!("{args}");
    let dns_ip = args
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--dns="))
        .unwrap_or_default()
        .to_string();
    tb.set_resolv_conf(&c1, &dns_ip, "weave.local")?;
    say(1, "weft ps");
    print!("{}", tb.weft_ok(1, &["ps"])?);
    say(1, "weft status ipam");
    print!("{}", tb.weft_ok(1, &["status", "ipam"])?);
    say(1, "weft status dns");
    println!("{}", tb.weft_ok(1, &["status", "dns"])?);

    tb.wait_ping(&c1, &a3, Duration::from_secs(20))?;
    Testbed::wait_for(Duration::from_secs(20), || {
        let out = tb.exec(&c1, "ping", &["-c", "1", "-W", "1", "service2"]);
        if out.status.success() {
            Ok(())
        } else {
            bail!("service2 does not resolve yet")
        }
    })?;
    println!(
        "service1# ping -c 4 service2        (host1's container -> host3's container, by name)"
    );
    let out = tb.exec(&c1, "ping", &["-c", "4", "-i", "0.2", "service2"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("the ping across the overlay failed");
    }
    if docker {
        docker_part(&mut tb)?;
    } else {
        println!("\n(no Docker Engine here, or no weft-wait: skipping the docker run part)");
    }
    println!("\nTearing down the hosts...");
    drop(tb);
    println!("Done.");
    Ok(())
}

/// The tutorial's Docker flow: `eval $(weft env)`, `docker run --name ...` on two hosts, and
/// a ping by name from one container to the other.
fn docker_part(tb: &mut Testbed) -> Result<()> {
    use weft_testbed::DockerObject;
    println!("\nNow the same with Docker (one engine here, each host with its own weft proxy).");
    let image = tb.busybox_image()?;
    say(1, "eval $(weft env)");
    println!("{}", tb.weft_ok(1, &["env"])?.trim());
    let web = tb.docker_name(DockerObject::Container, "web");
    let db = tb.docker_name(DockerObject::Container, "db");
    say(1, &format!("docker run -d --name {web} {image} sleep 600"));
    println!(
        "{}",
        tb.docker_ok(1, &["run", "-d", "--name", &web, &image, "sleep", "600"])?
    );
    say(3, "eval $(weft env)");
    say(3, &format!("docker run -d --name {db} {image} sleep 600"));
    println!(
        "{}",
        tb.docker_ok(3, &["run", "-d", "--name", &db, &image, "sleep", "600"])?
    );
    say(1, "weft ps");
    print!("{}", tb.weft_ok(1, &["ps"])?);
    say(1, "weft status dns");
    print!("{}", tb.weft_ok(1, &["status", "dns"])?);
    println!("{web}# ping -c 3 {db}        (by name, across hosts)");
    let out = tb
        .docker_cmd(0, &["exec", &web, "ping", "-c", "3", &db])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "the ping between Docker containers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    say(1, "weft status");
    let s = tb.weft_ok(1, &["status"])?;
    if let Some(i) = s.find("        Service: proxy") {
        print!("{}", &s[i..]);
    }
    Ok(())
}
