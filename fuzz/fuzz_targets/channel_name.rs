//! Channel names (`tidings::channel`): every name a client, a token or a connector sends.
//!
//! Properties: a name that parses is 1 to 255 bytes, round-trips through its text, has only
//! non-empty segments of the allowed characters, and its namespace is its first segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::channel::{namespace_of, ChannelName, MAX_CHANNEL_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = ChannelName::parse(text) else {
        return;
    };
    assert_eq!(name.as_str(), text);
    assert!(!text.is_empty() && text.len() <= MAX_CHANNEL_LEN);
    for segment in text.split(':') {
        assert!(!segment.is_empty(), "{text:?}");
        assert!(
            segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.@=+".contains(&b)),
            "{text:?}"
        );
    }
    assert_eq!(ChannelName::parse(name.as_str()).as_ref(), Ok(&name));
    assert_eq!(name.namespace(), namespace_of(text));
    assert!(!name.namespace().contains(':'));
    assert!(text.starts_with(name.namespace()));
});
