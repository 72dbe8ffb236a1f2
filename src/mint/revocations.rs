//! The revocation list: tokens refused before they expire, by `jti`, by service account, or by bound-object uid.
//!
//! File format, one entry a line (`#` starts a comment):
//! `jti=<token id>`, `serviceaccount=<namespace>/<name>`, `uid=<uid of a bound object or account>`.

use std::collections::HashSet;

/// A parsed revocation list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    jtis: HashSet<String>,
    accounts: HashSet<(String, String)>,
    uids: HashSet<String>,
}

impl Revocations {
    /// Parses the file text.
    ///
    /// # Errors
    /// The first malformed line, by number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut r = Revocations::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                format!(
                    "line {}: expected jti=…, serviceaccount=NAMESPACE/NAME or uid=…",
                    i + 1
                )
            };
            let (k, v) = line.split_once('=').ok_or_else(bad)?;
            let v = v.trim();
            if v.is_empty() {
                return Err(bad());
            }
            match k.trim() {
                "jti" => {
                    r.jtis.insert(v.to_owned());
                }
                "uid" => {
                    r.uids.insert(v.to_owned());
                }
                "serviceaccount" => {
                    let (ns, name) = v.split_once('/').ok_or_else(bad)?;
                    r.accounts.insert((ns.to_owned(), name.to_owned()));
                }
                _ => return Err(bad()),
            }
        }
        Ok(r)
    }

    /// Entries in total.
    pub fn len(&self) -> usize {
        self.jtis.len() + self.accounts.len() + self.uids.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why a token with these facts is revoked, if it is.
    pub fn check(&self, jti: &str, namespace: &str, name: &str, uids: &[&str]) -> Option<String> {
        if !jti.is_empty() && self.jtis.contains(jti) {
            return Some(format!("token id {jti} is revoked"));
        }
        if self
            .accounts
            .contains(&(namespace.to_owned(), name.to_owned()))
        {
            return Some(format!("service account {namespace}/{name} is revoked"));
        }
        uids.iter()
            .find(|u| !u.is_empty() && self.uids.contains(**u))
            .map(|u| format!("tokens bound to uid {u} are revoked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let r = Revocations::parse("# c\njti=abc\n\nserviceaccount=ns/sa\nuid=u-1\n").unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.check("abc", "x", "y", &[]).is_some());
        assert!(r.check("", "ns", "sa", &[]).is_some());
        assert!(r.check("", "x", "y", &["u-0", "u-1"]).is_some());
        assert!(r.check("zzz", "x", "y", &["u-0", ""]).is_none());
        assert!(
            Revocations::parse("jti\n")
                .unwrap_err()
                .starts_with("line 1")
        );
        assert!(Revocations::parse("serviceaccount=nope\n").is_err());
        assert!(Revocations::parse("what=1\n").is_err());
    }
}
