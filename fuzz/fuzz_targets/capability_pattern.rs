//! Capability patterns (`tidings::grant::ChannelPattern`), read from configuration and from
//! every token's `caps` claim.
//!
//! The input is up to three lines: a pattern `p`, a pattern `q` and a channel `c`. Properties:
//! a pattern covers itself; `covers` is sound (`p` covers `q` and `q` matches `c` means `p`
//! matches `c`); a pattern without `*` (and short enough) is a channel name that matches
//! exactly itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::channel::{ChannelName, MAX_CHANNEL_LEN};
use tidings::grant::ChannelPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let Some(Ok(p)) = lines.next().map(ChannelPattern::parse) else {
        return;
    };
    assert!(p.covers(&p), "{p:?} must cover itself");
    // Segments are checked, not the length: a longer pattern matches no channel.
    if !p.as_str().contains('*') && p.as_str().len() <= MAX_CHANNEL_LEN {
        assert!(ChannelName::parse(p.as_str()).is_ok(), "{p:?}");
        assert!(p.matches(p.as_str()), "{p:?}");
    }
    let q = lines.next().map(ChannelPattern::parse);
    let c = lines.next().map(ChannelName::parse);
    if let Some(Ok(c)) = &c {
        let c = c.as_str();
        if !p.as_str().contains('*') {
            assert_eq!(p.matches(c), p.as_str() == c, "{p:?} on {c:?}");
        }
        if let Some(Ok(q)) = &q {
            if p.covers(q) && q.matches(c) {
                assert!(
                    p.matches(c),
                    "{p:?} covers {q:?}, which matches {c:?}, but {p:?} does not"
                );
            }
        }
    }
});
