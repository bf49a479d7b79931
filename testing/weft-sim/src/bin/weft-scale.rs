//! `weft-scale`: how the control plane grows with the number of hosts, on the simulator.
//!
//! ```text
//! cargo run --release -p weft-sim --bin weft-scale -- --hosts N [--encrypted] [--churn] [--one-by-one]
//! ```
//! N hosts start as users start them: each given a few earlier hosts (`--targets`, 2), peer
//! discovery on, `--conn-limit` 200; all at once, or one a second (`--one-by-one`). Prints
//! virtual time until converged (every host knows every host, with identical entries, and has
//! a data route to each), control bytes until then in total and per host, how long the
//! overlay then takes to settle (hosts that start together shed surplus connections), steady
//! control bytes per host per second over the two virtual minutes after that, the largest
//! single message, the
//! process's peak memory and the simulator's wall time. `--churn`: then, each minute for five
//! minutes, 5% of the hosts restart; prints how long each wave took to converge again.
//!
//! The last line is for scripts:
//! `hosts=N converged_s=S bytes_per_host=B steady_bytes_per_host_s=R max_message_bytes=M wall_s=W`
//! (`converged_s=none` when it did not converge within `--limit-s` of virtual time or
//! `--max-wall-s` of real time).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weft_proto::PeerName;
use weft_sim::Sim;

struct Args {
    hosts: usize,
    encrypted: bool,
    churn: bool,
    one_by_one: bool,
    /// Break the bytes down by kind of message (unencrypted only; slower).
    classify: bool,
    /// Progress every ten virtual seconds of the steady window, on stderr.
    verbose: bool,
    targets: usize,
    conn_limit: usize,
    seed: u64,
    limit: Duration,
    max_wall: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: weft-scale --hosts N [--encrypted] [--churn] [--one-by-one] [--classify] [--verbose] [--targets K] [--conn-limit L] [--seed S] [--limit-s VIRTUAL] [--max-wall-s REAL]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        hosts: 0,
        encrypted: false,
        churn: false,
        one_by_one: false,
        classify: false,
        verbose: false,
        targets: 2,
        conn_limit: 200,
        seed: 1,
        limit: Duration::from_secs(600),
        max_wall: Duration::from_secs(1800),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} takes a number");
                usage()
            })
        };
        match flag.as_str() {
            "--hosts" => a.hosts = num("--hosts") as usize,
            "--encrypted" => a.encrypted = true,
            "--churn" => a.churn = true,
            "--one-by-one" => a.one_by_one = true,
            "--classify" => a.classify = true,
            "--verbose" => a.verbose = true,
            "--targets" => a.targets = num("--targets") as usize,
            "--conn-limit" => a.conn_limit = num("--conn-limit") as usize,
            "--seed" => a.seed = num("--seed"),
            "--limit-s" => a.limit = Duration::from_secs(num("--limit-s")),
            "--max-wall-s" => a.max_wall = Duration::from_secs(num("--max-wall-s")),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other:?}");
                usage()
            }
        }
    }
    if a.hosts < 2 {
        eprintln!("--hosts: at least 2");
        usage()
    }
    a
}

/// The process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Converged, checked cheaply first (every live host knows as many peers as are live).
fn converged(sim: &Sim, all: &[usize]) -> Result<(), String> {
    let live = all.iter().filter(|&&i| sim.nodes[i].alive).count();
    for &i in all {
        if sim.nodes[i].alive && sim.nodes[i].router().topology().len() != live {
            return Err(format!("h{i} does not know every host yet"));
        }
    }
    sim.converged(all)
}

