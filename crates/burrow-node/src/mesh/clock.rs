//! Clock offsets to linked peers, NTP-style (RFC 5905's on-wire calculation).
//!
//! ```text
//! us                 peer
//! t1 --- Ping{t1} --->  t2
//! t4 <-- Pong{t1,t2,t3}  t3
//! offset = ((t2 - t1) + (t3 - t4)) / 2      delay = (t4 - t1) - (t3 - t2)
//! ```
//!
//! Of the last few samples, the one with the smallest delay is the most
//! trustworthy (queueing only ever adds delay, and asymmetrically), so its offset
//! is the estimate, as NTP's clock filter does.

use std::collections::VecDeque;
use std::time::Duration;

use burrow_proto::mesh::MeshFrame;
use tokio::sync::mpsc;

/// A probe that took longer than this (µs) is not one of ours, or useless.
const MAX_ROUND_TRIP_US: i128 = 60_000_000;
/// Offsets beyond ten years (µs) are a peer lying, not a clock.
const MAX_OFFSET_US: i128 = 10 * 365 * 24 * 3600 * 1_000_000;
/// Samples kept per link.
const SAMPLES: usize = 8;
/// Probes right after a link comes up (for an early estimate), and their spacing...
const FIRST_PROBES: usize = 3;
const FIRST_SPACING: Duration = Duration::from_millis(200);
/// ...then one with every keepalive round.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// A link's clock offset estimate.
#[derive(Debug, Default, Clone)]
pub(crate) struct Estimate {
    /// (offset, delay) in microseconds, newest last.
    samples: VecDeque<(i64, i64)>,
}

impl Estimate {
    /// Adds a probe's four timestamps (Unix microseconds; t1, t4 ours, t2, t3 theirs).
    pub fn add(&mut self, t1: u64, t2: u64, t3: u64, t4: u64) {
        // The peer chooses t1..t3: compute wide, so no value can overflow.
        let (t1, t2, t3, t4) = (t1 as i128, t2 as i128, t3 as i128, t4 as i128);
        let delay = (t4 - t1) - (t3 - t2);
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        if !(0..=MAX_ROUND_TRIP_US).contains(&(t4 - t1))
            || delay < 0
            || offset.abs() > MAX_OFFSET_US
        {
            return; // not a round trip we made, or a clock beyond any use
        }
        self.samples.push_back((offset as i64, delay as i64));
        if self.samples.len() > SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The peer's clock minus ours, in milliseconds, once a probe came back.
    pub fn offset_ms(&self) -> Option<f64> {
        self.samples
            .iter()
            .min_by_key(|(_, delay)| *delay)
            .map(|(offset, _)| *offset as f64 / 1000.0)
    }
}

/// Sends clock probes on a link until it closes. Each probe reads the clock as
/// late as possible: the writer stamps nothing, so `t1` is taken here.
pub(crate) async fn probe(tx: mpsc::Sender<MeshFrame>, wall_us: impl Fn() -> u64) {
    let mut sent = 0;
    loop {
        let wait = if sent < FIRST_PROBES {
            FIRST_SPACING
        } else {
            PROBE_EVERY
        };
        tokio::time::sleep(wait).await;
        if tx.send(MeshFrame::Ping { t1: wall_us() }).await.is_err() {
            return;
        }
        sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_comes_from_the_least_delayed_probe() {
        let mut e = Estimate::default();
        assert_eq!(e.offset_ms(), None);
        // Peer 5 s ahead; 2 ms each way.
        e.add(1_000_000, 6_002_000, 6_002_100, 1_004_100);
        assert_eq!(e.offset_ms(), Some(5000.0));
        // A probe queued 300 ms on the way back skews its own sample only.
        e.add(2_000_000, 7_002_000, 7_002_100, 2_304_100);
        assert_eq!(e.offset_ms(), Some(5000.0));
        // Nonsense (answer before question, absurd stamps) is ignored.
        e.add(3_000_000, 0, 0, 2_000_000);
        e.add(3_000_000, 1 << 63, 0, 3_000_100);
        e.add(0, u64::MAX, u64::MAX, 0);
        assert_eq!(e.samples.len(), 2);
    }

    /// On paused time (no test waits 20 real seconds): three probes 200 ms
    /// apart right after a link comes up, then one every 10 s, each stamped
    /// with the clock as it is sent; none once the link is gone.
    #[tokio::test(start_paused = true)]
    async fn probes_come_quickly_at_first_then_with_every_keepalive_round() {
        let (tx, mut rx) = mpsc::channel(16);
        let start = tokio::time::Instant::now();
        let prober = tokio::spawn(probe(tx, move || start.elapsed().as_micros() as u64));
        let mut sent_at = Vec::new();
        for _ in 0..5 {
            let Some(MeshFrame::Ping { t1 }) = rx.recv().await else {
                panic!("a probe is a Ping");
            };
            assert_eq!(t1, start.elapsed().as_micros() as u64, "stamped as sent");
            sent_at.push(start.elapsed());
        }
        let ms = |n: u64| Duration::from_millis(n);
        assert_eq!(sent_at, [ms(200), ms(400), ms(600), ms(10_600), ms(20_600)]);
        drop(rx);
        tokio::time::advance(PROBE_EVERY).await;
        assert!(prober.await.is_ok(), "the prober ends with its link");
    }
}
