//! The capability vocabulary: operations, channel patterns, grants, and the principals and API
//! keys that hold them. Authentication (`auth`) and signed tokens (`token`) both speak it.
//!
//! Pattern semantics: a pattern is split on `:` into segments. A literal segment matches the
//! same segment; `*` matches exactly one segment, or, as the last segment, one or more remaining
//! segments. `*` alone matches every channel. So `store:*` matches `store:1` and `store:1:items`
//! but neither `store` nor `storefront:1`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An operation on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Receive live messages (attach).
    Subscribe,
    /// Append messages.
    Publish,
    /// Read past messages (REST history, and resume/rewind on attach).
    History,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 3] = [Operation::Subscribe, Operation::Publish, Operation::History];

    fn bit(self) -> u8 {
        match self {
            Operation::Subscribe => 1,
            Operation::Publish => 2,
            Operation::History => 4,
        }
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Operations(u8);

impl Operations {
    /// Every operation.
    pub fn all() -> Self {
        Self::from_iter(Operation::ALL)
    }

    /// Whether `op` is in the set.
    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }
}

impl FromIterator<Operation> for Operations {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        Operations(iter.into_iter().fold(0, |acc, op| acc | op.bit()))
    }
}

/// Why a channel pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid channel pattern {pattern:?}: {problem}")]
pub struct PatternError {
    pub pattern: String,
    pub problem: &'static str,
}

