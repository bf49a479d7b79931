//! Starting, stopping and resetting the router.

use std::io::{BufRead, Seek};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing_subscriber::EnvFilter;
use weft_api::{Client, ClientError};
use weft_daemon::{Config, LOG_FILE, PID_FILE};
use weft_linux::process;

use crate::{Cli, RouterArgs};

fn read_pid(run_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(run_dir.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The running router's PID, if any: the pid file names a live process that is a
/// `weft router` (so a stale file whose PID was reused is never mistaken for, or signalled as,
/// our router).
fn running_pid(run_dir: &Path) -> Option<u32> {
    read_pid(run_dir).filter(|&p| process::is_alive(p) && is_weft_router(p))
}

fn is_weft_router(pid: u32) -> bool {
    is_weft(pid, b"router")
}

/// Whether `pid` runs `weft <sub>`.
fn is_weft(pid: u32, sub: &[u8]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let exe_is_weft = args
        .next()
        .is_some_and(|a| a.ends_with(b"weft") || a.ends_with(b"weft (deleted)"));
    exe_is_weft && args.next() == Some(sub)
}

/// The supervisor's PID file, next to the router's.
const SUPERVISOR_PID_FILE: &str = "weft-supervisor.pid";

/// The running supervisor's PID, if any (checked as [`running_pid`] checks the router's).
fn running_supervisor(run_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(run_dir.join(SUPERVISOR_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&p| process::is_alive(p) && is_weft(p, b"supervise"))
}

/// A restarted router waits this long after the first unexpected exit; each exit soon after
/// a start doubles it, up to [`RESTART_MAX`].
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A router that ran this long before exiting is restarted after [`RESTART_MIN`] again.
const RESTART_RESET: Duration = Duration::from_secs(60);

/// `weft supervise`: runs `weft router` with the same arguments and starts it again whenever
/// it exits, except when it is told to stop (SIGTERM or SIGINT to the supervisor, which is
/// what `weft stop` sends); it then stops the router and exits. A first run that exits during
/// start-up (before its PID file names it) is not retried: `launch` reports its log.
pub fn supervise(cli: &Cli, args: &RouterArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the weft executable")?;
    let pid_file = cli.run_dir.join(SUPERVISOR_PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Into the router's log (our stderr), in its format.
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let result = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut delay = RESTART_MIN;
        let mut first = true;
        loop {
            let started = Instant::now();
            let mut child = Command::new(&exe)
                .arg("router")
                .args(args.to_argv())
                .stdin(Stdio::null())
                .spawn()
                .context("starting the router")?;
            // Up once it has written its PID file (its last start-up step).
            let mut up = false;
            let status = loop {
                tokio::select! {
                    _ = term.recv() => return stop_child(&mut child).await,
                    _ = int.recv() => return stop_child(&mut child).await,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        up |= read_pid(&cli.run_dir) == Some(child.id());
                        if let Some(st) = child.try_wait()? {
                            break st;
                        }
                    }
                }
            };
            if first && !up {
                // Never came up: a bad flag or a host it cannot run on. Restarting would
                // only repeat that.
                std::process::exit(status.code().unwrap_or(1));
            }
            first = false;
            let ran = started.elapsed();
            if ran >= RESTART_RESET {
                delay = RESTART_MIN;
            }
            tracing::warn!(
                "supervisor: the router (pid {}) exited unexpectedly ({status}) after {}s; starting it again in {}s",
                child.id(),
                ran.as_secs(),
                delay.as_secs()
            );
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RESTART_MAX);
        }
    });
    let _ = std::fs::remove_file(&pid_file);
    result
}

