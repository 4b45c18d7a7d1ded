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

use crate::config::{Allowance, Allowances};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

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
}

impl Limiter {
    fn new(a: Allowance, clock: &DefaultClock) -> Limiter {
        let store = Store::default();
        let map = store.map.clone();
        let quota = a.quota();
        Limiter {
            interval: quota.replenish_interval().into(),
            gcra: RateLimiter::new(quota, store, clock.clone()),
            map,
        }
    }

    /// Gives back one unit. GCRA keeps a theoretical arrival time; moving it
    /// back by one interval undoes one check. It never grants more than
    /// the burst: governor treats a time in the past as "now".
    fn refund(&self, key: u64) {
        if let Some(s) = self.map.get(&key) {
            let _ = s.measure_and_replace(&NotKeyed::NonKey, |tat| match tat {
                Some(tat) => Ok(((), tat.saturating_sub(self.interval))),
                None => Err(()),
            });
        }
    }
}

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
}

impl Throttle {
    pub fn new(allowances: Allowances) -> Throttle {
        let clock = DefaultClock::default();
        Throttle {
            allowances,
            keys: Default::default(),
            client_source: Limiter::new(allowances.per_client_source, &clock),
            source: Limiter::new(allowances.per_source, &clock),
            username: Limiter::new(allowances.per_username, &clock),
            clock,
            familiar: Default::default(),
        }
    }

    fn limiter(&self, k: &Key<'_>) -> (&Limiter, u64) {
        let mut h = self.keys.build_hasher();
        // The label keeps kinds sharing a limiter apart.
        k.label().hash(&mut h);
        let l = match k {
            Key::ClientSource(id, s) | Key::UserSource(id, s) => {
                id.hash(&mut h);
                s.hash(&mut h);
                &self.client_source
            }
            Key::Source(s) => {
                s.hash(&mut h);
                &self.source
            }
            Key::Username(u) => {
                u.hash(&mut h);
                &self.username
            }
        };
        (l, h.finish())
    }

    fn pair(&self, username: &str, source: Source) -> u64 {
        self.keys.hash_one(("familiar", username, source))
    }

    /// Whether `username` signed in from `source` lately. A per-username
    /// allowance alone would let anyone lock a user out by failing for
    /// them; so a familiar source is held only to its own (username,
    /// source) allowance, and the per-username one throttles the sources a
    /// distributed guesser uses, which have never signed in as that user.
    pub fn familiar(&self, username: &str, source: Source) -> bool {
        self.familiar
            .get(&self.pair(username, source))
            .is_some_and(|t| t.elapsed() < FAMILIAR_FOR)
    }

    /// Records a sign-in of `username` from `source` (bounded: past
    /// `MAX_KEYS` pairs, new ones are not remembered until a prune).
    pub fn signed_in(&self, username: &str, source: Source) {
        let k = self.pair(username, source);
        if self.familiar.len() < MAX_KEYS || self.familiar.contains_key(&k) {
            self.familiar.insert(k, std::time::Instant::now());
        }
    }

    fn one(&self, k: &Key<'_>) -> Result<(), Throttled> {
        let (l, key) = self.limiter(k);
        l.gcra.check_key(&key).map_err(|not_until| Throttled {
            by: k.label(),
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
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
        self.each(keys)
    }

    /// Uses one unit of every key's allowance; refuses if any was out
    /// (saying the longest wait).
    pub fn spend(&self, keys: &[Key<'_>]) -> Result<(), Throttled> {
        self.each(keys)
    }

    fn each(&self, keys: &[Key<'_>]) -> Result<(), Throttled> {
        let mut refused: Option<Throttled> = None;
        for k in keys {
            if let Err(t) = self.one(k) {
                if refused.is_none_or(|r| t.retry_after > r.retry_after) {
                    refused = Some(t);
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Gives back what a [`Throttle::spend`] took, for an attempt that
    /// succeeded: only failures stay counted, so a busy client (or an
    /// office of users behind one address) is never throttled for
    /// succeeding, while a burst is still counted while its hashes run.
    pub fn refund(&self, keys: &[Key<'_>]) {
        for k in keys {
            let (l, key) = self.limiter(k);
            l.refund(key);
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
        let t = Throttle::new(allowances(3));
        let k = [Key::ClientSource("billing", src("192.0.2.1"))];
        for _ in 0..100 {
            assert_eq!(t.check(&k), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(t.spend(&k), Ok(()));
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
        let t = Throttle::new(allowances(3));
        let k = [Key::Username("alice")];
        // A hundred successes: spent and refunded each time.
        for _ in 0..100 {
            assert_eq!(t.spend(&k), Ok(()));
            t.refund(&k);
        }
        // Refunds on a full allowance do not raise it above the burst.
        for _ in 0..10 {
            t.refund(&k);
        }
        for _ in 0..3 {
            assert_eq!(t.spend(&k), Ok(()));
        }
        assert_eq!(t.spend(&k).unwrap_err().by, "username");
    }

    #[test]
    fn failures_from_one_source_never_throttle_another() {
        let t = Throttle::new(allowances(3));
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
        let t = Throttle::new(allowances(3));
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
        let t = Throttle::new(Allowances {
            per_source: Allowance {
                burst: 1,
                window: Duration::from_secs(3600),
            },
            ..allowances(1)
        });
        let s = src("192.0.2.1");
        let keys = [Key::ClientSource("c", s), Key::Source(s)];
        assert_eq!(t.spend(&keys), Ok(()));
        let r = t.check(&keys).unwrap_err();
        assert_eq!(r.by, "source");
        assert!(r.retry_after > Duration::from_secs(60), "{r:?}");
    }

    #[test]
    fn past_the_cap_the_most_throttled_keys_are_kept() {
        let t = Throttle::new(allowances(3));
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
        let t = Throttle::new(Allowances {
            per_client_source: Allowance {
                burst: 1,
                window: Duration::from_millis(1),
            },
            ..allowances(3)
        });
        for i in 0..1000 {
            let _ = t.spend(&[Key::ClientSource(&i.to_string(), src("192.0.2.1"))]);
        }
        assert_eq!(t.client_source.gcra.len(), 1000);
        std::thread::sleep(Duration::from_millis(5));
        t.prune();
        assert_eq!(t.client_source.gcra.len(), 0);
    }
}
