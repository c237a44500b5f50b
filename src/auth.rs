//! Who is calling, and what they may do on which channels.
//!
//! Every request is turned into a [`Principal`]: an identity and a list of [`Grant`]s, each a
//! channel pattern with the operations it allows (see `grant` for the pattern semantics). API
//! keys carry grants from config; anonymous callers get subscribe and history on public
//! namespaces only. Signed tokens (JWT with a `caps` claim) produce the same `Principal`, so
//! enforcement does not change when they arrive.

use std::collections::HashMap;
use std::sync::Arc;

use crate::grant::{ApiKey, ChannelPattern, Grant, Operation, Operations, Principal};
use crate::revocation::Revocations;
use crate::token::{TokenError, TokenVerifier};

/// Why credentials were refused. Deliberately vague to the caller about which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("credentials are malformed: expected `Bearer KEY_ID:SECRET` or `Bearer <token>`")]
    Malformed,
    #[error("unknown API key or wrong secret")]
    Rejected,
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Turns credentials into principals.
pub struct Authenticator {
    keys: HashMap<String, (ApiKey, Principal)>,
    anonymous: Principal,
    tokens: TokenVerifier,
    revocations: Arc<Revocations>,
}

impl Authenticator {
    /// Build from the configured keys, the public namespaces (subscribe + history for all),
    /// the token verifier and the revocations tokens are checked against.
    pub fn new(
        keys: Vec<ApiKey>,
        public_namespaces: &[String],
        tokens: TokenVerifier,
        revocations: Arc<Revocations>,
    ) -> Self {
        let keys = keys
            .into_iter()
            .map(|k| {
                let principal = Principal::new(&k.id, k.grants.clone());
                (k.id.clone(), (k, principal))
            })
            .collect();
        let public = public_namespaces
            .iter()
            .filter_map(|ns| {
                // A namespace covers the bare name and everything below it.
                let ops: Operations = [Operation::Subscribe, Operation::History]
                    .into_iter()
                    .collect();
                Some([
                    Grant {
                        pattern: ChannelPattern::parse(ns).ok()?,
                        operations: ops,
                    },
                    Grant {
                        pattern: ChannelPattern::parse(&format!("{ns}:*")).ok()?,
                        operations: ops,
                    },
                ])
            })
            .flatten()
            .collect();
        Authenticator {
            keys,
            anonymous: Principal::new("anonymous", public),
            tokens,
            revocations,
        }
    }

    /// The API key for a `KEY_ID:SECRET` credential (to sign tokens with), if it checks out.
    pub fn api_key(&self, credential: &str) -> Result<&ApiKey, AuthError> {
        let (id, secret) = credential.split_once(':').ok_or(AuthError::Malformed)?;
        match self.keys.get(id) {
            Some((key, _)) if constant_time_eq(key.secret.as_bytes(), secret.as_bytes()) => Ok(key),
            _ => Err(AuthError::Rejected),
        }
    }

    /// The principal for a credential: an API key (`KEY_ID:SECRET`) or a signed token (a JWT,
    /// which never contains `:`); the anonymous one when there is none.
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Principal, AuthError> {
        let Some(credential) = credential else {
            return Ok(self.anonymous.clone());
        };
        if !credential.contains(':') {
            let principal = self.tokens.verify(credential)?;
            self.revocations
                .check(&principal)
                .map_err(|_| TokenError::Revoked)?;
            return Ok(principal);
        }
        let key = self.api_key(credential)?;
        Ok(self.keys[&key.id].1.clone())
    }
}

/// Compare secrets without an early exit, so timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Take the credential from an `Authorization: Bearer ...` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    #[test]
    fn keys_and_public_namespaces() {
        let keys = vec![
            ApiKey {
                id: "admin".into(),
                secret: "s3cret-admin".into(),
                grants: vec![Grant {
                    pattern: p("*"),
                    operations: Operations::all(),
                }],
            },
            ApiKey {
                id: "reader".into(),
                secret: "s3cret-reader".into(),
                grants: vec![Grant {
                    pattern: p("store:*"),
                    operations: [Operation::Subscribe].into_iter().collect(),
                }],
            },
        ];
        let verifier = TokenVerifier::new(&keys, Vec::new(), None, None);
        let dir = tempfile::tempdir().unwrap();
        let revocations = Revocations::open(
            Arc::new(crate::revocation::FileStore::new(dir.path())),
            std::time::Duration::from_secs(60),
            10,
        )
        .unwrap();
        let auth = Authenticator::new(keys, &["news".to_string()], verifier, Arc::new(revocations));
        let admin = auth.authenticate(Some("admin:s3cret-admin")).unwrap();
        assert!(admin.allows(Operation::Publish, "anything:1"));
        let reader = auth.authenticate(Some("reader:s3cret-reader")).unwrap();
        assert!(reader.allows(Operation::Subscribe, "store:1"));
        assert!(!reader.allows(Operation::Publish, "store:1"));
        assert!(!reader.allows(Operation::Subscribe, "news:1"));
        assert_eq!(
            auth.authenticate(Some("admin:wrong")).unwrap_err(),
            AuthError::Rejected
        );
        assert_eq!(
            auth.authenticate(Some("nobody:x")).unwrap_err(),
            AuthError::Rejected
        );
        assert!(matches!(
            auth.authenticate(Some("no-colon")).unwrap_err(),
            AuthError::Token(_)
        ));
        let anon = auth.authenticate(None).unwrap();
        assert!(anon.allows(Operation::Subscribe, "news:today"));
        assert!(anon.allows(Operation::History, "news"));
        assert!(!anon.allows(Operation::Publish, "news:today"));
        assert!(!anon.allows(Operation::Subscribe, "newsroom:1"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer a:b"), Some("a:b"));
        assert_eq!(bearer("bearer  a:b "), Some("a:b"));
        assert_eq!(bearer("Basic xyz"), None);
    }
}
