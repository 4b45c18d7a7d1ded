//! Throttling of authentication attempts, never a lockout.
//!
//! Each key has an allowance (GCRA, from `governor`): a burst, refilled at a
//! steady rate. An attempt that will cost a password hash uses one unit of
//! each of its keys *before* the hash runs (so a burst of concurrent
//! attempts cannot all slip in ahead of the count); a failed check of a
//! fast (HMAC) secret uses one afterwards. A key out of allowance is
//! refused with `Retry-After` until it refills.
//!
//! The keys are (client id, source) and source; for the password grant
//! also (username, source), and the username from sources that have never
//! signed in as that user. None is a client id alone: then anyone could
//! throttle the real client, which is the lockout this replaces. So the
//! right secret from a source that has not been failing always works, and
//! a user's password from a place they signed in from before does too.
//!
//! Memory: keys are 64-bit keyed hashes (SipHash under a per-process random
//! key, so attacker-chosen ids cannot collide on purpose or grow entries);
//! a background pruner drops keys whose allowance is full again and, past
//! `MAX_KEYS` per limiter, evicts the rest. Nothing is pruned on the request
//! path.
//!
//! Across a fleet (several authorities on one Redis) each process's
//! allowance stays what the request path asks; failures and sign-ins are
//! shared with the others asynchronously ([`super::throttle_share`]), in
//! the form of a [`Canon`]: a key's kind, a digest of its name and its
//! source. While that sharing is down each spend costs `expected_replicas`
//! units, so N replicas together still allow about one allowance.

use crate::config::{Allowance, Allowances};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::cell::Cell;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::throttle_share::{name_id, Canon, Op, Share, SIGNED_IN};

/// Where attempts come from: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so single addresses would be free to rotate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6((u128::from(v6) & !(u64::MAX as u128)).into())),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// What an allowance belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    ClientSource(&'a str, Source),
    Source(Source),
    /// A username from one source (password grant).
    UserSource(&'a str, Source),
    /// A username from sources it has never signed in from (see
    /// [`Throttle::familiar`]).
    Username(&'a str),
}

impl Key<'_> {
    /// Names digested with `key` (the fleet's, when shared).
    fn canon(&self, key: Option<&aws_lc_rs::hmac::Key>) -> Canon {
        match *self {
            Key::ClientSource(id, s) => Canon::of(0, name_id(key, id), Some(s.0)),
            Key::Source(s) => Canon::of(1, [0; 16], Some(s.0)),
            Key::UserSource(u, s) => Canon::of(2, name_id(key, u), Some(s.0)),
            Key::Username(u) => Canon::of(3, name_id(key, u), None),
        }
    }

    /// The source this key counts, if it counts one.
    pub fn source(&self) -> Option<Source> {
        match self {
            Key::ClientSource(_, s) | Key::Source(s) | Key::UserSource(_, s) => Some(*s),
            Key::Username(_) => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Key::ClientSource(..) => "client_source",
            Key::Source(_) => "source",
            Key::UserSource(..) => "username_source",
            Key::Username(_) => "username",
        }
    }
}

/// A refusal: which key, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub by: &'static str,
    pub retry_after: Duration,
}

impl Allowance {
    fn quota(self) -> Quota {
        let burst = NonZeroU32::new(self.burst.max(1)).expect("at least one");
        let period = (self.window / burst.get()).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst)
    }
}

/// Keys one limiter keeps at most; beyond this the pruner evicts.
pub const MAX_KEYS: usize = 100_000;

/// How long a (username, source) that signed in stays familiar.
pub const FAMILIAR_FOR: Duration = Duration::from_secs(30 * 86400);

thread_local! {
    /// Set while a check must not use any allowance (see [`Store`]).
    static PEEK: Cell<bool> = const { Cell::new(false) };
}

/// governor's DashMap store, plus a read-only mode: a check made with
/// `PEEK` set sees the key's state but never writes it, which is how we ask
/// "would one more attempt be allowed?" without spending anything.
#[derive(Default)]
struct Store {
    map: Arc<dashmap::DashMap<u64, InMemoryState>>,
}

