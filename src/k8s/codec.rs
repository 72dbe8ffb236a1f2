//! JSON decoding with kube's `fieldValidation` semantics (unknown and duplicate fields), and response encoding.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// How to treat unknown and duplicate fields (the `fieldValidation` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and answer one `Warning` header each (kube's default since 1.23).
    #[default]
    Warn,
    /// Fail the request with 400.
    Strict,
}

/// A decoded body plus what field validation found in it.
#[derive(Debug)]
pub struct Decoded<T> {
    /// The object (last value wins for duplicates).
    pub value: T,
    /// `unknown field "path"` / `duplicate field "path"` texts, in kube's wording.
    pub problems: Vec<String>,
}

/// Why a body could not be decoded at all.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or truncated, or nested too deeply.
    #[error("json parse error")]
    Syntax(#[source] serde_json::Error),
    /// JSON, but a field has the wrong type.
    #[error("json type error")]
    Type(#[source] serde_json::Error),
}

impl DecodeError {
    /// The text kube-style clients see: serde's own description (no input echoed).
    pub fn detail(&self) -> String {
        match self {
            DecodeError::Syntax(e) | DecodeError::Type(e) => e.to_string(),
        }
    }
}

/// Decodes `body` as `T`, collecting unknown and duplicate fields by their JSON path.
///
/// The common case (no duplicates) is one pass; duplicates send it down a slower path that
/// scans the raw document, keeps the last value of each key (as kube does), and decodes that.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<Decoded<T>, DecodeError> {
    // serde's derived structs also accept arrays; a Kubernetes object is always a JSON object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::Syntax(serde::de::Error::custom(
            "expected a JSON object",
        )));
    }
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let fast = serde_ignored::deserialize(&mut de, |p| unknown.push(kube_path(&p)))
        .and_then(|v: T| de.end().map(|()| v));
    if let Ok(value) = fast {
        return Ok(Decoded {
            value,
            problems: unknown.iter().map(|p| unknown_field(p)).collect(),
        });
    }

    let scan = RefCell::new(ScanLog::default());
    let mut de = serde_json::Deserializer::from_slice(body);
    Scan {
        path: String::new(),
        log: &scan,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(DecodeError::Syntax)?;
    // serde_json's map keeps the last of duplicate keys, which is what kube keeps.
    let tree: serde_json::Value = serde_json::from_slice(body).map_err(DecodeError::Syntax)?;
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(tree, |p| unknown.push(kube_path(&p)))
        .map_err(DecodeError::Type)?;
    let scan = scan.into_inner();
    // Document order, as sigs.k8s.io/json reports them; a field that is both unknown and
    // duplicated (or sits inside an unknown field) is reported once, as unknown.
    let mut problems: Vec<(usize, String)> = unknown
        .iter()
        .map(|p| (scan.first.get(p).copied().unwrap_or(0), unknown_field(p)))
        .collect();
    for (at, p) in &scan.dups {
        let under_unknown = unknown.iter().any(|u| {
            p == u
                || p.strip_prefix(u.as_str())
                    .is_some_and(|r| r.starts_with(['.', '[']))
        });
        if !under_unknown {
            problems.push((*at, format!("duplicate field \"{p}\"")));
        }
    }
    problems.sort_by_key(|(at, _)| *at);
    let mut seen = HashSet::new();
    let problems = problems
        .into_iter()
        .map(|(_, text)| text)
        .filter(|t| seen.insert(t.clone()))
        .collect();
    Ok(Decoded { value, problems })
}

fn unknown_field(path: &str) -> String {
    format!("unknown field \"{path}\"")
}

/// Renders a serde_ignored path the way sigs.k8s.io/json does: `spec.items[0].foo`.
fn kube_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", kube_path(parent)),
        Path::Map { parent, key } => {
            let head = kube_path(parent);
            if head.is_empty() {
                key.clone()
            } else {
                format!("{head}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => kube_path(parent),
    }
}

/// Where each path first appears, and every repeated key, by position in the document.
#[derive(Default)]
struct ScanLog {
    next: usize,
    first: std::collections::HashMap<String, usize>,
    dups: Vec<(usize, String)>,
}

/// Walks a JSON document recording keys that appear twice in one object.
struct Scan<'a> {
    path: String,
    log: &'a RefCell<ScanLog>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(Scan {
                path: format!("{}[{i}]", self.path),
                log: self.log,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            {
                let mut log = self.log.borrow_mut();
                let at = log.next;
                log.next += 1;
                if seen.insert(key) {
                    log.first.entry(path.clone()).or_insert(at);
                } else {
                    log.dups.push((at, path.clone()));
                }
            }
            map.next_value_seed(Scan {
                path,
                log: self.log,
            })?;
        }
        Ok(())
    }
}

