//! SSE and long-poll positions (`from=` and the `Last-Event-ID` header, both read by
//! `tidings::server::parse_positions`).
//!
//! Properties: parsed positions name valid channels and non-empty epochs, and writing them back
//! with `format_positions` parses to the same positions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::server::{format_positions, parse_positions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(positions) = parse_positions(text) else {
        return;
    };
    for (_, p) in &positions {
        assert!(!p.epoch.is_empty(), "{text:?}");
        assert!(!p.epoch.contains(','), "{text:?}");
    }
    let written = format_positions(
        positions
            .iter()
            .map(|(c, p)| (c, p.epoch.as_str(), p.serial)),
    );
    let again = parse_positions(&written)
        .unwrap_or_else(|e| panic!("{text:?} wrote {written:?}, which does not parse: {e:?}"));
    assert_eq!(again, positions, "{text:?} wrote {written:?}");
});