fn read(s: &InMemoryState) -> Option<Nanos> {
    let prev = Cell::new(None);
    let _ = s.measure_and_replace(&NotKeyed::NonKey, |p| {
        prev.set(p);
        Err::<((), Nanos), ()>(())
    });
    prev.get()
}

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if PEEK.get() {
            let prev = self.map.get(key).and_then(|s| read(&s));
            return f(prev).map(|(t, _)| t);
        }
        if let Some(s) = self.map.get(key) {
            return s.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let s = self.map.entry(*key).or_default();
        s.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map
            .retain(|_, s| read(s).is_some_and(|t| t > drop_below));
        // Still too many live keys (a flood from very many sources): evict
        // those closest to a full allowance first, so the keys an attacker
        // has exhausted are the last to be forgotten.
        let excess = self.map.len().saturating_sub(MAX_KEYS);
        if excess > 0 {
            let mut by_tat: Vec<(Nanos, u64)> = self
                .map
                .iter()
                .map(|e| (read(e.value()).unwrap_or_default(), *e.key()))
                .collect();
            by_tat.sort_unstable();
            for (_, k) in by_tat.into_iter().take(excess) {
                self.map.remove(&k);
            }
        }
    }
    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One kind of key: governor's limiter, plus its map and emission interval
/// for refunds (which governor has no call for).
struct Limiter {
    gcra: RateLimiter<u64, Store, DefaultClock, NoOpMiddleware>,
    map: Arc<dashmap::DashMap<u64, InMemoryState>>,
    interval: Nanos,
    burst: u32,
    /// governor's time reference (taken as it takes its own, a moment
    /// earlier), for attempts charged from elsewhere.
    clock: DefaultClock,
    start: <DefaultClock as Clock>::Instant,
}

impl Limiter {
    fn new(a: Allowance, clock: &DefaultClock) -> Limiter {
        let store = Store::default();
        let map = store.map.clone();
        let quota = a.quota();
        let gcra = RateLimiter::new(quota, store, clock.clone());
        Limiter {
            interval: quota.replenish_interval().into(),
            gcra,
            map,
            burst: a.burst.max(1),
            clock: clock.clone(),
            start: clock.now(),
        }
    }

    /// Gives back `n` units (at most a burst). GCRA keeps a theoretical
    /// arrival time; moving it back by one interval undoes one check. It
    /// never grants more than the burst: governor treats a time in the
    /// past as "now".
    fn refund(&self, key: u64, n: u32) {
        if let Some(s) = self.map.get(&key) {
            let n = n.clamp(1, self.burst);
            let back = Nanos::from(u64::from(self.interval).saturating_mul(u64::from(n)));
            let _ = s.measure_and_replace(&NotKeyed::NonKey, |tat| match tat {
                Some(tat) => Ok(((), tat.saturating_sub(back))),
                None => Err(()),
            });
        }
    }

    /// Uses one unit spent elsewhere, past an exhausted allowance too (as
    /// debt: the key then refills later), up to `allowances` whole
    /// allowances ahead: a burst sent to every authority at once is paid
    /// for at each.
    fn charge(&self, key: u64, allowances: u32) {
        let now: Nanos = governor::clock::Reference::duration_since(&self.clock.now(), self.start);
        let t = u64::from(self.interval);
        let ahead = t
            .saturating_mul(u64::from(self.burst))
            .saturating_mul(u64::from(allowances.max(1)));
        let limit = Nanos::from(u64::from(now).saturating_add(ahead));
        let s = self.map.entry(key).or_default();
        let _ = s.measure_and_replace(&NotKeyed::NonKey, |tat| {
            let tat = tat.unwrap_or(now);
            let next = Nanos::from(u64::from(tat.max(now)).saturating_add(t));
            Ok::<_, ()>(((), next.min(limit).max(tat)))
        });
    }
}

/// What a [`Throttle::spend`] took of each key, to give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent(u32);

/// The limiters. Rebuilt (forgetting their state) only when the allowances change.
pub struct Throttle {
    pub allowances: Allowances,
    keys: std::collections::hash_map::RandomState,
    clock: DefaultClock,
    /// (username, source) pairs that signed in, and when last.
    familiar: dashmap::DashMap<u64, std::time::Instant>,
    client_source: Limiter,
    source: Limiter,
    username: Limiter,
    /// The fleet's channel, on a store that has one.
    share: Option<Arc<Share>>,
}

