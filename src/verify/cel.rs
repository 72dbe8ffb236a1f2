//! CEL expressions for claim rules and mappings: compiled once at load (with kube's variables and a known function set), evaluated per token.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

/// Functions and operators this environment evaluates (CEL standard library, the strings
/// and lists extensions). An expression calling anything else is refused at load rather
/// than failing on every token.
const KNOWN_FUNCTIONS: &[&str] = &[
    // operators
    "_+_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "-_",
    "!_",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_&&_",
    "_||_",
    "_?_:_",
    "_[_]",
    "@in",
    "@not_strictly_false",
    // standard library and macros
    "size",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
    "bool",
    "bytes",
    "type",
    "dyn",
    "max",
    "min",
    "duration",
    "timestamp",
    // strings extension
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "quote",
    "reverse",
    "format",
    // optional values (`claims.?x.orValue(y)`)
    "_?._",
    "_[?_]",
    "orValue",
    "or",
    "hasValue",
    "value",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    // lists extension
    "distinct",
    "flatten",
    "range",
    "slice",
    "sort",
    "sortBy",
    "first",
    "last",
];

/// The shared CEL environment.
pub struct CelEnv(Arc<Env>);

impl CelEnv {
    /// Standard library plus the strings and lists extensions (what kube's CEL offers that
    /// authentication expressions use).
    ///
    /// # Errors
    /// Only if the crate refuses its own extensions.
    pub fn new() -> Result<Self, String> {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .map_err(|e| format!("{e:?}"))?;
        env.add_extension(cel::extensions::lists)
            .map_err(|e| format!("{e:?}"))?;
        Ok(CelEnv(Arc::new(env)))
    }
}

/// A compiled expression and its source (for messages).
#[derive(Debug)]
pub struct Expr {
    /// The source text.
    pub source: String,
    program: Program,
}

/// Longest expression accepted, in bytes.
pub const MAX_LENGTH: usize = 4096;
/// Deepest nesting accepted: brackets of every kind plus conditional (`?:`) branches.
pub const MAX_NESTING: usize = 16;

/// Refuses expressions whose shape alone would exhaust the stack: the CEL parser and
/// evaluator recurse once per nesting level (found by fuzzing: about 60 nested `[` crashed
/// an unoptimised build), so depth and length are bounded before parsing.
fn check_shape(source: &str) -> Result<(), String> {
    if source.len() > MAX_LENGTH {
        return Err(format!(
            "compilation failed: expression is {} bytes long, the limit is {MAX_LENGTH}",
            source.len()
        ));
    }
    let (mut depth, mut deepest, mut ternaries, mut quote) = (0usize, 0usize, 0usize, None::<char>);
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            // Each conditional nests its branches one level deeper, wherever it sits.
            (None, '?') => ternaries += 1,
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let nesting = deepest + ternaries;
    if nesting > MAX_NESTING {
        return Err(format!(
            "compilation failed: expression nests {nesting} levels deep, the limit is {MAX_NESTING}"
        ));
    }
    Ok(())
}

impl Expr {
    /// Compiles `source`, allowing only the variables in `vars`.
    ///
    /// # Errors
    /// Syntax errors, unknown variables, or functions this environment cannot evaluate.
    pub fn compile(env: &CelEnv, source: &str, vars: &[&str]) -> Result<Self, String> {
        check_shape(source)?;
        let program = env.0.compile(source).map_err(|e| {
            format!(
                "compilation failed: {}",
                e.to_string().lines().next().unwrap_or("syntax error")
            )
        })?;
        let refs = program.references();
        let bound = comprehension_variables(source);
        let mut bad: Vec<String> = refs
            .variables()
            .into_iter()
            .filter(|v| !vars.contains(v) && !bound.iter().any(|b| b == v))
            .map(|v| {
                format!(
                    "undeclared reference to '{v}' (available: {})",
                    vars.join(", ")
                )
            })
            .collect();
        bad.extend(
            refs.functions()
                .into_iter()
                .filter(|f| !KNOWN_FUNCTIONS.contains(f))
                .map(|f| format!("function '{f}' is not supported")),
        );
        bad.sort();
        match bad.first() {
            Some(first) => Err(format!("compilation failed: {first}")),
            None => Ok(Expr {
                source: source.to_owned(),
                program,
            }),
        }
    }