/// SIGTERM to the router, SIGKILL if it has not gone within 10 s.
async fn stop_child(child: &mut std::process::Child) -> Result<()> {
    let _ = process::signal(child.id(), false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `weft router`: the daemon in the foreground until SIGTERM or SIGINT.
pub fn router(cli: &Cli, args: &RouterArgs) -> Result<()> {
    let level = match args.log_level.as_str() {
        "warning" => "warn",
        other => other,
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            // hickory logs every DNS query at info; those belong in a debug log only.
            if level == "debug" {
                EnvFilter::try_new(level)
            } else {
                EnvFilter::try_new(format!("{level},hickory_server=warn,hickory_proto=warn"))
            }
        })
        .with_context(|| {
            format!(
                "--log-level {:?} is not one of debug, info, warning, error",
                args.log_level
            )
        })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .init();
    let nickname = match &args.nickname {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "weft".into()),
    };
    let (status_addr, metrics_addr) = args.listen_addrs()?;
    let cfg = Config {
        name: args.name,
        status_addr,
        metrics_addr,
        nickname,
        host: args.host,
        port: args.port,
        http_addr: cli.http_addr,
        conn_limit: args.conn_limit,
        discovery: !args.no_discovery,
        resume: args.resume,
        peers: args.peers.clone(),
        mtu: args.mtu()?,
        bridge: args.bridge.clone(),
        state_dir: cli.state_dir.clone(),
        run_dir: cli.run_dir.clone(),
        timing: Default::default(),
        ipam: if args.ipalloc_range.is_empty() {
            None
        } else {
            let range: ipnet::Ipv4Net = args.ipalloc_range.parse().with_context(|| {
                format!(
                    "--ipalloc-range {:?} is not a CIDR like 10.32.0.0/12",
                    args.ipalloc_range
                )
            })?;
            if range != range.trunc() {
                anyhow::bail!(
                    "--ipalloc-range {range} has host bits set; did you mean {}?",
                    range.trunc()
                );
            }
            Some(weft_daemon::IpamSettings {
                range,
                default_subnet: args.ipalloc_default_subnet,
                init: args.ipalloc_init.clone(),
                timeout: Duration::from_secs(args.ipalloc_timeout),
            })
        },
        passwords: args.passwords()?,
        trusted_subnets: args.trusted_subnets()?,
        fastdp: !args.no_fastdp(),
        sleeve_workers: args.sleeve_workers,
        data_cipher: args.data_cipher.0,
        docker: args.docker(&cli.run_dir)?,
        dns: (!args.no_dns).then(|| weft_daemon::DnsSettings {
            domain: args.dns_domain.clone(),
            listen: args.dns_listen_address,
            ttl: args.dns_ttl,
            resolv_conf: args.resolv_conf.clone(),
            fallback_timeout: Duration::from_secs(args.dns_fallback_timeout),
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(true);
        });
        weft_daemon::run(cfg, rx).await
    })?;
    Ok(())
}

