//! Raw BSON written as Extended JSON text, straight from the bytes the driver received.
//!
//! [`Ext`] and [`Doc`] implement [`Serialize`] over a [`RawBsonRef`]/[`RawDocument`], so
//! `serde_json` writes the text itself (its string escaping, its number formatting) without a
//! [`serde_json::Value`] tree in between: the text is byte for byte what serialising `bson`'s own
//! `into_relaxed_extjson`/`into_canonical_extjson` of the decoded value gives, key order
//! included. The common types are written here; the rare ones are decoded and converted by
//! `bson`.
//!
//! A value that is not valid BSON fails the serialisation with `bson`'s error as its message.

use std::collections::hash_map::{Entry, HashMap};

use bson::{Bson, RawBsonRef, RawDocument};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// A raw BSON value, written as canonical or relaxed Extended JSON.
#[derive(Clone, Copy)]
pub struct Ext<'a> {
    pub value: RawBsonRef<'a>,
    /// Canonical Extended JSON; relaxed when false.
    pub canonical: bool,
}

/// A raw document written as a JSON object, leaving out the fields named in `skip`.
#[derive(Clone, Copy)]
pub struct Doc<'a> {
    pub doc: &'a RawDocument,
    /// Canonical Extended JSON; relaxed when false.
    pub canonical: bool,
    /// Top-level fields left out (the routing fields a pipeline set).
    pub skip: &'a [&'a str],
}

/// `value`'s JSON text. `Err` holds what `bson` said about bytes that are not BSON.
pub fn text(value: &impl Serialize) -> Result<Box<RawValue>, serde_json::Error> {
    // No second validation: `serde_json` wrote the text itself.
    serde_json::value::to_raw_value(value)
}

impl Serialize for Ext<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let canonical = self.canonical;
        match self.value {
            RawBsonRef::Document(doc) => Doc {
                doc,
                canonical,
                skip: &[],
            }
            .serialize(s),
            RawBsonRef::Array(a) => {
                let mut seq = s.serialize_seq(None)?;
                for item in a {
                    let value = item.map_err(S::Error::custom)?;
                    seq.serialize_element(&Ext { value, canonical })?;
                }
                seq.end()
            }
            RawBsonRef::String(v) => s.serialize_str(v),
            RawBsonRef::Boolean(b) => s.serialize_bool(b),
            RawBsonRef::Null => s.serialize_unit(),
            RawBsonRef::Int32(i) if canonical => single(s, "$numberInt", &Text(i)),
            RawBsonRef::Int32(i) => s.serialize_i32(i),
            RawBsonRef::Int64(i) if canonical => single(s, "$numberLong", &Text(i)),
            RawBsonRef::Int64(i) => s.serialize_i64(i),
            RawBsonRef::Double(f) if canonical && f.is_normal() => {
                single(s, "$numberDouble", &Text(CanonicalDouble(f)))
            }
            RawBsonRef::Double(f) if canonical && f == 0.0 => single(
                s,
                "$numberDouble",
                if f.is_sign_negative() { "-0.0" } else { "0.0" },
            ),
            // Subnormal canonical doubles are written as relaxed ones, as `bson` does.
            RawBsonRef::Double(f) if f.is_finite() => s.serialize_f64(f),
            // `{"$numberDouble": "NaN"}` and the infinities, in `bson`'s spelling.
            RawBsonRef::Double(f) => Bson::Double(f).into_relaxed_extjson().serialize(s),
            RawBsonRef::ObjectId(oid) => {
                let mut buf = [0; 24];
                single(s, "$oid", hex(&oid.bytes(), &mut buf))
            }
            RawBsonRef::DateTime(d) => {
                let ms = d.timestamp_millis();
                if canonical || ms < 0 {
                    // Canonical dates, and relaxed ones before 1970, are milliseconds.
                    single(s, "$date", &NumberLong(ms))
                } else {
                    match rfc3339_millis(ms) {
                        Some(text) => single(s, "$date", &text),
                        // Past year 9999 `bson` has a way of its own: it writes those itself.
                        None => Bson::DateTime(d).into_relaxed_extjson().serialize(s),
                    }
                }
            }
            RawBsonRef::Timestamp(ts) => single(
                s,
                "$timestamp",
                &TimestampParts {
                    t: ts.time,
                    i: ts.increment,
                },
            ),
            // The same in both flavours: a string, never rounded through a float.
            RawBsonRef::Decimal128(d) => single(s, "$numberDecimal", &Text(d)),
            other => {
                let b = Bson::try_from(other).map_err(S::Error::custom)?;
                if canonical {
                    b.into_canonical_extjson().serialize(s)
                } else {
                    b.into_relaxed_extjson().serialize(s)
                }
            }
        }
    }
}

