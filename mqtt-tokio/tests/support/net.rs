#![allow(dead_code, unreachable_pub)]
//! Loopback ports for the peers the tests start (mosquitto, nats-server, the example
//! broker), and whether a process listens on one: shared by every test harness that starts
//! a server process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A port free now, from the kernel's ephemeral range.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A free loopback port below the kernel's ephemeral range, for a server restarted on the
/// same port while clients keep trying to reconnect to it: a port in the ephemeral range
/// could meanwhile be taken by one of those clients' own sockets (a TCP self-connect when
/// source and destination ports coincide), and the server would then fail to bind.
pub(crate) fn fixed_port() -> u16 {
    static N: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (base, span) = if low > 11_000 {
        (10_000, low - 10_000)
    } else {
        (low, 1000)
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Different per process and per call, so that tests running at once rarely collide.
    let mut x = (u64::from(std::process::id()) << 32)
        ^ (u64::from(N.fetch_add(1, Ordering::Relaxed)) << 20)
        ^ u64::from(nanos)
        | 1;
    for _ in 0..1000 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = (base + (x % u64::from(span - 1)) as u32) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

/// Whether process `pid` has a socket listening on TCP `port`, from /proc. A successful
/// connect is no proof: it may reach another process that got the same free port, or the
/// kernel may connect a socket to itself when its ephemeral port is the one probed (a
/// TCP self-connect), and then a client started right after is refused.
pub(crate) fn listens(pid: u32, port: u16) -> bool {
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let local_port = f.get(1)?.rsplit(':').next()?;
                    let listen = f.get(3)? == &"0A";
                    let inode = f.get(9)?;
                    (listen && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if listening.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| listening.iter().any(|s| l.as_os_str() == s.as_str()))
}
