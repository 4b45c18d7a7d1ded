//! The throttles of a fleet of authorities, shared through the store.
//!
//! Each authority's allowance stays authoritative on the request path (no
//! round trip per attempt). What it counts is queued here and broadcast in
//! batches on the store's channel: an attempt as it is spent (before its
//! hash runs, so a burst sent to every authority at once is seen by all
//! within a round trip), its refund when it succeeded, and sign-ins that
//! make a source familiar. What the others broadcast is applied to this
//! process's limiters, carried as debt past an exhausted allowance (up to
//! `expected_replicas` allowances), so N authorities give about one
//! allowance of guesses, not N. Broadcasts are never stored: a throttle is
//! a hint that fades within its window.
//!
//! Messages are authenticated (HMAC-SHA256, truncated to 16 bytes) with a
//! key derived from the authorities' Redis password and key prefix, and
//! names (client ids, usernames) travel only as keyed digests: another
//! Redis user who may read or publish on the channel can neither forge
//! attempts (locking users out, or making a source familiar) nor read
//! names off it.
//!
//! While sharing is down (the store unreachable, an ACL without the
//! channel, the subscription silent past a ping, or the queue overflowing)
//! every attempt costs `expected_replicas` units instead
//! (see the throttle): each authority then allows its share.
//!
//! Bounds: at most [`QUEUE`] records wait to be sent (more are dropped and
//! counted); a message carries at most [`MAX_BATCH`] records, and one of
//! any other shape or with a wrong tag is passed over.

use super::App;
use crate::store::Store;
use aws_lc_rs::hmac;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A key as the fleet names it: its kind, a 16-byte digest of its name
/// (client id or username; keyed when shared) and its source (tag 0, 4 or
/// 6, then the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Canon {
    kind: u8,
    id: [u8; 16],
    source: [u8; 17],
}

/// Bytes of an encoded record: the kind (its top bit set for a refund),
/// the name's digest, the source.
pub const CANON_LEN: usize = 34;

/// The [`Canon`] kind of a sign-in (a familiar (username, source) pair).
pub const SIGNED_IN: u8 = 4;

const REFUND: u8 = 0x80;

/// What one record says of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// An attempt spent (or a sign-in, for [`SIGNED_IN`]).
    Spent,
    /// An attempt given back (it succeeded).
    Refunded,
}

impl Canon {
    pub fn kind(&self) -> u8 {
        self.kind
    }

    pub fn encode(&self, op: Op, out: &mut Vec<u8>) {
        out.push(match op {
            Op::Spent => self.kind,
            Op::Refunded => self.kind | REFUND,
        });
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.source);
    }

    /// `None` for a kind or source tag this valet does not know (a newer
    /// peer's): passed over, never guessed at.
    pub fn decode(b: &[u8]) -> Option<(Canon, Op)> {
        let b: &[u8; CANON_LEN] = b.try_into().ok()?;
        let op = if b[0] & REFUND != 0 {
            Op::Refunded
        } else {
            Op::Spent
        };
        let c = Canon {
            kind: b[0] & !REFUND,
            id: b[1..17].try_into().ok()?,
            source: b[17..].try_into().ok()?,
        };
        let sourced = matches!(c.source[0], 4 | 6);
        let ok = match c.kind {
            0..=2 => sourced,
            SIGNED_IN => sourced && op == Op::Spent,
            3 => c.source == [0; 17],
            _ => false,
        };
        ok.then_some((c, op))
    }

    /// `kind`: 0 (client id, source), 1 (source), 2 (username, source),
    /// 3 (username), [`SIGNED_IN`]; `id` from [`name_id`]; `source` as the
    /// throttle groups it.
    pub fn of(kind: u8, id: [u8; 16], source: Option<IpAddr>) -> Canon {
        let mut src = [0u8; 17];
        match source {
            Some(IpAddr::V4(ip)) => {
                src[0] = 4;
                src[1..5].copy_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                src[0] = 6;
                src[1..].copy_from_slice(&ip.octets());
            }
            None => {}
        }
        Canon {
            kind,
            id,
            source: src,
        }
    }
}

