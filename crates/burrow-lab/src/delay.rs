//! Links with delay: this kernel has no `netem`, so the lab makes its own wire.
//!
//! A delayed link is two TAP devices, one in each namespace, and four threads
//! in the test process: per direction, one reads frames from one TAP and stamps
//! them, the other writes each to the other TAP once its time has come. The
//! delay is constant, so frames keep their order. Threads poll with a timeout and
//! stop when the link is dropped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a relay thread waits for a frame before checking whether to stop.
const POLL: Duration = Duration::from_millis(100);
/// Frames in flight per direction before more are dropped (as a full queue would).
const QUEUE: usize = 16_384;

/// A running delayed link; dropping it stops its threads.
#[derive(Debug)]
pub struct DelayLink {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Frames carried, both directions.
    pub frames: Arc<AtomicU64>,
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TAP device `name` inside namespace `ns`; the returned file reads and
/// writes its frames (from any thread).
pub fn open_tap(ns: &str, name: &str) -> std::io::Result<File> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other("interface name too long"));
    }
    let path = format!("/run/netns/{ns}");
    let name = name.to_string();
    std::thread::spawn(move || {
        let netns = File::open(&path)?;
        // SAFETY: setns on this helper thread only, with a valid netns fd.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads an ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(tun)
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace helper thread panicked"))?
}

/// Joins two TAP devices with `delay` each way.
pub fn join(a: File, b: File, delay: Duration) -> std::io::Result<DelayLink> {
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (from, to) in [(a.try_clone()?, b.try_clone()?), (b, a)] {
        let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(QUEUE);
        let stop_r = stop.clone();
        threads.push(std::thread::spawn(move || {
            read_side(from, tx, delay, stop_r)
        }));
        let (stop_w, count) = (stop.clone(), frames.clone());
        threads.push(std::thread::spawn(move || {
            write_side(to, rx, stop_w, count)
        }));
    }
    Ok(DelayLink {
        stop,
        threads,
        frames,
    })
}

fn read_side(
    mut from: File,
    tx: mpsc::SyncSender<(Instant, Vec<u8>)>,
    delay: Duration,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return;
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // Full queue: the frame is lost, as on a congested link.
                let _ = tx.try_send((Instant::now() + delay, buf[..n].to_vec()));
            }
        }
    }
}

fn write_side(
    mut to: File,
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((due, frame)) = rx.recv_timeout(POLL) else {
            continue;
        };
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        // A device that is down refuses frames: they are lost, as on a cut wire.
        if to.write_all(&frame).is_ok() {
            frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}