/// A channel pattern such as `store:*` (see the module docs for the semantics).
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl ChannelPattern {
    /// Parse a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |problem| PatternError {
            pattern: text.to_owned(),
            problem,
        };
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        let mut segments = Vec::new();
        for seg in text.split(':') {
            if seg.is_empty() {
                return Err(err("it has an empty segment"));
            }
            if seg == "*" {
                segments.push(Segment::Any);
            } else if seg.contains('*') {
                return Err(err("'*' must be a whole segment, as in `store:*`"));
            } else {
                crate::channel::ChannelName::parse(seg)
                    .map_err(|_| err("a segment has characters channel names cannot have"))?;
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(ChannelPattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `channel` matches.
    pub fn matches(&self, channel: &str) -> bool {
        let parts: Vec<&str> = channel.split(':').collect();
        let last = self.segments.len() - 1;
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Any if i == last => return parts.len() > i,
                Segment::Any => {
                    if parts.len() <= i {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.get(i) != Some(&lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.len() == self.segments.len()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether every channel `other` matches is also matched by this pattern (so a grant on
    /// `self` may be handed down as a grant on `other`).
    pub fn covers(&self, other: &ChannelPattern) -> bool {
        let (p, q) = (&self.segments, &other.segments);
        let (m, n) = (p.len(), q.len());
        for (i, pi) in p.iter().enumerate() {
            let p_trailing_any = i == m - 1 && *pi == Segment::Any;
            if p_trailing_any {
                // Matches one or more remaining segments: covers whatever `other` has left.
                return n > i;
            }
            let Some(qi) = q.get(i) else {
                return false;
            };
            if i == n - 1 && *qi == Segment::Any && n < m {
                // `other` ends in a trailing `*` (any depth) where `self` still needs segments.
                return false;
            }
            if i == n - 1 && *qi == Segment::Any && n == m {
                // Both end here, but only `self`'s trailing `*` (handled above) matches any depth.
                return false;
            }
            match (pi, qi) {
                (Segment::Any, _) => {}
                (Segment::Literal(a), Segment::Literal(b)) if a == b => {}
                _ => return false,
            }
        }
        n == m
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// Operations allowed on channels matching a pattern.
#[derive(Debug, Clone)]
pub struct Grant {
    pub pattern: ChannelPattern,
    pub operations: Operations,
}

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Key id, token subject, or `anonymous`.
    pub subject: Arc<str>,
    grants: Arc<Vec<Grant>>,
    /// For tokens signed by an API key: the key's grants, which the token can never exceed.
    ceiling: Option<Arc<Vec<Grant>>>,
    /// For tokens: when the token stops being valid.
    pub expires_at: Option<std::time::SystemTime>,
    /// For tokens: the token's `jti`, by which it can be revoked alone.
    pub jti: Option<Arc<str>>,
    /// For tokens: the token's `iat` in milliseconds, which a subject's revocation compares.
    pub issued_at_ms: Option<u64>,
}

/// What identifies a token beyond its subject, for revocation.
#[derive(Debug, Clone, Default)]
pub struct TokenId {
    /// The `jti` claim.
    pub jti: Option<Arc<str>>,
    /// The `iat` claim, in milliseconds since the Unix epoch.
    pub issued_at_ms: Option<u64>,
}

fn any_allows(grants: &[Grant], op: Operation, channel: &str) -> bool {
    grants
        .iter()
        .any(|g| g.operations.contains(op) && g.pattern.matches(channel))
}

impl Principal {
    /// A principal that never expires and has no ceiling: an API key's, or the anonymous caller's.
    pub fn new(subject: &str, grants: Vec<Grant>) -> Self {
        Principal {
            subject: Arc::from(subject),
            grants: Arc::new(grants),
            ceiling: None,
            expires_at: None,
            jti: None,
            issued_at_ms: None,
        }
    }

    /// A principal from a verified token.
    pub fn token(
        subject: &str,
        grants: Vec<Grant>,
        ceiling: Option<Arc<Vec<Grant>>>,
        expires_at: std::time::SystemTime,
        id: TokenId,
    ) -> Self {
        Principal {
            subject: Arc::from(subject),
            grants: Arc::new(grants),
            ceiling,
            expires_at: Some(expires_at),
            jti: id.jti,
            issued_at_ms: id.issued_at_ms,
        }
    }

    /// Whether this caller may perform `op` on `channel`.
    pub fn allows(&self, op: Operation, channel: &str) -> bool {
        any_allows(&self.grants, op, channel)
            && self
                .ceiling
                .as_ref()
                .is_none_or(|c| any_allows(c, op, channel))
    }

    /// Whether this caller has any grant at all (anonymous callers on a server without public
    /// namespaces have none).
    pub fn has_grants(&self) -> bool {
        !self.grants.is_empty()
    }
}

/// A configured API key.
#[derive(Clone)]
pub struct ApiKey {
    pub id: String,
    pub secret: String,
    pub grants: Vec<Grant>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("grants", &self.grants)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    #[test]
    fn pattern_semantics() {
        assert!(p("*").matches("a"));
        assert!(p("*").matches("a:b:c"));
        assert!(p("store:*").matches("store:1"));
        assert!(p("store:*").matches("store:1:items"));
        assert!(!p("store:*").matches("store"));
        assert!(!p("store:*").matches("storefront:1"));
        assert!(p("user:42:*").matches("user:42:inbox"));
        assert!(!p("user:42:*").matches("user:43:inbox"));
        assert!(p("user:*:inbox").matches("user:7:inbox"));
        assert!(!p("user:*:inbox").matches("user:7:outbox"));
        assert!(!p("user:*:inbox").matches("user:7:inbox:x"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exact:1"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "a::b", "st*re", "a b", ":*"] {
            assert!(
                ChannelPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn pattern_coverage() {
        let covers = |a: &str, b: &str| p(a).covers(&p(b));
        assert!(covers("*", "anything:at:all"));
        assert!(covers("*", "*"));
        assert!(covers("store:*", "store:1"));
        assert!(covers("store:*", "store:*"));
        assert!(covers("store:*", "store:1:*"));
        assert!(covers("store:*", "store:*:items"));
        assert!(!covers("store:*", "store"));
        assert!(!covers("store:*", "*"));
        assert!(!covers("store:*", "storefront:*"));
        assert!(covers("user:*:inbox", "user:1:inbox"));
        assert!(covers("user:*:inbox", "user:*:inbox"));
        assert!(!covers("user:*:inbox", "user:*"));
        assert!(!covers("user:*:inbox", "user:1:*"));
        assert!(!covers("user:1", "user:*"));
        assert!(covers("a:b", "a:b"));
        assert!(!covers("a:b", "a:b:c"));
        assert!(!covers("a:*:c", "a:*:*"));
    }
}
