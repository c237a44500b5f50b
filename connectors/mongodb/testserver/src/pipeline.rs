//! The slice of MongoDB's query and aggregation language the test server understands: `$match`
//! filters (equality, `$eq $ne $in $nin $exists`, `$gt $gte $lt $lte` within one type bracket as
//! MongoDB compares, `$and $or $nor`), and the
//! stages `$match`, `$addFields`/`$set`, `$project`, `$unset` with the expressions `"$path"`,
//! `$concat`, `$toString`, `$literal`, `$ifNull`. Anything else is refused with the error a real
//! server gives, so a test never passes on a pipeline the server silently ignored.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::order::{compare, type_rank};

/// A command error: code, code name, message.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
    pub labels: Vec<String>,
}

impl CommandError {
    pub fn new(code: i32, code_name: &'static str, message: impl Into<String>) -> Self {
        CommandError {
            code,
            code_name,
            message: message.into(),
            labels: Vec::new(),
        }
    }

    pub fn bad_value(message: impl Into<String>) -> Self {
        Self::new(2, "BadValue", message)
    }
}

/// Look up a dotted path.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut v = doc.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Bson::Document(d) => d.get(p)?,
            Bson::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Set a dotted path, creating documents on the way.
pub fn set_path(doc: &mut Document, path: &str, value: Bson) {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
        }
        Some((head, rest)) => {
            if !matches!(doc.get(head), Some(Bson::Document(_))) {
                doc.insert(head, Document::new());
            }
            if let Some(Bson::Document(inner)) = doc.get_mut(head) {
                set_path(inner, rest, value);
            }
        }
    }
}

/// Remove a dotted path; true if something was removed.
pub fn remove_path(doc: &mut Document, path: &str) -> bool {
    match path.split_once('.') {
        None => doc.remove(path).is_some(),
        Some((head, rest)) => match doc.get_mut(head) {
            Some(Bson::Document(inner)) => remove_path(inner, rest),
            _ => false,
        },
    }
}

