//! A test bed of simulated hosts on one machine, built from network namespaces.
//!
//! ```text
//!   <p>-h1 (eth0 198.18.0.1/24) --veth--+
//!   <p>-h2 (eth0 198.18.0.2/24) --veth--+-- br0 in <p>-u (the underlay)
//!   <p>-hN (eth0 198.18.0.N/24) --veth--+
//! ```
//! Containers are further namespaces (`<p>-cNAME`). No namespace has a default route, so no
//! traffic can leave the machine, and nothing touches the root namespace.
//!
//! Hosts look like the nodes users run weft on ([`Posture`]): by default a Docker host —
//! a `docker0` bridge (172.17.0.1/16), `br_netfilter` passing bridged frames through iptables,
//! IPv4 forwarding on, the FORWARD policy DROP and Docker's own chains — so a test passes only
//! if weft's firewall rules work next to Docker's. [`Posture::Kube`] adds kube-proxy's NAT
//! chains and `route_localnet`; [`Posture::Bare`] is an idealised host for tests about
//! something else (benchmarks). Every name starts with
//! a prefix unique to this process and test bed, so test beds run in parallel; everything is
//! removed on drop (also when a test panics), and only processes this test bed started are
//! killed, by PID.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod dockerd;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether namespace tests can run here (root, `ip` present). Tests call [`require`].
pub fn available() -> bool {
    nix_geteuid() == 0 && Command::new("ip").arg("-V").output().is_ok()
}

fn nix_geteuid() -> u32 {
    // /proc/self/status avoids a libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// Returns false (and says why) when a namespace test must be skipped; panics when it should
/// run but cannot, so CI never passes by skipping.
pub fn require() -> bool {
    if available() {
        return true;
    }
    if std::env::var("WEFT_SKIP_NETNS_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipping: needs root and iproute2 (WEFT_SKIP_NETNS_TESTS=1)");
        return false;
    }
    panic!(
        "network namespace tests need root and iproute2; run as root, or set WEFT_SKIP_NETNS_TESTS=1 to skip them"
    );
}

/// What a test host's network looks like besides weft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posture {
    /// A bare namespace: no firewall rules, forwarding off.
    Bare,
    /// A Docker host (Docker 20.10's rules for its default bridge).
    Docker,
    /// A Kubernetes node: Docker's posture plus kube-proxy's (iptables mode) chains.
    Kube,
}

/// Docker 20.10's rules on a host with only its default bridge, as `iptables-save` shows them.
pub const DOCKER_RULES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

/// kube-proxy's rules (iptables mode, no Services yet), loaded on top of Docker's.
pub const KUBE_RULES: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I OUTPUT 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-I POSTROUTING 1 -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
";

pub struct Host {
    pub index: usize,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
}

/// Kinds of Docker objects a test bed names and removes.
#[derive(Clone, Copy, Debug)]
pub enum DockerObject {
    Container,
    Network,
    Image,
}

/// A test bed of `n` hosts with the default posture, or `None` when namespace tests are
/// skipped here (see [`require`]): what every namespace test starts with.
pub fn for_test(tag: &str, n: usize, weft: &Path) -> Option<Testbed> {
    require().then(|| Testbed::new(tag, n, weft).expect("building the test bed"))
}

/// As [`for_test`], on hosts with `posture`.
pub fn for_test_with(tag: &str, n: usize, weft: &Path, posture: Posture) -> Option<Testbed> {
    require().then(|| Testbed::with_posture(tag, n, weft, posture).expect("building the test bed"))
}

/// Whether a Docker Engine answers here; with `WEFT_REQUIRE_DOCKER=1` (CI) its absence fails.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .env_remove("DOCKER_HOST")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let required = std::env::var("WEFT_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "WEFT_REQUIRE_DOCKER=1 but no Docker Engine answers (start dockerd)"
        );
        eprintln!("skipping: no Docker Engine answers (set WEFT_REQUIRE_DOCKER=1 to fail instead)");
    }
    ok
}

pub struct Testbed {
    pub prefix: String,
    pub weft: PathBuf,
    pub hosts: Vec<Host>,
    underlay: String,
    containers: Vec<String>,
    dir: PathBuf,
    children: Vec<Child>,
    /// `/etc/netns/<ns>` directories we made (per-namespace resolv.conf).
    etc_dirs: Vec<PathBuf>,
    /// Routers talk to the Docker Engine (off unless a test asks: see [`Testbed::with_docker`]).
    docker: bool,
    /// Docker objects we made, removed on drop: containers, networks, images.
    docker_containers: Vec<String>,
    docker_networks: Vec<String>,
    docker_images: Vec<String>,
    posture: Posture,
}

