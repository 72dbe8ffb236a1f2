//! Create-request query parameters (`dryRun`, `fieldManager`, `fieldValidation`, `pretty`) with kube's validation.

use super::codec::FieldValidation;
use super::status::{Status, StatusCause};

/// `fieldManager` may be at most this many bytes (`FieldManagerMaxLength`).
const FIELD_MANAGER_MAX: usize = 128;

/// Parsed `metav1.CreateOptions` plus `pretty`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// `dryRun=All` was given.
    pub dry_run: bool,
    /// Accepted and validated; nothing is persisted, so it is otherwise unused.
    pub field_manager: String,
    /// How to treat unknown/duplicate fields.
    pub field_validation: FieldValidation,
    /// `pretty` as a Go `strconv.ParseBool`, when given.
    pub pretty: Option<bool>,
}

impl CreateOptions {
    /// Parses and validates a raw query string. Invalid values give a 422 `Status` naming
    /// every bad parameter at once, as `ValidateCreateOptions` does.
    pub fn parse(query: Option<&str>) -> Result<Self, Status> {
        let mut dry_run: Vec<String> = Vec::new();
        let mut field_manager = String::new();
        let mut field_validation = String::new();
        let mut pretty = None;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "dryRun" => dry_run.push(v.into_owned()),
                // Go's url.Values.Get keeps the first of repeated keys.
                "fieldManager" if field_manager.is_empty() => field_manager = v.into_owned(),
                "fieldValidation" if field_validation.is_empty() => {
                    field_validation = v.into_owned()
                }
                "pretty" if pretty.is_none() => pretty = Some(parse_go_bool(&v)),
                _ => {}
            }
        }

        let mut causes = Vec::new();
        if field_manager.len() > FIELD_MANAGER_MAX {
            causes.push(StatusCause {
                reason: "FieldValueTooLong".into(),
                message: format!("Too long: may not be more than {FIELD_MANAGER_MAX} bytes"),
                field: "fieldManager".into(),
            });
        }
        for (i, c) in field_manager.char_indices() {
            if !is_go_printable(c) {
                causes.push(StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: format!(
                        "Invalid value: {}: invalid character {} (at position {i})",
                        go_quote(&field_manager),
                        go_unicode_u(c)
                    ),
                    field: "fieldManager".into(),
                });
            }
        }
        if dry_run.iter().any(|v| v != "All") {
            let listed: Vec<String> = dry_run.iter().map(|v| go_quote(v)).collect();
            causes.push(StatusCause {
                reason: "FieldValueNotSupported".into(),
                message: format!(
                    "Unsupported value: []string{{{}}}: supported values: \"All\"",
                    listed.join(", ")
                ),
                field: "dryRun".into(),
            });
        }
        let field_validation = match field_validation.as_str() {
            "" | "Warn" => Some(FieldValidation::Warn),
            "Ignore" => Some(FieldValidation::Ignore),
            "Strict" => Some(FieldValidation::Strict),
            other => {
                causes.push(StatusCause {
                    reason: "FieldValueNotSupported".into(),
                    message: format!(
                        "Unsupported value: {}: supported values: \"\", \"Ignore\", \"Strict\", \"Warn\"",
                        go_quote(other)
                    ),
                    field: "fieldValidation".into(),
                });
                None
            }
        };
        match field_validation {
            Some(field_validation) if causes.is_empty() => Ok(CreateOptions {
                dry_run: !dry_run.is_empty(),
                field_manager,
                field_validation,
                pretty,
            }),
            _ => Err(Status::invalid("meta.k8s.io", "CreateOptions", "", causes)),
        }
    }
}

/// Go's `strconv.ParseBool`; anything unparsable is false, as kube's `isPrettyPrint` treats it.
fn parse_go_bool(s: &str) -> bool {
    matches!(s, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and ASCII space.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFFF9..=0xFFFB | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0xFEFF | 0xAD))
}

/// Go's `%q` of a string (close enough for the ASCII-range names kube reports).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%#U`: `U+0009` (no glyph for non-printables).
fn go_unicode_u(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o = CreateOptions::parse(None).unwrap();
        assert_eq!(o, CreateOptions::default());
        assert_eq!(o.field_validation, FieldValidation::Warn);
    }

    #[test]
    fn table() {
        let ok: &[(&str, bool, FieldValidation, Option<bool>)] = &[
            ("dryRun=All", true, FieldValidation::Warn, None),
            ("dryRun=All&dryRun=All", true, FieldValidation::Warn, None),
            (
                "fieldValidation=Strict",
                false,
                FieldValidation::Strict,
                None,
            ),
            (
                "fieldValidation=Ignore",
                false,
                FieldValidation::Ignore,
                None,
            ),
            ("fieldValidation=", false, FieldValidation::Warn, None),
            ("pretty=true", false, FieldValidation::Warn, Some(true)),
            ("pretty=1", false, FieldValidation::Warn, Some(true)),
            ("pretty=yes", false, FieldValidation::Warn, Some(false)),
            (
                "fieldManager=kubectl-client-side-apply",
                false,
                FieldValidation::Warn,
                None,
            ),
        ];
        for (q, dry, fv, pretty) in ok {
            let o = CreateOptions::parse(Some(q)).unwrap();
            assert_eq!(
                (o.dry_run, o.field_validation, o.pretty),
                (*dry, *fv, *pretty),
                "{q}"
            );
        }
    }

    #[test]
    fn invalid_values_are_422_with_every_cause() {
        let long = "a".repeat(129);
        let q = format!("dryRun=Some&fieldValidation=Loose&fieldManager={long}");
        let st = CreateOptions::parse(Some(&q)).unwrap_err();
        assert_eq!(st.code, 422);
        let fields: Vec<&str> = st
            .details
            .as_ref()
            .unwrap()
            .causes
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        assert_eq!(fields, ["fieldManager", "dryRun", "fieldValidation"]);
        assert!(
            st.message
                .starts_with("CreateOptions.meta.k8s.io \"\" is invalid: [")
        );
    }

    #[test]
    fn non_printable_field_manager() {
        let st = CreateOptions::parse(Some("fieldManager=a%09b")).unwrap_err();
        let cause = &st.details.unwrap().causes[0];
        assert_eq!(
            cause.message,
            "Invalid value: \"a\\tb\": invalid character U+0009 (at position 1)"
        );
    }
}