/// A name's 16-byte digest: keyed with the fleet's key when shared, a plain
/// SHA-256 otherwise (then it is only hashed again in this process).
pub fn name_id(key: Option<&hmac::Key>, name: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    match key {
        Some(k) => id.copy_from_slice(&hmac::sign(k, name.as_bytes()).as_ref()[..16]),
        None => id.copy_from_slice(
            &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes()).as_ref()[..16],
        ),
    }
    id
}

/// The store channel the authorities share attempts on.
pub const CHANNEL: &str = "throttle";
/// Records waiting to be sent, at most.
pub const QUEUE: usize = 4096;
/// Records in one message, at most.
pub const MAX_BATCH: usize = 256;
/// A message: this tag, the sender's origin, records, then the MAC.
const MAGIC: &[u8; 4] = b"vth2";
const HEADER: usize = 4 + 8;
const MAC: usize = 16;
/// A subscription silent this long is pinged; an unanswered ping ends it.
const PING_AFTER: Duration = Duration::from_secs(10);

pub struct Share {
    tx: SyncSender<(Canon, Op)>,
    rx: Mutex<Option<Receiver<(Canon, Op)>>>,
    /// Authenticates messages and keys the names' digests.
    key: hmac::Key,
    /// This process, so it passes over its own messages.
    origin: [u8; 8],
    /// Subscribed to the channel.
    listening: AtomicBool,
    /// The last broadcast went through (or none failed since subscribing).
    sending: AtomicBool,
    /// The queue was full: records were lost until it drains.
    overflow: AtomicBool,
    stop: AtomicBool,
    gauge: prometheus::IntGauge,
    records: prometheus::IntCounterVec,
}