/// Runs a command, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

impl Testbed {
    /// Builds `n` Docker hosts on an underlay (`WEFT_TEST_POSTURE=bare|docker|kube` picks
    /// another posture, to tell a weft bug from a host one). `tag` names the test (keep it
    /// short).
    pub fn new(tag: &str, n: usize, weft: &Path) -> Result<Self> {
        let posture = match std::env::var("WEFT_TEST_POSTURE").as_deref() {
            Ok("bare") => Posture::Bare,
            Ok("kube") => Posture::Kube,
            Ok("docker") | Err(_) => Posture::Docker,
            Ok(other) => bail!("WEFT_TEST_POSTURE={other}: use bare, docker or kube"),
        };
        Self::with_posture(tag, n, weft, posture)
    }

    /// Builds `n` hosts of the given posture on an underlay.
    pub fn with_posture(tag: &str, n: usize, weft: &Path, posture: Posture) -> Result<Self> {
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("wt{}-{}-{k}", tag, std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let mut tb = Testbed {
            underlay: format!("{prefix}-u"),
            prefix,
            weft: weft.to_path_buf(),
            hosts: Vec::new(),
            containers: Vec::new(),
            dir,
            children: Vec::new(),
            etc_dirs: Vec::new(),
            docker: false,
            docker_containers: Vec::new(),
            docker_networks: Vec::new(),
            docker_images: Vec::new(),
            posture,
        };
        // From here on, Drop cleans up whatever was made even if a later step fails.
        ip(&["netns", "add", &tb.underlay])?;
        ip(&["-n", &tb.underlay, "link", "set", "lo", "up"])?;
        ip(&["-n", &tb.underlay, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &tb.underlay, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            tb.add_host(i)?;
        }
        Ok(tb)
    }

    fn add_host(&mut self, i: usize) -> Result<()> {
        let ns = format!("{}-h{i}", self.prefix);
        let hostip = Ipv4Addr::new(198, 18, 0, i as u8);
        ip(&["netns", "add", &ns])?;
        let host = Host {
            index: i,
            netns: ns.clone(),
            ip: hostip,
            state_dir: self.dir.join(format!("h{i}/state")),
            run_dir: self.dir.join(format!("h{i}/run")),
        };
        self.hosts.push(host);
        self.plug_into_underlay(&ns, &format!("h{i}"), hostip)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        self.apply_posture(&ns)?;
        Ok(())
    }

    /// Gives namespace `ns` an `eth0` with `addr`/24, plugged into the underlay bridge as
    /// port `port`.
    fn plug_into_underlay(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let u = self.underlay.as_str();
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", u,
        ])?;
        ip(&["-n", u, "link", "set", port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])
    }

    fn apply_posture(&self, ns: &str) -> Result<()> {
        if self.posture == Posture::Bare {
            return Ok(());
        }
        ip(&["-n", ns, "link", "add", "docker0", "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", "172.17.0.1/16", "dev", "docker0"])?;
        ip(&["-n", ns, "link", "set", "docker0", "up"])?;
        let mut sysctls = vec![
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
            "net.ipv4.ip_forward=1",
        ];
        if self.posture == Posture::Kube {
            sysctls.push("net.ipv4.conf.all.route_localnet=1");
        }
        run(self.cmd_in(ns, "sysctl").arg("-qw").args(&sysctls))
            .context("setting a Docker host's sysctls (is br_netfilter available?)")?;
        let mut rules = vec![DOCKER_RULES];
        if self.posture == Posture::Kube {
            rules.push(KUBE_RULES);
        }
        for r in rules {
            self.iptables_restore(ns, r)?;
        }
        Ok(())
    }

    /// Fixes every host's underlay neighbours (permanent entries, which the kernel neither
    /// ages nor counts against its neighbour table limit). Real hosts each have their own
    /// table, but all namespaces on one machine share one limit (gc_thresh3, 1024 by default),
    /// and a mesh of N hosts needs N×(N-1) underlay entries: past about 30 hosts the kernel
    /// would refuse new ones machine-wide, which is this machine's limit, not weft's.
    pub fn pin_underlay_neighbours(&self) -> Result<()> {
        let mut macs = Vec::new();
        for h in &self.hosts {
            let out = run(self
                .cmd_in(&h.netns, "cat")
                .arg("/sys/class/net/eth0/address"))?;
            macs.push((
                h.ip,
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            ));
        }
        for h in &self.hosts {
            let batch: String = macs
                .iter()
                .filter(|(ip, _)| *ip != h.ip)
                .map(|(ip, mac)| {
                    format!("neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n")
                })
                .collect();
            self.feed(&h.netns, "ip", &["-batch", "-"], &batch)?;
        }
        Ok(())
    }

