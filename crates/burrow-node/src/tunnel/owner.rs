//! Who holds a local port, for the "already in use" error: on Linux, the
//! socket's inode from `/proc/net`, then the process holding it (found only
//! among our own user's processes, which is what a person can act on).

use std::net::SocketAddr;

use burrow_proto::tunnel::Transport;

/// Processes looked through at most.
#[cfg(target_os = "linux")]
const PROCESSES: usize = 4096;

/// The program (and pid) holding `addr` for `transport`, when it can be told.
#[cfg(target_os = "linux")]
pub(crate) fn of(addr: SocketAddr, transport: Transport) -> Option<String> {
    let inode = inode(addr, transport)?;
    let wanted = format!("socket:[{inode}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten().take(PROCESSES) {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", comm.trim()));
        }
    }
    None
}

/// The inode of the socket bound to `addr` (listening, for TCP).
#[cfg(target_os = "linux")]
fn inode(addr: SocketAddr, transport: Transport) -> Option<u64> {
    let proto = match transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    let port = format!("{:04X}", addr.port());
    for v6 in [false, true] {
        let table =
            std::fs::read_to_string(format!("/proc/net/{proto}{}", if v6 { "6" } else { "" }))
                .ok()?;
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening = transport == Transport::Udp || *state == "0A";
            if listening && local.ends_with(&format!(":{port}")) {
                return inode.parse().ok();
            }
        }
    }
    None
}

/// Not known on this platform.
#[cfg(not(target_os = "linux"))]
pub(crate) fn of(_addr: SocketAddr, _transport: Transport) -> Option<String> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_port_is_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let owner = of(l.local_addr().unwrap(), Transport::Tcp).expect("found");
        assert!(
            owner.contains(&format!("pid {}", std::process::id())),
            "{owner}"
        );
    }
}
