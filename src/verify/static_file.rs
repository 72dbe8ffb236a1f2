//! Static tokens: kube-apiserver's `--token-auth-file` CSV, plus hashed entries, an audiences column and extra.
//!
//! Row layout: `token,user,uid[,"group1,group2"[,"aud1,aud2"[,"key=value,key=value"]]]`.
//! A token written as `sha256:<64 hex>` (from `tokenhook hash-token`) is stored as that hash;
//! the plain file never needs to hold a usable token. Lines starting with `#` are comments.
//! Tokens are looked up by their SHA-256, so the presented token is never compared byte by
//! byte with a stored secret, and lookup time does not depend on how much of it matches.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use super::{Digest, Identity, Outcome, Token, Verifier, VerifyError};
use crate::clock::UnixTime;
use crate::k8s::token_review::UserInfo;

/// Prefix of a hashed token entry.
pub const HASH_PREFIX: &str = "sha256:";

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading token file {path}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A row is not valid CSV (or not UTF-8).
    #[error("token file record {record}: not valid CSV: {reason}")]
    Csv {
        /// 1-based record number.
        record: u64,
        /// What the CSV reader said.
        reason: String,
    },
    /// A row has the wrong shape.
    #[error("token file record {record}: {reason}")]
    Row {
        /// 1-based record number.
        record: u64,
        /// What is wrong.
        reason: String,
    },
}

/// One identity in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The user.
    pub user: UserInfo,
    /// Audiences column; `None` when empty (audience-agnostic).
    pub audiences: Option<Vec<String>>,
}

/// A parsed token file, keyed by token digest.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: HashMap<Digest, Arc<Entry>>,
    /// Non-fatal findings (empty or duplicate tokens), for the log.
    pub warnings: Vec<String>,
}

impl TokenTable {
    /// Parses CSV text.
    ///
    /// # Errors
    /// The first malformed row, by record number; nothing is half-loaded.
    pub fn parse(text: &[u8]) -> Result<Self, TokenFileError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(text);
        let mut table = TokenTable::default();
        for (i, record) in reader.records().enumerate() {
            let n = i as u64 + 1;
            let record = record.map_err(|e| TokenFileError::Csv {
                record: n,
                reason: e.to_string(),
            })?;
            let col = |i: usize| record.get(i).unwrap_or("");
            if record.len() < 3 {
                return Err(TokenFileError::Row {
                    record: n,
                    reason: format!(
                        "must have at least 3 columns (token, user name, user uid), found {}",
                        record.len()
                    ),
                });
            }
            if record.len() > 6 {
                return Err(TokenFileError::Row {
                    record: n,
                    reason: format!(
                        "has {} columns; at most 6 (token, user, uid, groups, audiences, extra)",
                        record.len()
                    ),
                });
            }
            let token = col(0);
            if token.is_empty() {
                table
                    .warnings
                    .push(format!("record {n}: empty token, skipped"));
                continue;
            }
            let digest = match token.strip_prefix(HASH_PREFIX) {
                Some(h) => parse_hash(h).ok_or_else(|| TokenFileError::Row {
                    record: n,
                    reason: "a sha256: entry must be followed by 64 hex digits".into(),
                })?,
                None => Digest::of(token.as_bytes()),
            };
            if col(1).is_empty() {
                return Err(TokenFileError::Row {
                    record: n,
                    reason: "user name is empty".into(),
                });
            }
            let audiences = split_list(col(4));
            let entry = Entry {
                user: UserInfo {
                    username: col(1).to_owned(),
                    uid: col(2).to_owned(),
                    groups: split_list(col(3)),
                    extra: parse_extra(col(5))
                        .map_err(|reason| TokenFileError::Row { record: n, reason })?,
                },
                audiences: (!audiences.is_empty()).then_some(audiences),
            };
            if table.entries.insert(digest, Arc::new(entry)).is_some() {
                table.warnings.push(format!(
                    "record {n}: duplicate token, the later record wins"
                ));
            }
        }
        Ok(table)
    }

    /// Reads and parses `path`, returning the bytes too (for change detection).
    ///
    /// # Errors
    /// Unreadable or malformed file.
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>), TokenFileError> {
        let bytes = std::fs::read(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::parse(&bytes)?, bytes))
    }

    /// The entry whose token hashes to `digest`.
    pub fn lookup(&self, digest: &Digest) -> Option<&Arc<Entry>> {
        self.entries
            .get_key_value(digest)
            // The map already matched the digest; the explicit constant-time check keeps
            // that property even if the map's equality ever changes.
            .filter(|(k, _)| bool::from(k.0.ct_eq(&digest.0)))
            .map(|(_, v)| v)
    }

    /// Number of usable tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No usable tokens.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_hash(h: &str) -> Option<Digest> {
    let bytes = hex::decode(h).ok()?;
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(Digest(arr))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_extra(s: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("extra entry {pair:?} is not key=value"))?;
        if k.is_empty() {
            return Err(format!("extra entry {pair:?} has an empty key"));
        }
        extra.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    Ok(extra)
}

