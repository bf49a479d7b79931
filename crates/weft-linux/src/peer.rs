//! Who is on the other end of a local TCP connection: the owner of the client's socket, read
//! from the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`), as identd did. Used to
//! keep unprivileged local users from changing the network through the loopback API.

use std::net::{IpAddr, SocketAddr};

/// The uid this process runs as (from `/proc/self/status`).
pub fn own_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The uid owning the socket at `client` connected to `server`, if both ends are in this
/// network namespace (a connection from another host has no entry).
pub fn tcp_uid(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    let (file, client, server) = match (client.ip(), server.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => ("/proc/net/tcp", hex(client), hex(server)),
        _ => ("/proc/net/tcp6", hex6(client), hex6(server)),
    };
    let table = std::fs::read_to_string(file).ok()?;
    find_uid(&table, &client, &server)
}

/// The uid column of the row whose local address is `client` and remote is `server`.
fn find_uid(table: &str, client: &str, server: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1].eq_ignore_ascii_case(client) && f[2].eq_ignore_ascii_case(server))
            .then(|| f[7].parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90`: the address as the kernel's 32-bit word in host order, then the port.
fn hex(a: SocketAddr) -> String {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
    };
    format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), a.port())
}

/// The IPv6 form: four 32-bit words in host order.
fn hex6(a: SocketAddr) -> String {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    };
    let o = ip.octets();
    let words: String = o
        .chunks(4)
        .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    format!("{words}:{:04X}", a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_found_by_both_ends() {
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:6784".parse().unwrap();
        let (c, s) = (hex(client), hex(server));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: {s} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 274 1\n   1: {c} {s} 01 00000000:00000000 00:00000000 00000000  1000        0 275 1\n   2: {s} {c} 01 00000000:00000000 00:00000000 00000000     0        0 276 1\n"
        );
        assert_eq!(find_uid(&table, &c, &s), Some(1000));
        assert_eq!(find_uid(&table, &s, &c), Some(0));
        assert_eq!(
            find_uid(&table, &hex("127.0.0.1:1".parse().unwrap()), &s),
            None
        );
        if cfg!(target_endian = "little") {
            assert_eq!(c, "0100007F:9C40");
        }
    }

    #[test]
    fn our_own_connection_is_ours() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = l.local_addr().unwrap();
        let s = std::net::TcpStream::connect(server).unwrap();
        let client = s.local_addr().unwrap();
        assert_eq!(tcp_uid(client, server), own_uid());
    }
}
