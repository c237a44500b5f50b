//! Channel templates (`tidings_connectors_core::route`), read from connector configuration and
//! rendered against every change a connector reads.
//!
//! The input is a template, a NUL byte, and a JSON document. Properties: a template that parses
//! keeps its text, names its fields as they are written, and rendered against any document gives
//! either a channel name the server accepts (or only refuses for its length) or a poison error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::channel::{ChannelName, ChannelNameError};
use tidings_connectors_core::route::ChannelTemplate;

fuzz_target!(|data: &[u8]| {
    let (template, doc) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    let Ok(template) = std::str::from_utf8(template) else {
        return;
    };
    let Ok(t) = ChannelTemplate::parse(template) else {
        return;
    };
    assert_eq!(t.as_str(), template);
    for field in t.fields() {
        assert!(
            template.contains(&format!("{{{field}}}")),
            "{template:?}: {field:?}"
        );
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(doc) else {
        return;
    };
    if let Ok(channel) = t.render(&doc) {
        match ChannelName::parse(&channel) {
            Ok(_) | Err(ChannelNameError::TooLong(_)) => {}
            Err(e) => panic!("{template:?} rendered {channel:?}, which is no channel name: {e}"),
        }
    }
});
