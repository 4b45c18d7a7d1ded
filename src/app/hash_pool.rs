//! Password-hash verification with bounded work and memory, shared fairly.
//!
//! argon2id is meant to be expensive (about 19 MiB and tens of milliseconds
//! a try), and every wrong or unknown client secret or password costs one,
//! before anyone is authenticated. So verifications run here and nowhere
//! else:
//!
//! - a fixed set of worker threads (one per core by default), each reusing
//!   one memory buffer: memory is `workers × m_cost` however hard valet is
//!   pushed, and returns to nothing new after a burst;
//! - a bounded queue in front of them, served in turn per source (round
//!   robin), so a flooding source holds at most `per_source` places and
//!   waits behind everyone else;
//! - a deadline per attempt: one that cannot start in time is answered
//!   `503` with `Retry-After` instead of waiting forever, and is skipped by
//!   the workers so its work is never done.
//!
//! The tokio blocking pool (which revocation and store writes need) is no
//! longer touched by hashing at all.

use super::throttle::Source;
pub use crate::config::QueueLimits;
use crate::credentials::Argon2Hash;
use prometheus::{IntCounterVec, IntGauge};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// Why an attempt was not verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// This source already holds its share of the queue (429).
    SourceFull,
    /// The queue is full (503).
    Full,
    /// No worker was free before the deadline (503).
    Deadline,
}

impl Busy {
    pub fn label(self) -> &'static str {
        match self {
            Busy::SourceFull => "source_full",
            Busy::Full => "queue_full",
            Busy::Deadline => "deadline",
        }
    }
}

struct Job {
    hash: Arc<Argon2Hash>,
    candidate: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<bool>,
    /// `QUEUED`, then `STARTED` (a worker took it) or `ABANDONED` (its
    /// waiter gave up): whoever moves it first decides, so a check a worker
    /// started is always waited for and never wasted.
    state: Arc<AtomicU8>,
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

fn moved(state: &AtomicU8, to: u8) -> bool {
    state
        .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

#[derive(Default)]
struct Queue {
    by_source: HashMap<Source, VecDeque<Job>>,
    /// Sources with waiting attempts, in the order they are served.
    turn: VecDeque<Source>,
    len: usize,
    closed: bool,
}

impl Queue {
    fn push(&mut self, source: Source, job: Job, limits: &QueueLimits) -> Result<(), (Busy, Job)> {
        if self.len >= limits.capacity {
            return Err((Busy::Full, job));
        }
        let q = self.by_source.entry(source).or_default();
        if q.len() >= limits.per_source {
            return Err((Busy::SourceFull, job));
        }
        if q.is_empty() {
            self.turn.push_back(source);
        }
        q.push_back(job);
        self.len += 1;
        Ok(())
    }

    /// The next attempt, one source after another.
    fn pop(&mut self) -> Option<Job> {
        let source = self.turn.pop_front()?;
        let q = self.by_source.get_mut(&source)?;
        let job = q.pop_front();
        if q.is_empty() {
            self.by_source.remove(&source);
        } else {
            self.turn.push_back(source);
        }
        self.len -= 1;
        job
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    depth: IntGauge,
    /// `valet_secret_hash_jobs_total{outcome}`.
    outcomes: IntCounterVec,
}

/// The verification workers and their queue. Dropping it stops the workers.
pub struct HashPool {
    shared: Arc<Shared>,
    workers: usize,
}

impl HashPool {
    /// Starts `workers` threads (at least one).
    pub fn start(workers: usize, depth: IntGauge, outcomes: IntCounterVec) -> HashPool {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            depth,
            outcomes,
        });
        for i in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("valet-hash-{i}"))
                .spawn(move || work(&shared))
                .expect("a hashing thread starts");
        }
        HashPool { shared, workers }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Verifies `candidate` against `hash` when `source`'s turn comes, or
    /// says why it cannot. The deadline is for starting: a verification a
    /// worker started is waited for (it takes one hash's time).
    pub async fn verify(
        &self,
        source: Source,
        hash: Arc<Argon2Hash>,
        candidate: Vec<u8>,
        limits: &QueueLimits,
    ) -> Result<bool, Busy> {
        let deadline = Instant::now() + limits.wait;
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            hash,
            candidate,
            deadline,
            reply: tx,
            state: state.clone(),
        };
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Err((busy, _)) = q.push(source, job, limits) {
                drop(q);
                self.shared
                    .outcomes
                    .with_label_values(&[busy.label()])
                    .inc();
                return Err(busy);
            }
            self.shared.depth.set(q.len as i64);
        }
        self.shared.ready.notify_one();
        let answer = match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(answer) => answer.ok(),
            // Not started in time: give it up, unless a worker just took it.
            Err(_) if moved(&state, ABANDONED) => None,
            Err(_) => rx.await.ok(),
        };
        answer.ok_or_else(|| {
            self.shared
                .outcomes
                .with_label_values(&[Busy::Deadline.label()])
                .inc();
            Busy::Deadline
        })
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.ready.notify_all();
    }
}

