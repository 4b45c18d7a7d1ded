//! Recently verified client secrets, so a service that fetches tokens with a
//! human-chosen (argon2id) secret pays for the hash once per `ttl`, not per
//! request; and concurrent checks of the same secret share one hash.
//!
//! Entries are keyed by HMAC-SHA256, under a key made at start-up and never
//! stored, of (client id, the stored hash's fingerprint, the presented
//! secret): the secret itself is never kept, a cache dump reveals nothing,
//! and a changed secret (new stored hash) can never match an old entry.
//! Bounded: at most `MAX_ENTRIES`; when full, checks simply go uncached.

use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Entries held at most.
pub const MAX_ENTRIES: usize = 10_000;

/// A pending entry older than this belongs to a check that will never
/// finish (every check has a deadline far shorter).
const PENDING_FOR: Duration = Duration::from_secs(60);

/// A slot in use; settles it when dropped.
pub struct Held<'a> {
    cache: &'a VerifiedSecrets,
    key: SlotKey,
    slot: Arc<Slot>,
}

impl std::ops::Deref for Held<'_> {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.cache.settle(&self.key, &self.slot);
    }
}

/// One (client, stored hash, secret): pending while a check runs, then
/// verified until it expires. Mismatches are removed at once.
pub struct Slot {
    created: Instant,
    result: OnceCell<bool>,
}

impl Slot {
    /// The result of the check for this secret: computed by the first
    /// caller with `verify`, awaited by the others.
    pub async fn get_or_verify<F, Fut, E>(&self, verify: F) -> Result<bool, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bool, E>>,
    {
        self.result.get_or_try_init(verify).await.copied()
    }
}

pub struct VerifiedSecrets {
    key: aws_lc_rs::hmac::Key,
    slots: DashMap<[u8; 32], Arc<Slot>>,
}

impl Default for VerifiedSecrets {
    fn default() -> Self {
        let mut k = [0u8; 32];
        aws_lc_rs::rand::fill(&mut k).expect("system randomness");
        VerifiedSecrets {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k),
            slots: DashMap::new(),
        }
    }
}

/// Which slot a presented secret maps to.
pub type SlotKey = [u8; 32];

impl VerifiedSecrets {
    pub fn key(&self, client_id: &str, fingerprint: &[u8], secret: &[u8]) -> SlotKey {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        for part in [client_id.as_bytes(), fingerprint] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part);
        }
        ctx.update(secret);
        ctx.sign().as_ref().try_into().expect("32 bytes")
    }

    /// The slot for `key`, fresh if the old one expired; `None` when the
    /// cache is full (check without it). Held until dropped, which settles
    /// it (even when the request is cancelled mid-check).
    pub fn slot(&self, key: &SlotKey, ttl: Duration) -> Option<Held<'_>> {
        self.raw_slot(key, ttl).map(|slot| Held {
            cache: self,
            key: *key,
            slot,
        })
    }

    fn raw_slot(&self, key: &SlotKey, ttl: Duration) -> Option<Arc<Slot>> {
        if ttl.is_zero() {
            return None;
        }
        let fresh = || {
            Arc::new(Slot {
                created: Instant::now(),
                result: OnceCell::new(),
            })
        };
        if let Some(s) = self.slots.get(key) {
            if s.created.elapsed() < ttl {
                return Some(s.clone());
            }
        }
        if self.slots.len() >= MAX_ENTRIES && !self.slots.contains_key(key) {
            return None;
        }
        let mut e = self.slots.entry(*key).or_insert_with(fresh);
        if e.created.elapsed() >= ttl {
            *e = fresh();
        }
        Some(e.clone())
    }

    /// Forgets `slot` unless it verified (a mismatch, or a check that never
    /// ran), if it is still the one under `key` and nobody else holds it.
    fn settle(&self, key: &SlotKey, slot: &Arc<Slot>) {
        if slot.result.get() != Some(&true) {
            self.slots.remove_if(key, |_, s| Arc::ptr_eq(s, slot));
        }
    }

    /// Drops expired entries, and pending ones whose check has long gone
    /// (its request was cancelled); run off the request path.
    pub fn prune(&self, ttl: Duration) {
        self.slots.retain(|_, s| {
            let age = s.created.elapsed();
            match s.result.get() {
                Some(true) => age < ttl,
                Some(false) => false,
                None => age < ttl.min(PENDING_FOR),
            }
        });
        self.slots.shrink_to_fit();
    }

    /// Forgets everything (a reload changed some client's secret).
    pub fn clear(&self) {
        self.slots.clear();
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_verified_secret_is_remembered_and_a_wrong_one_is_not() {
        let c = VerifiedSecrets::default();
        let ttl = Duration::from_secs(60);
        let right = c.key("svc", b"fp", b"right");
        let s = c.slot(&right, ttl).unwrap();
        assert_eq!(
            s.get_or_verify(|| async { Ok::<_, ()>(true) }).await,
            Ok(true)
        );
        drop(s);
        // Remembered: the second check does not run.
        let s2 = c.slot(&right, ttl).unwrap();
        assert_eq!(
            s2.get_or_verify(|| async { panic!("not checked again") })
                .await,
            Ok::<_, ()>(true)
        );
        let wrong = c.key("svc", b"fp", b"wrong");
        let s = c.slot(&wrong, ttl).unwrap();
        assert_eq!(
            s.get_or_verify(|| async { Ok::<_, ()>(false) }).await,
            Ok(false)
        );
        drop(s);
        assert_eq!(c.len(), 1);
        drop(s2);
        // A check whose request is cancelled leaves nothing behind.
        let gone = c.key("svc", b"fp", b"cancelled");
        let s = c.slot(&gone, ttl).unwrap();
        let pending = s.get_or_verify(std::future::pending::<Result<bool, ()>>);
        assert!(tokio::time::timeout(Duration::from_millis(10), pending)
            .await
            .is_err());
        drop(s);
        assert_eq!(c.len(), 1);
        // Another stored hash, another client or another secret: another key.
        assert_ne!(right, c.key("svc", b"fp2", b"right"));
        assert_ne!(right, c.key("svc2", b"fp", b"right"));
        // No caching at all with a zero ttl.
        assert!(c.slot(&right, Duration::ZERO).is_none());
    }

    #[tokio::test]
    async fn concurrent_checks_of_one_secret_share_one_verification() {
        let c = Arc::new(VerifiedSecrets::default());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let k = c.key("svc", b"fp", b"s");
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                tokio::spawn(async move {
                    let s = c.slot(&k, Duration::from_secs(60)).unwrap();
                    s.get_or_verify(|| async {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(true)
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(true));
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