impl Throttle {
    pub fn new(allowances: Allowances, share: Option<Arc<Share>>) -> Throttle {
        let clock = DefaultClock::default();
        Throttle {
            allowances,
            keys: Default::default(),
            client_source: Limiter::new(allowances.per_client_source, &clock),
            source: Limiter::new(allowances.per_source, &clock),
            username: Limiter::new(allowances.per_username, &clock),
            clock,
            familiar: Default::default(),
            share,
        }
    }

    fn canon(&self, k: &Key<'_>) -> Canon {
        k.canon(self.share.as_deref().map(Share::key))
    }

    fn signed_in_canon(&self, username: &str, source: Source) -> Canon {
        let key = self.share.as_deref().map(Share::key);
        Canon::of(SIGNED_IN, name_id(key, username), Some(source.0))
    }

    fn limiter(&self, c: &Canon) -> Option<(&Limiter, u64)> {
        let l = match c.kind() {
            0 | 2 => &self.client_source,
            1 => &self.source,
            3 => &self.username,
            _ => return None,
        };
        Some((l, self.keys.hash_one(c)))
    }

    /// Units one attempt costs: 1, or `expected_replicas` while the fleet's
    /// failures cannot be shared (the others' are not seen, nor ours by them).
    fn cost(&self) -> u32 {
        match &self.share {
            Some(s) if !s.healthy() => self.allowances.expected_replicas.max(1),
            _ => 1,
        }
    }

    /// Whether `username` signed in from `source` lately. A per-username
    /// allowance alone would let anyone lock a user out by failing for
    /// them; so a familiar source is held only to its own (username,
    /// source) allowance, and the per-username one throttles the sources a
    /// distributed guesser uses, which have never signed in as that user.
    pub fn familiar(&self, username: &str, source: Source) -> bool {
        let c = self.signed_in_canon(username, source);
        self.familiar
            .get(&self.keys.hash_one(c))
            .is_some_and(|t| t.elapsed() < FAMILIAR_FOR)
    }

    /// Records a sign-in of `username` from `source`, here and (shared)
    /// at the other authorities.
    pub fn signed_in(&self, username: &str, source: Source) {
        let c = self.signed_in_canon(username, source);
        self.remember(&c);
        if let Some(s) = &self.share {
            s.send(c, Op::Spent);
        }
    }

    /// Bounded: past `MAX_KEYS` pairs, new ones are not remembered until a
    /// prune.
    fn remember(&self, c: &Canon) {
        let k = self.keys.hash_one(c);
        if self.familiar.len() < MAX_KEYS || self.familiar.contains_key(&k) {
            self.familiar.insert(k, std::time::Instant::now());
        }
    }

    fn one(&self, c: &Canon, k: &Key<'_>, n: u32) -> Result<(), Throttled> {
        let Some((l, key)) = self.limiter(c) else {
            return Ok(());
        };
        let n = NonZeroU32::new(n.clamp(1, l.burst)).expect("at least one");
        let refused = |not_until: governor::NotUntil<_>| Throttled {
            by: k.label(),
            retry_after: not_until.wait_time_from(self.clock.now()),
        };
        match l.gcra.check_key_n(&key, n) {
            Ok(r) => r.map_err(refused),
            // n is at most the burst: never.
            Err(_) => Err(Throttled {
                by: k.label(),
                retry_after: self.allowances.per_source.window,
            }),
        }
    }