/// Why an entry does not spread: for the first host that lacks an entry most hosts hold,
/// its neighbours (`+` holds the entry, `-` not, `!` does not list us back) and its
/// neighbours in the shared broadcast tree.
fn explain_stale(sim: &Sim, all: &[usize]) {
    let live: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| sim.nodes[i].alive)
        .collect();
    let index: BTreeMap<PeerName, usize> = live
        .iter()
        .map(|&i| (sim.nodes[i].router().name(), i))
        .collect();
    for &j in &live {
        let name = sim.nodes[j].router().name();
        let own = sim.nodes[j].router().topology().local().version;
        let has = |i: usize| {
            sim.nodes[i]
                .router()
                .topology()
                .get(&name)
                .is_some_and(|p| p.version == own)
        };
        let holders = live.iter().filter(|&&i| has(i)).count();
        if holders < live.len() / 2 || holders == live.len() {
            continue;
        }
        let Some(&i) = live.iter().find(|&&i| !has(i)) else {
            continue;
        };
        let r = sim.nodes[i].router();
        let neighbours: Vec<String> = r
            .connected_peers()
            .filter_map(|n| index.get(n))
            .map(|&x| {
                let back = sim.nodes[x]
                    .router()
                    .connected_peers()
                    .any(|m| *m == r.name());
                let mark = if has(x) { "+" } else { "-" };
                format!("h{x}{mark}{}", if back { "" } else { "!" })
            })
            .collect();
        let tree: Vec<usize> = r
            .tree_neighbours()
            .iter()
            .filter_map(|n| index.get(n).copied())
            .collect();
        eprintln!(
            "    h{i} lacks h{j}'s v{own} ({holders} hosts hold it); neighbours {neighbours:?}; tree {tree:?}; tree repairs asked {}",
            r.tree_repairs()
        );
        return;
    }
}

/// Runs until converged, or the virtual or wall limit; the virtual time it took.
fn until_converged(
    sim: &mut Sim,
    all: &[usize],
    limit: Duration,
    wall: Instant,
    max_wall: Duration,
    verbose: bool,
) -> Option<Duration> {
    let start = sim.elapsed();
    let check = Duration::from_millis(500);
    let mut k = 0u64;
    loop {
        let state = converged(sim, all);
        if state.is_ok() {
            return Some(sim.elapsed() - start);
        }
        k += 1;
        if verbose && k.is_multiple_of(10) {
            let live: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| sim.nodes[i].alive)
                .collect();
            let knows = live
                .iter()
                .filter(|&&i| sim.nodes[i].router().topology().len() == live.len())
                .count();
            let conns: usize = live
                .iter()
                .map(|&i| sim.nodes[i].router().connected_peers().count())
                .sum();
            eprintln!(
                "  {:.1} virtual s: {knows} of {} hosts know every host; {:.1} connections each; {:.1} MB per host so far; wall {:.0} s; {}",
                (sim.elapsed() - start).as_secs_f64(),
                live.len(),
                conns as f64 / live.len().max(1) as f64,
                sim.tcp_bytes as f64 / live.len().max(1) as f64 / 1e6,
                wall.elapsed().as_secs_f64(),
                state.err().unwrap_or_default()
            );
        }
        if verbose && k.is_multiple_of(10) {
            explain_stale(sim, all);
        }
        if sim.elapsed() - start >= limit || wall.elapsed() >= max_wall {
            return None;
        }
        sim.run_for(check);
    }
}

/// Runs until no live host has changed its own topology entry (its connections) for 10
/// virtual seconds, or `limit`; the virtual time it took (`None`: still changing). Past the
/// full-mesh size, hosts that started together hold more connections than their share when
/// they first converge and shed the surplus over the next seconds: that is settling, not
/// the steady state.
fn until_settled(sim: &mut Sim, all: &[usize], limit: Duration) -> Option<Duration> {
    let start = sim.elapsed();
    let versions = |sim: &Sim| -> Vec<u64> {
        all.iter()
            .map(|&i| sim.nodes[i].router().topology().local().version)
            .collect()
    };
    let mut last = versions(sim);
    let mut quiet = Duration::ZERO;
    let step = Duration::from_secs(1);
    while quiet < Duration::from_secs(10) {
        if sim.elapsed() - start >= limit {
            return None;
        }
        sim.run_for(step);
        let now = versions(sim);
        quiet = if now == last {
            quiet + step
        } else {
            Duration::ZERO
        };
        last = now;
    }
    Some(sim.elapsed() - start - quiet)
}

