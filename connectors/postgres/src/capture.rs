//! Plain table capture: row changes of the publication's tables (other than the outbox) turned
//! into normalized change messages, routed by a channel template over the row's columns.
//!
//! The payload has the shape of the MongoDB connector's `normalized` payload, so the same
//! client code (the JS SDK's mirror) applies both:
//!
//! ```json
//! {"op": "update", "ns": {"schema": "public", "table": "products"}, "key": {"id": 7},
//!  "document": {...}, "before": null, "updated_fields": null, "removed_fields": null,
//!  "unchanged_toast": [], "commit_lsn": "0/1A2B3C", "commit_time": "2024-…Z"}
//! ```
//!
//! Values keep their information: see [`to_json`] for the mapping by type OID. An update whose
//! row has unchanged TOASTed values (large values not rewritten, so not in the WAL) has no
//! `document`: its other columns are in `updated_fields` and the unchanged ones are named in
//! `unchanged_toast`, so a client patches the row it has instead of nulling them.

use serde_json::{Map, Value as Json};
use tidings_connectors_core::route::ChannelTemplate;
use tidings_connectors_core::{json_text, Publish};

use crate::pgoutput::{format_lsn, Lsn, Relation, Tuple, Value};

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A captured table: its description, and which columns form the key clients see.
#[derive(Debug, Clone)]
pub struct Table {
    pub relation: Relation,
    /// Indexes of the key columns: the primary key (looked up when the replica identity is
    /// FULL, since pgoutput then flags every column), otherwise the replica identity columns.
    pub key: Vec<usize>,
}

impl Table {
    /// A table whose key is the replica identity as pgoutput flags it.
    pub fn new(relation: Relation) -> Self {
        let key = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        Table { relation, key }
    }

    /// Use these columns (by name) as the key; unknown names are ignored.
    pub fn with_key_columns(mut self, names: &[String]) -> Self {
        let key: Vec<usize> = names
            .iter()
            .filter_map(|n| self.relation.columns.iter().position(|c| &c.name == n))
            .collect();
        if !key.is_empty() {
            self.key = key;
        }
        self
    }
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Where a change sits in the WAL, for the payload and the message id.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01.
    pub commit_time: i64,
}

/// A row as a JSON object: every column, unchanged TOAST values left out and named apart.
fn row(table: &Table, tuple: &Tuple) -> Result<(Map<String, Json>, Vec<String>), String> {
    let mut doc = Map::new();
    let mut toast = Vec::new();
    for (col, value) in table.relation.columns.iter().zip(&tuple.0) {
        match value {
            Value::UnchangedToast => toast.push(col.name.clone()),
            Value::Null => {
                doc.insert(col.name.clone(), Json::Null);
            }
            Value::Text(_) | Value::Binary(_) => {
                let text = value.as_text().map_err(|e| e.to_string())?.unwrap_or("");
                doc.insert(col.name.clone(), to_json(col.type_oid, text));
            }
        }
    }
    Ok((doc, toast))
}

/// The key columns of a row (a key-only old tuple has nulls elsewhere).
fn key_of(table: &Table, doc: &Map<String, Json>) -> Json {
    if table.key.is_empty() {
        return Json::Null;
    }
    let mut key = Map::new();
    for &i in &table.key {
        let name = &table.relation.columns[i].name;
        key.insert(name.clone(), doc.get(name).cloned().unwrap_or(Json::Null));
    }
    Json::Object(key)
}

/// A row change as a message on the channel `template` renders for it. The template reads the
/// new row (the old one for deletes), plus `_schema` and `_table`.
pub fn change(
    table: &Table,
    op: Op,
    old: Option<&Tuple>,
    new: Option<&Tuple>,
    template: &ChannelTemplate,
    at: At,
    id: String,
) -> Result<Publish, String> {
    let ns = serde_json::json!({
        "schema": table.relation.namespace,
        "table": table.relation.name,
    });
    let old = old.map(|t| row(table, t)).transpose()?;
    let new = new.map(|t| row(table, t)).transpose()?;
    // A full old row only with REPLICA IDENTITY FULL; otherwise the old tuple is the key.
    let full_before = table.relation.replica_identity == b'f';
    let before = match &old {
        Some((doc, _)) if full_before => Json::Object(doc.clone()),
        _ => Json::Null,
    };
    let (document, updated_fields, toast) = match (&new, op) {
        (Some((doc, toast)), Op::Update) if !toast.is_empty() => {
            (Json::Null, Json::Object(doc.clone()), toast.clone())
        }
        (Some((doc, _)), _) => (Json::Object(doc.clone()), Json::Null, Vec::new()),
        (None, _) => (Json::Null, Json::Null, Vec::new()),
    };
    // The key clients know the row by: the old key when an update changed it is in `before`
    // (FULL) or in `old_key`.
    let key_source = match (&new, &old) {
        (Some((doc, _)), _) => doc,
        (None, Some((doc, _))) => doc,
        (None, None) => return Err("a change without a row".into()),
    };
    let key = key_of(table, key_source);
    let old_key = match (&old, op) {
        (Some((doc, _)), Op::Update) => {
            let k = key_of(table, doc);
            (k != key).then_some(k)
        }
        _ => None,
    };
    let mut context = key_source.clone();
    context.insert("_schema".into(), ns["schema"].clone());
    context.insert("_table".into(), ns["table"].clone());
    let channel = template.render(&Json::Object(context)).map_err(|e| {
        format!(
            "channel template {:?} does not resolve for this {} on {}.{}: {e}{}",
            template.as_str(),
            op.as_str(),
            table.relation.namespace,
            table.relation.name,
            if op == Op::Delete && !full_before {
                " (a delete carries only the key columns unless the table has REPLICA IDENTITY FULL)"
            } else {
                ""
            }
        )
    })?;
    let mut data = serde_json::json!({
        "op": op.as_str(),
        "ns": ns,
        "key": key,
        "document": document,
        "before": before,
        "updated_fields": updated_fields,
        "removed_fields": if updated_fields.is_null() { Json::Null } else { Json::Array(Vec::new()) },
        "unchanged_toast": toast,
        "commit_lsn": format_lsn(at.commit_lsn),
        "commit_time": commit_time(at.commit_time),
    });
    if let Some(k) = old_key {
        data["old_key"] = k;
    }
    Ok(Publish {
        channel,
        name: Some(op.as_str().into()),
        data: Some(json_text(&data)),
        headers: None,
        id: Some(id),
        key: None,
    })
}

