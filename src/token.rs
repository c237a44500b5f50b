//! Signed tokens: JWTs that carry a client's identity and channel capabilities.
//!
//! A token is signed with HS256 by an API key's secret (its header's `kid` names the key; the
//! token can never do more than that key), or with RS256, ES256 or EdDSA by a private key whose
//! public half the server has (PEM in config, or a JWKS file). Claims: `sub` (client id, required),
//! `exp` (required), optional `nbf`, `aud`, `iss`, `iat` and `jti` (what a revocation compares:
//! `revocation`), and `caps`, a map from channel patterns to operations:
//! `{"store:*": ["subscribe", "history"]}`.
//!
//! Tokens Tidings issues carry a random `jti` and an `iat` with millisecond precision (a JWT
//! NumericDate may have a fraction), so a token issued right after its subject was revoked is
//! told apart from the ones before.
//!
//! Each key is pinned to its algorithm, so a token cannot choose how it is checked (`alg: none`
//! and HS256-signed-with-a-public-key are refused).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::grant::{ApiKey, ChannelPattern, Grant, Operation, Principal, TokenId};
use crate::revocation::Revocations;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;
/// Longest lifetime `POST /v1/tokens` issues.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime `POST /v1/tokens` issues when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Why a token was refused. The text goes to the client; it never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted; use HS256, RS256, ES256 or EdDSA")]
    Algorithm(String),
    #[error("no key matches the token's `kid` and algorithm")]
    UnknownKey,
    #[error("the token has expired; fetch a new one")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's audience or issuer is not this server's")]
    WrongAudienceOrIssuer,
    #[error("the token's claims are invalid: {0}")]
    Claims(String),
    #[error("the token was revoked; fetch a new one")]
    Revoked,
}

/// A public key that verifies tokens.
#[derive(Clone)]
pub struct PublicKey {
    /// Matched against the token header's `kid` when both have one.
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The claims Tidings reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Seconds since the Unix epoch, possibly with a fraction (Tidings issues milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<f64>,
    /// The token's id, by which it can be revoked alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default)]
    pub caps: BTreeMap<String, Vec<Operation>>,
}

/// Verifies tokens into principals.
pub struct TokenVerifier {
    /// API keys by id: the HS256 secret and the key's own grants (the token's ceiling).
    hs: HashMap<String, (DecodingKey, Arc<Vec<Grant>>)>,
    public: Vec<PublicKey>,
    audience: Option<String>,
    issuer: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenVerifier {
    /// Build from the API keys (HS256) and the configured public keys.
    pub fn new(
        keys: &[ApiKey],
        public: Vec<PublicKey>,
        audience: Option<String>,
        issuer: Option<String>,
    ) -> Self {
        let hs = keys
            .iter()
            .map(|k| {
                (
                    k.id.clone(),
                    (
                        DecodingKey::from_secret(k.secret.as_bytes()),
                        Arc::new(k.grants.clone()),
                    ),
                )
            })
            .collect();
        TokenVerifier {
            hs,
            public,
            audience,
            issuer,
        }
    }

    /// Check a token and return who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => {
                TokenError::Algorithm("in its header".into())
            }
            _ => TokenError::Malformed,
        })?;
        let (key, ceiling) = match header.alg {
            Algorithm::HS256 => {
                let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
                let (key, grants) = self.hs.get(kid).ok_or(TokenError::UnknownKey)?;
                (key.clone(), Some(grants.clone()))
            }
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let key = self
                    .public
                    .iter()
                    .find(|k| {
                        k.algorithm == header.alg
                            && match (&k.kid, &header.kid) {
                                (Some(a), Some(b)) => a == b,
                                _ => true,
                            }
                    })
                    .ok_or(TokenError::UnknownKey)?;
                (key.key.clone(), None)
            }
            other => return Err(TokenError::Algorithm(format!("{other:?}"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidKeyFormat => {
                    TokenError::Signature
                }
                K::InvalidAudience | K::InvalidIssuer => TokenError::WrongAudienceOrIssuer,
                K::MissingRequiredClaim(c) => TokenError::Claims(format!("`{c}` is required")),
                K::Json(e) => TokenError::Claims(e.to_string()),
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(TokenError::Claims("`sub` must be 1 to 255 bytes".into()));
        }
        let grants = grants_from_caps(&claims.caps).map_err(TokenError::Claims)?;
        if claims.jti.as_ref().is_some_and(|j| j.len() > 255) {
            return Err(TokenError::Claims("`jti` must be at most 255 bytes".into()));
        }
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp);
        let id = TokenId {
            jti: claims.jti.as_deref().map(Arc::from),
            // A negative or absurd `iat` counts as long ago: covered by any revocation.
            issued_at_ms: claims
                .iat
                .map(|s| (s * 1000.0).round().clamp(0.0, u64::MAX as f64) as u64),
        };
        Ok(Principal::token(
            &claims.sub,
            grants,
            ceiling,
            expires_at,
            id,
        ))
    }
}