/// `weft launch`: start `weft router` detached, wait until its API answers.
pub fn launch(cli: &Cli, args: &RouterArgs) -> Result<()> {
    if let Some(pid) = running_pid(&cli.run_dir).or_else(|| running_supervisor(&cli.run_dir)) {
        bail!("weft is already running (pid {pid}); you can stop it with 'weft stop'");
    }
    if args.resume && !args.peers.is_empty() {
        bail!(
            "--resume cannot be combined with peer arguments: it reconnects to the peers of the previous run"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(cli.http_addr);
    if rt.block_on(client.get("/status")).is_ok() {
        bail!(
            "a weft router already answers on {}; you can stop it with 'weft stop'",
            cli.http_addr
        );
    }
    // Checked here for an early error, before anything on the host changes; handed over in
    // the environment, never in arguments (which every user of the host can read).
    let passwords = args.passwords()?;
    args.trusted_subnets()?;
    args.listen_addrs()?;
    // The Docker side too: TLS files, and no unauthenticated proxy on the network.
    args.docker(&cli.run_dir)?;
    std::fs::create_dir_all(&cli.run_dir)
        .with_context(|| format!("creating {}", cli.run_dir.display()))?;
    let log_path = cli.run_dir.join(LOG_FILE);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.seek(std::io::SeekFrom::End(0)).unwrap_or(0);
    let exe = std::env::current_exe().context("finding the weft executable")?;
    let mut cmd = Command::new(exe);
    cmd.env_remove("WEAVE_PASSWORD")
        .env_remove("WEFT_PASSWORD")
        .env_remove("WEFT_PASSWORD_NEXT");
    for (var, p) in ["WEFT_PASSWORD", "WEFT_PASSWORD_NEXT"]
        .iter()
        .zip(&passwords)
    {
        cmd.env(var, std::ffi::OsStr::from_bytes(p.as_bytes()));
    }
    cmd.arg(if args.no_restart {
        "router"
    } else {
        "supervise"
    })
    .args(args.to_argv())
    .env("WEFT_STATE_DIR", &cli.state_dir)
    .env("WEFT_RUN_DIR", &cli.run_dir)
    .env("WEFT_HTTP_ADDR", cli.http_addr.to_string())
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let pid = process::spawn_detached(&mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !process::is_alive(pid) {
            let tail = log_tail(&log_path, log_start, 15);
            bail!(
                "the weft router exited during start-up. Its log ({}) says:\n{tail}",
                log_path.display()
            );
        }
        match rt.block_on(client.get("/status")) {
            Ok(_) => break,
            // Not listening yet, or a connection cut as the router exits on a bad flag (the
            // liveness check above then reports its log).
            Err(ClientError::NotRunning { .. } | ClientError::Transport { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(ClientError::NotRunning { .. }) => {
                bail!(
                    "the weft router (pid {pid}) did not answer on {} within 30 s; see {}",
                    cli.http_addr,
                    log_path.display()
                )
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Ok(r) = rt.block_on(client.get_json::<weft_api::types::Report>("/report"))
        && let Some(why) = r.docker_unavailable
    {
        eprintln!("weft: {why}: launched without the Docker proxy and plugin");
    }
    let name = std::fs::read_to_string(cli.state_dir.join("peer-name")).unwrap_or_default();
    println!("{}", name.trim());
    Ok(())
}

fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let _ = f.seek(std::io::SeekFrom::Start(from));
    let all: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `weft stop`: SIGTERM the router, wait for it, SIGKILL if it will not go.
pub fn stop(cli: &Cli) -> Result<()> {
    if running_pid(&cli.run_dir).is_none() && running_supervisor(&cli.run_dir).is_none() {
        println!("weft is not running.");
        return Ok(());
    }
    stop_all(&cli.run_dir)
}

/// Stops the supervisor first (so nothing starts the router again), then the router if it
/// is still there.
fn stop_all(run_dir: &Path) -> Result<()> {
    if let Some(pid) = running_supervisor(run_dir) {
        // It stops the router itself, giving it 10 s before SIGKILL.
        process::signal(pid, false)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while process::is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if process::is_alive(pid) {
            process::signal(pid, true)?;
        }
        let _ = std::fs::remove_file(run_dir.join(SUPERVISOR_PID_FILE));
    }
    if let Some(pid) = running_pid(run_dir) {
        stop_pid(pid)?;
    }
    let _ = std::fs::remove_file(run_dir.join(PID_FILE));
    Ok(())
}

fn stop_pid(pid: u32) -> Result<()> {
    process::signal(pid, false)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while process::is_alive(pid) {
        if Instant::now() > deadline {
            eprintln!("weft: the router (pid {pid}) did not stop within 10 s; killing it");
            process::signal(pid, true)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `weft reset`: leave the mesh, stop, and remove the bridge, container links and state.
pub fn reset(cli: &Cli, force: bool, bridge: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // `--force` is accepted for Weave compatibility: a router that is not running has nothing to
    // hand over to the mesh yet, so resetting without it loses nothing.
    let _ = force;
    if running_pid(&cli.run_dir).is_some() {
        // Tell the mesh we are leaving for good before going.
        let _ = rt.block_on(Client::new(cli.http_addr).delete("/peer"));
    }
    stop_all(&cli.run_dir)?;
    let removed = rt.block_on(async {
        let nl = weft_linux::netlink::Netlink::new()?;
        weft_daemon::hostnet::teardown(&nl, bridge).await
    })?;
    // weft's rules (never anyone else's: only its own chains and the jumps into them). A host
    // without the iptables tools cannot hold any.
    if let Ok(ipt) = weft_linux::iptables::Iptables::detect() {
        let tables = weft_daemon::host::remove_rules(&ipt)?;
        if !tables.is_empty() {
            eprintln!("removed weft's firewall rules ({})", tables.join(", "));
        }
    }
    // Every state file (allocations, peer name, keys, targets, containers), so the next
    // launch starts as a new peer with nothing of this one's.
    let state = weft_daemon::state::StateDir::open(&cli.state_dir)?;
    weft_daemon::attach::forget_saved(&state);
    state.remove_all()?;
    let _ = std::fs::remove_file(cli.run_dir.join(PID_FILE));
    if !removed.is_empty() {
        eprintln!("removed {}", removed.join(", "));
    }
    Ok(())
}