/// A pgoutput commit time (microseconds since 2000-01-01 UTC) as RFC 3339.
pub fn commit_time(micros_since_2000: i64) -> String {
    const UNIX_2000: i64 = 946_684_800;
    let secs = micros_since_2000.div_euclid(1_000_000) + UNIX_2000;
    let micros = micros_since_2000.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Built-in type OIDs we map specially (`pg_type.oid`, stable across versions).
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// The element type of a built-in array type, if `oid` is one we parse.
fn array_element(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1028 => oid::OID,
        199 => oid::JSON,
        3807 => oid::JSONB,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1231 => oid::NUMERIC,
        // text, varchar, bpchar, name, char, uuid, date, time, timetz, interval: strings
        1009 | 1015 | 1014 | 1003 | 1002 | 2951 | 1182 | 1183 | 1270 | 1187 => 25,
        _ => return None,
    })
}

/// A value in Postgres's text output format as JSON, by type OID:
///
/// | Postgres | JSON |
/// | --- | --- |
/// | `bool` | `true` / `false` |
/// | `int2`, `int4`, `oid` | number |
/// | `int8` | number when within ±(2^53−1), otherwise a string (JavaScript would round it) |
/// | `float4`, `float8` | number; `NaN`, `Infinity`, `-Infinity` as strings |
/// | `numeric` | string, never rounded through a float |
/// | `json`, `jsonb` | the JSON itself |
/// | `timestamptz` | RFC 3339 string with its offset (`2024-01-02T03:04:05.123456+00:00`) |
/// | `timestamp` | ISO 8601 string without offset (`2024-01-02T03:04:05`) |
/// | `bytea` | base64 string |
/// | arrays of the above (and of text types) | JSON arrays (nested for several dimensions) |
/// | anything else (`text`, `uuid`, `date`, `time`, `interval`, enums, …) | Postgres's text, a string |
///
/// Values that do not parse as their type claims (a DateStyle other than ISO, `infinity`
/// timestamps) stay Postgres's text, so nothing is lost.
pub fn to_json(type_oid: u32, text: &str) -> Json {
    if let Some(element) = array_element(type_oid) {
        return match parse_array(text) {
            Some(items) => array_json(element, items),
            None => Json::String(text.to_owned()),
        };
    }
    let as_string = || Json::String(text.to_owned());
    match type_oid {
        oid::BOOL => match text {
            "t" => Json::Bool(true),
            "f" => Json::Bool(false),
            _ => as_string(),
        },
        oid::INT2 | oid::INT4 | oid::OID => text
            .parse::<i64>()
            .map(Json::from)
            .unwrap_or_else(|_| as_string()),
        oid::INT8 => match text.parse::<i64>() {
            Ok(v) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) => Json::from(v),
            _ => as_string(),
        },
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .unwrap_or_else(as_string),
        oid::JSON | oid::JSONB => serde_json::from_str(text).unwrap_or_else(|_| as_string()),
        oid::TIMESTAMPTZ => Json::String(timestamp(text, true).unwrap_or_else(|| text.to_owned())),
        oid::TIMESTAMP => Json::String(timestamp(text, false).unwrap_or_else(|| text.to_owned())),
        oid::BYTEA => match text.strip_prefix("\\x").and_then(hex) {
            Some(bytes) => Json::String(base64(&bytes)),
            None => as_string(),
        },
        _ => as_string(),
    }
}

