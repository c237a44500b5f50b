//! Raw BSON to Extended JSON (`tidings_connector_mongodb::extjson`): every change document the
//! MongoDB driver hands the connector, written as JSON text from its bytes.
//!
//! The first input byte picks relaxed or canonical; the rest is read as a BSON document.
//! Properties: the text written is valid JSON; whenever `bson` itself decodes the document, the
//! text is byte for byte what serialising `bson`'s own Extended JSON conversion gives (the
//! equivalence the extjson tests assert for chosen values); a document `bson` refuses is refused.
#![no_main]

use bson::{Bson, Document, RawDocument};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize as _;
use tidings_connector_mongodb::extjson::{text, Doc};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let canonical = mode & 1 == 1;
    let Ok(raw) = RawDocument::from_bytes(bytes) else {
        return;
    };
    let ours = text(&Doc {
        doc: raw,
        canonical,
        skip: &[],
    });
    if let Ok(t) = &ours {
        // Deep documents are valid too: no recursion limit when checking.
        let mut de = serde_json::Deserializer::from_str(t.get());
        de.disable_recursion_limit();
        IgnoredAny::deserialize(&mut de).expect("Extended JSON text is JSON");
        de.end().expect("nothing after the JSON value");
    }
    match Document::try_from(raw) {
        Ok(doc) => {
            let b = Bson::Document(doc);
            let expected = if canonical {
                b.into_canonical_extjson()
            } else {
                b.into_relaxed_extjson()
            };
            let expected = serde_json::to_string(&expected).unwrap();
            match &ours {
                Ok(t) => assert_eq!(t.get(), expected, "canonical: {canonical}"),
                Err(e) => panic!("bson decodes it ({expected}), extjson refused it: {e}"),
            }
        }
        Err(e) => assert!(
            ours.is_err(),
            "bson refused it ({e}), extjson wrote {ours:?}"
        ),
    }
});