/// The `static` verifier: an atomically swapped [`TokenTable`].
#[derive(Clone)]
pub struct StaticFile {
    table: Arc<ArcSwap<TokenTable>>,
}

impl StaticFile {
    /// A verifier over `table`.
    pub fn new(table: TokenTable) -> Self {
        StaticFile {
            table: Arc::new(ArcSwap::from_pointee(table)),
        }
    }

    /// Replaces the table (on reload).
    pub fn replace(&self, table: TokenTable) {
        self.table.store(Arc::new(table));
    }

    /// The current table.
    pub fn table(&self) -> Arc<TokenTable> {
        self.table.load_full()
    }
}

impl Verifier for StaticFile {
    async fn verify(&self, token: &Token, _now: UnixTime) -> Result<Outcome, VerifyError> {
        let table = self.table.load();
        Ok(match table.lookup(token.digest()) {
            Some(e) => Outcome::Authenticated(Identity {
                user: e.user.clone(),
                audiences: e.audiences.clone(),
                expires_at: None,
                bound: Vec::new(),
            }),
            None => Outcome::NotMine,
        })
    }
}

/// The value `tokenhook hash-token` prints for `token`.
pub fn hash_entry(token: &str) -> String {
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(Digest::of(token.as_bytes()).0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(table: TokenTable, token: &str) -> Outcome {
        let v = StaticFile::new(table);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(v.verify(&Token::new(token.into()), UnixTime(0)))
            .unwrap()
    }

    #[test]
    fn kube_format_rows() {
        let t = TokenTable::parse(
            b"# comment\n\
              t1,alice,1001,\"dev,ops\"\n\
              t2,bob,1002\n\
              \n\
              t3,carol,1003,,\"api,vault\",\"team=a,team=b,tier=gold\"\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        let Outcome::Authenticated(a) = verdict(t, "t1") else {
            panic!()
        };
        assert_eq!(a.user.username, "alice");
        assert_eq!(a.user.uid, "1001");
        assert_eq!(a.user.groups, vec!["dev", "ops"]);
        assert_eq!(a.audiences, None);
    }

    #[test]
    fn audiences_and_extra_columns() {
        let t = TokenTable::parse(b"t3,carol,1003,,\"api,vault\",\"team=a,team=b,tier=gold\"\n")
            .unwrap();
        let Outcome::Authenticated(c) = verdict(t, "t3") else {
            panic!()
        };
        assert_eq!(c.audiences, Some(vec!["api".into(), "vault".into()]));
        assert_eq!(c.user.extra["team"], vec!["a", "b"]);
        assert_eq!(c.user.extra["tier"], vec!["gold"]);
    }

    #[test]
    fn hashed_entries_match_the_token_not_the_hash() {
        let line = format!("{},dave,7\n", hash_entry("s3cret"));
        let t = TokenTable::parse(line.as_bytes()).unwrap();
        assert!(matches!(verdict(t, "s3cret"), Outcome::Authenticated(_)));
        let t = TokenTable::parse(line.as_bytes()).unwrap();
        assert_eq!(verdict(t, &hash_entry("s3cret")), Outcome::NotMine);
    }

    #[test]
    fn unknown_token_is_not_mine() {
        let t = TokenTable::parse(b"t1,alice,1\n").unwrap();
        assert_eq!(verdict(t, "nope"), Outcome::NotMine);
    }

    #[test]
    fn bad_rows_name_their_record() {
        let cases: &[(&[u8], &str)] = &[
            (b"t1,alice\n", "record 1: must have at least 3 columns"),
            (b"t1,a,1\nsha256:zz,b,2\n", "record 2: a sha256: entry"),
            (b"t1,,1\n", "record 1: user name is empty"),
            (b"t1,a,1,,,novalue\n", "record 1: extra entry \"novalue\""),
            (b"t1,a,1,,,,x\n", "record 1: has 7 columns"),
            (b"t1,a,\xff\n", "record 1: not valid CSV"),
        ];
        for (text, want) in cases {
            let err = TokenTable::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("token file {want}")), "{err}");
        }
    }

    #[test]
    fn empty_and_duplicate_tokens_warn() {
        let t = TokenTable::parse(b",x,1\nt,a,1\nt,b,2\n").unwrap();
        assert_eq!(t.warnings.len(), 2);
        let Outcome::Authenticated(i) = verdict(t, "t") else {
            panic!()
        };
        assert_eq!(i.user.username, "b");
    }
}