    /// Refuses if any key is out of allowance (saying the longest wait);
    /// uses none.
    pub fn check(&self, keys: &[Key<'_>]) -> Result<(), Throttled> {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                PEEK.set(false);
            }
        }
        PEEK.set(true);
        let _reset = Reset;
        self.each(keys, self.cost(), false)
    }

    /// Uses one attempt of every key's allowance, and shares it with the
    /// fleet; refuses if any was out (saying the longest wait).
    pub fn spend(&self, keys: &[Key<'_>]) -> Result<Spent, Throttled> {
        let n = self.cost();
        self.each(keys, n, true).map(|()| Spent(n))
    }

    /// A failed attempt whose allowance was not spent beforehand (a fast
    /// secret's): spent now.
    pub fn fail(&self, keys: &[Key<'_>]) {
        let _ = self.spend(keys);
    }

    /// Applies what another authority shared: an attempt uses one unit of
    /// its key (past an exhausted allowance as debt, up to
    /// `expected_replicas` allowances), a refund gives one back, a sign-in
    /// makes its pair familiar.
    pub fn apply_shared(&self, c: &Canon, op: Op) {
        if c.kind() == SIGNED_IN {
            return self.remember(c);
        }
        if let Some((l, key)) = self.limiter(c) {
            match op {
                Op::Spent => l.charge(key, self.allowances.expected_replicas),
                Op::Refunded => l.refund(key, 1),
            }
        }
    }

    fn each(&self, keys: &[Key<'_>], n: u32, share: bool) -> Result<(), Throttled> {
        let mut refused: Option<Throttled> = None;
        for k in keys {
            let c = self.canon(k);
            match self.one(&c, k, n) {
                Ok(()) => {
                    if let Some(s) = self.share.as_ref().filter(|_| share) {
                        s.send(c, Op::Spent);
                    }
                }
                Err(t) => {
                    if refused.is_none_or(|r| t.retry_after > r.retry_after) {
                        refused = Some(t);
                    }
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Gives back what a [`Throttle::spend`] took, here and at the fleet,
    /// for an attempt that succeeded: only failures stay counted, so a
    /// busy client (or an office of users behind one address) is never
    /// throttled for succeeding, while a burst is still counted while its
    /// hashes run.
    pub fn refund(&self, keys: &[Key<'_>], spent: Spent) {
        for k in keys {
            let c = self.canon(k);
            if let Some((l, key)) = self.limiter(&c) {
                l.refund(key, spent.0);
                if let Some(s) = &self.share {
                    s.send(c, Op::Refunded);
                }
            }
        }
    }

    /// Drops keys whose allowance is full again (and evicts past the cap).
    /// Run off the request path.
    pub fn prune(&self) {
        for l in [&self.client_source, &self.source, &self.username] {
            l.gcra.retain_recent();
            l.gcra.shrink_to_fit();
        }
        self.familiar.retain(|_, t| t.elapsed() < FAMILIAR_FOR);
        self.familiar.shrink_to_fit();
    }

    /// Keys held, all limiters together.
    pub fn len(&self) -> usize {
        self.client_source.gcra.len() + self.source.gcra.len() + self.username.gcra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowances(burst: u32) -> Allowances {
        let a = Allowance {
            burst,
            window: Duration::from_secs(60),
        };
        Allowances {
            per_client_source: a,
            per_source: Allowance {
                burst: burst * 3,
                ..a
            },
            per_username: a,
            expected_replicas: 1,
        }
    }

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_v4_is_v4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.1"), src("192.0.2.1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_peek_never_spends_and_a_spend_is_counted_once() {
        let t = Throttle::new(allowances(3), None);
        let k = [Key::ClientSource("billing", src("192.0.2.1"))];
        for _ in 0..100 {
            assert_eq!(t.check(&k), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(t.spend(&k), Ok(Spent(1)));
        }
        let refused = t.check(&k).unwrap_err();
        assert_eq!(refused.by, "client_source");
        assert!(
            refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(20)
        );
        assert!(t.spend(&k).is_err());
    }

    #[test]
    fn a_refund_undoes_a_spend_and_never_adds_to_the_burst() {
        let t = Throttle::new(allowances(3), None);
        let k = [Key::Username("alice")];
        // A hundred successes: spent and refunded each time.
        for _ in 0..100 {
            assert_eq!(t.spend(&k), Ok(Spent(1)));
            t.refund(&k, Spent(1));
        }
        // Refunds on a full allowance do not raise it above the burst.
        for _ in 0..10 {
            t.refund(&k, Spent(1));
        }
        for _ in 0..3 {
            assert_eq!(t.spend(&k), Ok(Spent(1)));
        }
        assert_eq!(t.spend(&k).unwrap_err().by, "username");
    }

    #[test]
    fn failures_from_one_source_never_throttle_another() {
        let t = Throttle::new(allowances(3), None);
        let (bad, good) = (src("192.0.2.1"), src("198.51.100.7"));
        for _ in 0..10 {
            let _ = t.spend(&[Key::ClientSource("billing", bad), Key::Source(bad)]);
        }
        assert!(t.check(&[Key::ClientSource("billing", bad)]).is_err());
        assert_eq!(
            t.check(&[Key::ClientSource("billing", good), Key::Source(good)]),
            Ok(())
        );
    }

    #[test]
    fn a_user_under_distributed_guessing_still_signs_in_from_a_familiar_source() {
        let t = Throttle::new(allowances(3), None);
        let home = src("192.0.2.1");
        t.signed_in("alice", home);
        for i in 0..10 {
            let s = src(&format!("198.51.100.{i}"));
            let _ = t.spend(&[Key::UserSource("alice", s), Key::Username("alice")]);
        }
        // A new source is throttled on the username...
        let fresh = src("203.0.113.5");
        assert!(!t.familiar("alice", fresh));
        assert_eq!(
            t.check(&[Key::UserSource("alice", fresh), Key::Username("alice")])
                .unwrap_err()
                .by,
            "username"
        );
        // ...home is not asked about it.
        assert!(t.familiar("alice", home));
        assert_eq!(t.check(&[Key::UserSource("alice", home)]), Ok(()));
    }

    #[test]
    fn the_longest_wait_is_the_one_reported() {
        let t = Throttle::new(
            Allowances {
                per_source: Allowance {
                    burst: 1,
                    window: Duration::from_secs(3600),
                },
                ..allowances(1)
            },
            None,
        );
        let s = src("192.0.2.1");
        let keys = [Key::ClientSource("c", s), Key::Source(s)];
        assert_eq!(t.spend(&keys), Ok(Spent(1)));
        let r = t.check(&keys).unwrap_err();
        assert_eq!(r.by, "source");
        assert!(r.retry_after > Duration::from_secs(60), "{r:?}");
    }

    #[test]
    fn past_the_cap_the_most_throttled_keys_are_kept() {
        let t = Throttle::new(allowances(3), None);
        let victim = [Key::Username("alice")];
        for _ in 0..3 {
            let _ = t.spend(&victim);
        }
        // A spray of fresh keys pushes the limiter past its cap.
        for i in 0..MAX_KEYS + 10 {
            let _ = t.spend(&[Key::Username(&format!("spray-{i}"))]);
        }
        assert_eq!(t.username.gcra.len(), MAX_KEYS + 11);
        t.prune();
        assert_eq!(t.username.gcra.len(), MAX_KEYS);
        assert!(
            t.check(&victim).is_err(),
            "the exhausted key survived eviction"
        );
    }

    #[test]
    fn full_allowances_are_pruned() {
        let t = Throttle::new(
            Allowances {
                per_client_source: Allowance {
                    burst: 1,
                    window: Duration::from_millis(1),
                },
                ..allowances(3)
            },
            None,
        );
        for i in 0..1000 {
            let _ = t.spend(&[Key::ClientSource(&i.to_string(), src("192.0.2.1"))]);
        }
        assert_eq!(t.client_source.gcra.len(), 1000);
        std::thread::sleep(Duration::from_millis(5));
        t.prune();
        assert_eq!(t.client_source.gcra.len(), 0);
    }

    #[test]
    fn while_sharing_is_down_each_attempt_costs_expected_replicas() {
        let share = Share::new(&crate::metrics::Metrics::new(), b"fleet");
        assert!(!share.healthy(), "not listening yet");
        let t = Throttle::new(
            Allowances {
                expected_replicas: 3,
                ..allowances(6)
            },
            Some(share),
        );
        let k = [Key::ClientSource("c", src("192.0.2.1"))];
        assert_eq!(t.spend(&k), Ok(Spent(3)));
        assert_eq!(t.spend(&k), Ok(Spent(3)));
        assert!(t.check(&k).is_err(), "6 ÷ 3 = 2 attempts");
        t.refund(&k, Spent(3));
        assert_eq!(t.check(&k), Ok(()), "a refund gives back what was spent");
    }

    #[test]
    fn a_refund_never_gives_back_more_than_a_burst() {
        let t = Throttle::new(allowances(2), None);
        let k = [Key::Username("alice")];
        let _ = t.spend(&k);
        let _ = t.spend(&k);
        assert!(t.check(&k).is_err());
        // More than was spent, more than the burst: full, never beyond.
        t.refund(&k, Spent(50));
        assert_eq!(t.spend(&k), Ok(Spent(1)));
        assert_eq!(t.spend(&k), Ok(Spent(1)));
        assert!(t.check(&k).is_err());
    }

    /// Two authorities' attempts, each applied at the other.
    fn relay(from: &Throttle, to: &Throttle, keys: &[Key<'_>], op: Op) {
        for k in keys {
            let mut wire = Vec::new();
            k.canon(None).encode(op, &mut wire);
            let (c, op) = Canon::decode(&wire).unwrap();
            to.apply_shared(&c, op);
        }
        let _ = from;
    }

    #[test]
    fn what_another_authority_shares_is_counted_here() {
        let (here, there) = (
            Throttle::new(allowances(3), None),
            Throttle::new(allowances(3), None),
        );
        let s = src("2001:db8::7");
        let keys = [Key::UserSource("alice", s), Key::Username("alice")];
        for _ in 0..3 {
            let _ = there.spend(&keys);
            relay(&there, &here, &keys, Op::Spent);
        }
        assert_eq!(here.check(&keys[..1]).unwrap_err().by, "username_source");
        assert_eq!(here.check(&keys[1..]).unwrap_err().by, "username");
        assert!(here.check(&[Key::Username("bob")]).is_ok());
        // A refund there gives one back here.
        relay(&there, &here, &keys[1..], Op::Refunded);
        assert_eq!(here.check(&keys[1..]), Ok(()));
        // A sign-in there makes the pair familiar here.
        let mut wire = Vec::new();
        Canon::of(SIGNED_IN, name_id(None, "alice"), Some(s.0)).encode(Op::Spent, &mut wire);
        let (c, op) = Canon::decode(&wire).unwrap();
        here.apply_shared(&c, op);
        assert!(here.familiar("alice", s));
        assert!(!here.familiar("alice", src("192.0.2.1")));
    }

    /// A burst sent to every authority at once: each spends its whole
    /// allowance before the others' records arrive. Applied late, they are
    /// carried as debt, so the fleet then waits as long as one authority
    /// would have for all of them, not one window.
    #[test]
    fn a_burst_at_every_authority_at_once_is_paid_for_at_each() {
        let a = Allowances {
            expected_replicas: 3,
            ..allowances(3)
        };
        let fleet = [
            Throttle::new(a, None),
            Throttle::new(a, None),
            Throttle::new(a, None),
        ];
        let k = [Key::ClientSource("billing", src("192.0.2.9"))];
        for t in &fleet {
            for _ in 0..3 {
                assert_eq!(t.spend(&k), Ok(Spent(1)));
            }
        }
        for (i, from) in fleet.iter().enumerate() {
            for (j, to) in fleet.iter().enumerate() {
                if i != j {
                    for _ in 0..3 {
                        relay(from, to, &k, Op::Spent);
                    }
                }
            }
        }
        // Nine attempts against an allowance of three a minute (one per
        // 20 s): each authority refuses until the ninth has been paid off
        // less the burst (7 × 20 s), not for one interval (20 s).
        for t in &fleet {
            let wait = t.check(&k).unwrap_err().retry_after;
            assert!(wait > Duration::from_secs(130), "{wait:?}");
            assert!(wait <= Duration::from_secs(140), "{wait:?}");
        }
        // Debt is capped at expected_replicas allowances (nine units).
        for _ in 0..100 {
            relay(&fleet[1], &fleet[0], &k, Op::Spent);
        }
        let wait = fleet[0].check(&k).unwrap_err().retry_after;
        assert!(wait <= Duration::from_secs(140), "{wait:?}");
    }
}
