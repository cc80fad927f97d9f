//! Namespace plumbing: sockets created inside a namespace, and removal of labs
//! whose process is gone.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;

/// Binds a UDP socket inside network namespace `ns`. The socket stays in that
/// namespace for its whole life, whichever thread uses it later; only a short-lived
/// helper thread ever switches namespace.
pub fn socket_in(ns: &str, bind: SocketAddr) -> std::io::Result<UdpSocket> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = File::open(&path)?;
        // SAFETY: setns on this helper thread only, with a valid netns fd; the
        // thread ends right after creating the socket.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        UdpSocket::bind(bind)
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace helper thread panicked"))?
}

/// Runs `f` on a short-lived thread inside network namespace `ns`: the
/// sockets it makes (a listener, a connection) stay there for their whole
/// life, whichever thread uses them later.
pub fn within<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path)?;
        // SAFETY: setns on this helper thread only, with a valid netns fd; the
        // thread ends right after `f`.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace helper thread panicked"))?
}

/// Moves the calling thread into network namespace `ns`, for good: sockets it
/// creates from now on, and threads it starts, live there. For a thread made
/// for that purpose (e.g. one running a whole node).
pub fn enter(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns with a valid netns fd affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Where `ip netns exec` finds a namespace's own `/etc` files (each put over
/// its namesake in `/etc` for the program it runs).
pub(crate) const ETC: &str = "/etc/netns";

/// Removes namespace `ns`'s own `/etc` files, if it has any.
pub(crate) fn remove_etc(ns: &str) {
    let dir = std::path::Path::new(ETC).join(ns);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Deletes namespaces named `bl<pid>x…` whose process no longer exists, and
/// their `/etc` files: what a killed test run left behind.
pub(crate) fn remove_stale_labs() {
    if let Ok(dirs) = std::fs::read_dir(ETC) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                remove_etc(&name);
            }
        }
    }
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if stale(name) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Whether `name` is a lab namespace's (`bl<pid>x…`) whose process is gone.
fn stale(name: &str) -> bool {
    name.strip_prefix("bl")
        .and_then(|rest| rest.split('x').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}
