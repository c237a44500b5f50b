//! Subject names in the `TIDINGS` stream, and the escaping that maps channel and connector
//! names onto subject tokens and back.
//!
//! A channel `ns:rest` is `tdg.m.<ns>.<ns:rest>` (messages and epoch markers), its epoch record
//! `tdg.ep.<ns>.<ns:rest>`; a connector's checkpoint is `tdg.cp.<name>`. The stream republishes
//! `tdg.m.>` to `tdg.live.>`, which every node subscribes to. Tokens keep letters, digits and
//! `_ - : @ = +`; every other byte (a channel's `.`) becomes `~` and two hex digits, so the
//! mapping is reversible and a token never holds `.`, `*`, `>` or whitespace.

use crate::channel::ChannelName;

/// The stream every node shares.
pub const STREAM: &str = "TIDINGS";

/// Every subject the stream stores.
pub const STORED: [&str; 3] = ["tdg.m.>", "tdg.cp.>", "tdg.ep.>"];
/// What the stream republishes, and where to.
pub const REPUBLISH_FROM: &str = "tdg.m.>";
pub const REPUBLISH_TO: &str = "tdg.live.>";
/// What each node subscribes to: every republished message.
pub const LIVE: &str = "tdg.live.>";

/// `name` as one subject token.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'@' | b'=' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02x}"));
        }
    }
    out
}

/// The name a token came from (`None` if it is not one of ours).
pub fn untoken(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of `channel`'s messages.
pub fn messages(channel: &ChannelName) -> String {
    format!(
        "tdg.m.{}.{}",
        token(channel.namespace()),
        token(channel.as_str())
    )
}

/// The subject of `channel`'s epoch record.
pub fn epoch(channel: &ChannelName) -> String {
    format!(
        "tdg.ep.{}.{}",
        token(channel.namespace()),
        token(channel.as_str())
    )
}

/// The subject of a connector's checkpoint.
pub fn checkpoint(source: &str) -> String {
    format!("tdg.cp.{}", token(source))
}

/// The channel a republished subject (`tdg.live.<ns>.<channel>`) belongs to.
pub fn live_channel(subject: &str) -> Option<ChannelName> {
    let rest = subject.strip_prefix("tdg.live.")?;
    let (_, name) = rest.split_once('.')?;
    ChannelName::parse(&untoken(name)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_map_to_subjects_and_back() {
        for name in ["a", "ns:x.y", "store:1:a.b.c", "q@=+_-:z", "a.b"] {
            let ch = ChannelName::parse(name).unwrap();
            let subject = messages(&ch);
            assert_eq!(subject.matches('.').count(), 3, "{subject}: four tokens");
            assert!(!subject.contains(['*', '>', ' ']));
            let live = subject.replacen("tdg.m.", "tdg.live.", 1);
            assert_eq!(live_channel(&live).as_ref(), Some(&ch), "{subject}");
        }
        assert_eq!(untoken("a~2eb").as_deref(), Some("a.b"));
        assert_eq!(untoken("a~2"), None);
        assert_eq!(checkpoint("my pg.feed"), "tdg.cp.my~20pg~2efeed");
    }
}