impl Share {
    /// `secret`: what every authority of the fleet, and no one else, holds
    /// (their Redis password and key prefix).
    pub fn new(metrics: &crate::metrics::Metrics, secret: &[u8]) -> Arc<Share> {
        let (tx, rx) = sync_channel(QUEUE);
        let mut origin = [0u8; 8];
        aws_lc_rs::rand::fill(&mut origin).expect("system randomness");
        let derive = hmac::Key::new(hmac::HMAC_SHA256, b"valet throttle share v2");
        let key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&derive, secret).as_ref());
        Arc::new(Share {
            tx,
            rx: Mutex::new(Some(rx)),
            key,
            origin,
            listening: AtomicBool::new(false),
            sending: AtomicBool::new(true),
            overflow: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            gauge: metrics.throttle_shared.clone(),
            records: metrics.throttle_shared_records.clone(),
        })
    }

    pub fn key(&self) -> &hmac::Key {
        &self.key
    }

    /// Whether this process's attempts reach the others and theirs reach it.
    pub fn healthy(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
            && self.sending.load(Ordering::Relaxed)
            && !self.overflow.load(Ordering::Relaxed)
    }

    /// Queues a record for the others; never waits (a full queue drops it
    /// and counts this process as not sharing until it drains).
    pub fn send(&self, c: Canon, op: Op) {
        if self.tx.try_send((c, op)).is_err() {
            self.count("dropped", 1);
            self.set(&self.overflow, true);
        }
    }

    fn count(&self, direction: &str, n: usize) {
        self.records
            .with_label_values(&[direction])
            .inc_by(n as u64);
    }

    fn set(&self, flag: &AtomicBool, to: bool) {
        let was = self.healthy();
        flag.store(to, Ordering::Relaxed);
        let now = self.healthy();
        self.gauge.set(i64::from(now));
        if was != now {
            if now {
                tracing::info!("failed attempts are shared with the other authorities again");
            } else {
                tracing::warn!(
                    "failed attempts cannot be shared through the store: each authority \
                     now allows its allowance divided by expected_replicas"
                );
            }
        }
    }

    /// Starts the sender and the listener (threads: the store's calls
    /// block); both end with [`Share::stop`] or when `app` is gone.
    pub fn start(self: &Arc<Self>, store: Arc<dyn Store>, app: Weak<App>) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let (share, s) = (self.clone(), store.clone());
        std::thread::Builder::new()
            .name("valet-throttle-send".into())
            .spawn(move || share.send_loop(&*s, rx))
            .expect("a thread");
        let share = self.clone();
        std::thread::Builder::new()
            .name("valet-throttle-listen".into())
            .spawn(move || share.listen_loop(&*store, app))
            .expect("a thread");
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn send_loop(&self, store: &dyn Store, rx: Receiver<(Canon, Op)>) {
        let mut msg = Vec::with_capacity(HEADER + MAX_BATCH * CANON_LEN + MAC);
        while !self.stopped() {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            msg.clear();
            msg.extend_from_slice(MAGIC);
            msg.extend_from_slice(&self.origin);
            first.0.encode(first.1, &mut msg);
            let mut n = 1;
            while n < MAX_BATCH {
                match rx.try_recv() {
                    Ok((c, op)) => c.encode(op, &mut msg),
                    Err(_) => break,
                }
                n += 1;
            }
            let tag = hmac::sign(&self.key, &msg);
            msg.extend_from_slice(&tag.as_ref()[..MAC]);
            match store.broadcast(CHANNEL, &msg) {
                Ok(()) => {
                    self.count("sent", n);
                    self.set(&self.sending, true);
                    if n < MAX_BATCH {
                        // Drained: what overflowed is behind us.
                        self.set(&self.overflow, false);
                    }
                }
                Err(e) => {
                    self.count("dropped", n);
                    if self.sending.load(Ordering::Relaxed) {
                        tracing::warn!(error = %e, "sharing failed attempts");
                    }
                    self.set(&self.sending, false);
                }
            }
        }
    }

    fn listen_loop(&self, store: &dyn Store, app: Weak<App>) {
        let mut failures: u32 = 0;
        while !self.stopped() && app.strong_count() > 0 {
            let last_heard = std::cell::Cell::new(Instant::now());
            let r = store.listen(
                CHANNEL,
                &mut || {
                    // Subscribed: the connection works, so sending may too.
                    self.set(&self.sending, true);
                    self.set(&self.listening, true);
                },
                &mut |m| {
                    last_heard.set(Instant::now());
                    self.received(m, &app);
                },
                &mut || {
                    // A subscription a middlebox dropped says nothing: ask.
                    if last_heard.get().elapsed() < PING_AFTER {
                        return true;
                    }
                    last_heard.set(Instant::now());
                    false
                },
                &|| self.stopped() || app.strong_count() == 0,
            );
            let was_listening = self.listening.load(Ordering::Relaxed);
            self.set(&self.listening, false);
            if let Err(e) = r {
                if failures == 0 || was_listening {
                    tracing::warn!(error = %e, "listening for the other authorities' failed attempts");
                }
                failures = if was_listening {
                    1
                } else {
                    failures.saturating_add(1)
                };
                // Backs off from 250 ms to 5 s, jittered: a refusal (an ACL
                // without the channel) is not retried in a tight loop.
                let full = Duration::from_millis(250)
                    .saturating_mul(1 << failures.min(5))
                    .min(Duration::from_secs(5));
                let mut r = [0u8; 1];
                aws_lc_rs::rand::fill(&mut r).expect("system randomness");
                std::thread::sleep(full.mul_f64(0.5 + f64::from(r[0]) / 510.0));
            }
        }
    }

    /// Applies another authority's message; one of any other shape, with a
    /// wrong MAC (another fleet, or a forger) or of a newer valet is passed
    /// over, as is this process's own.
    fn received(&self, m: &[u8], app: &Weak<App>) {
        let Some((origin, records)) = decode(m, &self.key) else {
            if m.starts_with(MAGIC) {
                self.count("rejected", 1);
            }
            return;
        };
        if origin == self.origin {
            return;
        }
        let Some(app) = app.upgrade() else { return };
        let throttle = app.throttle.load();
        let mut n = 0;
        for (c, op) in records.chunks_exact(CANON_LEN).filter_map(Canon::decode) {
            throttle.apply_shared(&c, op);
            n += 1;
        }
        self.count("received", n);
    }
}

