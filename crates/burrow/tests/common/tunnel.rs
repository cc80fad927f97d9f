//! Tunnel test helpers: echo services (TCP and UDP) and clients, all
//! bounded in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Echoes every TCP connection back until the client half-closes, then
/// half-closes too. Serves `conns` connections, then stops.
pub fn echo_server(conns: usize) -> SocketAddr {
    echo_on(TcpListener::bind("127.0.0.1:0").unwrap(), conns)
}

/// [`echo_server`] on `l` (e.g. a listener in a lab namespace).
pub fn echo_on(l: TcpListener, conns: usize) -> SocketAddr {
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(conns) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(super::WAIT)).unwrap();
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Echoes UDP datagrams (until none comes for a while).
pub fn udp_echo() -> SocketAddr {
    udp_echo_on(UdpSocket::bind("127.0.0.1:0").unwrap())
}

/// [`udp_echo`] on `s`.
pub fn udp_echo_on(s: UdpSocket) -> SocketAddr {
    let addr = s.local_addr().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn connect(port: u16) -> TcpStream {
    timed(TcpStream::connect(("127.0.0.1", port)).unwrap())
}

/// `s`, whose reads give up after the tests' longest wait.
pub fn timed(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(super::WAIT)).unwrap();
    s
}

/// Sends `data` on `s`, half-closes, and reads everything back.
pub fn round_trip(mut s: TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

pub fn random(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}
