//! Decoding `pgoutput`, the logical decoding output plugin built into Postgres (protocol
//! version 1, text tuple format).
//!
//! Each XLogData payload carries one message. We decode every message type protocol 1 can send
//! (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message) so an
//! unexpected byte is a clear error, never a silently skipped change.
//! Reference: "Logical Replication Message Formats" in the Postgres documentation.

use bytes::Bytes;

/// A WAL position.
pub type Lsn = u64;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A transaction starts; every change until the matching commit belongs to it.
    Begin {
        /// LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        xid: u32,
    },
    /// The transaction ends.
    Commit {
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record: where a restart resumes after this transaction.
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// The transaction was replicated into this server from another origin.
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    /// The shape of a table, sent before the first change to it (and again after DDL).
    Relation(Relation),
    /// A non-built-in data type used by a relation.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        /// The old key (`K`) or whole old row (`O`), when the replica identity provides it.
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relations: Vec<u32>,
    },
    /// A logical decoding message from `pg_logical_emit_message`.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// A table as pgoutput describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A row's values, in column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tuple(pub Vec<Value>);

/// One column value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A TOASTed value that did not change; its content is not in the WAL record.
    UnchangedToast,
    /// The value in Postgres's text output format.
    Text(Bytes),
    /// The value in binary format (only when `binary 'true'` was requested).
    Binary(Bytes),
}

impl Value {
    /// The value as UTF-8 text, `None` for NULL or an unchanged TOAST value.
    pub fn as_text(&self) -> Result<Option<&str>, DecodeError> {
        match self {
            Value::Text(b) => std::str::from_utf8(b)
                .map(Some)
                .map_err(|_| DecodeError("a text value is not valid UTF-8".into())),
            Value::Binary(_) => Err(DecodeError(
                "a binary value where text was expected (binary mode is not used)".into(),
            )),
            Value::Null | Value::UnchangedToast => Ok(None),
        }
    }
}

/// A pgoutput message that does not decode: a protocol mismatch or a bug, never data to skip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode a pgoutput message: {0}")]
pub struct DecodeError(pub String);

/// Decode one XLogData payload.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = r.u8()?;
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.u64()?,
            name: r.string()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                columns.push(Column {
                    key: r.u8()? & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!(
                    "Update: expected a new tuple ('N'), found {:?}",
                    kind as char
                )));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError(format!(
                    "Delete: expected an old tuple ('K' or 'O'), found {:?}",
                    kind as char
                )));
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.i32()?;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity(n.clamp(0, 1024) as usize);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.string()?;
            let len = r.i32()?;
            let len = usize::try_from(len)
                .map_err(|_| DecodeError("Message: negative content length".into()))?;
            Message::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        other => {
            return Err(DecodeError(format!(
                "unknown message type {:?} (is proto_version 1 in use?)",
                other as char
            )))
        }
    };
    Ok(message)
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| DecodeError(format!("truncated at byte {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn expect(&mut self, tag: u8) -> Result<(), DecodeError> {
        let got = self.u8()?;
        if got == tag {
            Ok(())
        } else {
            Err(DecodeError(format!(
                "expected {:?}, found {:?}",
                tag as char, got as char
            )))
        }
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("a string is not NUL-terminated".into()))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| DecodeError("a name is not valid UTF-8".into()))?
            .to_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        let mut values = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = usize::try_from(self.i32()?)
                        .map_err(|_| DecodeError("negative column length".into()))?;
                    let bytes = self.bytes(len)?;
                    if kind == b't' {
                        Value::Text(bytes)
                    } else {
                        Value::Binary(bytes)
                    }
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown column kind {:?}",
                        other as char
                    )))
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }
}

/// `0/16B3748` style, as Postgres prints an LSN.
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parse `0/16B3748` style.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds pgoutput messages the way the server lays them out.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut w = self.u8(b't').i32(v.len() as i32);
            w.0.extend(v.as_bytes());
            w
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    #[test]
    fn begin_and_commit() {
        let b = W::default().u8(b'B').i64(0x100).i64(5).i32(77).done();
        assert_eq!(
            decode(&b).unwrap(),
            Message::Begin {
                final_lsn: 0x100,
                commit_time: 5,
                xid: 77
            }
        );
        let c = W::default()
            .u8(b'C')
            .u8(0)
            .i64(0x100)
            .i64(0x130)
            .i64(5)
            .done();
        assert_eq!(
            decode(&c).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 0x100,
                end_lsn: 0x130,
                commit_time: 5
            }
        );
    }

    #[test]
    fn relation_and_insert() {
        let r = W::default()
            .u8(b'R')
            .i32(16400)
            .s("tidings")
            .s("outbox")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .s("id")
            .i32(20)
            .i32(-1)
            .u8(0)
            .s("channel")
            .i32(25)
            .i32(-1)
            .done();
        let Message::Relation(rel) = decode(&r).unwrap() else {
            panic!("a relation")
        };
        assert_eq!(rel.namespace, "tidings");
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].name, "channel");

        let i = W::default()
            .u8(b'I')
            .i32(16400)
            .u8(b'N')
            .i16(3)
            .text("1")
            .u8(b'n')
            .u8(b'u')
            .done();
        let Message::Insert { relation, new } = decode(&i).unwrap() else {
            panic!("an insert")
        };
        assert_eq!(relation, 16400);
        assert_eq!(new.0[0].as_text().unwrap(), Some("1"));
        assert_eq!(new.0[1], Value::Null);
        assert_eq!(new.0[2], Value::UnchangedToast);
    }

    #[test]
    fn update_delete_truncate_message_type_origin() {
        let u = W::default()
            .u8(b'U')
            .i32(1)
            .u8(b'K')
            .i16(1)
            .text("7")
            .u8(b'N')
            .i16(1)
            .text("8")
            .done();
        assert!(matches!(
            decode(&u).unwrap(),
            Message::Update { old: Some(_), .. }
        ));
        let u = W::default().u8(b'U').i32(1).u8(b'N').i16(0).done();
        assert!(matches!(
            decode(&u).unwrap(),
            Message::Update { old: None, .. }
        ));
        let d = W::default()
            .u8(b'D')
            .i32(1)
            .u8(b'O')
            .i16(1)
            .text("7")
            .done();
        assert!(matches!(decode(&d).unwrap(), Message::Delete { .. }));
        let t = W::default().u8(b'T').i32(2).u8(1).i32(5).i32(6).done();
        assert_eq!(
            decode(&t).unwrap(),
            Message::Truncate {
                options: 1,
                relations: vec![5, 6]
            }
        );
        let mut m = W::default().u8(b'M').u8(1).i64(0x42).s("tidings").i32(2);
        m.0.extend(b"{}");
        assert_eq!(
            decode(&m.done()).unwrap(),
            Message::Message {
                transactional: true,
                lsn: 0x42,
                prefix: "tidings".into(),
                content: Bytes::from_static(b"{}")
            }
        );
        let y = W::default().u8(b'Y').i32(9).s("public").s("mood").done();
        assert!(matches!(decode(&y).unwrap(), Message::Type { oid: 9, .. }));
        let o = W::default().u8(b'O').i64(3).s("upstream").done();
        assert!(matches!(decode(&o).unwrap(), Message::Origin { .. }));
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(decode(&Bytes::from_static(b"B\0\0")).is_err());
        assert!(decode(&Bytes::from_static(b"Z")).is_err());
        let i = W::default()
            .u8(b'I')
            .i32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(99)
            .done();
        assert!(decode(&i).unwrap_err().0.contains("truncated"));
        assert!(decode(&Bytes::new()).is_err());
    }

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nope"), None);
    }
}