/// (origin, records) of a well-formed message whose MAC verifies.
fn decode<'m>(m: &'m [u8], key: &hmac::Key) -> Option<([u8; 8], &'m [u8])> {
    let body_len = m.len().checked_sub(MAC)?;
    let (body, tag) = m.split_at(body_len);
    let rest = body.strip_prefix(MAGIC)?;
    let (origin, records) = rest.split_at_checked(8)?;
    let shaped = !records.is_empty()
        && records.len() % CANON_LEN == 0
        && records.len() / CANON_LEN <= MAX_BATCH;
    if !shaped {
        return None;
    }
    let want = hmac::sign(key, body);
    aws_lc_rs::constant_time::verify_slices_are_equal(&want.as_ref()[..MAC], tag).ok()?;
    Some((origin.try_into().expect("8 bytes"), records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &hmac::Key, records: usize) -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(&[7; 8]);
        m.resize(HEADER + records * CANON_LEN, 0);
        let tag = hmac::sign(key, &m);
        m.extend_from_slice(&tag.as_ref()[..MAC]);
        m
    }

    #[test]
    fn messages_of_any_other_shape_or_key_are_passed_over() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"fleet");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another fleet");
        assert!(decode(&sealed(&key, 1), &key).is_some());
        assert!(decode(&sealed(&key, MAX_BATCH), &key).is_some());
        assert_eq!(decode(&sealed(&other, 1), &key), None, "another key");
        assert_eq!(decode(&sealed(&key, 0), &key), None, "no records");
        assert_eq!(
            decode(&sealed(&key, MAX_BATCH + 1), &key),
            None,
            "past the batch"
        );
        let mut forged = sealed(&key, 1);
        forged[HEADER] ^= 1;
        assert_eq!(decode(&forged, &key), None, "a record changed");
        let mut short = sealed(&key, 1);
        short.remove(HEADER);
        assert_eq!(decode(&short, &key), None, "a partial record");
        assert_eq!(decode(b"vth2", &key), None);
        assert_eq!(decode(b"", &key), None);
    }

    #[test]
    fn records_of_unknown_kinds_or_sources_are_refused() {
        let v4 = Some(IpAddr::from([192, 0, 2, 1]));
        let mut wire = Vec::new();
        Canon::of(1, [0; 16], v4).encode(Op::Spent, &mut wire);
        assert_eq!(Canon::decode(&wire).map(|r| r.1), Some(Op::Spent));
        let mut refund = Vec::new();
        Canon::of(1, [0; 16], v4).encode(Op::Refunded, &mut refund);
        assert_eq!(Canon::decode(&refund).map(|r| r.1), Some(Op::Refunded));
        let mut bad = wire.clone();
        bad[0] = 9;
        assert_eq!(Canon::decode(&bad), None, "a newer kind");
        let mut bad = wire.clone();
        bad[17] = 5;
        assert_eq!(Canon::decode(&bad), None, "an unknown source tag");
        assert_eq!(Canon::decode(&wire[1..]), None, "short");
        let mut user = Vec::new();
        Canon::of(3, [1; 16], None).encode(Op::Spent, &mut user);
        assert!(Canon::decode(&user).is_some());
        user[17] = 4;
        assert_eq!(
            Canon::decode(&user),
            None,
            "a username key carries no source"
        );
        let mut sign_in = Vec::new();
        Canon::of(SIGNED_IN, [1; 16], v4).encode(Op::Refunded, &mut sign_in);
        assert_eq!(Canon::decode(&sign_in), None, "a sign-in is never refunded");
    }

    #[test]
    fn names_are_keyed_when_shared() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"fleet");
        assert_ne!(name_id(Some(&key), "alice"), name_id(None, "alice"));
        assert_eq!(name_id(Some(&key), "alice"), name_id(Some(&key), "alice"));
    }
}