impl Serialize for Doc<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The fields are gathered first, so that a name given twice (MongoDB does not store
        // those, BSON allows them) is written as a JSON map holds it: in the place of the first,
        // with the value of the last. Small documents (most) on the stack, compared pairwise;
        // larger ones in a `Vec` with an index.
        const SMALL: usize = 16;
        let mut small = [("", RawBsonRef::Null); SMALL];
        let mut n = 0;
        let mut large: Option<(Vec<Field<'_>>, HashMap<&str, usize>)> = None;
        for element in self.doc {
            let (key, value) = element.map_err(S::Error::custom)?;
            if self.skip.contains(&key) {
                continue;
            }
            if let Some((fields, index)) = &mut large {
                match index.entry(key) {
                    Entry::Occupied(at) => {
                        shadowed(fields[*at.get()].1).map_err(S::Error::custom)?;
                        fields[*at.get()].1 = value;
                    }
                    Entry::Vacant(at) => {
                        at.insert(fields.len());
                        fields.push((key, value));
                    }
                }
            } else if let Some(field) = small[..n].iter_mut().find(|(k, _)| *k == key) {
                shadowed(field.1).map_err(S::Error::custom)?;
                field.1 = value;
            } else if n < SMALL {
                small[n] = (key, value);
                n += 1;
            } else {
                let mut fields = small.to_vec();
                fields.push((key, value));
                let index = fields.iter().enumerate().map(|(i, f)| (f.0, i)).collect();
                large = Some((fields, index));
            }
        }
        let fields = match &large {
            Some((fields, _)) => fields.as_slice(),
            None => &small[..n],
        };
        let mut map = s.serialize_map(Some(fields.len()))?;
        for &(key, value) in fields {
            map.serialize_entry(
                key,
                &Ext {
                    value,
                    canonical: self.canonical,
                },
            )?;
        }
        map.end()
    }
}

/// Check a value that a later one of the same name replaces, and that is so never written: the
/// document is still refused when it is not BSON, as `bson` refuses it. Rare (MongoDB does not
/// store a name twice), so converting it whole costs nothing that matters.
fn shadowed(value: RawBsonRef<'_>) -> Result<(), bson::raw::Error> {
    Bson::try_from(value).map(drop)
}

/// A document's field: its name and value.
type Field<'a> = (&'a str, RawBsonRef<'a>);

/// `{key: value}`.
fn single<S: Serializer, V: Serialize + ?Sized>(
    s: S,
    key: &str,
    value: &V,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(key, value)?;
    map.end()
}

/// `{"$numberLong": "<n>"}`.
struct NumberLong(i64);

impl Serialize for NumberLong {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        single(s, "$numberLong", &Text(self.0))
    }
}

/// A value's `Display` text as a JSON string, written by the serializer itself (`serde_json`
/// formats it straight into its output: no `String` per number).
struct Text<T>(T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A normal double as canonical Extended JSON spells it: Rust's shortest text, with `.0` when
/// it has no fraction (`bson` writes `f.to_string()` the same way).
struct CanonicalDouble(f64);

impl std::fmt::Display for CanonicalDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        if self.0.fract() == 0.0 {
            f.write_str(".0")?;
        }
        Ok(())
    }
}

/// The inside of `{"$timestamp": {"t": ..., "i": ...}}`; also the payload's `cluster_time`.
#[derive(Serialize)]
pub struct TimestampParts {
    pub t: u32,
    pub i: u32,
}