    /// Evaluates with `vars` bound, returning the result as JSON.
    ///
    /// # Errors
    /// A runtime error (missing key, wrong type…), as text.
    pub fn eval(
        &self,
        env: &CelEnv,
        vars: &[(&str, &serde_json::Value)],
    ) -> Result<serde_json::Value, String> {
        let mut ctx = Context::with_env(env.0.clone());
        for (name, v) in vars {
            ctx.add_variable_from_value(*name, json_to_cel(v));
        }
        let out = self.program.execute(&ctx).map_err(|e| e.to_string())?;
        out.json()
            .map_err(|e| format!("result cannot be represented: {e:?}"))
    }
}

/// Names bound by macros (`x` in `list.map(x, …)`): references to them are not free
/// variables. The parser reports them among the references, so they are read back from
/// the source here.
fn comprehension_variables(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in ["map", "filter", "all", "exists", "exists_one"] {
        let pat = format!(".{m}(");
        let mut rest = source;
        while let Some(i) = rest.find(&pat) {
            rest = rest.get(i + pat.len()..).unwrap_or("");
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// JSON into CEL values; whole numbers become `int` as in kube's unstructured claims.
fn json_to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        serde_json::Value::Object(o) => {
            let m: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deep_or_long_expressions_are_refused_before_parsing() {
        let env = super::CelEnv::new().unwrap();
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let e = super::Expr::compile(&env, &nested(61), &["claims"]).unwrap_err();
        assert_eq!(
            e,
            "compilation failed: expression nests 61 levels deep, the limit is 16"
        );
        let e = super::Expr::compile(&env, &format!("{}true", "true ? ".repeat(17)), &[])
            .err()
            .unwrap_or_default();
        assert!(e.contains("nests 17 levels deep"), "{e}");
        let long = format!("claims.sub == '{}'", "a".repeat(5000));
        let e = super::Expr::compile(&env, &long, &["claims"]).unwrap_err();
        assert!(e.contains("the limit is 4096"), "{e}");
        // Brackets and question marks inside string literals do not count.
        let quoted = format!(
            "claims.sub == '{}' || claims.sub == \"{}\"",
            "[(?".repeat(30),
            "\\\"".repeat(3)
        );
        assert!(super::Expr::compile(&env, &quoted, &["claims"]).is_ok());
        // At the limit it compiles and runs (on a generous stack: unoptimised test builds
        // use far more stack per level than release builds).
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || {
                let x = super::Expr::compile(&env, &nested(16), &[]).unwrap();
                drop(x);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn kube_doc_expressions() {
        let env = CelEnv::new().unwrap();
        let claims = json!({"username": "foo", "roles": "user,admin", "sub": "auth",
                            "tenant": "t1", "hd": "example.com", "exp": 200, "nbf": 100,
                            "email_verified": true, "groups": ["a", "b"]});
        let cases = [
            (
                r#"claims.username + ":external-user""#,
                json!("foo:external-user"),
            ),
            (r#"claims.roles.split(",")"#, json!(["user", "admin"])),
            (r#"claims.hd == "example.com""#, json!(true)),
            ("claims.exp - claims.nbf <= 86400", json!(true)),
            (
                "has(claims.email_verified) && claims.email_verified",
                json!(true),
            ),
            ("has(claims.missing)", json!(false)),
            (
                "claims.groups.map(g, 'oidc:' + g)",
                json!(["oidc:a", "oidc:b"]),
            ),
            ("'a' in claims.groups", json!(true)),
            ("claims.?missing.orValue('x')", json!("x")),
        ];
        for (src, want) in cases {
            let e =
                Expr::compile(&env, src, &["claims"]).unwrap_or_else(|err| panic!("{src}: {err}"));
            assert_eq!(e.eval(&env, &[("claims", &claims)]).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn load_time_errors() {
        let env = CelEnv::new().unwrap();
        assert!(
            Expr::compile(&env, "claims.sub +", &["claims"])
                .unwrap_err()
                .starts_with("compilation failed")
        );
        assert!(
            Expr::compile(&env, "user.username", &["claims"])
                .unwrap_err()
                .contains("'user'")
        );
        assert!(
            Expr::compile(&env, "frobnicate(claims.sub)", &["claims"])
                .unwrap_err()
                .contains("frobnicate")
        );
    }
}
