//! Admission limits: connections in total and per subject, and a per-connection publish rate.
//! Each limit, when hit, answers its own error code and counts in `tidings_errors_total{code}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tidings_protocol::ErrorCode;

use crate::error::ApiError;

/// Counts open connections and hands out permits within the limits.
#[derive(Debug)]
pub struct Admission {
    total: AtomicUsize,
    max_total: usize,
    per_subject: Mutex<HashMap<Arc<str>, usize>>,
    max_per_subject: usize,
}

/// One admitted connection; releases its slot when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    subject: Arc<str>,
}

impl Admission {
    /// Limits: `max_total` connections, `max_per_subject` per key or token subject.
    pub fn new(max_total: usize, max_per_subject: usize) -> Arc<Self> {
        Arc::new(Admission {
            total: AtomicUsize::new(0),
            max_total,
            per_subject: Mutex::new(HashMap::new()),
            max_per_subject,
        })
    }

    /// Admit a connection of `subject`, or say which limit it hit.
    pub fn admit(self: &Arc<Self>, subject: &Arc<str>) -> Result<Permit, ApiError> {
        let mut per = self.per_subject.lock();
        let mine = per.get(subject).copied().unwrap_or(0);
        if mine >= self.max_per_subject {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "this key or token subject already has {mine} connections (limits.max_connections_per_subject); close some or use another subject"
                ),
            ));
        }
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                "the server is at its connection limit (limits.max_connections); retry later or connect to another instance",
            ));
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        per.insert(subject.clone(), mine + 1);
        Ok(Permit {
            admission: self.clone(),
            subject: subject.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
        let mut per = self.admission.per_subject.lock();
        if let Some(n) = per.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.subject);
            }
        }
    }
}

/// A token bucket: `rate` per second, bursts up to `rate`.
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket refilling at `per_second`.
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            rate: f64::from(per_second),
            tokens: f64::from(per_second),
            last: Instant::now(),
        }
    }

    /// Take one token at `now`; false when the bucket is empty.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_release() {
        let a = Admission::new(3, 2);
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let p1 = a.admit(&alice).unwrap();
        let _p2 = a.admit(&alice).unwrap();
        assert_eq!(
            a.admit(&alice).unwrap_err().code,
            ErrorCode::TooManyConnections
        );
        let _p3 = a.admit(&bob).unwrap();
        assert!(a.admit(&bob).is_err(), "total limit");
        drop(p1);
        assert!(a.admit(&bob).is_ok());
    }

    #[test]
    fn token_bucket_refills() {
        let mut r = RateLimit::new(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(r.try_take(t0));
        }
        assert!(!r.try_take(t0));
        assert!(r.retry_after() > Duration::ZERO);
        assert!(r.try_take(t0 + Duration::from_millis(150)));
    }
}