    /// Feeds `rules` to `iptables-restore --noflush` in namespace `ns`.
    pub fn iptables_restore(&self, ns: &str, rules: &str) -> Result<()> {
        self.feed(ns, "iptables-restore", &["--noflush"], rules)
            .context("loading rules with iptables-restore (apt-get install iptables)")
    }

    /// Runs `program ARGS` in namespace `ns` with `input` on its standard input; fails with
    /// the input and what the program said unless it exits 0.
    fn feed(&self, ns: &str, program: &str, args: &[&str], input: &str) -> Result<()> {
        let mut child = self
            .cmd_in(ns, program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{program} refused:\n{input}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `iptables-save` of host `i` (every table).
    pub fn iptables_save(&self, i: usize) -> Result<String> {
        let out = run(&mut self.cmd_in(&self.host(i).netns, "iptables-save"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `iptables ARGS` in host `i`.
    pub fn iptables(&self, i: usize, args: &[&str]) -> Result<()> {
        run(self.cmd_in(&self.host(i).netns, "iptables").args(args)).map(|_| ())
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// A command to run inside namespace `ns`.
    pub fn cmd_in(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// `weft ARGS` on host `i`, with that host's state and run directories.
    pub fn weft_cmd(&self, i: usize, args: &[&str]) -> Command {
        let h = self.host(i);
        let mut c = self.cmd_in(&h.netns, self.weft.to_str().expect("utf-8 path"));
        c.args(args)
            .env("WEFT_STATE_DIR", &h.state_dir)
            .env("WEFT_RUN_DIR", &h.run_dir)
            .env_remove("WEFT_HTTP_ADDR")
            .env_remove("DOCKER_HOST");
        if self.docker {
            // One engine serves every host: each router gets its own plugin socket (the
            // driver is named after it).
            c.env_remove("WEFT_DOCKER_API")
                .env("WEFT_PLUGIN_SOCKET", self.plugin_socket(i))
                // Network names are the engine's, shared by every host of every test bed:
                // a test that wants the ready-made network names its own.
                .env("WEFT_PLUGIN_NETWORK", "");
        } else {
            c.env("WEFT_DOCKER_API", "");
        }
        c
    }

    /// Lets the routers use the machine's Docker Engine (proxy and plugin).
    pub fn with_docker(&mut self) {
        self.docker = true;
    }

    /// Host `i`'s plugin socket, and so its Docker network driver's name.
    pub fn plugin_socket(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/run/docker/plugins/{}h{i}.sock", self.prefix))
    }

    pub fn plugin_driver(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    /// Host `i`'s Docker proxy address.
    pub fn proxy(&self, i: usize) -> String {
        format!(
            "unix://{}",
            self.host(i).run_dir.join("weft.sock").display()
        )
    }

    /// `docker ARGS` through host `i`'s proxy (or straight to the engine with `i == 0`).
    pub fn docker_cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        if i > 0 {
            c.args(["-H", &self.proxy(i)]);
        }
        c.args(args).env_remove("DOCKER_HOST");
        c
    }

    /// Runs `docker ARGS` via host `i`'s proxy; fails unless it exits 0; returns stdout.
    pub fn docker_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = run(&mut self.docker_cmd(i, args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A Docker object name unique to this test bed (and removed with it).
    pub fn docker_name(&mut self, kind: DockerObject, name: &str) -> String {
        let n = format!("{}-{name}", self.prefix);
        match kind {
            DockerObject::Container => self.docker_containers.push(n.clone()),
            DockerObject::Network => self.docker_networks.push(n.clone()),
            DockerObject::Image => self.docker_images.push(n.clone()),
        }
        n
    }

    /// Builds an image `FROM scratch` holding Debian's static busybox and its applets;
    /// returns its name. No registry needed.
    pub fn busybox_image(&mut self) -> Result<String> {
        let name = self.docker_name(DockerObject::Image, "bb");
        let dir = self.dir.join("bb-image");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy("/bin/busybox", dir.join("busybox"))
            .context("copying /bin/busybox (apt-get install busybox-static)")?;
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n",
        )?;
        run(Command::new("docker")
            .args(["build", "-q", "-t", &name])
            .arg(&dir)
            .env_remove("DOCKER_HOST"))?;
        Ok(name)
    }

    /// Runs `weft ARGS` on host `i` and returns its output whatever the exit status.
    pub fn weft(&self, i: usize, args: &[&str]) -> Output {
        self.weft_cmd(i, args)
            .output()
            .expect("running the weft binary")
    }

    /// Runs `weft ARGS` on host `i`; fails unless it exits 0. Returns stdout.
    /// Host `i`'s `weft report`, as JSON.
    pub fn report_json(&self, i: usize) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.weft_ok(i, &["report"])?)?)
    }

    pub fn weft_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = run(&mut self.weft_cmd(i, args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `weft launch` on host `i` with a nickname `host<i>` and the given extra arguments.
    pub fn launch(&self, i: usize, extra: &[&str]) -> Result<String> {
        let nick = format!("--nickname=host{i}");
        let mut args = vec!["launch", nick.as_str()];
        args.extend_from_slice(extra);
        self.weft_ok(i, &args)
    }

    /// Launches hosts 1..=n as the tutorial does (each given the ones before it), each with
    /// `extra` flags, and waits until every one sees the full mesh.
    pub fn launch_mesh(&self, n: usize, extra: &[&str]) -> Result<()> {
        for i in 1..=n {
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            args.extend((1..i).map(|j| self.host(j).ip.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.launch(i, &args)?;
        }
        if n < 2 {
            return Ok(());
        }
        self.wait_full_mesh(n)
    }

    /// `weft status [SUB...]` on host `i`.
    pub fn status(&self, i: usize, sub: &[&str]) -> Result<String> {
        let mut args = vec!["status"];
        args.extend_from_slice(sub);
        self.weft_ok(i, &args)
    }

    /// Waits (up to 30 s) until `weft status` on each of `hosts` contains `want`; the error
    /// shows the last status and the router's log.
    pub fn wait_status(&self, hosts: &[usize], want: &str) -> Result<()> {
        for &i in hosts {
            Self::wait_for(Duration::from_secs(30), || {
                let s = self.status(i, &[])?;
                if s.contains(want) {
                    Ok(())
                } else {
                    bail!("h{i} status:\n{s}\nlog:\n{}", self.router_log(i))
                }
            })?;
        }
        Ok(())
    }

    /// Waits until hosts 1..=n each see all n peers, fully connected.
    pub fn wait_full_mesh(&self, n: usize) -> Result<()> {
        let want = format!("Peers: {n} (with {} established connections)", n * (n - 1));
        self.wait_status(&(1..=n).collect::<Vec<_>>(), &want)
    }

    /// `weft attach [ARGS...] CONTAINER` on host `i`; the address it printed.
    pub fn attach(&self, i: usize, args: &[&str], container: &str) -> Result<String> {
        let mut a = vec!["attach"];
        a.extend_from_slice(args);
        a.push(container);
        Ok(self.weft_ok(i, &a)?.trim().to_string())
    }

    /// The router PID on host `i`, from its pid file.
    pub fn router_pid(&self, i: usize) -> Option<u32> {
        std::fs::read_to_string(self.host(i).run_dir.join("weft.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// The router log of host `i`.
    pub fn router_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.host(i).run_dir.join("weft.log")).unwrap_or_default()
    }

    /// A new container namespace; returns its name (for `weft attach`).
    pub fn container(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-c{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.containers.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace on the underlay beyond every host ("the world": a client or server that
    /// is not a weft host), with address `addr`/24 and no route to the overlay. Removed on drop.
    pub fn outside(&mut self, name: &str, addr: Ipv4Addr) -> Result<String> {
        let ns = self.container(name)?;
        let port = format!("o{}", self.containers.len());
        self.plug_into_underlay(&ns, &port, addr)?;
        Ok(ns)
    }

    /// Runs a program in a namespace and waits for it.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        self.cmd_in(ns, program)
            .args(args)
            .output()
            .expect("running a command in a namespace")
    }

    /// Gives namespace `ns` its own resolv.conf: `ip netns exec` bind-mounts
    /// `/etc/netns/<ns>/resolv.conf` over `/etc/resolv.conf` for programs run in it, so its
    /// name lookups (ping NAME) go to `nameserver` with `search` domains. Removed on drop.
    pub fn set_resolv_conf(&mut self, ns: &str, nameserver: &str, search: &str) -> Result<()> {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir)?;
        self.etc_dirs.push(dir.clone());
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\nsearch {search}\noptions timeout:1 attempts:2\n"),
        )?;
        Ok(())
    }

    /// Starts a program in a namespace in the background; it is killed on drop. Its output
    /// goes to `<testbed dir>/<program>-<n>.log` (see [`Testbed::spawn_log`]).
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> Result<u32> {
        let log = self.spawn_log(program, self.children.len());
        let out = std::fs::File::create(&log)?;
        let child = self
            .cmd_in(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// The test bed's own temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the output of the `n`th spawned program goes.
    pub fn spawn_log(&self, program: &str, n: usize) -> PathBuf {
        self.dir.join(format!("{program}-{n}.log"))
    }

    /// `GET path` from `host:port` inside namespace `ns` (bash's /dev/tcp: no HTTP client
    /// needs to be installed); returns the body of a 200 answer.
    pub fn http_get(&self, ns: &str, host: &str, port: u16, path: &str) -> Result<String> {
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = run(self.cmd_in(ns, "bash").args(["-c", &script]))?;
        let resp = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP answer from {host}:{port}{path}: {resp}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {host}:{port}{path}: {head}");
        }
        Ok(body.to_string())
    }

    /// The namespace holding the underlay bridge every host is plugged into.
    pub fn underlay(&self) -> &str {
        &self.underlay
    }

    /// Starts capturing every packet crossing the underlay bridge that matches the tcpdump
    /// `filter`, whole packets, written as they come; returns the pcap file's path. The
    /// capture is stopped on drop. Waits until tcpdump is listening.
    pub fn capture(&mut self, filter: &str) -> Result<PathBuf> {
        let n = self.children.len();
        let file = self.dir.join(format!("capture-{n}.pcap"));
        let file_s = file.to_str().expect("utf-8 path").to_string();
        let underlay = self.underlay.clone();
        let mut args = vec!["-i", "br0", "-n", "-s", "0", "-U", "-w", &file_s];
        args.extend(filter.split_whitespace());
        self.spawn(&underlay, "tcpdump", &args)?;
        let log = self.spawn_log("tcpdump", n);
        Self::wait_for(Duration::from_secs(10), || {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            if l.contains("listening on") {
                Ok(())
            } else {
                bail!("tcpdump did not start: {l}")
            }
        })?;
        Ok(file)
    }

    /// Pings `dst` from namespace `ns` until one reply arrives or `timeout` passes.
    pub fn wait_ping(&self, ns: &str, dst: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let out = self.exec(ns, "ping", &["-c", "1", "-W", "1", dst]);
            if out.status.success() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "no ping reply from {dst} in {ns} after {timeout:?}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Loads nftables `rules` (a ruleset text) into host `a`'s firewall.
    pub fn nft(&self, a: usize, rules: &str) -> Result<()> {
        self.nft_in(&self.host(a).netns, rules)
    }

    /// Loads nftables `rules` into namespace `ns`.
    fn nft_in(&self, ns: &str, rules: &str) -> Result<()> {
        self.feed(ns, "nft", &["-f", "-"], rules)
            .context("loading rules with nft (is nftables installed?)")
    }

    /// Drops all traffic between hosts `a` and `b` (both directions, in host `a`'s firewall).
    pub fn block(&self, a: usize, b: usize) -> Result<()> {
        let other = self.host(b).ip;
        self.nft(
            a,
            &format!(
                "table inet weftblock {{
                   chain input {{ type filter hook input priority 0; ip saddr {other} drop; }}
                   chain output {{ type filter hook output priority 0; ip daddr {other} drop; }}
                 }}"
            ),
        )
    }

    /// Makes the underlay between hosts `a` and `b` drop UDP packets longer than `max_len`
    /// bytes (IP length) without a word, as a tunnel or a filter on the path would. The drop
    /// happens on the underlay bridge, where packets are as they would be on a wire: the
    /// hosts segment their UDP offload trains before sending (a host's own firewall sees a
    /// train as one packet, which no wire does).
    pub fn narrow_path(&self, a: usize, b: usize, max_len: u16) -> Result<()> {
        let (ia, ib) = (self.host(a).ip, self.host(b).ip);
        for h in [a, b] {
            run(self.cmd_in(&self.host(h).netns, "ethtool").args([
                "-K",
                "eth0",
                "tx-udp-segmentation",
                "off",
                "tx-udp_tnl-segmentation",
                "off",
            ]))
            .context("turning UDP segmentation offload off (apt-get install ethtool)")?;
        }
        let rules = format!(
            "table bridge weftnarrow {{
               chain forward {{
                 type filter hook forward priority 0;
                 ip saddr {{ {ia}, {ib} }} ip daddr {{ {ia}, {ib} }} ip protocol udp ip length > {max_len} drop;
               }}
             }}"
        );
        self.nft_in(&self.underlay, &rules)
    }

    /// Reorders the sleeve's datagrams leaving host `a`: `percent` % of them, at random, wait
    /// in a slow queue (2 Mbit/s, 64 packets) while the rest go straight on, so they arrive
    /// late, after later ones, or (when the slow queue is full) not at all.
    pub fn reorder(&self, a: usize, percent: u32) -> Result<()> {
        let ns = &self.host(a).netns;
        for args in [
            "qdisc add dev eth0 root handle 1: htb default 10",
            "class add dev eth0 parent 1: classid 1:10 htb rate 10gbit",
            "class add dev eth0 parent 1: classid 1:20 htb rate 2mbit",
            "qdisc add dev eth0 parent 1:20 pfifo limit 64",
        ] {
            run(self.cmd_in(ns, "tc").args(args.split_whitespace()))
                .context("setting up a slow queue with tc (htb)")?;
        }
        self.nft(
            a,
            &format!(
                // (nft takes a class id only at the end of a line, not before a `;`.)
                "table inet weftreorder {{
                   chain output {{
                     type filter hook output priority 0;
                     udp dport 6783 numgen random mod 100 < {percent} meta priority set 1:20
                   }}
                 }}"
            ),
        )
    }

    /// Drops UDP to and from `port` in host `a`'s firewall (e.g. VXLAN's 6784), both ways.
    pub fn block_udp(&self, a: usize, port: u16) -> Result<()> {
        self.nft(
            a,
            &format!(
                "table inet weftblockudp {{
                   chain input {{ type filter hook input priority 0; udp dport {port} drop; udp sport {port} drop; }}
                   chain output {{ type filter hook output priority 0; udp dport {port} drop; udp sport {port} drop; }}
                 }}"
            ),
        )
    }

    pub fn unblock_udp(&self, a: usize) -> Result<()> {
        run(self.cmd_in(&self.host(a).netns, "nft").args([
            "delete",
            "table",
            "inet",
            "weftblockudp",
        ]))
        .map(|_| ())
    }

    /// Packets link `link` in namespace `ns` has received and sent so far.
    pub fn link_packets(&self, ns: &str, link: &str) -> Result<(u64, u64)> {
        let out = run(self
            .cmd_in(ns, "ip")
            .args(["-s", "-j", "link", "show", link]))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let st = &v[0]["stats64"];
        Ok((
            st["rx"]["packets"].as_u64().context("no rx packets")?,
            st["tx"]["packets"].as_u64().context("no tx packets")?,
        ))
    }

    pub fn unblock(&self, a: usize) -> Result<()> {
        run(self
            .cmd_in(&self.host(a).netns, "nft")
            .args(["delete", "table", "inet", "weftblock"]))
        .map(|_| ())
    }

    /// Polls `f` until it returns Ok or `timeout` passes; returns the last error.
    pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if start.elapsed() > timeout => {
                    return Err(e.context(format!("still failing after {timeout:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The router PID on host `i`, only if that process is alive and is ours (its environment
    /// names this host's run directory), so a recycled PID is never signalled.
    pub fn our_router_pid(&self, i: usize) -> Option<u32> {
        self.ours(i, self.router_pid(i)?)
    }

    /// Resident memory of host `i`'s router, in KiB.
    pub fn router_rss_kib(&self, i: usize) -> Result<u64> {
        let pid = self.our_router_pid(i).context("no router running")?;
        std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")
    }

    /// `pid` if that process is alive and runs for host `i` (its environment names the
    /// host's run directory), so a recycled PID is never signalled.
    fn ours(&self, i: usize, pid: u32) -> Option<u32> {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let want = format!("WEFT_RUN_DIR={}", self.host(i).run_dir.display());
        env.split(|b| *b == 0)
            .any(|kv| kv == want.as_bytes())
            .then_some(pid)
    }

    /// The PID of host `i`'s supervisor (what `weft launch` starts to keep the router
    /// running), only if it is alive and ours.
    pub fn our_supervisor_pid(&self, i: usize) -> Option<u32> {
        let pid = std::fs::read_to_string(self.host(i).run_dir.join("weft-supervisor.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.ours(i, pid)
    }

    /// Kills weft on host `i` with SIGKILL, as a host crash would: the supervisor first (so
    /// nothing starts the router again), then the router.
    pub fn kill_router(&self, i: usize) -> Result<()> {
        if let Some(s) = self.our_supervisor_pid(i) {
            kill_and_wait(s, "-9");
        }
        let pid = self
            .our_router_pid(i)
            .context("no running router of ours")?;
        kill_and_wait(pid, "-9");
        Ok(())
    }

    /// Sends `signal` (`-9`, `-TERM`) to host `i`'s router alone, as something outside weft
    /// would: its supervisor is left to start it again. Returns the PID it had.
    pub fn signal_router_only(&self, i: usize, signal: &str) -> Result<u32> {
        let pid = self
            .our_router_pid(i)
            .context("no running router of ours")?;
        kill_and_wait(pid, signal);
        Ok(pid)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Docker objects first, straight at the engine, while the routers (whose plugins
        // remove endpoints) still run.
        if !self.docker_containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&self.docker_containers)
                .env_remove("DOCKER_HOST")
                .output();
        }
        for n in &self.docker_networks {
            let _ = Command::new("docker")
                .args(["network", "rm", n])
                .env_remove("DOCKER_HOST")
                .output();
        }
        for n in &self.docker_images {
            let _ = Command::new("docker")
                .args(["rmi", "-f", n])
                .env_remove("DOCKER_HOST")
                .output();
        }
        if self.docker {
            for i in 1..=self.hosts.len() {
                let _ = std::fs::remove_file(self.plugin_socket(i));
            }
        }
        for i in 1..=self.hosts.len() {
            if let Some(pid) = self.our_supervisor_pid(i) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
            if let Some(pid) = self.our_router_pid(i) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Give killed routers a moment to exit so their namespaces can go.
        std::thread::sleep(Duration::from_millis(50));
        for ns in self
            .containers
            .iter()
            .chain(self.hosts.iter().map(|h| &h.netns))
            .chain(std::iter::once(&self.underlay))
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for d in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        // What a router wrote for `attach --rewrite-hosts` into a namespace of ours, had it
        // no chance to remove it.
        for ns in &self.containers {
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Signals `pid` and waits (up to 5 s) until it has gone.
fn kill_and_wait(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .output();
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Measurements between namespaces with real tools (iperf3, ping), for benchmarks and demos.
pub mod measure {
    use super::*;

    /// TCP throughput from `client_ns` to an iperf3 server started in `server_ns` at `dst`,
    /// in Gbit/s (receiver side), over `secs` seconds with `streams` parallel streams.
    /// Starts a one-off iperf3 server in `ns` and returns its port once it listens (a client
    /// started earlier would fail and use the server up).
    pub fn iperf3_server(tb: &mut Testbed, ns: &str) -> Result<u16> {
        let port = 5201 + (COUNTER.fetch_add(1, Ordering::SeqCst) % 500) as u16;
        tb.spawn(ns, "iperf3", &["-s", "-1", "-p", &port.to_string()])?;
        let filter = format!("sport = :{port}");
        Testbed::wait_for(Duration::from_secs(5), || {
            let o = tb.exec(ns, "ss", &["-Hltn", &filter]);
            if String::from_utf8_lossy(&o.stdout).trim().is_empty() {
                bail!("iperf3 server on port {port} not listening")
            }
            Ok(())
        })?;
        Ok(port)
    }

    pub fn iperf3(
        tb: &mut Testbed,
        server_ns: &str,
        client_ns: &str,
        dst: &str,
        secs: u32,
        streams: u32,
    ) -> Result<f64> {
        let n = tb.children.len();
        let port = iperf3_server(tb, server_ns)?;
        let port_s = port.to_string();
        let out = tb.exec(
            client_ns,
            "iperf3",
            &[
                "-c",
                dst,
                "-p",
                &port_s,
                "-t",
                &secs.to_string(),
                "-P",
                &streams.to_string(),
                "-J",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !out.status.success() || v["error"].is_string() {
            let server = std::fs::read_to_string(tb.spawn_log("iperf3", n)).unwrap_or_default();
            bail!(
                "iperf3 to {dst} failed: {}; server said: {server}",
                v["error"].as_str().unwrap_or("no JSON output")
            );
        }
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON without end.sum_received")?;
        Ok(bps / 1e9)
    }

    /// Small-packet rate: UDP datagrams of `len` bytes sent as fast as iperf3 can from
    /// `client_ns` to a server in `server_ns` at `dst`; the datagrams the server received per
    /// second.
    pub fn iperf3_udp_pps(
        tb: &mut Testbed,
        server_ns: &str,
        client_ns: &str,
        dst: &str,
        secs: u32,
        len: u32,
    ) -> Result<f64> {
        let port = iperf3_server(tb, server_ns)?.to_string();
        let (secs, len) = (secs.to_string(), len.to_string());
        let args = [
            "-c", dst, "-p", &port, "-u", "-l", &len, "-b", "0", "-t", &secs, "-J",
        ];
        let out = tb.exec(client_ns, "iperf3", &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !out.status.success() || v["error"].is_string() {
            bail!(
                "iperf3 -u to {dst} failed: {}",
                v["error"].as_str().unwrap_or("no JSON output")
            );
        }
        let got = &v["end"]["sum_received"];
        let (bytes, seconds) = (got["bytes"].as_f64(), got["seconds"].as_f64());
        let (Some(bytes), Some(seconds)) = (bytes, seconds) else {
            bail!("iperf3 JSON without end.sum_received");
        };
        Ok(bytes / len.parse::<f64>()? / seconds.max(1e-9))
    }

    /// Average ping RTT in milliseconds over `count` pings at 50 ms intervals.
    pub fn ping_rtt(tb: &Testbed, ns: &str, dst: &str, count: u32) -> Result<f64> {
        let out = tb.exec(
            ns,
            "ping",
            &["-q", "-c", &count.to_string(), "-i", "0.05", dst],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // rtt min/avg/max/mdev = 0.041/0.052/0.080/0.010 ms
        let line = text
            .lines()
            .find(|l| l.contains("min/avg/max"))
            .with_context(|| format!("no RTT summary from ping {dst}: {text}"))?;
        let nums = line.split('=').nth(1).context("malformed ping summary")?;
        let avg = nums
            .trim()
            .split('/')
            .nth(1)
            .context("malformed ping summary")?;
        Ok(avg.parse()?)
    }

    /// CPU time (user+system, seconds) used so far by process `pid`.
    pub fn cpu_seconds(pid: u32) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(") ")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}

/// Whether `weft ps` output lists nothing but the host's own line (which it always shows),
/// unexposed; the output is the error otherwise.
pub fn ps_only_the_host(ps: &str) -> std::result::Result<(), String> {
    let lines: Vec<&str> = ps.lines().collect();
    match lines[..] {
        [one] if one.starts_with("weave:expose ") && one.split_whitespace().count() == 2 => Ok(()),
        _ => Err(ps.to_string()),
    }
}

/// Finds the `weft` binary: `$WEFT_BIN`, else next to the running executable.
/// Runs `f` on a new thread inside network namespace `ns` (a name `ip netns` knows, such as
/// a container's), for a test's own sockets there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {path}"))?;
        Ok(f())
    })
}

pub fn weft_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WEFT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .context("executable without a directory")?
        .join("weft");
    if !p.exists() {
        bail!(
            "cannot find the weft binary next to {} (build it, or set WEFT_BIN)",
            exe.display()
        );
    }
    Ok(p)
}

/// Reading what [`Testbed::capture`] recorded.
pub mod pcap {
    use std::path::Path;

    use anyhow::{Result, bail};

    /// The packets of a pcap file (Ethernet frames, as tcpdump writes them on a bridge).
    pub fn packets(path: &Path) -> Result<Vec<Vec<u8>>> {
        let b = std::fs::read(path)?;
        if b.len() < 24 {
            return Ok(Vec::new());
        }
        let le = match b[0..4] {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => bail!("{} is not a pcap file", path.display()),
        };
        let u32_at = |i: usize| {
            let w: [u8; 4] = b[i..i + 4].try_into().expect("4 bytes");
            if le {
                u32::from_le_bytes(w)
            } else {
                u32::from_be_bytes(w)
            }
        };
        let mut out = Vec::new();
        let mut i = 24;
        // The last record may be half written while tcpdump runs: stop there.
        while i + 16 <= b.len() {
            let len = u32_at(i + 8) as usize;
            if i + 16 + len > b.len() {
                break;
            }
            out.push(b[i + 16..i + 16 + len].to_vec());
            i += 16 + len;
        }
        Ok(out)
    }

    /// Whether an Ethernet frame is an IPv4 packet of `proto` (6 TCP, 17 UDP) to or from
    /// `port`.
    pub fn is_ip_port(frame: &[u8], proto: u8, port: u16) -> bool {
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != proto {
            return false;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let l4 = 14 + ihl;
        if frame.len() < l4 + 4 {
            return false;
        }
        let sport = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
        let dport = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
        sport == port || dport == port
    }

    /// How many packets contain `needle`.
    pub fn count_containing(packets: &[Vec<u8>], needle: &[u8]) -> usize {
        packets
            .iter()
            .filter(|p| p.windows(needle.len()).any(|w| w == needle))
            .count()
    }
}
