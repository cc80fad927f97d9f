//! Who may use the server, and what it does about those who misbehave: the
//! registration policy, bans, the allowlist, and intrusion detection. Sans-IO:
//! the caller passes the time ([`Now`]) and drains [`Admission::poll_event`]
//! for what to persist and write to the audit log.
//!
//! What it watches, per address group ([`burrow_proto::ip_group`]: an IPv4
//! address, or an IPv6 /64) and per key or name:
//!
//! - connection attempts and STUN requests per address, connect requests per key:
//!   token buckets; past them the server stays silent (no answer costs it less);
//! - failed logins per address: [`AdmissionConfig::max_failures`] within
//!   [`AdmissionConfig::failure_window`] ban the address, for a period that
//!   doubles on each repeat. The guesser is throttled, not the owner: a name's
//!   own failures never refuse a login. Only when they come from several
//!   addresses (a name under attack from many places) does every password
//!   attempt for it wait a delay that grows with them
//!   ([`AdmissionConfig::attack_delay_step`], up to
//!   [`AdmissionConfig::attack_delay_max`]): slower for everyone, a lockout for
//!   no one;
//! - misbehaviour per address (bad frames, forged requests): points that decay;
//!   past [`AdmissionConfig::misbehaviour_limit`] the address is banned.
//!
//! Every table keyed by strangers is bounded ([`AdmissionConfig::max_tracked`]):
//! entries with nothing to remember are dropped first; when a table is still
//! full, a new address goes untracked (it is let through rather than letting a
//! flood of addresses lock honest newcomers out).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use burrow_proto::rendezvous::Refusal;
use burrow_proto::{ip_group, Name, NodeId};
use burrow_store::{Ban, BanTarget};

mod tables;

use tables::{Bounded, Failures, Limiters, NameFailures, Score};

/// Who may register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Any key may register any free name (first come, first bound).
    Open,
    /// A name needs an account: made by the operator (`admin add-user`) or by
    /// an invite. A key that holds its account's name logs in by the key alone;
    /// a new key needs the password.
    Accounts,
    /// Only keys the operator allowed (`admin allow`) may register; strangers
    /// get STUN answers at a trickle and nothing else.
    Allowlist,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Policy::Open),
            "accounts" => Ok(Policy::Accounts),
            "allowlist" => Ok(Policy::Allowlist),
            _ => Err(format!(
                "unknown policy {s:?}: use open, accounts or allowlist"
            )),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Open => "open",
            Policy::Accounts => "accounts",
            Policy::Allowlist => "allowlist",
        })
    }
}

/// Admission and intrusion-detection settings. The defaults assume people, not
/// programs, on the other side: a person mistypes a password a few times, opens a
/// handful of connections a minute, and asks for a connection now and then.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Who may register. Default [`Policy::Open`].
    pub policy: Policy,
    /// Failed logins from one address group that ban it; as many on one name
    /// from several addresses slow password logins for that name. Default 5.
    pub max_failures: u32,
    /// ... within this long. Default 10 min.
    pub failure_window: Duration,
    /// The first block; it doubles on each repeat. Default 1 min.
    pub block_base: Duration,
    /// The longest block. Default 24 h.
    pub block_max: Duration,
    /// A name under attack (`max_failures` or more failures from two or more
    /// address groups within the window): each password attempt for it waits
    /// this long for every failure past the first `max_failures - 1`.
    /// Default 500 ms: a person barely notices, a guesser gets two tries a
    /// second per connection at most.
    pub attack_delay_step: Duration,
    /// ... and never longer than this. Default 5 s, well inside the node's
    /// 10 s wait for its Welcome.
    pub attack_delay_max: Duration,
    /// New connections per second per address group. Default 5.
    pub conn_rate: f64,
    /// ... and at once. Default 20 (a household behind one NAT starting up).
    pub conn_burst: f64,
    /// STUN requests per second per address group. Default 20 (`burrow nat` sends
    /// about a dozen at once).
    pub stun_rate: f64,
    /// ... and at once. Default 40.
    pub stun_burst: f64,
    /// Connect requests per second per key. Default 2.
    pub request_rate: f64,
    /// ... and at once. Default 10.
    pub request_burst: f64,
    /// Misbehaviour points that get an address banned. Default 100: five bad
    /// frames in quick succession. Points decay by one every 10 s.
    pub misbehaviour_limit: u32,
    /// The first misbehaviour ban; it doubles on each repeat. Default 10 min.
    pub misbehaviour_ban: Duration,
    /// Most entries in each table keyed by addresses, keys or names. Default 65 536
    /// (a few MiB at most).
    pub max_tracked: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            policy: Policy::Open,
            max_failures: 5,
            failure_window: Duration::from_secs(600),
            block_base: Duration::from_secs(60),
            block_max: Duration::from_secs(24 * 3600),
            attack_delay_step: Duration::from_millis(500),
            attack_delay_max: Duration::from_secs(5),
            conn_rate: 5.0,
            conn_burst: 20.0,
            stun_rate: 20.0,
            stun_burst: 40.0,
            request_rate: 2.0,
            request_burst: 10.0,
            misbehaviour_limit: 100,
            misbehaviour_ban: Duration::from_secs(600),
            max_tracked: 65_536,
        }
    }
}