/// Lowercase hexadecimal, as `ObjectId::to_hex` writes it, into `buf`.
fn hex<'b>(bytes: &[u8; 12], buf: &'b mut [u8; 24]) -> &'b str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    // Hex digits are ASCII.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Milliseconds since the epoch as RFC 3339 in UTC, the way `bson` writes relaxed dates
/// (`2023-11-14T22:13:20.12Z`: the fraction only when not zero, without trailing zeros), for
/// years 1970 to 9999; `None` outside them.
pub fn rfc3339_millis(ms: i64) -> Option<String> {
    // 9999-12-31T23:59:59.999Z
    const LAST: i64 = 253_402_300_799_999;
    if !(0..=LAST).contains(&ms) {
        return None;
    }
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    // Days to a civil date (Howard Hinnant's algorithm), for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    let mut out = String::with_capacity(24);
    digits(&mut out, year, 4);
    out.push('-');
    digits(&mut out, month, 2);
    out.push('-');
    digits(&mut out, day, 2);
    out.push('T');
    digits(&mut out, secs / 3600, 2);
    out.push(':');
    digits(&mut out, secs / 60 % 60, 2);
    out.push(':');
    digits(&mut out, secs % 60, 2);
    if millis != 0 {
        out.push('.');
        let (mut m, mut width) = (millis, 3);
        while m % 10 == 0 {
            m /= 10;
            width -= 1;
        }
        digits(&mut out, m, width);
    }
    out.push('Z');
    Some(out)
}

