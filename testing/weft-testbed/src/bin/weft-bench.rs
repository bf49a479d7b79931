//! Data-plane benchmark: in one run, on one test bed of two hosts, TCP throughput (iperf3, 1 and
//! 4 streams) and ping RTT for the underlay itself and between containers over weft, with each
//! weft figure as a ratio of the underlay's and the routers' CPU cost per Gbit/s.
//!
//! Usage: weft-bench [SECONDS] (default 10). Needs root, iperf3 and ping.

use anyhow::{Result, bail};
use weft_testbed::{Testbed, measure};

struct Row {
    name: &'static str,
    tcp1: f64,
    tcp4: f64,
    rtt_ms: f64,
    /// Both routers' CPU seconds per second of transfer, per Gbit/s (1-stream run).
    cpu_per_gbit: Option<f64>,
}

fn routers_cpu(tb: &Testbed) -> f64 {
    (1..=2)
        .filter_map(|i| tb.our_router_pid(i).and_then(measure::cpu_seconds))
        .sum()
}

fn main() -> Result<()> {
    if !weft_testbed::available() {
        bail!("the benchmark builds network namespaces and needs root");
    }
    let secs: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let weft = weft_testbed::weft_binary()?;
    let mut tb = Testbed::new("bench", 2, &weft)?;
    let (h1, h2) = (tb.host(1).netns.clone(), tb.host(2).netns.clone());
    let h1ip = tb.host(1).ip.to_string();
    let h2ip = tb.host(2).ip.to_string();
    let mut rows = Vec::new();

    eprintln!("underlay: iperf3 {secs}s x2, ping...");
    rows.push(Row {
        name: "underlay (veth+bridge)",
        tcp1: measure::iperf3(&mut tb, &h2, &h1, &h2ip, secs, 1)?,
        tcp4: measure::iperf3(&mut tb, &h2, &h1, &h2ip, secs, 4)?,
        rtt_ms: measure::ping_rtt(&tb, &h1, &h2ip, 50)?,
        cpu_per_gbit: None,
    });

    eprintln!("weft sleeve: launching, iperf3 {secs}s x2, ping...");
    tb.launch(1, &[])?;
    tb.launch(2, &[&h1ip])?;
    let c1 = tb.container("c1")?;
    let c2 = tb.container("c2")?;
    tb.weft_ok(1, &["attach", "10.32.0.1/12", &c1])?;
    tb.weft_ok(2, &["attach", "10.32.0.2/12", &c2])?;
    tb.wait_ping(&c1, "10.32.0.2", std::time::Duration::from_secs(30))?;
    let cpu0 = routers_cpu(&tb);
    let t0 = std::time::Instant::now();
    let tcp1 = measure::iperf3(&mut tb, &c2, &c1, "10.32.0.2", secs, 1)?;
    let cpu = (routers_cpu(&tb) - cpu0) / t0.elapsed().as_secs_f64();
    rows.push(Row {
        name: "weft sleeve",
        tcp1,
        tcp4: measure::iperf3(&mut tb, &c2, &c1, "10.32.0.2", secs, 4)?,
        rtt_ms: measure::ping_rtt(&tb, &c1, "10.32.0.2", 50)?,
        cpu_per_gbit: Some(cpu / tcp1.max(1e-9)),
    });

    let base = &rows[0];
    println!(
        "\n| path | TCP 1 stream Gbit/s | x underlay | TCP 4 streams Gbit/s | x underlay | RTT ms | x underlay | router CPU cores per Gbit/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {} |",
            r.name,
            r.tcp1,
            r.tcp1 / base.tcp1,
            r.tcp4,
            r.tcp4 / base.tcp4,
            r.rtt_ms,
            r.rtt_ms / base.rtt_ms,
            r.cpu_per_gbit
                .map_or("-".to_string(), |c| format!("{c:.2}"))
        );
    }
    let stats = tb.weft_ok(2, &["report"])?;
    let v: serde_json::Value = serde_json::from_str(&stats)?;
    println!("\nreceiving router counters: {}", v["Router"]["Stats"]);
    Ok(())
}