/// Memory a worker keeps between verifications: enough for the default
/// argon2id cost; a larger hash's buffer is given back after its use.
const KEPT_BLOCKS: usize = argon2::Params::DEFAULT_M_COST as usize;

fn work(shared: &Shared) {
    let mut memory: Vec<argon2::Block> = Vec::new();
    loop {
        let job = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.closed {
                    return;
                }
                if let Some(job) = q.pop() {
                    shared.depth.set(q.len as i64);
                    break job;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // Whoever asked has gone (client closed, deadline passed): skip.
        let late = Instant::now() >= job.deadline && moved(&job.state, ABANDONED);
        if late || job.reply.is_closed() || !moved(&job.state, STARTED) {
            shared.outcomes.with_label_values(&["skipped"]).inc();
            continue;
        }
        let ok = job.hash.verify_with(&job.candidate, &mut memory);
        if memory.len() > KEPT_BLOCKS {
            memory.truncate(KEPT_BLOCKS);
            memory.shrink_to_fit();
        }
        shared
            .outcomes
            .with_label_values(&[if ok { "match" } else { "mismatch" }])
            .inc();
        let _ = job.reply.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{argon2id_hash, SecretHash};
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    fn src(n: u8) -> Source {
        Source::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
    }

    /// A job whose candidate names its source, and the receiver that keeps it live.
    fn job(n: u8) -> (Job, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let SecretHash::Argon2id(hash) = SecretHash::parse(&argon2id_hash("x")).unwrap() else {
            unreachable!()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let candidate = vec![n];
        (
            Job {
                hash,
                candidate,
                deadline,
                reply: tx,
                state: Arc::new(AtomicU8::new(QUEUED)),
            },
            rx,
        )
    }

    #[test]
    fn sources_take_turns_and_hold_bounded_places() {
        let limits = QueueLimits {
            capacity: 6,
            per_source: 3,
            wait: Duration::from_secs(1),
        };
        let mut q = Queue::default();
        let mut live = Vec::new();
        let mut push = |q: &mut Queue, n: u8| {
            let (j, rx) = job(n);
            live.push(rx);
            q.push(src(n), j, &limits).err().map(|e| e.0)
        };
        // Source 1 floods: three places, then refused.
        for _ in 0..3 {
            assert_eq!(push(&mut q, 1), None);
        }
        assert_eq!(push(&mut q, 1), Some(Busy::SourceFull));
        // Others still get in...
        assert_eq!(push(&mut q, 2), None);
        assert_eq!(push(&mut q, 3), None);
        assert_eq!(push(&mut q, 2), None);
        // ...until the whole queue is full.
        assert_eq!(push(&mut q, 4), Some(Busy::Full));
        // Served in turn: the flooder's second attempt waits behind everyone's first.
        let order: Vec<u8> = std::iter::from_fn(|| q.pop())
            .map(|j| j.candidate[0])
            .collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 1]);
        assert_eq!(q.len, 0);
        assert!(q.by_source.is_empty() && q.turn.is_empty());
    }

    #[tokio::test]
    async fn workers_verify_and_skip_what_nobody_waits_for() {
        let depth = IntGauge::new("d", "d").unwrap();
        let outcomes = IntCounterVec::new(prometheus::Opts::new("o", "o"), &["outcome"]).unwrap();
        let pool = HashPool::start(1, depth, outcomes.clone());
        let SecretHash::Argon2id(hash) = SecretHash::parse(&argon2id_hash("right")).unwrap() else {
            unreachable!()
        };
        let limits = QueueLimits {
            capacity: 8,
            per_source: 8,
            wait: Duration::from_secs(30),
        };
        let right = pool.verify(src(1), hash.clone(), b"right".to_vec(), &limits);
        let wrong = pool.verify(src(2), hash.clone(), b"wrong".to_vec(), &limits);
        assert_eq!(tokio::join!(right, wrong), (Ok(true), Ok(false)));
        // An attempt whose deadline passes before a worker is free is refused.
        let tight = QueueLimits {
            wait: Duration::from_millis(0),
            ..limits
        };
        assert_eq!(
            pool.verify(src(3), hash, b"right".to_vec(), &tight).await,
            Err(Busy::Deadline)
        );
        assert_eq!(outcomes.with_label_values(&["match"]).get(), 1);
        assert_eq!(outcomes.with_label_values(&["mismatch"]).get(), 1);
        assert_eq!(outcomes.with_label_values(&["deadline"]).get(), 1);
    }
}