/// Turn a `caps` claim into grants, refusing bad patterns.
pub fn grants_from_caps(caps: &BTreeMap<String, Vec<Operation>>) -> Result<Vec<Grant>, String> {
    caps.iter()
        .map(|(pattern, ops)| {
            Ok(Grant {
                pattern: ChannelPattern::parse(pattern).map_err(|e| e.to_string())?,
                operations: ops.iter().copied().collect(),
            })
        })
        .collect()
}

/// What `POST /v1/tokens` was asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Client id; defaults to the key id.
    #[serde(default)]
    pub subject: Option<String>,
    /// Lifetime, e.g. "15m"; default 1h, at most 24h.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Capabilities, at most the key's; default: the key's.
    #[serde(default)]
    pub caps: Option<BTreeMap<String, Vec<Operation>>>,
}

/// Why `POST /v1/tokens` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Invalid(String),
    #[error("the key does not have {op:?} on every channel matching {pattern:?}; a token can never do more than its key")]
    Escalation { pattern: String, op: Operation },
}

/// A token `POST /v1/tokens` signed.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// Its `jti`, by which it can be revoked alone.
    pub jti: String,
}

/// Sign an HS256 token with `key`, capabilities at most the key's. Its `iat` falls after any
/// revocation of its subject in `revocations`, so the new token is not covered by it.
pub fn issue(
    key: &ApiKey,
    req: TokenRequest,
    revocations: &Revocations,
) -> Result<Issued, IssueError> {
    let ttl = req.ttl.unwrap_or(DEFAULT_TTL);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(IssueError::Invalid(format!(
            "`ttl` must be between 1s and {}",
            humantime::format_duration(MAX_TTL)
        )));
    }
    let subject = req.subject.unwrap_or_else(|| key.id.clone());
    if subject.is_empty() || subject.len() > 255 {
        return Err(IssueError::Invalid(
            "`subject` must be 1 to 255 bytes".into(),
        ));
    }
    let caps = match req.caps {
        Some(caps) => {
            let asked = grants_from_caps(&caps).map_err(IssueError::Invalid)?;
            for g in &asked {
                for op in Operation::ALL {
                    if g.operations.contains(op)
                        && !key
                            .grants
                            .iter()
                            .any(|k| k.operations.contains(op) && k.pattern.covers(&g.pattern))
                    {
                        return Err(IssueError::Escalation {
                            pattern: g.pattern.as_str().to_owned(),
                            op,
                        });
                    }
                }
            }
            caps
        }
        None => key
            .grants
            .iter()
            .map(|g| {
                (
                    g.pattern.as_str().to_owned(),
                    Operation::ALL
                        .into_iter()
                        .filter(|op| g.operations.contains(*op))
                        .collect(),
                )
            })
            .collect(),
    };
    let issued_ms = revocations.earliest_issue_ms(&subject);
    let exp = now_secs() + ttl.as_secs().max(1);
    let jti = format!("{:032x}", rand::random::<u128>());
    let claims = Claims {
        sub: subject,
        exp,
        nbf: None,
        iat: Some(issued_ms as f64 / 1000.0),
        jti: Some(jti.clone()),
        aud: None,
        iss: None,
        caps,
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.id.clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(key.secret.as_bytes()),
    )
    .map_err(|e| IssueError::Invalid(format!("cannot sign: {e}")))?;
    Ok(Issued {
        token,
        expires_at: exp,
        jti,
    })
}

/// Load public keys from PEM files and a JWKS file.
pub fn load_public_keys(
    pem: &[(Option<String>, Algorithm, String)],
    jwks: Option<&str>,
) -> Result<Vec<PublicKey>, String> {
    let mut out = Vec::new();
    for (kid, alg, text) in pem {
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(text.as_bytes()),
            Algorithm::ES256 => DecodingKey::from_ec_pem(text.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(text.as_bytes()),
            other => {
                return Err(format!(
                    "algorithm {other:?} is not accepted for public keys"
                ))
            }
        }
        .map_err(|e| format!("the PEM does not hold a {alg:?} public key: {e}"))?;
        out.push(PublicKey {
            kid: kid.clone(),
            algorithm: *alg,
            key,
        });
    }
    if let Some(text) = jwks {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        for jwk in &set.keys {
            let algorithm = match jwk.common.key_algorithm {
                Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
                Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                other => {
                    return Err(format!(
                        "JWKS key {:?} has algorithm {other:?}; each key needs `alg` RS256, ES256 or EdDSA",
                        jwk.common.key_id
                    ))
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key unusable: {e}"))?;
            out.push(PublicKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
    }
    Ok(out)
}
