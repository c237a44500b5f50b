//! Channel names, checked before anything is sent (`docs/protocol.md`, "Concepts").

use crate::error::Error;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;

/// Check a channel name: 1–255 bytes of `:`-separated, non-empty segments made of ASCII
/// letters, digits and `_ - . @ = +`.
pub fn validate_channel(name: &str) -> Result<(), Error> {
    let bad = |problem| {
        Err(Error::InvalidChannel {
            channel: name.chars().take(300).collect(),
            problem,
        })
    };
    if name.is_empty() {
        return bad("a channel name cannot be empty");
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return bad("a channel name is at most 255 bytes");
    }
    if name.split(':').any(str::is_empty) {
        return bad("every `:`-separated segment must be non-empty");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":_-.@=+".contains(&b))
    {
        return bad("use only ASCII letters, digits, `:` and `_ - . @ = +`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in [
            "store:42",
            "user:alice@example.com:inbox",
            "a",
            "a=b+c.d_e-f",
        ] {
            validate_channel(name).unwrap();
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_rule() {
        for name in ["", "a::b", ":a", "a:", "a b", "a,b", "é", &"x".repeat(256)] {
            let e = validate_channel(name).unwrap_err();
            assert!(matches!(e, Error::InvalidChannel { .. }), "{name}: {e}");
        }
    }
}
