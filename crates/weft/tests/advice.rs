//! Every error message that advises a command: the message comes, and following the advice
//! works. The real `weft` binary on namespace hosts.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::path::Path;

use anyhow::{Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Runs `weft ARGS` on host `i`, which must fail saying `advice`; returns its stderr.
fn fails_advising(tb: &Testbed, i: usize, args: &[&str], advice: &str) -> Result<String> {
    let out = tb.weft(i, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        bail!("weft {args:?} succeeded; expected it to advise {advice:?}");
    }
    if !err.contains(advice) {
        bail!("weft {args:?} does not advise {advice:?}: {err}");
    }
    Ok(err)
}

#[test]
fn launch_stop_and_rmpeer_advice_works() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("adl", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    fails_advising(&tb, 1, &["status"], "start it with 'weft launch'")?;
    tb.launch(1, &[])?;
    tb.weft_ok(1, &["status"])?;
    fails_advising(&tb, 1, &["launch"], "you can stop it with 'weft stop'")?;
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &[])?;
    fails_advising(&tb, 1, &["rmpeer", "host1"], "use 'weft reset' to leave")?;
    tb.weft_ok(1, &["reset"])?;
    fails_advising(&tb, 1, &["status"], "start it with 'weft launch'")?;
    Ok(())
}

/// Another range against saved allocations starts the new range afresh, as Weave did; the
/// old state is kept aside, and the log's advice (launch with the old range) takes it up
/// again. A state file that cannot be read: reset.
#[test]
fn saved_range_and_corrupt_state_advice_works() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("adr", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let c = tb.container("c")?;
    let a = tb.weft_ok(1, &["attach", &c])?.trim().to_string();
    tb.weft_ok(1, &["stop"])?;
    let other = "--ipalloc-range=10.2.0.0/16";
    tb.launch(1, &[other])?;
    let log = tb.router_log(1);
    assert!(
        log.contains("starting the new range afresh")
            && log.contains("launch with --ipalloc-range 10.32.0.0/12 to take it up again"),
        "{log}"
    );
    let d = tb.container("d")?;
    let b = tb.weft_ok(1, &["attach", &d])?.trim().to_string();
    assert!(b.starts_with("10.2."), "{b}");
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &["--ipalloc-range", "10.32.0.0/12"])?;
    let ps = tb.weft_ok(1, &["ps", &c])?;
    assert!(ps.contains(&a), "kept its address: {ps}");
    let state = tb.host(1).state_dir.clone();
    assert!(state.join("ipam.json.range-10.2.0.0-16").exists());

    // A state file that cannot be read.
    tb.weft_ok(1, &["stop"])?;
    std::fs::write(state.join("ipam.json"), "{ not json")?;
    fails_advising(&tb, 1, &["launch"], "run 'weft reset'")?;
    tb.weft_ok(1, &["reset"])?;
    tb.launch(1, &[])?;
    Ok(())
}

#[test]
fn a_foreign_device_under_our_name_and_dns_without_address_advice_works() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("add", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    // Something that is not a bridge holds the bridge's name.
    let ns = tb.host(1).netns.clone();
    let out = tb.exec(
        &ns,
        "ip",
        &[
            "link", "add", "weft", "type", "veth", "peer", "name", "weftx",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    fails_advising(
        &tb,
        1,
        &["launch"],
        "not a bridge; remove it or run 'weft reset'",
    )?;
    tb.weft_ok(1, &["reset"])?;
    tb.launch(1, &["--dns-listen-address=0.0.0.0:53"])?;

    // DNS on every address but nothing on the overlay yet: containers could not reach it.
    fails_advising(&tb, 1, &["dns-args"], "run 'weft expose'")?;
    tb.weft_ok(1, &["expose"])?;
    let args = tb.weft_ok(1, &["dns-args"])?;
    assert!(args.contains("--dns="), "{args}");

    // The fast path's device name taken: the router runs on the sleeve and says what to do.
    tb.weft_ok(1, &["reset"])?;
    let out = tb.exec(
        &ns,
        "ip",
        &[
            "link", "add", "weft-vx", "type", "veth", "peer", "name", "weftvy",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    tb.launch(1, &[])?;
    let log = tb.router_log(1);
    assert!(
        log.contains("not VXLAN; remove it or run 'weft reset'"),
        "{log}"
    );
    tb.weft_ok(1, &["reset"])?;
    tb.launch(1, &[])?;
    let log = tb.router_log(1);
    assert!(log.contains("created VXLAN fast path device"), "{log}");
    Ok(())
}

/// A bad configuration is reported whole, with what to change, before anything on the host
/// is made: no bridge, no state file.
#[test]
fn a_bad_configuration_is_reported_whole_and_changes_nothing() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("adv", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    let err = fails_advising(
        &tb,
        1,
        &[
            "launch",
            "--mtu=10",
            "--ipalloc-range=10.0.0.0/31",
            "--ipalloc-init=bogus",
        ],
        "3 problems with the configuration",
    )?;
    for want in ["--mtu 10", "too small", "--ipalloc-init"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let ns = tb.host(1).netns.clone();
    assert!(
        !tb.exec(&ns, "ip", &["link", "show", "weft"])
            .status
            .success()
    );
    assert!(!tb.host(1).state_dir.join("targets.json").exists());
    assert!(!tb.host(1).state_dir.join("peer-name").exists());
    Ok(())
}