/// Points for each kind of misbehaviour.
pub mod points {
    /// A frame that doesn't decode, or the wrong protocol version.
    pub const BAD_FRAME: u32 = 20;
    /// A connection that never said Hello, or said something else first.
    pub const NO_HELLO: u32 = 10;
    /// An answer to, or cancel of, a request that doesn't exist.
    pub const FORGED_REQUEST: u32 = 5;
    /// More messages than the session's rate allows.
    pub const FLOOD: u32 = 25;
}

/// The time, both ways: `at` for rate limits, `unix_ms` for what is persisted.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic.
    pub at: Instant,
    /// Wall clock, Unix ms.
    pub unix_ms: u64,
}

impl Now {
    /// The current time.
    pub fn real() -> Self {
        Now {
            at: Instant::now(),
            unix_ms: burrow_proto::time::unix_ms(SystemTime::now()),
        }
    }

    /// `d` later.
    pub fn after(self, d: Duration) -> Self {
        Now {
            at: self.at + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

/// What to do with a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnVerdict {
    /// Handshake with it.
    Accept,
    /// Its address is banned: refuse it (one packet).
    Refuse,
    /// Over its rate: stay silent.
    Ignore,
}

/// Something to persist or write to the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmissionEvent {
    /// Intrusion detection banned an address (persist it).
    Banned(Ban),
    /// A login failed.
    LoginFailed {
        /// The name tried.
        name: Name,
        /// From where.
        addr: IpAddr,
        /// Why.
        reason: Refusal,
    },
    /// A name is being guessed from several addresses: password attempts for
    /// it now wait before they are checked (and the wait grows).
    NameUnderAttack {
        /// The name.
        name: Name,
        /// Failures within the window.
        failures: usize,
        /// From how many address groups.
        addresses: usize,
        /// The wait each attempt has now.
        delay: Duration,
    },
    /// An address misbehaved (points added).
    Misbehaved {
        /// The address.
        addr: IpAddr,
        /// What it did.
        what: &'static str,
        /// Its score now.
        score: u32,
    },
}

/// Admission state: bans, the allowlist, and what intrusion detection tracks.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    bans: HashMap<BanTarget, Ban>,
    allowed: HashSet<NodeId>,
    /// Address groups with a registered session, and how many.
    registered: HashMap<IpAddr, u32>,
    conn_limits: Limiters<IpAddr>,
    stun_limits: Limiters<IpAddr>,
    request_limits: Limiters<NodeId>,
    name_failures: Bounded<Name, NameFailures>,
    addr_failures: Bounded<IpAddr, Failures>,
    scores: Bounded<IpAddr, Score>,
    events: VecDeque<AdmissionEvent>,
}

