//! Channel templates: `products:{store_id}` or `store:{fullDocument.storeId}` turn a change's
//! fields into a channel name. Parsed and checked when the configuration loads, rendered per
//! change; a change whose fields do not resolve is a poison change, never a silent drop.

use std::fmt;

/// A parsed channel template.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A dotted path into the change's document: `fullDocument.storeId` → ["fullDocument", "storeId"].
    Field(Vec<String>),
}

/// Why a template was refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid channel template {template:?}: {problem}")]
pub struct TemplateError {
    pub template: String,
    pub problem: String,
}

/// Why a template did not resolve for one change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("field `{0}` is missing")]
    Missing(String),
    #[error("field `{0}` is null")]
    Null(String),
    #[error(
        "field `{0}` is an object or array; channel templates need a string, number or boolean"
    )]
    NotScalar(String),
    #[error("field `{field}` has the value {value:?}, which cannot be part of a channel name")]
    BadValue { field: String, value: String },
}

fn empty_segment() -> String {
    "it has an empty segment (a `:` at the start or the end, or `::`), so no channel name it \
     renders would be valid"
        .into()
}

fn literal_char_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '=' | '+' | ':')
}

impl ChannelTemplate {
    /// Parse a template.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let err = |problem: String| TemplateError {
            template: text.to_owned(),
            problem,
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| err("a `{` is never closed".into()))?;
                    let path = &rest[1..end];
                    if path.is_empty() || path.contains('{') {
                        return Err(err("placeholders look like `{field}` or `{a.b}`".into()));
                    }
                    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
                    if segments.iter().any(|s| s.is_empty()) {
                        return Err(err(format!("`{{{path}}}` has an empty path segment")));
                    }
                    parts.push(Part::Field(segments));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if let Some(c) = lit.chars().find(|c| !literal_char_ok(*c)) {
                        return Err(err(format!(
                            "{c:?} cannot appear in a channel name (a stray `}}`?)"
                        )));
                    }
                    parts.push(Part::Literal(lit.to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        if parts.is_empty() {
            return Err(err("it is empty".into()));
        }
        // A field renders as a non-empty value without `:`, so the literals alone decide where
        // the segments are: a template with an empty one could never render a channel name.
        let mut segment_empty = true;
        for part in &parts {
            match part {
                Part::Field(_) => segment_empty = false,
                Part::Literal(l) => {
                    for c in l.chars() {
                        if c != ':' {
                            segment_empty = false;
                        } else if segment_empty {
                            return Err(err(empty_segment()));
                        } else {
                            segment_empty = true;
                        }
                    }
                }
            }
        }
        if segment_empty {
            return Err(err(empty_segment()));
        }
        Ok(ChannelTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The fields the template reads, as dotted paths.
    pub fn fields(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(path) => Some(path.join(".")),
            Part::Literal(_) => None,
        })
    }

    /// Render against a change's document.
    pub fn render(&self, doc: &serde_json::Value) -> Result<String, RouteError> {
        self.render_with(|path| {
            let mut v = doc;
            for seg in path {
                v = v.get(seg)?;
            }
            Some(std::borrow::Cow::Borrowed(v))
        })
    }

    /// Render with `resolve` looking each field up: given a field's path (`["fullDocument",
    /// "storeId"]`), the value there as JSON, or `None` when it is missing. For sources that
    /// read their changes in a form of their own, without building the whole change as JSON
    /// first. Only scalars are rendered: an object or array may be handed back empty.
    pub fn render_with<'v>(
        &self,
        mut resolve: impl FnMut(&[String]) -> Option<std::borrow::Cow<'v, serde_json::Value>>,
    ) -> Result<String, RouteError> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(path) => {
                    let name = || path.join(".");
                    let v = resolve(path).ok_or_else(|| RouteError::Missing(name()))?;
                    let number;
                    let text = match &*v {
                        serde_json::Value::Null => return Err(RouteError::Null(name())),
                        serde_json::Value::String(s) => s.as_str(),
                        serde_json::Value::Number(n) => {
                            number = n.to_string();
                            number.as_str()
                        }
                        serde_json::Value::Bool(b) => {
                            if *b {
                                "true"
                            } else {
                                "false"
                            }
                        }
                        _ => return Err(RouteError::NotScalar(name())),
                    };
                    if text.is_empty() || !text.chars().all(|c| literal_char_ok(c) && c != ':') {
                        return Err(RouteError::BadValue {
                            field: name(),
                            value: text.to_owned(),
                        });
                    }
                    out.push_str(text);
                }
            }
        }
        Ok(out)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ChannelTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_and_nested_paths() {
        let t = ChannelTemplate::parse("store:{fullDocument.storeId}:items").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), vec!["fullDocument.storeId"]);
        assert_eq!(
            t.render(&json!({"fullDocument": {"storeId": 42}})).unwrap(),
            "store:42:items"
        );
        let t = ChannelTemplate::parse("products:{store_id}").unwrap();
        assert_eq!(
            t.render(&json!({"store_id": "north-1"})).unwrap(),
            "products:north-1"
        );
        let t = ChannelTemplate::parse("fixed").unwrap();
        assert_eq!(t.render(&json!({})).unwrap(), "fixed");
    }

    #[test]
    fn unresolvable_changes_say_why() {
        let t = ChannelTemplate::parse("s:{a.b}").unwrap();
        assert_eq!(t.render(&json!({})), Err(RouteError::Missing("a.b".into())));
        assert_eq!(
            t.render(&json!({"a": {"b": null}})),
            Err(RouteError::Null("a.b".into()))
        );
        assert_eq!(
            t.render(&json!({"a": {"b": [1]}})),
            Err(RouteError::NotScalar("a.b".into()))
        );
        assert!(matches!(
            t.render(&json!({"a": {"b": "x y"}})),
            Err(RouteError::BadValue { .. })
        ));
        assert!(matches!(
            t.render(&json!({"a": {"b": "x:y"}})),
            Err(RouteError::BadValue { .. })
        ));
    }

    #[test]
    fn bad_templates_are_refused_at_load() {
        for bad in ["", "s:{", "s:{}", "s:{a..b}", "s:}x", "s x:{a}", "s:{a{b}}"] {
            assert!(
                ChannelTemplate::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    /// Found by the `channel_template` fuzz target: `s:` parsed, and rendered `s:`, which is no
    /// channel name, for every change.
    #[test]
    fn templates_with_an_empty_segment_are_refused_at_load() {
        for bad in ["s:", ":", ":{a}", "{a}:", "s::{a}", "{a}::{b}", "{a}:{b}:"] {
            let e = ChannelTemplate::parse(bad).unwrap_err();
            assert!(e.problem.contains("empty segment"), "{bad:?}: {e}");
        }
        for ok in ["s:{a}", "{a}:{b}", "{a}{b}", "a:b:{c}:d", "{a}.x:y"] {
            ChannelTemplate::parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }
}
