//! Who may mint: rules matching caller users/groups to namespaces, service accounts, audiences and a maximum expiration.

use serde::{Deserialize, Serialize};

/// One `[[mint.policy]]` rule. A caller matches when its name is in `users` or one of its
/// groups is in `groups`; the rule then allows minting for accounts whose namespace and name
/// match the globs, for audiences that all match `audiences`, up to `max_expiration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Caller user names (client certificate CN, or the username a bearer token maps to).
    #[serde(default)]
    pub users: Vec<String>,
    /// Caller groups (client certificate O, or the token's groups).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Namespace globs (`*` matches any run of characters, `?` one).
    pub namespaces: Vec<String>,
    /// Service-account name globs.
    pub service_accounts: Vec<String>,
    /// Audience globs; every requested audience must match one.
    pub audiences: Vec<String>,
    /// Longest token this rule allows, in seconds; longer requests are clamped to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_expiration_seconds: Option<u64>,
}

/// An authenticated caller of the mint endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// What a request asks to mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Service account.
    pub name: &'a str,
    /// Audiences (after defaulting).
    pub audiences: &'a [String],
}

/// Glob match with `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

fn any(globs: &[String], v: &str) -> bool {
    globs.iter().any(|g| glob(g, v))
}

/// The policy: an ordered list of rules; nobody may mint when it is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// A policy of `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        Policy { rules }
    }

    /// The maximum expiration the caller may get (the largest over matching rules; `None`
    /// for "no limit of the policy's own"), or the reason for refusing: which part of the
    /// request no rule allows.
    ///
    /// # Errors
    /// The missing permission, worded for a 403 message.
    pub fn allow(&self, caller: &Caller, ask: &Ask<'_>) -> Result<Option<u64>, String> {
        let mine: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| {
                r.users.contains(&caller.user) || caller.groups.iter().any(|g| r.groups.contains(g))
            })
            .collect();
        if mine.is_empty() {
            return Err("no mint policy rule names this user or any of its groups".into());
        }
        let scoped: Vec<&&Rule> = mine
            .iter()
            .filter(|r| any(&r.namespaces, ask.namespace) && any(&r.service_accounts, ask.name))
            .collect();
        if scoped.is_empty() {
            return Err(format!(
                "no mint policy rule for this user allows service account {}/{}",
                ask.namespace, ask.name
            ));
        }
        let fits: Vec<&&&Rule> = scoped
            .iter()
            .filter(|r| ask.audiences.iter().all(|a| any(&r.audiences, a)))
            .collect();
        if fits.is_empty() {
            let missing = ask
                .audiences
                .iter()
                .find(|a| !scoped.iter().any(|r| any(&r.audiences, a)))
                .cloned()
                .unwrap_or_default();
            return Err(format!(
                "no mint policy rule for this user and service account allows audience {missing:?}"
            ));
        }
        // The most generous matching rule decides the ceiling; a rule without one has none.
        let ceiling = fits
            .iter()
            .map(|r| r.max_expiration_seconds)
            .try_fold(0u64, |acc, m| m.map(|m| acc.max(m)));
        Ok(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("team-*", "team-a", true),
            ("team-*", "tea", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.example.com", "vault.example.com", true),
            ("*.example.com", "example.com", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*a*b", "xxaxxb", true),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
    }

    fn rule(users: &[&str], ns: &str, aud: &str, max: Option<u64>) -> Rule {
        Rule {
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: vec!["ops".into()],
            namespaces: vec![ns.into()],
            service_accounts: vec!["*".into()],
            audiences: vec![aud.into()],
            max_expiration_seconds: max,
        }
    }

    #[test]
    fn decisions_say_what_is_missing() {
        let p = Policy::new(vec![
            rule(&["ci"], "build-*", "vault", Some(600)),
            rule(&[], "prod", "*", None),
        ]);
        let ci = Caller {
            user: "ci".into(),
            groups: vec![],
        };
        let auds = vec!["vault".to_string()];
        fn ask<'a>(ns: &'a str, a: &'a [String]) -> Ask<'a> {
            Ask {
                namespace: ns,
                name: "sa",
                audiences: a,
            }
        }
        assert_eq!(p.allow(&ci, &ask("build-1", &auds)), Ok(Some(600)));
        assert!(
            p.allow(&ci, &ask("prod", &auds))
                .unwrap_err()
                .contains("service account prod/sa")
        );
        let other = vec!["x".to_string()];
        assert!(
            p.allow(&ci, &ask("build-1", &other))
                .unwrap_err()
                .contains("audience \"x\"")
        );
        let nobody = Caller {
            user: "eve".into(),
            groups: vec![],
        };
        assert!(
            p.allow(&nobody, &ask("build-1", &auds))
                .unwrap_err()
                .contains("no mint policy rule names")
        );
        let ops = Caller {
            user: "x".into(),
            groups: vec!["ops".into()],
        };
        assert_eq!(p.allow(&ops, &ask("prod", &other)), Ok(None));
        assert!(Policy::default().allow(&ops, &ask("prod", &other)).is_err());
    }
}