impl Admission {
    /// Starts with the persisted `bans` and `allowed` keys.
    pub fn new(config: AdmissionConfig, bans: Vec<Ban>, allowed: Vec<NodeId>) -> Self {
        let cap = config.max_tracked;
        Admission {
            bans: bans.into_iter().map(|b| (b.target.clone(), b)).collect(),
            allowed: allowed.into_iter().collect(),
            registered: HashMap::new(),
            conn_limits: Limiters::new(config.conn_rate, config.conn_burst, cap),
            stun_limits: Limiters::new(config.stun_rate, config.stun_burst, cap),
            request_limits: Limiters::new(config.request_rate, config.request_burst, cap),
            name_failures: Bounded::new(cap),
            addr_failures: Bounded::new(cap),
            scores: Bounded::new(cap),
            events: VecDeque::new(),
            config,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    /// Whether to handshake with a new connection from `ip`.
    pub fn check_connection(&mut self, now: Now, ip: IpAddr) -> ConnVerdict {
        if self.ban_on(&BanTarget::addr(ip), now).is_some() {
            return ConnVerdict::Refuse;
        }
        if self.conn_limits.allow(now.at, ip_group(ip)) {
            ConnVerdict::Accept
        } else {
            ConnVerdict::Ignore
        }
    }

    /// Whether to answer a STUN request from `from`, and as to whom (see
    /// [`crate::stun_grid::Caller`]): `None` for no answer. On an allowlist server,
    /// addresses with no registered node share one bucket. When the table of
    /// buckets is full (a flood from many addresses), strangers get nothing
    /// and registered addresses are still answered.
    pub fn check_stun(&mut self, now: Now, from: SocketAddr) -> Option<crate::stun_grid::Caller> {
        let group = ip_group(from.ip());
        if self.ban_on(&BanTarget::Addr(group), now).is_some() {
            return None;
        }
        let known = self.registered.contains_key(&group);
        let key = if self.config.policy == Policy::Allowlist && !known {
            // Its own small bucket: the strangers' key is the unspecified address
            // of the family, so all strangers share one trickle.
            if group.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            }
        } else {
            group
        };
        let allowed = self.stun_limits.allow_or(now.at, key, known);
        let caller = if known {
            crate::stun_grid::Caller::Known
        } else {
            crate::stun_grid::Caller::Stranger
        };
        allowed.then_some(caller)
    }

    /// Checks a Hello from `id` at `ip` asking for `name` against bans and the
    /// allowlist (credentials are the caller's to check, with the store).
    pub fn check_hello(
        &mut self,
        now: Now,
        id: &NodeId,
        name: &Name,
        ip: IpAddr,
    ) -> Result<(), Refusal> {
        for target in [
            BanTarget::Node(*id),
            BanTarget::Name(name.clone()),
            BanTarget::addr(ip),
        ] {
            if let Some(until_ms) = self.ban_on(&target, now) {
                return Err(Refusal::Banned { until_ms });
            }
        }
        if self.config.policy == Policy::Allowlist && !self.allowed.contains(id) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// Whether a password or invite attempt for `name` from `ip` may be
    /// checked: `Err` with the refusal to send while the address is blocked
    /// for its own failures, else how long the attempt waits first (zero
    /// unless the name is under attack from several addresses).
    pub fn check_login(&mut self, now: Now, name: &Name, ip: IpAddr) -> Result<Duration, Refusal> {
        if let Some(until) = self.addr_failures.get(&ip_group(ip)).and_then(|f| f.until) {
            if until > now.at {
                return Err(Refusal::Blocked {
                    retry_in_ms: (until - now.at).as_millis() as u64,
                });
            }
        }
        Ok(self.attack_delay(now, name))
    }

    /// The wait for a password attempt on `name`: zero while its recent
    /// failures are fewer than `max_failures` or all from one address group
    /// (that one is banned instead), then a step more per failure, capped.
    fn attack_delay(&self, now: Now, name: &Name) -> Duration {
        let Some(f) = self.name_failures.get(name) else {
            return Duration::ZERO;
        };
        let (failures, groups) = f.pressure(now.at, self.config.failure_window);
        let max = self.config.max_failures as usize;
        if groups < 2 || failures < max {
            return Duration::ZERO;
        }
        let steps = (failures - max + 1) as u32;
        self.config
            .attack_delay_step
            .saturating_mul(steps)
            .min(self.config.attack_delay_max)
    }

    /// A password or invite for `name` from `ip` was wrong. Past the limit the
    /// address is banned, for a period that doubles on every repeat; failures
    /// on the name from several addresses slow its password logins down.
    pub fn login_failed(&mut self, now: Now, name: &Name, ip: IpAddr, reason: Refusal) {
        self.events.push_back(AdmissionEvent::LoginFailed {
            name: name.clone(),
            addr: ip,
            reason,
        });
        let (max, window) = (self.config.max_failures, self.config.failure_window);
        let (base, cap) = (self.config.block_base, self.config.block_max);
        let group = ip_group(ip);
        let before = self.attack_delay(now, name);
        let pressure = self
            .name_failures
            .entry(name.clone(), NameFailures::default)
            .map(|f| {
                f.add(now.at, group, window);
                f.pressure(now.at, window)
            });
        let delay = self.attack_delay(now, name);
        if let Some((failures, addresses)) =
            pressure.filter(|_| before.is_zero() && !delay.is_zero())
        {
            self.events.push_back(AdmissionEvent::NameUnderAttack {
                name: name.clone(),
                failures,
                addresses,
                delay,
            });
        }
        if let Some(d) = self
            .addr_failures
            .entry(group, Failures::default)
            .and_then(|f| f.add(now.at, max, window, base, cap))
        {
            let reason = format!("{max} failed logins within {}", humantime_short(window));
            self.ban(now, BanTarget::Addr(group), Some(d), reason);
        }
    }

    /// `ip` did something no honest node does. Past the limit it is banned.
    pub fn misbehaved(&mut self, now: Now, ip: IpAddr, what: &'static str, points: u32) {
        let group = ip_group(ip);
        let (limit, base) = (self.config.misbehaviour_limit, self.config.misbehaviour_ban);
        let cap = self.config.block_max;
        let Some(score) = self.scores.entry(group, || Score::new(now.at)) else {
            return;
        };
        let total = score.add(now.at, points);
        let ban = (total >= limit).then(|| {
            score.points = 0.0;
            score.offences += 1;
            base.saturating_mul(1 << (score.offences - 1).min(16))
                .min(cap)
        });
        self.events.push_back(AdmissionEvent::Misbehaved {
            addr: ip,
            what,
            score: total,
        });
        if let Some(d) = ban {
            let reason = format!("misbehaviour (last: {what})");
            self.ban(now, BanTarget::Addr(group), Some(d), reason);
        }
    }

    /// Whether `id` may make another connect request now.
    pub fn allow_request(&mut self, now: Now, id: NodeId) -> bool {
        self.request_limits.allow(now.at, id)
    }

    /// Bans `target` for `duration` (`None`: for good). The caller persists the
    /// [`AdmissionEvent::Banned`] it queues.
    pub fn ban(&mut self, now: Now, target: BanTarget, duration: Option<Duration>, reason: String) {
        let ban = Ban {
            target: target.clone(),
            until_ms: duration.map(|d| now.unix_ms.saturating_add(d.as_millis() as u64)),
            reason,
            at_ms: now.unix_ms,
        };
        if self.bans.len() >= self.config.max_tracked {
            self.bans.retain(|_, b| b.active(now.unix_ms));
        }
        self.bans.insert(target, ban.clone());
        self.events.push_back(AdmissionEvent::Banned(ban));
    }

    /// Lifts the ban on `target` (and, for an address, its login block). Returns
    /// whether there was one.
    pub fn unban(&mut self, target: &BanTarget) -> bool {
        match target {
            BanTarget::Addr(ip) => self.addr_failures.remove(ip),
            BanTarget::Name(n) => self.name_failures.remove(n),
            BanTarget::Node(_) => {}
        }
        self.bans.remove(target).is_some()
    }

    /// The bans in force, oldest first.
    pub fn bans(&self, now: Now) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .bans
            .values()
            .filter(|b| b.active(now.unix_ms))
            .cloned()
            .collect();
        v.sort_by_key(|b| b.at_ms);
        v
    }

    /// Lets `id` register (allowlist policy).
    pub fn allow(&mut self, id: NodeId) {
        self.allowed.insert(id);
    }

    /// Takes `id` off the allowlist.
    pub fn deny(&mut self, id: &NodeId) {
        self.allowed.remove(id);
    }

    /// Whether `id` is on the allowlist.
    pub fn is_allowed(&self, id: &NodeId) -> bool {
        self.allowed.contains(id)
    }

    /// A node from `ip` registered (its address then gets full STUN service).
    pub fn registered(&mut self, ip: IpAddr) {
        *self.registered.entry(ip_group(ip)).or_default() += 1;
    }

    /// A node from `ip` left.
    pub fn left(&mut self, ip: IpAddr) {
        let group = ip_group(ip);
        if let Some(n) = self.registered.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                self.registered.remove(&group);
            }
        }
    }

    /// Forgets what no longer matters: idle limiters, old failures, expired bans.
    /// Call every few seconds.
    pub fn handle_timeout(&mut self, now: Now) {
        self.conn_limits.prune(now.at);
        self.stun_limits.prune(now.at);
        self.request_limits.prune(now.at);
        let keep = self.config.block_max;
        self.name_failures.retain(|f| !f.forgotten(now.at, keep));
        self.addr_failures.retain(|f| !f.forgotten(now.at, keep));
        self.scores.retain(|s| !s.forgotten(now.at, keep));
        self.bans.retain(|_, b| b.active(now.unix_ms));
    }

    /// The next thing to persist or log.
    pub fn poll_event(&mut self) -> Option<AdmissionEvent> {
        self.events.pop_front()
    }

    /// How many entries the tracking tables hold (for tests and the load benchmark).
    pub fn tracked(&self) -> usize {
        self.conn_limits.map.len()
            + self.stun_limits.map.len()
            + self.request_limits.map.len()
            + self.name_failures.map.len()
            + self.addr_failures.map.len()
            + self.scores.map.len()
    }

    /// If `target` is banned at `now`, until when (`None`: for good).
    fn ban_on(&self, target: &BanTarget, now: Now) -> Option<Option<u64>> {
        self.bans
            .get(target)
            .filter(|b| b.active(now.unix_ms))
            .map(|b| b.until_ms)
    }
}

