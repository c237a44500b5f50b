//! Channel names: what a valid one looks like, and its namespace.
//!
//! A channel name is 1 to 255 bytes of segments separated by `:`. Each segment is non-empty and
//! made of ASCII letters, digits and `_ - . @ = +`. The namespace is the first segment: retention
//! and public access are configured per namespace.

use std::fmt;
use std::sync::Arc;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Why a channel name was refused; the text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {0} bytes long; the limit is {MAX_CHANNEL_LEN}")]
    TooLong(usize),
    #[error(
        "channel name has an empty segment (segments are separated by ':' and must not be empty)"
    )]
    EmptySegment,
    #[error("channel name contains {0:?}; use letters, digits and _ - . @ = + in segments separated by ':'")]
    BadChar(char),
}

/// A validated channel name, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validate `name`.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        validate(name)?;
        Ok(ChannelName(Arc::from(name)))
    }

    /// Wrap a name that was validated before (a key taken from a map of validated names).
    pub(crate) fn from_validated(name: Arc<str>) -> Self {
        debug_assert!(validate(&name).is_ok());
        ChannelName(name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for maps keyed by channel.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// The namespace: the part before the first `:` (the whole name when there is none).
    pub fn namespace(&self) -> &str {
        namespace_of(&self.0)
    }
}

/// The namespace of a channel name: the part before the first `:`.
pub fn namespace_of(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

fn validate(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::TooLong(name.len()));
    }
    for segment in name.split(':') {
        if segment.is_empty() {
            return Err(ChannelNameError::EmptySegment);
        }
        if let Some(c) = segment.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '=' | '+'))
        }) {
            return Err(ChannelNameError::BadChar(c));
        }
    }
    Ok(())
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "orders",
            "store:42",
            "user:alice@example.com:inbox",
            "a-b_c.d=e+f",
        ] {
            ChannelName::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a::b"),
            Err(ChannelNameError::EmptySegment)
        );
        assert_eq!(
            ChannelName::parse(":a"),
            Err(ChannelNameError::EmptySegment)
        );
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::BadChar(' '))
        );
        assert_eq!(
            ChannelName::parse("store:*"),
            Err(ChannelNameError::BadChar('*'))
        );
        assert_eq!(
            ChannelName::parse("a/b"),
            Err(ChannelNameError::BadChar('/'))
        );
        assert_eq!(ChannelName::parse("é"), Err(ChannelNameError::BadChar('é')));
        let long = "x".repeat(256);
        assert_eq!(
            ChannelName::parse(&long),
            Err(ChannelNameError::TooLong(256))
        );
    }

    #[test]
    fn namespace_is_the_first_segment() {
        assert_eq!(
            ChannelName::parse("store:42:items").unwrap().namespace(),
            "store"
        );
        assert_eq!(ChannelName::parse("plain").unwrap().namespace(), "plain");
    }
}
