//! `/w/w CMD ARGS...`: the first process of a container started through weft's Docker proxy.
//!
//! Docker starts the container's process before anyone outside can plug an interface into its
//! network namespace, so the proxy makes this the entrypoint: it waits until the router has
//! attached the container (`ethwe` exists and carries its routes), then replaces itself with
//! the container's real command, which therefore never runs unconnected.
//!
//! The router's last attach step is the route through `ethwe` (the 224.0.0.0/4 multicast
//! route, or with `--no-multicast-route` the address's own route), so a route via `ethwe` in
//! the namespace's routing table means "attached". std only, linked statically: it runs in
//! images that have no C library.

#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const IFNAME: &str = "ethwe";
const NOOP_PATH: &str = "/w/noop";
/// 224.0.0.0 as /proc/net/route prints it (little-endian hex).
const MULTICAST_DST: &str = "000000E0";

/// Whether /proc/net/route lists a route through `ethwe` (the multicast one, if `mcast`).
fn attached(routes: &str, mcast: bool) -> bool {
    routes.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let (Some(iface), Some(dst)) = (f.next(), f.next()) else {
            return false;
        };
        iface == IFNAME && (!mcast || dst.eq_ignore_ascii_case(MULTICAST_DST))
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The proxy passes `--no-mcast` first when the router adds no multicast route.
    let mcast = if args.first().is_some_and(|a| a == "--no-mcast") {
        args.remove(0);
        false
    } else {
        true
    };
    if args.is_empty() {
        eprintln!("weft-wait: No command specified");
        std::process::exit(127);
    }
    // The proxy mounts this when the container is started into a network weft does not
    // attach (the host's, another container's): there is nothing to wait for.
    if !std::path::Path::new(NOOP_PATH).exists() {
        wait_attached(mcast);
    }
    // Docker's (and Weave's) words for a command that is not there, so scripts matching
    // them keep working; Docker's exit code.
    if !args[0].contains('/') && !in_path(&args[0], &std::env::var("PATH").unwrap_or_default()) {
        eprintln!("exec: \"{}\": executable file not found in $PATH", args[0]);
        std::process::exit(127);
    }
    let err = Command::new(&args[0]).args(&args[1..]).exec();
    eprintln!("exec: \"{}\": {err}", args[0]);
    std::process::exit(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}

/// Returns once the router has attached `ethwe` (its route is there).
fn wait_attached(mcast: bool) {
    let start = Instant::now();
    let mut told = false;
    loop {
        let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        if attached(&routes, mcast) {
            return;
        }
        if !told && start.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "weft-wait: still waiting for weft to attach {IFNAME}; is the weft router running?"
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `name` is an executable file in one of `path`'s directories.
fn in_path(name: &str, path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.split(':').filter(|d| !d.is_empty()).any(|d| {
        std::fs::metadata(std::path::Path::new(d).join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_looked_up_in_path() {
        assert!(in_path("sh", "/nonexistent:/bin:/usr/bin"));
        assert!(!in_path("no-such-command-here", "/bin:/usr/bin"));
        assert!(!in_path("sh", ""));
    }

    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
ethwe\t0000200A\t00000000\t0001\t0\t0\t0\t0000F0FF\t0\t0\t0\n";

    #[test]
    fn recognises_the_attach_routes() {
        assert!(attached(TABLE, false));
        assert!(!attached(TABLE, true));
        let with_mcast =
            format!("{TABLE}ethwe\t000000E0\t00000000\t0001\t0\t0\t0\t000000F0\t0\t0\t0\n");
        assert!(attached(&with_mcast, true));
        assert!(!attached("Iface\tDestination\n", false));
    }
}
