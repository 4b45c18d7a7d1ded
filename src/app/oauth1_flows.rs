//! OAuth 1.0 flows waiting for the provider's callback (RFC 5849 §2.2):
//! state the flow endpoints share, bounded in total and per subject.

use crate::credentials::Secret;
use dashmap::DashMap;
use std::time::Instant;

/// Flows in progress at once, all subjects together; beyond it new flows
/// are refused (503) until some finish or expire.
pub const MAX_PENDING_FLOWS: usize = 10_000;
/// Flows one subject may have in progress with one provider; starting
/// another ends the oldest (so one caller cannot fill the table).
pub const MAX_PENDING_PER_SUBJECT: usize = 5;

pub struct Pending {
    pub provider: String,
    pub subject: Box<str>,
    pub token_secret: Secret,
    /// SHA-256 of the state cookie's value.
    pub state_digest: [u8; 32],
    pub return_url: String,
    pub expires: Instant,
}

/// Flows waiting for the provider's callback, keyed by temporary token.
/// They live in memory: a restart ends them (the user starts again).
#[derive(Default)]
pub struct Flows {
    pending: DashMap<String, Pending>,
}

impl Flows {
    /// Makes room for one more flow of `subject` with `provider`: ends
    /// the subject's oldest beyond its share, then drops expired flows if
    /// the table is full. False if it is still full.
    pub fn make_room(&self, provider: &str, subject: &str) -> bool {
        self.limit_subject(provider, subject);
        self.pending.len() < MAX_PENDING_FLOWS || self.prune() < MAX_PENDING_FLOWS
    }

    /// Remembers a flow under its temporary token.
    pub fn insert(&self, temporary_token: String, p: Pending) {
        self.pending.insert(temporary_token, p);
    }

    /// Takes out the flow of `temporary_token` with `provider`: a temporary
    /// token is usable once, whatever follows.
    pub fn take(&self, temporary_token: &str, provider: &str) -> Option<Pending> {
        self.pending
            .remove_if(temporary_token, |_, v| v.provider == provider)
            .map(|(_, p)| p)
    }

    fn limit_subject(&self, provider: &str, subject: &str) {
        let mut mine: Vec<(Instant, String)> = self
            .pending
            .iter()
            .filter(|e| e.provider == provider && &*e.subject == subject)
            .map(|e| (e.expires, e.key().clone()))
            .collect();
        if mine.len() >= MAX_PENDING_PER_SUBJECT {
            mine.sort();
            for (_, k) in &mine[..=mine.len() - MAX_PENDING_PER_SUBJECT] {
                self.pending.remove(k);
            }
        }
    }

    /// Drops expired flows (also refused on use); returns how many remain.
    pub fn prune(&self) -> usize {
        let now = Instant::now();
        self.pending.retain(|_, p| p.expires > now);
        self.pending.len()
    }
}
