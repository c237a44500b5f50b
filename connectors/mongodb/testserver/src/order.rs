//! BSON comparison in MongoDB's sort order (MinKey, undefined, null, numbers across types, then
//! strings, documents, arrays, binaries, ObjectIds, booleans, dates, timestamps, ..., MaxKey),
//! enough to key collections by `_id`, to serve `$gt`/`$lt` filters (which compare within one
//! type bracket only) and `min` index bounds (which cross them).

use std::cmp::Ordering;

use bson::Bson;

/// The type's place in MongoDB's sort order; numeric types share one (they compare by value),
/// as do strings and symbols.
pub fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Undefined => 1,
        Bson::Null => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::Symbol(_) | Bson::String(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => 14,
        Bson::MaxKey => 15,
    }
}

fn number(v: &Bson) -> f64 {
    match v {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        Bson::Decimal128(d) => d.to_string().parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// Compare two values the way MongoDB sorts them.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        _ if ra == 3 => number(a).total_cmp(&number(b)),
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::Binary(x), Bson::Binary(y)) => (x.bytes.len(), u8::from(x.subtype), &x.bytes)
            .cmp(&(y.bytes.len(), u8::from(y.subtype), &y.bytes)),
        (Bson::Document(x), Bson::Document(y)) => {
            // Pair by pair: the value's type, then the field name, then the value.
            for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
                let o = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.cmp(kb))
                    .then_with(|| compare(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (va, vb) in x.iter().zip(y.iter()) {
                let o = compare(va, vb);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

/// A value ordered by [`compare`], for keying maps by `_id`.
#[derive(Debug, Clone)]
pub struct Key(pub Bson);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        compare(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    #[test]
    fn numbers_compare_across_types_and_types_by_rank() {
        assert_eq!(compare(&Bson::Int32(2), &Bson::Int64(10)), Ordering::Less);
        assert_eq!(
            compare(&Bson::Double(2.0), &Bson::Int32(2)),
            Ordering::Equal
        );
        assert_eq!(
            compare(&Bson::Int64(999), &Bson::String("a".into())),
            Ordering::Less
        );
        // Documents: the first field's type, then its name, then its value.
        assert_eq!(
            compare(
                &Bson::Document(bson::doc! {"b": 1}),
                &Bson::Document(bson::doc! {"a": "x"})
            ),
            Ordering::Less
        );
        assert_eq!(
            compare(
                &Bson::Document(bson::doc! {"a": 2}),
                &Bson::Document(bson::doc! {"b": 1})
            ),
            Ordering::Less
        );
        let (a, b) = (ObjectId::new(), ObjectId::new());
        assert_eq!(
            compare(&Bson::ObjectId(a), &Bson::ObjectId(b)),
            Ordering::Less
        );
    }
}
