//! Nodes that went silent: dropped once nothing came from them for the idle
//! timeout, not up to twice that.
//!
//! QUIC's idle timer alone doesn't bound it. RFC 9000 §10.1 restarts the
//! timer when an endpoint sends its first ack-eliciting packet after the last
//! one it received, so a node that vanished while the server still had
//! something to tell it (another node leaving, say, or a relay update) is
//! held for one idle timeout after that send: five nodes killed together
//! stayed online for 57 s against a 30 s timeout, each one's departure
//! restarting the others' timers.
//!
//! [`Silence`] watches instead what the node sent: the count of datagrams each
//! session's connection received, read every [`Silence::period`]. A session
//! whose count stood still for the limit is reported, and the driver closes
//! it. So a node is dropped between `limit` and `limit + period` after its
//! last packet; with nodes' default 10 s keepalives and a 30 s limit, 20 to
//! 31 s after it vanished. Sans-IO: the caller passes the time and reads the
//! counts.

use std::time::{Duration, Instant};

/// What the caller says of one watched session at a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The session ended by itself: stop watching it.
    Gone,
    /// How many datagrams came from the node so far.
    Datagrams(u64),
}

/// One watched session.
#[derive(Debug)]
struct Watched<T> {
    item: T,
    datagrams: u64,
    /// When the count last moved (or the session was added).
    moved_at: Instant,
}

/// The sessions being watched, and which of them went silent.
#[derive(Debug)]
pub struct Silence<T> {
    limit: Duration,
    watched: Vec<Watched<T>>,
    next_check: Option<Instant>,
}

impl<T> Silence<T> {
    /// Sessions silent for `limit` are reported.
    pub fn new(limit: Duration) -> Self {
        Silence {
            limit,
            watched: Vec::new(),
            next_check: None,
        }
    }

    /// How often counts are read: a tenth of the limit, at most a second.
    /// This is how late past the limit a silent node can be reported.
    pub fn period(&self) -> Duration {
        (self.limit / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Starts watching a session whose node has sent `datagrams` so far.
    pub fn handle_added(&mut self, now: Instant, item: T, datagrams: u64) {
        self.watched.push(Watched {
            item,
            datagrams,
            moved_at: now,
        });
        self.next_check.get_or_insert(now + self.period());
    }

    /// When [`Silence::handle_timeout`] wants to run next; `None` while
    /// nothing is watched.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_check
    }

    /// Reads every session's count through `heard`; returns the sessions
    /// silent for the limit, which are no longer watched (the caller closes
    /// them).
    pub fn handle_timeout(&mut self, now: Instant, mut heard: impl FnMut(&T) -> Heard) -> Vec<T> {
        if self.next_check.is_none_or(|at| now < at) {
            return Vec::new();
        }
        self.watched.retain_mut(|w| match heard(&w.item) {
            Heard::Gone => false,
            Heard::Datagrams(n) => {
                if n != w.datagrams {
                    w.datagrams = n;
                    w.moved_at = now;
                }
                true
            }
        });
        let limit = self.limit;
        let silent = self
            .watched
            .extract_if(.., |w| now.duration_since(w.moved_at) >= limit)
            .map(|w| w.item)
            .collect();
        self.next_check = (!self.watched.is_empty()).then(|| now + self.period());
        silent
    }

    /// How many sessions are watched.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const LIMIT: Duration = Duration::from_secs(30);

    /// Steps time by the period until `until`, checking with `counts`; returns
    /// when each session was reported.
    fn run(
        s: &mut Silence<&'static str>,
        start: Instant,
        until: Duration,
        counts: impl Fn(&str, Duration) -> Heard,
    ) -> HashMap<&'static str, Duration> {
        let mut reported = HashMap::new();
        let mut now = start;
        while now <= start + until {
            if let Some(at) = s.poll_timeout() {
                now = at;
            } else {
                break;
            }
            for item in s.handle_timeout(now, |item| counts(item, now - start)) {
                reported.insert(item, now - start);
            }
        }
        reported
    }

    #[test]
    fn a_node_that_keeps_sending_is_never_reported() {
        let t0 = Instant::now();
        let mut s = Silence::new(LIMIT);
        s.handle_added(t0, "alive", 3);
        // A keepalive every 10 s.
        let reported = run(&mut s, t0, Duration::from_secs(300), |_, t| {
            Heard::Datagrams(3 + t.as_secs() / 10)
        });
        assert!(reported.is_empty(), "{reported:?}");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_silent_node_is_reported_within_a_period_past_the_limit_of_its_last_datagram() {
        let t0 = Instant::now();
        let mut s = Silence::new(LIMIT);
        assert_eq!(s.period(), Duration::from_secs(1));
        s.handle_added(t0, "dies at 25 s", 0);
        s.handle_added(t0, "dies at 7 s", 0);
        let reported = run(&mut s, t0, Duration::from_secs(120), |item, t| {
            let death = if item == "dies at 25 s" { 25 } else { 7 };
            // One datagram a second while alive.
            Heard::Datagrams(t.as_secs().min(death))
        });
        for (item, death) in [("dies at 25 s", 25), ("dies at 7 s", 7)] {
            let at = reported[item];
            let after_last = at - Duration::from_secs(death);
            assert!(
                after_last >= LIMIT && after_last <= LIMIT + s.period(),
                "{item}: reported {after_last:?} after its last datagram"
            );
        }
        assert!(s.is_empty());
        assert_eq!(s.poll_timeout(), None, "nothing left to check");
    }

    #[test]
    fn a_session_that_ended_by_itself_is_dropped_without_a_report() {
        let t0 = Instant::now();
        let mut s = Silence::new(LIMIT);
        s.handle_added(t0, "left", 0);
        let reported = run(&mut s, t0, Duration::from_secs(60), |_, _| Heard::Gone);
        assert!(reported.is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn nothing_is_read_before_the_next_check() {
        let t0 = Instant::now();
        let mut s = Silence::new(LIMIT);
        s.handle_added(t0, "n", 0);
        let mut reads = 0;
        let out = s.handle_timeout(t0 + Duration::from_millis(500), |_| {
            reads += 1;
            Heard::Datagrams(0)
        });
        assert!(out.is_empty());
        assert_eq!(reads, 0);
    }

    #[test]
    fn short_limits_are_checked_more_often() {
        let s = Silence::<()>::new(Duration::from_millis(1500));
        assert_eq!(s.period(), Duration::from_millis(150));
    }
}
