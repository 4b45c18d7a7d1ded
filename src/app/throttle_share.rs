//! The throttles of a fleet of authorities, shared through the store.
//!
//! Each authority's allowance stays authoritative on the request path (no
//! round trip per attempt). What it counts (a failed attempt, a sign-in
//! that makes a source familiar) is queued here and broadcast in batches
//! on the store's channel; what the others broadcast is applied to this
//! process's limiters. So N authorities give about one allowance of
//! guesses, not N. Broadcasts are never stored: a throttle is a hint that
//! fades within its window, and a Redis restart forgetting it costs one
//! window's guesses at most.
//!
//! While the channel is down (the store unreachable, or an ACL without the
//! channel) every attempt costs `expected_replicas` units instead
//! ([`super::throttle::Throttle`]): each authority then allows its share of
//! the allowance.
//!
//! Bounds: at most [`QUEUE`] records wait to be sent (more are dropped and
//! counted); a message carries at most [`MAX_BATCH`] records, and one of
//! any other shape is passed over.

use super::throttle::{Canon, CANON_LEN};
use super::App;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The store channel the authorities share attempts on.
pub const CHANNEL: &str = "throttle";
/// Records waiting to be sent, at most.
pub const QUEUE: usize = 4096;
/// Records in one message, at most.
pub const MAX_BATCH: usize = 256;
/// A message: this tag, then the sender's origin, then records.
const MAGIC: &[u8; 4] = b"vth1";
const HEADER: usize = 4 + 8;

pub struct Share {
    tx: SyncSender<Canon>,
    rx: Mutex<Option<Receiver<Canon>>>,
    /// This process, so it passes over its own messages.
    origin: [u8; 8],
    /// Subscribed to the channel.
    listening: AtomicBool,
    /// The last broadcast went through (or none failed since subscribing).
    sending: AtomicBool,
    stop: AtomicBool,
    gauge: prometheus::IntGauge,
    records: prometheus::IntCounterVec,
}

impl Share {
    pub fn new(metrics: &crate::metrics::Metrics) -> Arc<Share> {
        let (tx, rx) = sync_channel(QUEUE);
        let mut origin = [0u8; 8];
        aws_lc_rs::rand::fill(&mut origin).expect("system randomness");
        Arc::new(Share {
            tx,
            rx: Mutex::new(Some(rx)),
            origin,
            listening: AtomicBool::new(false),
            sending: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            gauge: metrics.throttle_shared.clone(),
            records: metrics.throttle_shared_records.clone(),
        })
    }

    /// Whether this process's failures reach the others and theirs reach it.
    pub fn healthy(&self) -> bool {
        self.listening.load(Ordering::Relaxed) && self.sending.load(Ordering::Relaxed)
    }

    /// Queues `c` for the others; never waits (a full queue drops it).
    pub fn send(&self, c: Canon) {
        match self.tx.try_send(c) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.count("dropped", 1);
            }
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

    fn send_loop(&self, store: &dyn Store, rx: Receiver<Canon>) {
        let mut msg = Vec::with_capacity(HEADER + MAX_BATCH * CANON_LEN);
        while !self.stopped() {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            msg.clear();
            msg.extend_from_slice(MAGIC);
            msg.extend_from_slice(&self.origin);
            first.encode(&mut msg);
            let mut n = 1;
            while n < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => c.encode(&mut msg),
                    Err(_) => break,
                }
                n += 1;
            }
            match store.broadcast(CHANNEL, &msg) {
                Ok(()) => {
                    self.count("sent", n);
                    self.set(&self.sending, true);
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
        let mut logged = false;
        while !self.stopped() {
            let Some(alive) = app.upgrade() else { return };
            drop(alive);
            let r = store.listen(
                CHANNEL,
                &mut || {
                    // Subscribed: the connection works, so sending may too.
                    self.set(&self.sending, true);
                    self.set(&self.listening, true);
                    logged = false;
                },
                &mut |m| self.received(m, &app),
                &|| self.stopped() || app.strong_count() == 0,
            );
            self.set(&self.listening, false);
            if let Err(e) = r {
                if !logged {
                    tracing::warn!(error = %e, "listening for the other authorities' failed attempts");
                    logged = true;
                }
                // The store's own backoff spaces connection attempts; this
                // spaces its refusals.
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    /// Applies another authority's message; one of any other shape (or of
    /// a newer valet) is passed over, as is this process's own.
    fn received(&self, m: &[u8], app: &Weak<App>) {
        let Some(body) = decode(m) else { return };
        let (origin, records) = body;
        if origin == self.origin {
            return;
        }
        let Some(app) = app.upgrade() else { return };
        let throttle = app.throttle.load();
        let mut n = 0;
        for c in records.chunks_exact(CANON_LEN).filter_map(Canon::decode) {
            throttle.apply_shared(&c);
            n += 1;
        }
        self.count("received", n);
    }
}

/// (origin, records) of a well-formed message.
fn decode(m: &[u8]) -> Option<([u8; 8], &[u8])> {
    let rest = m.strip_prefix(MAGIC)?;
    let (origin, records) = rest.split_at_checked(8)?;
    let ok = !records.is_empty()
        && records.len() % CANON_LEN == 0
        && records.len() / CANON_LEN <= MAX_BATCH;
    ok.then(|| (origin.try_into().expect("8 bytes"), records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_any_other_shape_are_passed_over() {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(&[7; 8]);
        assert_eq!(decode(&m), None, "no records");
        m.extend_from_slice(&[0; CANON_LEN - 1]);
        assert_eq!(decode(&m), None, "a partial record");
        m.push(0);
        assert!(decode(&m).is_some());
        let mut big = m[..HEADER].to_vec();
        big.resize(HEADER + (MAX_BATCH + 1) * CANON_LEN, 0);
        assert_eq!(decode(&big), None, "past the batch");
        assert_eq!(decode(b"vth2xxxxxxxx"), None, "another version");
        assert_eq!(decode(b"vt"), None);
    }
}