/// `n` (not negative) in `width` decimal digits, zero-padded.
fn digits(out: &mut String, n: i64, width: u32) {
    for p in (0..width).rev() {
        let d = (n / 10_i64.pow(p)) % 10;
        out.push(char::from(b'0' + u8::try_from(d).unwrap_or(0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{
        doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Document,
        RawDocumentBuf, Timestamp,
    };
    use serde_json::json;

    /// `v` written from its bytes, in both flavours, against `bson`'s own conversions serialised
    /// by `serde_json`: the same text, byte for byte; and the same `Value` (what templates read).
    fn same_as_bson(v: &Bson) {
        let raw = RawDocumentBuf::from_document(&doc! {"v": v.clone()}).unwrap();
        let value = raw.get("v").unwrap().unwrap();
        for canonical in [false, true] {
            let expected = if canonical {
                v.clone().into_canonical_extjson()
            } else {
                v.clone().into_relaxed_extjson()
            };
            let ext = Ext { value, canonical };
            assert_eq!(
                text(&ext).unwrap().get(),
                serde_json::to_string(&expected).unwrap(),
                "canonical: {canonical}, {v:?}"
            );
            assert_eq!(
                serde_json::to_value(ext).unwrap(),
                expected,
                "canonical: {canonical}, {v:?}"
            );
        }
    }

    /// A value of every BSON type, and the edge cases of the ones written here.
    fn every_kind_of_value() -> Vec<Bson> {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let mut values = vec![
            Bson::String(String::new()),
            Bson::String("plain".into()),
            // Escapes: quotes, backslash, every control character, DEL, non-ASCII, astral.
            Bson::String((0u8..0x20).map(char::from).collect::<String>() + "\"\\/\u{7f}"),
            Bson::String("é ü 日本 \u{2028}\u{2029} 🎉 \u{fffd}".into()),
            Bson::Boolean(false),
            Bson::Null,
            Bson::Undefined,
            Bson::MinKey,
            Bson::MaxKey,
            Bson::ObjectId(oid),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::ObjectId(ObjectId::from_bytes([0xff; 12])),
            Bson::Int32(-1),
            Bson::Int64(0),
            Bson::Timestamp(Timestamp {
                time: 0,
                increment: u32::MAX,
            }),
            Bson::Decimal128(Decimal128::from_bytes([
                0x0c, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0x30,
            ])),
            Bson::Decimal128(Decimal128::from_bytes([0; 16])),
            Bson::RegularExpression(bson::Regex {
                pattern: "^a\"\\d+$".into(),
                options: "imsux".into(),
            }),
            Bson::JavaScriptCode("function() { return \"x\"; }".into()),
            Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
                code: "f(x)".into(),
                scope: doc! {"x": 1, "y": {"z": [1.5]}},
            }),
            Bson::Symbol("sym".into()),
            Bson::try_from(
                json!({"$dbPointer": {"$ref": "c", "$id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}}),
            )
            .unwrap(),
            Bson::Document(Document::new()),
            Bson::Array(Vec::new()),
            Bson::Array(vec![
                Bson::Array(vec![]),
                Bson::Document(doc! {}),
                Bson::Null,
            ]),
        ];
        for subtype in [
            BinarySubtype::Generic,
            BinarySubtype::Function,
            BinarySubtype::BinaryOld,
            BinarySubtype::UuidOld,
            BinarySubtype::Uuid,
            BinarySubtype::Md5,
            BinarySubtype::Encrypted,
            BinarySubtype::Column,
            BinarySubtype::Sensitive,
            BinarySubtype::UserDefined(0x80),
        ] {
            let bytes = match subtype {
                BinarySubtype::BinaryOld => vec![1, 2, 3, 4],
                BinarySubtype::Uuid | BinarySubtype::UuidOld | BinarySubtype::Md5 => vec![7; 16],
                _ => vec![0, 0xff, 0x10],
            };
            values.push(Bson::Binary(Binary { subtype, bytes }));
        }
        values.push(Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: Vec::new(),
        }));
        for f in [
            0.0,
            -0.0,
            0.1,
            24.0,
            -1.5,
            1e15,
            1e16,
            1e21,
            1e-7,
            123_456_789.123_456_79,
            f64::EPSILON,
            f64::MIN_POSITIVE,
            5e-324,
            -2.5e-310,
            f64::MAX,
            f64::MIN,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            values.push(Bson::Double(f));
        }
        for i in [i64::MIN, -1, 0, 1 << 53, i64::MAX] {
            values.push(Bson::Int64(i));
            values.push(Bson::Int32(i as i32));
        }
        // Dates: before 1970, the epoch, fractions of every length, the end of 9999 and past it.
        for ms in [
            i64::MIN,
            -62_135_596_800_000,
            -1,
            0,
            1,
            120,
            1_700_000_000_123,
            253_402_300_799_999,
            253_402_300_800_000,
            i64::MAX,
        ] {
            values.push(Bson::DateTime(DateTime::from_millis(ms)));
        }
        // Deep nesting, documents and arrays.
        let mut deep = Bson::Int32(1);
        for level in 0..40 {
            deep = if level % 2 == 0 {
                Bson::Document(doc! {"d": deep, "s": "é\n"})
            } else {
                Bson::Array(vec![deep, Bson::Double(0.5)])
            };
        }
        values.push(deep);
        // Every kind in one document, nested once more in an array.
        let mut all = Document::new();
        for (i, v) in values.iter().enumerate() {
            all.insert(format!("k{i}\u{e9}\"\n"), v.clone());
        }
        values.push(Bson::Array(vec![Bson::Document(all)]));
        values
    }

    #[test]
    fn every_type_is_written_exactly_as_bson_converts_it() {
        for v in every_kind_of_value() {
            same_as_bson(&v);
        }
    }

    #[test]
    fn documents_with_a_field_twice_are_written_as_a_json_map_holds_them() {
        // `doc!` keeps one of each: build the bytes by hand.
        let mut raw = RawDocumentBuf::new();
        raw.append("a", 1);
        raw.append("b", "x");
        raw.append("a", 2);
        raw.append("_channel", "c");
        raw.append("_channel", "d");
        let doc = Doc {
            doc: &raw,
            canonical: false,
            skip: &["_channel"],
        };
        assert_eq!(text(&doc).unwrap().get(), r#"{"a":2,"b":"x"}"#);
        // Many fields: found by hashing.
        let mut raw = RawDocumentBuf::new();
        for i in 0..40 {
            raw.append(format!("f{i}"), i);
        }
        raw.append("f3", "again");
        let doc = Doc {
            doc: &raw,
            canonical: false,
            skip: &[],
        };
        let written: serde_json::Value = serde_json::from_str(text(&doc).unwrap().get()).unwrap();
        assert_eq!(written["f3"], "again");
        assert_eq!(written.as_object().unwrap().len(), 40);
        // The same name in another document is no duplicate.
        let raw = RawDocumentBuf::from_document(&doc! {"a": 1, "b": {"a": 1}}).unwrap();
        let doc = Doc {
            doc: &raw,
            canonical: false,
            skip: &[],
        };
        assert_eq!(text(&doc).unwrap().get(), r#"{"a":1,"b":{"a":1}}"#);
    }

    /// Found by the `extjson` fuzz target: a malformed value given again under the same name
    /// was never read, so the document was written although it is not BSON.
    #[test]
    fn a_malformed_value_shadowed_by_a_later_one_still_fails() {
        let inner = bson::to_vec(&doc! {"b": "text"}).unwrap();
        let mut bad = inner.clone();
        // The string's length, made too long.
        let at = bad.windows(4).position(|w| w == [5, 0, 0, 0]).unwrap();
        bad[at] = 50;
        let mut body = Vec::new();
        for (name, value) in [(&b"a"[..], &bad), (&b"a"[..], &inner)] {
            body.push(0x03);
            body.extend(name);
            body.push(0);
            body.extend(value.iter());
        }
        body.push(0);
        let mut bytes = ((body.len() + 4) as i32).to_le_bytes().to_vec();
        bytes.extend(body);
        let doc = RawDocument::from_bytes(&bytes).unwrap();
        assert!(Document::try_from(doc).is_err());
        for canonical in [false, true] {
            let e = text(&Doc {
                doc,
                canonical,
                skip: &[],
            })
            .unwrap_err();
            assert!(e.to_string().contains("malformed"), "{e}");
        }
    }

    #[test]
    fn bytes_that_are_not_bson_fail_with_what_bson_said() {
        let mut bytes = bson::to_vec(&doc! {"a": {"b": "text"}}).unwrap();
        // The inner string's length, made too long.
        let at = bytes.windows(4).position(|w| w == [5, 0, 0, 0]).unwrap();
        bytes[at] = 50;
        let doc = RawDocument::from_bytes(&bytes).unwrap();
        let e = text(&Doc {
            doc,
            canonical: false,
            skip: &[],
        })
        .unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }

    #[test]
    fn scalars_convert_exactly_as_bson_does() {
        let mut values = vec![
            Bson::Int32(i32::MIN),
            Bson::Int32(0),
            Bson::Int32(i32::MAX),
            Bson::Int64(i64::MIN),
            Bson::Int64(-1),
            Bson::Int64(i64::MAX),
            Bson::Boolean(true),
            Bson::Null,
            Bson::String("\"quoted\" \u{e9}\n".into()),
            Bson::ObjectId(ObjectId::parse_str("00ff10a0b1c2d3e4f5060708").unwrap()),
            Bson::Timestamp(Timestamp {
                time: u32::MAX,
                increment: 0,
            }),
            Bson::Undefined,
            Bson::MinKey,
            Bson::MaxKey,
            Bson::RegularExpression(bson::Regex {
                pattern: "^a".into(),
                options: "mi".into(),
            }),
            Bson::JavaScriptCode("f()".into()),
            Bson::Binary(Binary {
                subtype: BinarySubtype::UserDefined(0x80),
                bytes: vec![0xff; 5],
            }),
        ];
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            24.0,
            1e16,
            1e300,
            -1e-300,
            1e21,
            123_456_789.123,
            9_007_199_254_740_993.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            values.push(Bson::Double(f));
        }
        // Dates: the edges of the range written as text, and a spread of others.
        for ms in [
            0,
            1,
            10,
            100,
            120,
            999,
            1000,
            59_999,
            86_399_999,
            86_400_000,
            951_782_400_000,
            951_868_799_999,
            1_700_000_000_100,
            253_402_300_799_999,
            253_402_300_800_000,
            -1,
            -86_400_001,
            i64::MIN,
            i64::MAX,
        ] {
            values.push(Bson::DateTime(DateTime::from_millis(ms)));
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            // xorshift: dates from 1970 to past 9999, millisecond parts of every shape.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = i64::try_from(x % 260_000_000_000_000).unwrap();
            values.push(Bson::DateTime(DateTime::from_millis(
                ms - ms % [1, 10, 100, 1000][(x >> 60) as usize % 4],
            )));
        }
        for v in values {
            same_as_bson(&v);
        }
        assert_eq!(
            rfc3339_millis(1_700_000_000_120).unwrap(),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(rfc3339_millis(253_402_300_800_000), None);
    }
}