/// Does `doc` match `filter`?
pub fn matches(doc: &Document, filter: &Document) -> Result<bool, CommandError> {
    for (key, cond) in filter {
        let ok = match key.as_str() {
            "$and" | "$or" | "$nor" => {
                let list = match cond {
                    Bson::Array(a) => a,
                    _ => return Err(CommandError::bad_value(format!("{key} must be an array"))),
                };
                let mut results = Vec::with_capacity(list.len());
                for f in list {
                    let Bson::Document(f) = f else {
                        return Err(CommandError::bad_value(format!(
                            "{key} entries must be documents"
                        )));
                    };
                    results.push(matches(doc, f)?);
                }
                match key.as_str() {
                    "$and" => results.iter().all(|r| *r),
                    "$or" => results.iter().any(|r| *r),
                    _ => !results.iter().any(|r| *r),
                }
            }
            k if k.starts_with('$') => {
                return Err(CommandError::new(
                    2,
                    "BadValue",
                    format!("unknown top level operator: {k}"),
                ))
            }
            path => field_matches(get_path(doc, path), cond)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn equal(v: Option<&Bson>, want: &Bson) -> bool {
    match (v, want) {
        (None, Bson::Null) => true,
        (None, _) => false,
        (Some(Bson::Array(items)), w) if !matches!(w, Bson::Array(_)) => {
            items.iter().any(|i| compare(i, w) == Ordering::Equal)
        }
        (Some(v), w) => compare(v, w) == Ordering::Equal,
    }
}

fn field_matches(v: Option<&Bson>, cond: &Bson) -> Result<bool, CommandError> {
    let ops = match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => d,
        _ => return Ok(equal(v, cond)),
    };
    for (op, arg) in ops {
        let ok = match op.as_str() {
            "$eq" => equal(v, arg),
            "$ne" => !equal(v, arg),
            "$gt" | "$gte" | "$lt" | "$lte" => {
                let one = |v: &Bson| {
                    // Type bracketing: only values of the argument's type bracket compare
                    // (`{$gt: 5}` never matches a string); MinKey and MaxKey bound every type.
                    if type_rank(v) != type_rank(arg) && !matches!(arg, Bson::MinKey | Bson::MaxKey)
                    {
                        return false;
                    }
                    let o = compare(v, arg);
                    match op.as_str() {
                        "$gt" => o == Ordering::Greater,
                        "$gte" => o != Ordering::Less,
                        "$lt" => o == Ordering::Less,
                        _ => o != Ordering::Greater,
                    }
                };
                match v {
                    None => false,
                    Some(Bson::Array(items)) if !matches!(arg, Bson::Array(_)) => {
                        items.iter().any(one)
                    }
                    Some(v) => one(v),
                }
            }
            "$in" | "$nin" => {
                let Bson::Array(list) = arg else {
                    return Err(CommandError::bad_value(format!("{op} needs an array")));
                };
                let found = list.iter().any(|w| equal(v, w));
                if op == "$in" {
                    found
                } else {
                    !found
                }
            }
            "$exists" => {
                let want = !matches!(arg, Bson::Boolean(false) | Bson::Int32(0) | Bson::Int64(0));
                v.is_some() == want
            }
            other => {
                return Err(CommandError::new(
                    2,
                    "BadValue",
                    format!("unknown operator: {other}"),
                ))
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn to_string(v: &Bson) -> Bson {
    match v {
        Bson::String(s) => Bson::String(s.clone()),
        Bson::Null | Bson::Undefined => Bson::Null,
        Bson::Int32(i) => Bson::String(i.to_string()),
        Bson::Int64(i) => Bson::String(i.to_string()),
        Bson::Double(d) => Bson::String(d.to_string()),
        Bson::Boolean(b) => Bson::String(b.to_string()),
        Bson::ObjectId(o) => Bson::String(o.to_hex()),
        Bson::DateTime(d) => Bson::String(
            d.try_to_rfc3339_string()
                .unwrap_or_else(|_| d.timestamp_millis().to_string()),
        ),
        other => Bson::String(other.to_string()),
    }
}

/// Evaluate an aggregation expression against `doc`.
pub fn eval(doc: &Document, expr: &Bson) -> Result<Bson, CommandError> {
    match expr {
        Bson::String(s) if s.starts_with("$$") => Err(CommandError::new(
            17276,
            "Location17276",
            format!("variables are not supported by the test server: {s}"),
        )),
        Bson::String(s) if s.starts_with('$') => {
            Ok(get_path(doc, &s[1..]).cloned().unwrap_or(Bson::Null))
        }
        Bson::Document(d)
            if d.len() == 1 && d.keys().next().is_some_and(|k| k.starts_with('$')) =>
        {
            let (op, arg) = d.iter().next().expect("one entry");
            let args = |arg: &Bson| -> Result<Vec<Bson>, CommandError> {
                match arg {
                    Bson::Array(items) => items.iter().map(|i| eval(doc, i)).collect(),
                    single => Ok(vec![eval(doc, single)?]),
                }
            };
            match op.as_str() {
                "$literal" => Ok(arg.clone()),
                "$concat" => {
                    let mut out = String::new();
                    for a in args(arg)? {
                        match a {
                            Bson::String(s) => out.push_str(&s),
                            Bson::Null | Bson::Undefined => return Ok(Bson::Null),
                            other => {
                                return Err(CommandError::new(
                                    16702,
                                    "Location16702",
                                    format!(
                                        "$concat only supports strings, not {:?}",
                                        other.element_type()
                                    ),
                                ))
                            }
                        }
                    }
                    Ok(Bson::String(out))
                }
                "$toString" => Ok(to_string(args(arg)?.first().unwrap_or(&Bson::Null))),
                "$ifNull" => Ok(args(arg)?
                    .into_iter()
                    .find(|v| !matches!(v, Bson::Null | Bson::Undefined))
                    .unwrap_or(Bson::Null)),
                other => Err(CommandError::new(
                    168,
                    "InvalidPipelineOperator",
                    format!("Unrecognized expression '{other}'"),
                )),
            }
        }
        Bson::Document(d) => {
            let mut out = Document::new();
            for (k, v) in d {
                out.insert(k, eval(doc, v)?);
            }
            Ok(Bson::Document(out))
        }
        other => Ok(other.clone()),
    }
}

/// Refuse unknown stages when the pipeline is submitted, as MongoDB does.
pub fn validate(stages: &[Document]) -> Result<(), CommandError> {
    for stage in stages {
        let name = stage.keys().next().map(String::as_str).unwrap_or("");
        if stage.len() != 1 {
            return Err(CommandError::new(
                40323,
                "Location40323",
                "A pipeline stage specification object must contain exactly one field.",
            ));
        }
        if !["$match", "$addFields", "$set", "$project", "$unset"].contains(&name) {
            return Err(CommandError::new(
                40324,
                "Location40324",
                format!("Unrecognized pipeline stage name: '{name}'"),
            ));
        }
    }
    Ok(())
}

/// Apply pipeline stages to one document; `None` when a `$match` filtered it out.
pub fn apply(stages: &[Document], mut doc: Document) -> Result<Option<Document>, CommandError> {
    for stage in stages {
        let (name, spec) = stage
            .iter()
            .next()
            .filter(|_| stage.len() == 1)
            .ok_or_else(|| {
                CommandError::new(
                    40323,
                    "Location40323",
                    "A pipeline stage specification object must contain exactly one field.",
                )
            })?;
        match (name.as_str(), spec) {
            ("$match", Bson::Document(filter)) => {
                if !matches(&doc, filter)? {
                    return Ok(None);
                }
            }
            ("$addFields" | "$set", Bson::Document(fields)) => {
                for (path, expr) in fields {
                    let value = eval(&doc, expr)?;
                    set_path(&mut doc, path, value);
                }
            }
            ("$unset", Bson::String(path)) => {
                remove_path(&mut doc, path);
            }
            ("$unset", Bson::Array(paths)) => {
                for p in paths {
                    if let Bson::String(p) = p {
                        remove_path(&mut doc, p);
                    }
                }
            }
            ("$project", Bson::Document(spec)) => {
                let include = spec
                    .iter()
                    .filter(|(k, _)| k.as_str() != "_id")
                    .any(|(_, v)| {
                        !matches!(v, Bson::Int32(0) | Bson::Int64(0) | Bson::Boolean(false))
                    });
                if include {
                    let mut out = Document::new();
                    if !matches!(spec.get("_id"), Some(Bson::Int32(0) | Bson::Boolean(false))) {
                        if let Some(id) = doc.get("_id") {
                            out.insert("_id", id.clone());
                        }
                    }
                    for (path, v) in spec {
                        if path == "_id" {
                            continue;
                        }
                        match v {
                            Bson::Int32(_) | Bson::Int64(_) | Bson::Boolean(true) => {
                                if let Some(val) = get_path(&doc, path) {
                                    set_path(&mut out, path, val.clone());
                                }
                            }
                            expr => {
                                let val = eval(&doc, expr)?;
                                set_path(&mut out, path, val);
                            }
                        }
                    }
                    doc = out;
                } else {
                    for path in spec.keys() {
                        remove_path(&mut doc, path);
                    }
                }
            }
            ("$match" | "$addFields" | "$set" | "$unset" | "$project", _) => {
                return Err(CommandError::bad_value(format!(
                    "the argument of {name} has the wrong type"
                )))
            }
            (other, _) => {
                return Err(CommandError::new(
                    40324,
                    "Location40324",
                    format!("Unrecognized pipeline stage name: '{other}'"),
                ))
            }
        }
    }
    Ok(Some(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn match_and_add_fields() {
        let d =
            doc! {"_id": 1, "operationType": "insert", "fullDocument": {"store": "n1", "qty": 5}};
        let stages = vec![
            doc! {"$match": {"operationType": {"$in": ["insert", "update"]}, "fullDocument.qty": {"$gte": 3}}},
            doc! {"$addFields": {"_channel": {"$concat": ["store:", "$fullDocument.store"]}}},
        ];
        let out = apply(&stages, d.clone()).unwrap().unwrap();
        assert_eq!(out.get_str("_channel").unwrap(), "store:n1");
        let filtered = apply(
            &[doc! {"$match": {"fullDocument.qty": {"$lt": 3}}}],
            d.clone(),
        )
        .unwrap();
        assert!(filtered.is_none());
        let err = apply(&[doc! {"$lookup": {}}], d).unwrap_err();
        assert_eq!(err.code, 40324);
    }

    #[test]
    fn range_operators_compare_within_one_type_bracket() {
        let m = |id: Bson, filter: Document| matches(&doc! {"_id": id}, &filter).unwrap();
        assert!(m(Bson::Int32(7), doc! {"_id": {"$gt": 5i64}}));
        assert!(m(Bson::Double(5.5), doc! {"_id": {"$gt": 5}}));
        // A string sorts after every number, but `$gt` a number never matches it.
        assert!(!m(Bson::String("a".into()), doc! {"_id": {"$gt": 5}}));
        assert!(!m(Bson::Int32(1), doc! {"_id": {"$lt": "a"}}));
        assert!(m(Bson::String("b".into()), doc! {"_id": {"$gte": "b"}}));
        assert!(m(
            Bson::String("b".into()),
            doc! {"_id": {"$gt": Bson::MinKey}}
        ));
        assert!(m(Bson::Null, doc! {"_id": {"$lt": Bson::MaxKey}}));
    }
}