/// "10 min", "1 h": for reasons people read.
fn humantime_short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn events(a: &mut Admission) -> Vec<AdmissionEvent> {
        std::iter::from_fn(|| a.poll_event()).collect()
    }
    fn t0() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: 1_000_000,
        }
    }

    #[test]
    fn failed_logins_ban_the_guesser_for_longer_each_time_and_never_the_owner() {
        let mut a = Admission::new(AdmissionConfig::default(), vec![], vec![]);
        let alice: Name = "alice".parse().unwrap();
        let attacker = ip("127.0.0.9");
        let owner = ip("127.0.0.1");
        let mut now = t0();
        for _ in 0..4 {
            a.login_failed(now, &alice, attacker, Refusal::WrongPassword);
        }
        assert_eq!(a.check_connection(now, attacker), ConnVerdict::Accept);
        a.login_failed(now, &alice, attacker, Refusal::WrongPassword);
        let ev = events(&mut a);
        let banned = ev.iter().find_map(|e| match e {
            AdmissionEvent::Banned(b) => Some(b.clone()),
            _ => None,
        });
        assert_eq!(banned.unwrap().until_ms, Some(now.unix_ms + 60_000));
        assert!(
            !ev.iter()
                .any(|e| matches!(e, AdmissionEvent::NameUnderAttack { .. })),
            "one address guessing is that address's problem: {ev:?}"
        );
        assert_eq!(a.check_connection(now, attacker), ConnVerdict::Refuse);
        assert!(matches!(
            a.check_login(now, &alice, attacker),
            Err(Refusal::Blocked {
                retry_in_ms: 60_000
            })
        ));
        // The owner, from another address, logs in with her password at once,
        // and with her key without being asked.
        assert_eq!(a.check_connection(now, owner), ConnVerdict::Accept);
        assert_eq!(a.check_login(now, &alice, owner), Ok(Duration::ZERO));
        assert!(a.check_hello(now, &id(1), &alice, owner).is_ok());

        // After the minute, five more failures ban it for two.
        now = now.after(Duration::from_secs(61));
        assert_eq!(a.check_connection(now, attacker), ConnVerdict::Accept);
        for _ in 0..5 {
            a.login_failed(now, &alice, attacker, Refusal::WrongPassword);
        }
        let ev = events(&mut a);
        assert!(ev.iter().any(|e| matches!(e,
            AdmissionEvent::Banned(b) if b.until_ms == Some(now.unix_ms + 120_000))));
        assert_eq!(a.check_login(now, &alice, owner), Ok(Duration::ZERO));
    }

    #[test]
    fn a_name_guessed_from_many_addresses_slows_down_for_everyone_and_refuses_no_one() {
        let mut a = Admission::new(AdmissionConfig::default(), vec![], vec![]);
        let alice: Name = "alice".parse().unwrap();
        let owner = ip("198.51.100.1");
        let now = t0();
        // Four guesses from each of three addresses: none is banned.
        let bots = [ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.3")];
        let mut delays = Vec::new();
        for round in 0..4 {
            for bot in bots {
                a.login_failed(now, &alice, bot, Refusal::WrongPassword);
                delays.push(a.check_login(now, &alice, owner).unwrap());
            }
            assert!(
                bots.iter()
                    .all(|b| a.check_connection(now, *b) == ConnVerdict::Accept),
                "round {round}"
            );
        }
        // No wait until the fifth failure, then half a second more per failure.
        assert!(delays[..4].iter().all(|d| d.is_zero()), "{delays:?}");
        assert_eq!(delays[4], Duration::from_millis(500));
        assert_eq!(delays[11], Duration::from_millis(4000));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        let ev = events(&mut a);
        let attacks: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                AdmissionEvent::NameUnderAttack {
                    failures,
                    addresses,
                    delay,
                    ..
                } => Some((*failures, *addresses, *delay)),
                _ => None,
            })
            .collect();
        assert_eq!(attacks, [(5, 3, Duration::from_millis(500))], "logged once");
        // More failures: the wait stops growing at its cap.
        for n in 0..40u8 {
            a.login_failed(
                now,
                &alice,
                IpAddr::from([203, 0, 114, n]),
                Refusal::WrongPassword,
            );
        }
        assert_eq!(
            a.check_login(now, &alice, owner),
            Ok(Duration::from_secs(5))
        );
        // Other names are not affected, and the window's end forgets it.
        let bob: Name = "bob".parse().unwrap();
        assert_eq!(a.check_login(now, &bob, owner), Ok(Duration::ZERO));
        let later = now.after(Duration::from_secs(601));
        assert_eq!(a.check_login(later, &alice, owner), Ok(Duration::ZERO));
    }

    #[test]
    fn misbehaviour_adds_up_decays_and_ends_in_a_ban() {
        let mut a = Admission::new(AdmissionConfig::default(), vec![], vec![]);
        let bad = ip("2001:db8::1");
        let now = t0();
        for _ in 0..4 {
            a.misbehaved(now, bad, "bad frame", points::BAD_FRAME);
        }
        // 80 points, then 100 s later 70: still under the limit.
        let later = now.after(Duration::from_secs(100));
        a.misbehaved(later, bad, "bad frame", points::BAD_FRAME);
        assert_eq!(a.check_connection(later, bad), ConnVerdict::Accept);
        a.misbehaved(later, bad, "bad frame", points::BAD_FRAME);
        // The whole /64 is banned.
        assert_eq!(
            a.check_connection(later, ip("2001:db8::ffff")),
            ConnVerdict::Refuse
        );
        assert_eq!(a.bans(later).len(), 1);
        assert!(a.unban(&BanTarget::addr(bad)));
        assert_eq!(a.check_connection(later, bad), ConnVerdict::Accept);
    }

    #[test]
    fn bans_cover_keys_names_and_addresses_and_expire() {
        let alice: Name = "alice".parse().unwrap();
        let persisted = Ban {
            target: BanTarget::Node(id(1)),
            until_ms: None,
            reason: "operator".into(),
            at_ms: 1,
        };
        let mut a = Admission::new(AdmissionConfig::default(), vec![persisted], vec![]);
        let now = t0();
        let home = ip("127.0.0.1");
        assert_eq!(
            a.check_hello(now, &id(1), &alice, home),
            Err(Refusal::Banned { until_ms: None })
        );
        a.ban(
            now,
            BanTarget::Name(alice.clone()),
            Some(Duration::from_secs(10)),
            "test".into(),
        );
        assert_eq!(
            a.check_hello(now, &id(2), &alice, home),
            Err(Refusal::Banned {
                until_ms: Some(now.unix_ms + 10_000)
            })
        );
        let later = now.after(Duration::from_secs(11));
        assert!(a.check_hello(later, &id(2), &alice, home).is_ok());
        a.handle_timeout(later);
        assert_eq!(a.bans(later).len(), 1);
    }

    #[test]
    fn the_allowlist_admits_only_allowed_keys_and_trickles_stun_to_strangers() {
        let config = AdmissionConfig {
            policy: Policy::Allowlist,
            ..AdmissionConfig::default()
        };
        let mut a = Admission::new(config, vec![], vec![id(1)]);
        let now = t0();
        let bob: Name = "bob".parse().unwrap();
        assert!(a.check_hello(now, &id(1), &bob, ip("127.0.0.1")).is_ok());
        assert_eq!(
            a.check_hello(now, &id(2), &bob, ip("127.0.0.1")),
            Err(Refusal::NotAllowed)
        );
        let stranger: SocketAddr = "127.0.0.5:4000".parse().unwrap();
        let answered = (0..100)
            .filter(|_| a.check_stun(now, stranger).is_some())
            .count();
        assert_eq!(answered, 40);
        // A registered node's address gets its own full bucket, and is known.
        a.registered(ip("127.0.0.7"));
        let member: SocketAddr = "127.0.0.7:4000".parse().unwrap();
        assert_eq!(
            a.check_stun(now, member),
            Some(crate::stun_grid::Caller::Known)
        );
        assert_eq!(
            (0..99)
                .filter(|_| a.check_stun(now, member).is_some())
                .count(),
            39
        );
        a.left(ip("127.0.0.7"));
        assert_eq!(a.check_stun(now, member), None);
    }

    #[test]
    fn tables_stay_bounded_under_a_flood_of_addresses() {
        let config = AdmissionConfig {
            max_tracked: 1000,
            ..AdmissionConfig::default()
        };
        let mut a = Admission::new(config, vec![], vec![]);
        let now = t0();
        let alice: Name = "alice".parse().unwrap();
        for n in 0..50_000u32 {
            let addr = IpAddr::from(n.to_be_bytes());
            a.check_connection(now, addr);
            let _ = a.check_stun(now, SocketAddr::new(addr, 1));
            a.login_failed(now, &alice, addr, Refusal::WrongPassword);
            a.misbehaved(now, addr, "bad frame", 1);
            events(&mut a);
        }
        assert!(a.tracked() <= 6 * 1000, "{}", a.tracked());
        // The STUN table is full: strangers go unanswered, a registered
        // address is still answered.
        let stranger = SocketAddr::new(ip("127.0.0.8"), 1);
        assert_eq!(a.check_stun(now, stranger), None);
        a.registered(ip("127.0.0.9"));
        let member = SocketAddr::new(ip("127.0.0.9"), 1);
        assert_eq!(
            a.check_stun(now, member),
            Some(crate::stun_grid::Caller::Known)
        );
        // Idle buckets go once full again.
        a.handle_timeout(now.after(Duration::from_secs(30)));
        assert!(a.tracked() <= 3 * 1000, "{}", a.tracked());
    }

    #[test]
    fn connection_attempts_and_requests_are_rate_limited() {
        let mut a = Admission::new(AdmissionConfig::default(), vec![], vec![]);
        let now = t0();
        let flood = ip("127.0.0.66");
        let accepted = (0..100)
            .filter(|_| a.check_connection(now, flood) == ConnVerdict::Accept)
            .count();
        assert_eq!(accepted, 20);
        let later = now.after(Duration::from_secs(1));
        assert_eq!(a.check_connection(later, flood), ConnVerdict::Accept);
        let granted = (0..50).filter(|_| a.allow_request(now, id(3))).count();
        assert_eq!(granted, 10);
    }
}
