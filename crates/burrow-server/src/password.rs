//! Password hashing with argon2id, off the async threads and behind a limit.
//!
//! Hashes are PHC strings (algorithm, parameters and salt included), so the
//! parameters can change later without breaking stored accounts. Each hash or
//! check takes tens of milliseconds of one core and 19 MiB of memory (argon2's
//! recommended minimum), on tokio's blocking pool, [`HASHING_AT_ONCE`] at a
//! time; at most [`HASHING_QUEUE`] more wait, and past that a login is turned
//! away at once, so a login flood costs the server bounded memory and never
//! holds up the threads that serve honest nodes.

use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

/// Hashes computed at once: one per core of a small server.
pub const HASHING_AT_ONCE: usize = 2;
/// Hashes that may wait for a turn.
pub const HASHING_QUEUE: usize = 32;

/// The server is hashing as much as it will: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many logins in progress")]
pub struct Busy;

/// Runs argon2 work with bounded concurrency.
#[derive(Debug)]
pub struct Hasher {
    permits: Semaphore,
    waiting: AtomicUsize,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            permits: Semaphore::new(HASHING_AT_ONCE),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Hasher {
    /// A PHC hash of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, Busy> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .expect("argon2 accepts any password with default parameters")
                .to_string()
        })
        .await
    }

    /// Whether `password` matches the PHC string `hash` (false for a hash that
    /// doesn't parse).
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        self.run(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= HASHING_AT_ONCE + HASHING_QUEUE {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        let permit = self.permits.acquire().await;
        let result = tokio::task::spawn_blocking(work).await;
        drop(permit);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Ok(result.expect("argon2 work does not panic"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_hide_the_password() {
        let h = Hasher::default();
        let hash = h.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(h
            .verify("correct horse".into(), hash.clone())
            .await
            .unwrap());
        assert!(!h.verify("wrong".into(), hash).await.unwrap());
        assert!(!h.verify("x".into(), "not a hash".into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_logins_is_turned_away_past_the_queue() {
        let h = std::sync::Arc::new(Hasher::default());
        let hash = h.hash("pw".into()).await.unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (h, hash) = (h.clone(), hash.clone());
                tokio::spawn(async move { h.verify("guess".into(), hash).await })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                busy += 1;
            }
        }
        // The tasks start within microseconds and a hash takes milliseconds: most
        // find the queue full, and never more than the queue's room get in.
        assert!(
            busy > 0 && busy <= 100 - HASHING_AT_ONCE - HASHING_QUEUE,
            "{busy}"
        );
        assert_eq!(h.waiting.load(Ordering::Acquire), 0);
    }
}
