//! pgoutput messages (`tidings_connector_postgres::pgoutput::decode`): every XLogData payload
//! the replication connection receives.
//!
//! Properties: a message that decodes, written back in the protocol's layout, is no longer
//! than the input and decodes to the same message; an LSN that parses prints and parses back to
//! itself.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidings_connector_postgres::pgoutput::{
    decode, format_lsn, parse_lsn, Message, Relation, Tuple, Value,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(lsn) = parse_lsn(text) {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn), "{text:?}");
        }
    }
    let input = Bytes::copy_from_slice(data);
    let Ok(message) = decode(&input) else {
        return;
    };
    let written = encode(&message);
    assert!(written.len() <= data.len(), "{message:?}");
    assert_eq!(decode(&Bytes::from(written)).as_ref(), Ok(&message));
    if let Message::Insert { new, .. } | Message::Update { new, .. } = &message {
        for value in &new.0 {
            // Text that is not UTF-8 is an error, never a panic.
            let _ = value.as_text();
        }
    }
});

/// The message in the layout pgoutput sends (the decoder's inverse).
fn encode(m: &Message) -> Vec<u8> {
    let mut w = W(Vec::new());
    match m {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => {
            w.u8(b'B');
            w.put(&final_lsn.to_be_bytes());
            w.put(&commit_time.to_be_bytes());
            w.put(&xid.to_be_bytes());
        }
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } => {
            w.u8(b'C');
            w.u8(*flags);
            w.put(&commit_lsn.to_be_bytes());
            w.put(&end_lsn.to_be_bytes());
            w.put(&commit_time.to_be_bytes());
        }
        Message::Origin { commit_lsn, name } => {
            w.u8(b'O');
            w.put(&commit_lsn.to_be_bytes());
            w.s(name);
        }
        Message::Relation(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        }) => {
            w.u8(b'R');
            w.put(&oid.to_be_bytes());
            w.s(namespace);
            w.s(name);
            w.u8(*replica_identity);
            w.put(&(columns.len() as i16).to_be_bytes());
            for c in columns {
                w.u8(u8::from(c.key));
                w.s(&c.name);
                w.put(&c.type_oid.to_be_bytes());
                w.put(&c.type_modifier.to_be_bytes());
            }
        }
        Message::Type {
            oid,
            namespace,
            name,
        } => {
            w.u8(b'Y');
            w.put(&oid.to_be_bytes());
            w.s(namespace);
            w.s(name);
        }
        Message::Insert { relation, new } => {
            w.u8(b'I');
            w.put(&relation.to_be_bytes());
            w.u8(b'N');
            w.tuple(new);
        }
        Message::Update { relation, old, new } => {
            w.u8(b'U');
            w.put(&relation.to_be_bytes());
            if let Some(old) = old {
                w.u8(b'O');
                w.tuple(old);
            }
            w.u8(b'N');
            w.tuple(new);
        }
        Message::Delete { relation, old } => {
            w.u8(b'D');
            w.put(&relation.to_be_bytes());
            w.u8(b'K');
            w.tuple(old);
        }
        Message::Truncate { options, relations } => {
            w.u8(b'T');
            w.put(&(relations.len() as i32).to_be_bytes());
            w.u8(*options);
            for r in relations {
                w.put(&r.to_be_bytes());
            }
        }
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            w.u8(b'M');
            w.u8(u8::from(*transactional));
            w.put(&lsn.to_be_bytes());
            w.s(prefix);
            w.put(&(content.len() as i32).to_be_bytes());
            w.put(content);
        }
    }
    w.0
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn put(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn s(&mut self, s: &str) {
        self.put(s.as_bytes());
        self.u8(0);
    }
    fn tuple(&mut self, t: &Tuple) {
        self.put(&(t.0.len() as i16).to_be_bytes());
        for v in &t.0 {
            match v {
                Value::Null => self.u8(b'n'),
                Value::UnchangedToast => self.u8(b'u'),
                Value::Text(b) | Value::Binary(b) => {
                    self.u8(if matches!(v, Value::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    self.put(&(b.len() as i32).to_be_bytes());
                    self.put(b);
                }
            }
        }
    }
}
