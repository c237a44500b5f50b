//! Token revocations: signed tokens refused before they expire, kept durably.
//!
//! A revocation names a token subject (`sub`) or a token id (`jti`). Revoking a subject refuses
//! every token of that subject issued at or before the revocation (its `iat`; a token without
//! `iat` counts as issued before), so a token issued afterwards works: a client told
//! `token_revoked` fetches a new token and goes on. Revoking a `jti` refuses that one token.
//! API keys are never revoked here: remove them from the configuration.
//!
//! A revocation matters only until the tokens it covers have expired, so each is kept for the
//! longest lifetime a token may have (`auth.max_token_lifetime`, at least the 24 h
//! `POST /v1/tokens` issues), then pruned. At most `auth.max_revocations` are in force.
//!
//! [`Revocations`] is the in-memory set every request is checked against, with a
//! [`watch`] every open connection follows; [`RevocationStore`] is where the set is kept
//! durably. [`FileStore`] (one JSON file in the data directory) serves a single node; cluster
//! mode provides another store.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::grant::Principal;

/// The file [`FileStore`] keeps revocations in, inside the data directory.
pub const FILE_NAME: &str = "revocations.json";
/// Clock skew tolerated on `exp` by the token verifier: an entry outlives its horizon by this.
const EXPIRY_LEEWAY: Duration = Duration::from_secs(5);
/// Longest subject or token id accepted (tokens' `sub` is at most 255 bytes too).
const MAX_NAME_BYTES: usize = 255;

/// What a revocation refuses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every token of this subject issued at or before the revocation.
    Subject(String),
    /// The token with this `jti`.
    Jti(String),
}

impl Target {
    /// The target as `subject "x"` or `jti "y"`, for messages and logs.
    pub fn describe(&self) -> String {
        match self {
            Target::Subject(s) => format!("subject {s:?}"),
            Target::Jti(j) => format!("jti {j:?}"),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Target::Subject(_) => "subject",
            Target::Jti(_) => "jti",
        }
    }
}

/// One revocation in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `{"subject": "..."}` or `{"jti": "..."}`.
    #[serde(flatten)]
    pub target: Target,
    /// When it was made, in milliseconds since the Unix epoch: a subject's tokens issued at or
    /// before it are refused.
    pub revoked_at: u64,
    /// When it lapses and is pruned (milliseconds since the Unix epoch): every token it covers
    /// has expired by then.
    pub expires_at: u64,
}

/// Why a store could not load or save.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}; restore the file from a backup or move it away to start without revocations")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a revocation list ({source}); restore it from a backup or move it away to start without revocations")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "cannot write {path}: {source}; check the data directory's free space and permissions"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where revocations are kept durably.
///
/// [`Revocations`] calls `load` once when the server starts, and `save` with the whole set
/// after each change, one call at a time, from a blocking thread. `save` returns only once the
/// set is durable (a crash, `kill -9` or power loss right after keeps it); on error nothing
/// changed in force and the caller tells its client to retry. The set is small (at most
/// `auth.max_revocations`), so writing it whole is fine.
pub trait RevocationStore: Send + Sync {
    /// Every revocation saved last (lapsed ones included; the caller prunes them).
    fn load(&self) -> Result<Vec<Revocation>, StoreError>;
    /// Replace what is stored with `all`, durably.
    fn save(&self, all: &[Revocation]) -> Result<(), StoreError>;
}