/// Applies `fieldValidation` to what decoding found: the warnings to send (Warn), none
/// (Ignore), or for Strict with problems the `strict decoding error: …` text to put in a 400.
///
/// # Errors
/// Strict with problems.
pub fn apply_field_validation(
    validation: FieldValidation,
    problems: Vec<String>,
) -> Result<Vec<String>, String> {
    match validation {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(problems),
        FieldValidation::Strict if problems.is_empty() => Ok(Vec::new()),
        FieldValidation::Strict => Err(format!("strict decoding error: {}", problems.join(", "))),
    }
}

/// `deserialize_with` for fields where JSON `null` means "empty", as in Go.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `deserialize_with` for string-keyed maps: null is empty, and a repeated key is an error so
/// that [`decode`] takes its duplicate-reporting path instead of silently keeping one.
pub fn unique_map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct V_<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<String>()? {
                let v = map.next_value()?;
                if out.insert(k.clone(), v).is_some() {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate field `{k}`"
                    )));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_option(V_(std::marker::PhantomData))
}

/// A `Warning` header value as apiserver writes it: `299 - "text"` with `"` and `\` escaped.
pub fn warning_header(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str("299 - \"");
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Encodes a response body the way kube's JSON serializer does: compact with a trailing
/// newline, or two-space indented without one.
pub fn encode<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let written = if pretty {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    if written.is_err() {
        // Our own types always serialise; an empty object is a safe, parseable fallback.
        out.clear();
        out.extend_from_slice(b"{}");
    }
    if !pretty {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::token_review::TokenReview;

    #[test]
    fn clean_body_has_no_problems() {
        let d: Decoded<TokenReview> =
            decode(br#"{"apiVersion":"authentication.k8s.io/v1","spec":{"token":"t"}}"#).unwrap();
        assert!(d.problems.is_empty());
        assert_eq!(d.value.spec.token, "t");
    }

    #[test]
    fn unknown_and_duplicate_fields_by_path() {
        let cases: &[(&str, &[&str])] = &[
            (
                r#"{"spec":{"token":"t","foo":1}}"#,
                &[r#"unknown field "spec.foo""#],
            ),
            (
                r#"{"bar":{"x":[1]},"spec":{}}"#,
                &[r#"unknown field "bar""#],
            ),
            (
                r#"{"spec":{"token":"a","token":"b"}}"#,
                &[r#"duplicate field "spec.token""#],
            ),
            (
                r#"{"metadata":{"labels":{"a":"1","a":"2"}},"spec":{"zz":1}}"#,
                &[
                    r#"duplicate field "metadata.labels.a""#,
                    r#"unknown field "spec.zz""#,
                ],
            ),
            (
                r#"{"spec":{"foo":1,"foo":2,"token":"a","token":"b"},"x":{"y":1,"y":2}}"#,
                &[
                    r#"unknown field "spec.foo""#,
                    r#"duplicate field "spec.token""#,
                    r#"unknown field "x""#,
                ],
            ),
            (
                r#"{"metadata":{"ownerReferences":[{"x":1}]},"spec":{"audiences":["a"],"audiences":["b"]}}"#,
                &[r#"duplicate field "spec.audiences""#],
            ),
        ];
        for (body, want) in cases {
            let d: Decoded<TokenReview> = decode(body.as_bytes()).unwrap();
            assert_eq!(&d.problems, want, "{body}");
        }
    }

    #[test]
    fn duplicates_keep_the_last_value() {
        let d: Decoded<TokenReview> =
            decode(br#"{"spec":{"token":"first","token":"last"}}"#).unwrap();
        assert_eq!(d.value.spec.token, "last");
    }

    #[test]
    fn broken_bodies_are_errors() {
        for body in [
            &b"{"[..],
            b"",
            b"[]",
            br#"{"spec":{"token":5}}"#,
            br#"{"spec":{"token":"a"}} trailing"#,
        ] {
            assert!(decode::<TokenReview>(body).is_err(), "{:?}", body);
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(decode::<TokenReview>(deep.as_bytes()).is_err());
    }

    #[test]
    fn warning_header_escapes() {
        assert_eq!(
            warning_header(r#"unknown field "spec.foo""#),
            r#"299 - "unknown field \"spec.foo\"""#
        );
    }
}
