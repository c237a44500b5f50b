//! Tokens (`tidings::token::TokenVerifier::verify`): the `token` of every connection, request
//! and `auth` frame, checked against a fixed set of keys.
//!
//! The first input byte picks the mode: the rest verbatim as the token, or the rest as the
//! claims (header, when a `\n` splits them off) of a token signed with the API key's secret, so
//! the fuzzer reaches the claims and capability checks behind the signature. Properties: a
//! token verifies only if signed with the key, its subject is 1 to 255 bytes, and it never
//! allows more than its key's own grants (`store:*` here).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tidings::grant::{ApiKey, ChannelPattern, Grant, Operation, Operations};
use tidings::token::TokenVerifier;

const SECRET: &str = "fuzz-secret-0123456789abcdef0123456789";

fn verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = ApiKey {
            id: "k1".into(),
            secret: SECRET.into(),
            grants: vec![Grant {
                pattern: ChannelPattern::parse("store:*").unwrap(),
                operations: Operations::all(),
            }],
        };
        TokenVerifier::new(&[key], Vec::new(), None, None)
    })
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (token, signed_by_us) = if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        (text.to_owned(), false)
    } else {
        let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
            Some(at) if mode & 2 == 2 => (&rest[..at], &rest[at + 1..]),
            _ => (&br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#[..], rest),
        };
        (signed(header, claims), true)
    };
    let Ok(principal) = verifier().verify(&token) else {
        return;
    };
    if !signed_by_us {
        // Only a token that is ours re-signed verifies: the signature checks out.
        let mut parts = token.splitn(3, '.');
        let (h, c) = (parts.next().unwrap(), parts.next().unwrap());
        let h = URL_SAFE_NO_PAD
            .decode(h)
            .expect("a verified header is base64url");
        let c = URL_SAFE_NO_PAD
            .decode(c)
            .expect("verified claims are base64url");
        assert_eq!(
            signed(&h, &c),
            token,
            "a token verified with another signature"
        );
    }
    let subject = &*principal.subject;
    assert!(!subject.is_empty() && subject.len() <= 255, "{subject:?}");
    for op in Operation::ALL {
        for channel in ["other", "other:1", "store", "storefront:1", "a:store:1"] {
            assert!(
                !principal.allows(op, channel),
                "{token:?} allows {op:?} on {channel:?} beyond its key"
            );
        }
    }
});