/// `2024-01-02 03:04:05.123+05:30` (ISO DateStyle) to RFC 3339; `None` if not in that form.
fn timestamp(text: &str, with_zone: bool) -> Option<String> {
    let (date, rest) = text.split_once(' ')?;
    let db = date.as_bytes();
    if db.len() != 10 || db[4] != b'-' || db[7] != b'-' {
        return None;
    }
    let (time, zone) = if with_zone {
        let at = rest.rfind(['+', '-'])?;
        (&rest[..at], Some(&rest[at..]))
    } else {
        (rest, None)
    };
    let tb = time.as_bytes();
    if tb.len() < 8
        || tb[2] != b':'
        || tb[5] != b':'
        || !time
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b'.')
    {
        return None;
    }
    let zone = match zone {
        None => String::new(),
        Some(z) if z.len() == 3 => format!("{z}:00"),
        Some(z) if z.len() == 6 && z.as_bytes()[3] == b':' => z.to_owned(),
        // Offsets with seconds (historic zones) have no RFC 3339 form.
        Some(_) => return None,
    };
    Some(format!("{date}T{time}{zone}"))
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One element of a parsed array literal.
#[derive(Debug, PartialEq)]
enum Item {
    Null,
    Text(String),
    Nested(Vec<Item>),
}

fn array_json(element: u32, items: Vec<Item>) -> Json {
    Json::Array(
        items
            .into_iter()
            .map(|i| match i {
                Item::Null => Json::Null,
                Item::Text(t) => to_json(element, &t),
                Item::Nested(inner) => array_json(element, inner),
            })
            .collect(),
    )
}

/// Parse an array literal in Postgres's output form: `{1,2,NULL}`, `{"a b","c\"d"}`,
/// `{{1,2},{3,4}}`. `None` for forms we do not read (explicit bounds `[0:1]={…}`).
fn parse_array(text: &str) -> Option<Vec<Item>> {
    let bytes: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let items = parse_level(&bytes, &mut pos)?;
    (pos == bytes.len()).then_some(items)
}

fn parse_level(s: &[char], pos: &mut usize) -> Option<Vec<Item>> {
    if s.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if s.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        match s.get(*pos)? {
            '{' => items.push(Item::Nested(parse_level(s, pos)?)),
            '"' => {
                *pos += 1;
                let mut out = String::new();
                loop {
                    match s.get(*pos)? {
                        '\\' => {
                            out.push(*s.get(*pos + 1)?);
                            *pos += 2;
                        }
                        '"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            out.push(*c);
                            *pos += 1;
                        }
                    }
                }
                items.push(Item::Text(out));
            }
            _ => {
                let start = *pos;
                while !matches!(s.get(*pos)?, ',' | '}') {
                    *pos += 1;
                }
                let raw: String = s[start..*pos].iter().collect();
                items.push(if raw == "NULL" {
                    Item::Null
                } else {
                    Item::Text(raw)
                });
            }
        }
        match s.get(*pos)? {
            ',' => *pos += 1,
            '}' => {
                *pos += 1;
                return Some(items);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_map_without_losing_information() {
        assert_eq!(to_json(16, "t"), json!(true));
        assert_eq!(to_json(23, "-42"), json!(-42));
        assert_eq!(to_json(20, "9007199254740991"), json!(9007199254740991_i64));
        assert_eq!(to_json(20, "9007199254740992"), json!("9007199254740992"));
        assert_eq!(to_json(701, "1.5"), json!(1.5));
        assert_eq!(to_json(701, "NaN"), json!("NaN"));
        assert_eq!(to_json(1700, "12.50"), json!("12.50"));
        assert_eq!(to_json(3802, r#"{"a": [1, 2]}"#), json!({"a": [1, 2]}));
        assert_eq!(
            to_json(1184, "2024-01-02 03:04:05.123456+00"),
            json!("2024-01-02T03:04:05.123456+00:00")
        );
        assert_eq!(
            to_json(1184, "2024-01-02 03:04:05+05:30"),
            json!("2024-01-02T03:04:05+05:30")
        );
        assert_eq!(to_json(1184, "infinity"), json!("infinity"));
        assert_eq!(
            to_json(1114, "2024-01-02 03:04:05"),
            json!("2024-01-02T03:04:05")
        );
        assert_eq!(to_json(17, "\\x00ff10"), json!("AP8Q"));
        assert_eq!(
            to_json(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(to_json(1082, "2024-02-29"), json!("2024-02-29"));
    }

    #[test]
    fn arrays_parse_with_quotes_nulls_and_dimensions() {
        assert_eq!(to_json(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(to_json(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(
            to_json(1009, r#"{"a b","c\"d",NULL,"NULL"}"#),
            json!(["a b", "c\"d", null, "NULL"])
        );
        assert_eq!(to_json(1009, "{}"), json!([]));
        assert_eq!(to_json(1000, "{t,f}"), json!([true, false]));
        assert_eq!(to_json(1007, "[0:1]={1,2}"), json!("[0:1]={1,2}"));
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn commit_times_are_rfc3339() {
        assert_eq!(commit_time(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            commit_time(774_722_096_123_456),
            "2024-07-19T16:34:56.123456Z"
        );
    }
}