/// Revocations in one JSON file in the data directory, replaced atomically: written to a
/// temporary file, fsynced, renamed over the old one, and the directory fsynced, so a crash
/// leaves either the old set or the new, never a torn file.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store in `data_dir` (the file is created by the first revocation).
    pub fn new(data_dir: &Path) -> Self {
        FileStore {
            path: data_dir.join(FILE_NAME),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct FileBody {
    revocations: Vec<Revocation>,
}

impl RevocationStore for FileStore {
    fn load(&self) -> Result<Vec<Revocation>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let body: FileBody =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        Ok(body.revocations)
    }

    fn save(&self, all: &[Revocation]) -> Result<(), StoreError> {
        let write = |path: &Path| -> std::io::Result<()> {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let text = serde_json::to_vec_pretty(&FileBody {
                revocations: all.to_vec(),
            })
            .map_err(std::io::Error::other)?;
            // In cluster mode no embedded log has created the data directory.
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::File::create(path)?;
            f.write_all(&text)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(path, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        let tmp = self.path.with_extension("json.tmp");
        write(&tmp).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// Why `POST /v1/tokens/revoke` refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{max} revocations are in force (auth.max_revocations) and the next lapses in {}: raise the limit, or rotate the signing key instead of revoking token by token", humantime::format_duration(*next_lapse_in))]
    Full { max: usize, next_lapse_in: Duration },
    #[error("the revocation could not be stored, so it is not in force: {0}; retry once the data directory is writable")]
    Store(#[source] StoreError),
}

/// Why a token is refused: the revocation that covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked(pub Target);

/// The revocations in force, checked on every request and followed by every open connection.
pub struct Revocations {
    store: Arc<dyn RevocationStore>,
    /// How long an entry is kept after it is made.
    keep: Duration,
    max: usize,
    set: parking_lot::RwLock<Set>,
    /// One change at a time, so saves reach the store in the order they are made.
    writing: tokio::sync::Mutex<()>,
    /// Bumped after every revocation is in force; connections re-check their principal.
    changed: watch::Sender<u64>,
}

#[derive(Default, Clone)]
struct Set {
    subjects: HashMap<String, Revocation>,
    jtis: HashMap<String, Revocation>,
}

impl Set {
    fn from(all: Vec<Revocation>, now: u64) -> Set {
        let mut set = Set::default();
        for r in all.into_iter().filter(|r| r.expires_at > now) {
            set.insert(r);
        }
        set
    }

    fn insert(&mut self, r: Revocation) {
        match &r.target {
            Target::Subject(s) => self.subjects.insert(s.clone(), r),
            Target::Jti(j) => self.jtis.insert(j.clone(), r),
        };
    }

    fn get(&self, target: &Target) -> Option<&Revocation> {
        match target {
            Target::Subject(s) => self.subjects.get(s),
            Target::Jti(j) => self.jtis.get(j),
        }
    }

    fn len(&self) -> usize {
        self.subjects.len() + self.jtis.len()
    }

    fn all(&self) -> Vec<Revocation> {
        let mut all: Vec<Revocation> = self
            .subjects
            .values()
            .chain(self.jtis.values())
            .cloned()
            .collect();
        all.sort_by(|a, b| {
            (a.revoked_at, &a.target.describe()).cmp(&(b.revoked_at, &b.target.describe()))
        });
        all
    }

    fn prune(&mut self, now: u64) {
        self.subjects.retain(|_, r| r.expires_at > now);
        self.jtis.retain(|_, r| r.expires_at > now);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Revocations {
    /// Load what `store` holds (lapsed entries dropped). Each new entry is kept for
    /// `max_token_lifetime` (and the verifier's clock leeway); at most `max` are in force.
    pub fn open(
        store: Arc<dyn RevocationStore>,
        max_token_lifetime: Duration,
        max: usize,
    ) -> Result<Self, StoreError> {
        let set = Set::from(store.load()?, now_ms());
        Ok(Revocations {
            store,
            keep: max_token_lifetime + EXPIRY_LEEWAY,
            max,
            set: parking_lot::RwLock::new(set),
            writing: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
        })
    }

    /// Whether `principal` is refused. Only tokens are: API keys and anonymous callers never.
    pub fn check(&self, principal: &Principal) -> Result<(), Revoked> {
        if principal.expires_at.is_none() {
            return Ok(());
        }
        let set = self.set.read();
        if set.len() == 0 {
            return Ok(());
        }
        if let Some(jti) = &principal.jti {
            if set.jtis.contains_key(&**jti) {
                return Err(Revoked(Target::Jti(jti.to_string())));
            }
        }
        if let Some(r) = set.subjects.get(&*principal.subject) {
            if principal.issued_at_ms.is_none_or(|iat| iat <= r.revoked_at) {
                return Err(Revoked(r.target.clone()));
            }
        }
        Ok(())
    }

    /// The earliest `iat` (ms) a token issued now for `subject` may carry and still be
    /// accepted: after the subject's revocation, if any, so a token issued in the same
    /// millisecond as a revocation is not covered by it.
    pub fn earliest_issue_ms(&self, subject: &str) -> u64 {
        let now = now_ms();
        match self.set.read().subjects.get(subject) {
            Some(r) => now.max(r.revoked_at + 1),
            None => now,
        }
    }

    /// Revoke `target`, durably: once this returns, a restart (or `kill -9`) keeps it, and
    /// every check refuses what it covers. Revoking a subject again moves its cutoff to now;
    /// revoking a `jti` again changes nothing.
    pub async fn revoke(&self, target: Target) -> Result<Revocation, RevokeError> {
        let name = match &target {
            Target::Subject(s) | Target::Jti(s) => s,
        };
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(RevokeError::Invalid(format!(
                "`{}` must be 1 to {MAX_NAME_BYTES} bytes",
                target.kind()
            )));
        }
        let _writing = self.writing.lock().await;
        let now = now_ms();
        let mut next = self.set.read().clone();
        next.prune(now);
        if let (Target::Jti(_), Some(r)) = (&target, next.get(&target)) {
            return Ok(r.clone());
        }
        if next.get(&target).is_none() && next.len() >= self.max {
            let next_lapse = next.all().iter().map(|r| r.expires_at).min().unwrap_or(now);
            return Err(RevokeError::Full {
                max: self.max,
                // Whole seconds: enough for an operator, and readable.
                next_lapse_in: Duration::from_secs(next_lapse.saturating_sub(now).div_ceil(1000)),
            });
        }
        let revoked_at = match next.get(&target) {
            // A clock stepping back must not shorten a subject's cutoff.
            Some(old) => now.max(old.revoked_at),
            None => now,
        };
        let revocation = Revocation {
            target,
            revoked_at,
            expires_at: revoked_at + self.keep.as_millis() as u64,
        };
        next.insert(revocation.clone());
        let all = next.all();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.save(&all))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            .map_err(RevokeError::Store)?;
        *self.set.write() = next;
        self.changed.send_modify(|n| *n += 1);
        Ok(revocation)
    }

    /// The revocations in force, oldest first.
    pub fn list(&self) -> Vec<Revocation> {
        let now = now_ms();
        let mut all = self.set.read().all();
        all.retain(|r| r.expires_at > now);
        all
    }

    /// Told after every new revocation: open connections re-check their principal with
    /// [`Revocations::check`] when it changes. The first `changed()` resolves at once, so a
    /// connection checks once after subscribing too: a revocation made between its
    /// authentication and this call is not missed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let mut rx = self.changed.subscribe();
        rx.mark_changed();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::TokenId;

    fn token(subject: &str, jti: Option<&str>, iat: Option<u64>) -> Principal {
        Principal::token(
            subject,
            Vec::new(),
            None,
            SystemTime::now() + Duration::from_secs(60),
            TokenId {
                jti: jti.map(Arc::from),
                issued_at_ms: iat,
            },
        )
    }

    fn open(dir: &Path) -> Revocations {
        Revocations::open(Arc::new(FileStore::new(dir)), Duration::from_secs(3600), 3).unwrap()
    }

    #[tokio::test]
    async fn subjects_cut_off_at_their_revocation_and_jtis_alone() {
        let dir = tempfile::tempdir().unwrap();
        let r = open(dir.path());
        let before = now_ms();
        assert!(r.check(&token("d", Some("j1"), Some(before))).is_ok());
        // A new follower checks once at once, then after each revocation.
        let mut follower = r.subscribe();
        assert!(follower.has_changed().unwrap());
        follower.mark_unchanged();
        let s = r.revoke(Target::Subject("d".into())).await.unwrap();
        assert!(follower.has_changed().unwrap());
        assert!(r.check(&token("d", None, Some(s.revoked_at))).is_err());
        assert!(r.check(&token("d", None, None)).is_err(), "no iat: before");
        assert!(r.check(&token("d", None, Some(s.revoked_at + 1))).is_ok());
        assert_eq!(r.earliest_issue_ms("d"), now_ms().max(s.revoked_at + 1));
        assert!(r.check(&token("e", None, None)).is_ok());
        assert!(
            r.check(&Principal::new("d", Vec::new())).is_ok(),
            "API keys"
        );

        r.revoke(Target::Jti("j1".into())).await.unwrap();
        assert_eq!(
            r.check(&token("e", Some("j1"), Some(now_ms()))),
            Err(Revoked(Target::Jti("j1".into())))
        );
        assert!(r.check(&token("e", Some("j2"), Some(now_ms()))).is_ok());

        // Durable: a second open of the same directory has both; the cap counts them.
        let again = open(dir.path());
        assert_eq!(again.list(), r.list());
        again.revoke(Target::Jti("j2".into())).await.unwrap();
        assert!(matches!(
            again.revoke(Target::Jti("j3".into())).await,
            Err(RevokeError::Full { max: 3, .. })
        ));
        // Revoking what is in force already does not count against the cap.
        again.revoke(Target::Jti("j2".into())).await.unwrap();
        again.revoke(Target::Subject("d".into())).await.unwrap();
        assert!(matches!(
            again.revoke(Target::Subject(String::new())).await,
            Err(RevokeError::Invalid(_))
        ));
    }

    #[test]
    fn lapsed_entries_are_pruned_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let now = now_ms();
        store
            .save(&[
                Revocation {
                    target: Target::Subject("old".into()),
                    revoked_at: now - 10_000,
                    expires_at: now - 1,
                },
                Revocation {
                    target: Target::Jti("new".into()),
                    revoked_at: now,
                    expires_at: now + 60_000,
                },
            ])
            .unwrap();
        let r = open(dir.path());
        let listed: Vec<Target> = r.list().into_iter().map(|r| r.target).collect();
        assert_eq!(listed, vec![Target::Jti("new".into())]);
    }

    #[test]
    fn a_corrupt_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let e = Revocations::open(
            Arc::new(FileStore::new(dir.path())),
            Duration::from_secs(1),
            1,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains(FILE_NAME), "{e}");
        assert!(e.to_string().contains("move it away"), "{e}");
    }
}