fn main() {
    let a = parse();
    let wall = Instant::now();
    let mut sim = Sim::new(a.seed);
    sim.conn_limit = a.conn_limit;
    if a.encrypted {
        sim.password = Some("scale-benchmark-password".into());
    }
    sim.classify = a.classify && !a.encrypted;
    let mut rng = a.seed.max(1);
    let mut pick = |below: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % below as u64) as usize
    };
    for i in 0..a.hosts {
        let mut t: Vec<usize> = Vec::new();
        while i > 0 && t.len() < a.targets.min(i) {
            let j = pick(i);
            if !t.contains(&j) {
                t.push(j);
            }
        }
        sim.add_node(&t, true);
        if a.one_by_one {
            sim.run_for(Duration::from_secs(1));
        }
    }
    let all = sim.all();
    let started_at = Duration::ZERO;
    let took = until_converged(&mut sim, &all, a.limit, wall, a.max_wall, a.verbose);
    let converged_s = took.map(|_| (sim.elapsed() - started_at).as_secs_f64());
    let bytes = sim.tcp_bytes;
    let udp = sim.udp_bytes;
    let per_host = bytes / a.hosts as u64;
    println!(
        "{} hosts ({}{}): converged in {} virtual s; {:.1} MB of control messages in all, {:.2} MB per host (UDP heartbeats {:.1} MB more); largest message {} bytes",
        a.hosts,
        if a.encrypted {
            "encrypted"
        } else {
            "unencrypted"
        },
        if a.one_by_one {
            ", one by one"
        } else {
            ", all at once"
        },
        converged_s.map_or("(not)".into(), |s| format!("{s:.1}")),
        bytes as f64 / 1e6,
        per_host as f64 / 1e6,
        udp as f64 / 1e6,
        sim.max_message,
    );
    let degrees: Vec<usize> = all
        .iter()
        .map(|&i| sim.nodes[i].router().connected_peers().count())
        .collect();
    println!(
        "connections per host: mean {:.1}, max {}",
        degrees.iter().sum::<usize>() as f64 / degrees.len() as f64,
        degrees.iter().max().unwrap_or(&0)
    );
    for (kind, b) in &sim.by_kind {
        println!(
            "  {kind}: {:.2} MB per host",
            *b as f64 / a.hosts as f64 / 1e6
        );
    }
    let mut steady = None;
    if converged_s.is_some() {
        let b0 = sim.tcp_bytes;
        let settled = until_settled(&mut sim, &all, Duration::from_secs(120));
        println!(
            "settled (no host changed its connections for 10 s) {} after converging; {:.2} MB per host meanwhile",
            settled.map_or("not within 120 s".into(), |t| format!(
                "{:.1} s",
                t.as_secs_f64()
            )),
            (sim.tcp_bytes - b0) as f64 / a.hosts as f64 / 1e6
        );
        let (b0, u0) = (sim.tcp_bytes, sim.udp_bytes);
        let window = Duration::from_secs(120);
        if a.verbose {
            let mut last = sim.tcp_bytes;
            for k in 0..12 {
                let kinds = sim.by_kind.clone();
                let versions: Vec<(u64, usize)> = all
                    .iter()
                    .map(|&i| {
                        let r = sim.nodes[i].router();
                        (r.topology().local().version, r.connected_peers().count())
                    })
                    .collect();
                sim.run_for(window / 12);
                let mut changed = 0;
                let mut bumps = 0;
                for (k, &i) in all.iter().enumerate() {
                    let r = sim.nodes[i].router();
                    let v = r.topology().local().version;
                    if v != versions[k].0 {
                        changed += 1;
                        bumps += v - versions[k].0;
                        if changed <= 3 {
                            eprintln!(
                                "    h{i}: version +{}, connections {} -> {}",
                                v - versions[k].0,
                                versions[k].1,
                                r.connected_peers().count()
                            );
                        }
                    }
                }
                eprintln!("    {changed} hosts changed their entry, {bumps} versions in all");
                for (kind, b) in &sim.by_kind {
                    let d = b - kinds.get(kind).copied().unwrap_or(0);
                    if d > 0 {
                        eprintln!(
                            "    {kind}: {:.0} B/s per host",
                            d as f64 / a.hosts as f64 / 10.0
                        );
                    }
                }
                let degrees: Vec<usize> = all
                    .iter()
                    .map(|&i| sim.nodes[i].router().connected_peers().count())
                    .collect();
                eprintln!(
                    "  +{}s: {:.0} B/s per host, connections mean {:.1} min {} max {}, wall {:.0}s",
                    (k + 1) * 10,
                    (sim.tcp_bytes - last) as f64 / a.hosts as f64 / 10.0,
                    degrees.iter().sum::<usize>() as f64 / degrees.len() as f64,
                    degrees.iter().min().unwrap_or(&0),
                    degrees.iter().max().unwrap_or(&0),
                    wall.elapsed().as_secs_f64()
                );
                last = sim.tcp_bytes;
            }
        } else {
            sim.run_for(window);
        }
        let rate = (sim.tcp_bytes - b0) as f64 / a.hosts as f64 / window.as_secs_f64();
        let udp_rate = (sim.udp_bytes - u0) as f64 / a.hosts as f64 / window.as_secs_f64();
        let max_degree = all
            .iter()
            .map(|&i| sim.nodes[i].router().connected_peers().count())
            .max()
            .unwrap_or(0);
        println!(
            "steady: {rate:.0} B/s of control messages per host (UDP heartbeats {udp_rate:.0} B/s more); most connections {max_degree}"
        );
        steady = Some(rate);
    }
    if a.churn && converged_s.is_some() {
        let wave = (a.hosts / 20).max(1);
        let (churn_bytes, churn_start) = (sim.tcp_bytes, sim.elapsed());
        let mut worst = Duration::ZERO;
        let mut all_ok = true;
        for minute in 0..5 {
            let mut restarted = Vec::new();
            while restarted.len() < wave {
                let i = pick(a.hosts);
                if !restarted.contains(&i) {
                    restarted.push(i);
                }
            }
            for &i in &restarted {
                sim.crash(i);
            }
            sim.run_for(Duration::from_secs(1));
            for &i in &restarted {
                sim.restart(i);
            }
            let t = until_converged(
                &mut sim,
                &all,
                Duration::from_secs(60),
                wall,
                a.max_wall,
                a.verbose,
            );
            match t {
                Some(t) => {
                    println!(
                        "churn minute {minute}: {wave} hosts restarted, converged again in {:.1} s",
                        t.as_secs_f64()
                    );
                    worst = worst.max(t);
                    sim.run_for(Duration::from_secs(60).saturating_sub(t));
                }
                None => {
                    // The wall-time cap is the simulator's limit, not the protocol's: say which.
                    let why = if wall.elapsed() >= a.max_wall {
                        format!(
                            "stopped by the wall-time cap ({} s, --max-wall-s) before converging",
                            a.max_wall.as_secs()
                        )
                    } else {
                        "not converged within 60 s".to_string()
                    };
                    println!("churn minute {minute}: {wave} hosts restarted, {why}");
                    all_ok = false;
                    break;
                }
            }
        }
        println!(
            "churn: worst reconvergence {}; {:.0} B/s of control messages per host meanwhile",
            if all_ok {
                format!("{:.1} s", worst.as_secs_f64())
            } else if wall.elapsed() >= a.max_wall {
                format!("{:.1} s until the wall-time cap", worst.as_secs_f64())
            } else {
                "over 60 s".into()
            },
            (sim.tcp_bytes - churn_bytes) as f64
                / a.hosts as f64
                / (sim.elapsed() - churn_start).as_secs_f64().max(1.0)
        );
    }
    let wall_s = wall.elapsed().as_secs_f64();
    println!(
        "peak memory {:.0} MiB; {} events",
        peak_rss_mib(),
        sim.steps
    );
    println!(
        "hosts={} converged_s={} bytes_per_host={} steady_bytes_per_host_s={} max_message_bytes={} wall_s={:.1}",
        a.hosts,
        converged_s.map_or("none".into(), |s| format!("{s:.1}")),
        per_host,
        steady.map_or("none".into(), |r| format!("{r:.0}")),
        sim.max_message,
        wall_s
    );
}
