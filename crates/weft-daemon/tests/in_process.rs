//! Routers started in-process (validate, bind, run), each on a thread inside a test-bed
//! host's network namespace, mesh over the underlay and stop when told: the start-up's three
//! steps work as a library, without the weft binary.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_daemon::{Config, DaemonError, IpamSettings, Listeners};
use weft_linux::netns::{self, Netns};

fn config(host: &weft_testbed::Host, peers: Vec<String>) -> Config {
    Config {
        name: None,
        nickname: format!("inproc{}", host.index),
        host: None,
        port: 6783,
        http_addr: "127.0.0.1:6784".parse().expect("an address"),
        status_addr: None,
        metrics_addr: None,
        conn_limit: 0,
        discovery: true,
        resume: false,
        peers,
        mtu: None,
        bridge: "weft".into(),
        state_dir: host.state_dir.clone(),
        run_dir: host.run_dir.clone(),
        timing: Default::default(),
        ipam: Some(IpamSettings::default()),
        dns: None,
        passwords: Vec::new(),
        trusted_subnets: Vec::new(),
        fastdp: true,
        docker: None,
        sleeve_workers: 2,
        data_cipher: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_run_in_process_mesh_and_stop_when_told() {
    let Some(tb) = weft_testbed::for_test("inproc", 2, Path::new("/nonexistent/weft")) else {
        return;
    };
    let (stop, stopped) = watch::channel(false);
    let mut routers = Vec::new();
    for (i, peers) in [(0, Vec::new()), (1, vec![tb.hosts[0].ip.to_string()])] {
        let host = &tb.hosts[i];
        let ns = Netns::open(&Path::new(netns::NAMED_NETNS_DIR).join(&host.netns))
            .expect("the host's namespace");
        let cfg = config(host, peers);
        let stopped = stopped.clone();
        routers.push(tokio::spawn(async move {
            netns::run_in(&ns, move || async move {
                let valid = cfg.validate()?;
                let listeners = Listeners::bind(&valid).await?;
                assert_eq!(
                    listeners.control_addr().map(|a| a.port()),
                    Some(6783),
                    "the control port as asked"
                );
                let host = weft_linux::host::LinuxHost::new(weft_linux::netlink::Netlink::new()?);
                weft_daemon::run_with(valid, listeners, host, stopped).await
            })
            .await
        }));
    }
    // Both see each other, connected.
    let deadline = Instant::now() + Duration::from_secs(30);
    for h in &tb.hosts {
        loop {
            let s = tb
                .http_get(&h.netns, "127.0.0.1", 6784, "/status/connections")
                .unwrap_or_default();
            if s.contains("established") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never connected: {s:?}",
                h.netns
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.send(true).expect("routers listening");
    for r in routers {
        let ran: Result<Result<(), DaemonError>, _> = r.await.expect("the router's task");
        ran.expect("entered the namespace")
            .expect("the router ran and stopped cleanly");
    }
}

#[test]
fn a_bad_configuration_binds_nothing() {
    let host = weft_testbed::Host {
        index: 1,
        netns: String::new(),
        ip: "198.18.0.1".parse().expect("an address"),
        state_dir: "/nonexistent/state".into(),
        run_dir: "/nonexistent/run".into(),
    };
    let mut cfg = config(&host, Vec::new());
    cfg.mtu = Some(1);
    cfg.bridge = String::new();
    let e = cfg.validate().expect_err("refused").to_string();
    assert!(e.contains("2 problems"), "{e}");
}
