//! deploy/ checked offline (no Helm, Docker or cluster): values vs schema, template `.Values` references, the hand-rendered outputs (defaults, and cluster.yaml with autoscaling and the cluster registry's RBAC), the Dockerfile.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokenhook::config::FileConfig;
use tokenhook::config::file::VerifierConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/tokenhook")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn in_templates(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "templates")
}

/// The non-empty documents of a (multi-document) YAML text, as JSON values.
fn documents(text: &str, what: &str) -> Vec<Json> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Json::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn values() -> Json {
    let path = chart().join("values.yaml");
    serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("values.yaml: {e}"))
}

fn schema() -> Json {
    serde_json::from_str(&read(&chart().join("values.schema.json")))
        .unwrap_or_else(|e| panic!("values.schema.json: {e}"))
}

/// `override_` merged into `base` as Helm coalesces `-f` files: maps merge key by key, anything
/// else replaces, null removes the key.
fn coalesce(base: &mut Json, override_: &Json) {
    match (base, override_) {
        (Json::Object(base), Json::Object(over)) => {
            for (k, v) in over {
                if v.is_null() {
                    base.remove(k);
                } else if let Some(b) = base.get_mut(k).filter(|b| b.is_object()) {
                    coalesce(b, v);
                } else {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// The text inside each `{{ … }}` action, trim markers and comments removed.
fn actions(text: &str, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .unwrap_or_else(|| panic!("{what}: `{{{{` without `}}}}`"));
        let body = after[..end].trim();
        let body = body.strip_prefix('-').unwrap_or(body);
        let body = body.strip_suffix('-').unwrap_or(body).trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            out.push(body.to_string());
        }
        rest = &after[end + 2..];
    }
    assert!(
        !rest.contains("}}"),
        "{what}: `}}}}` without `{{{{` after the last action"
    );
    out
}

/// Checks that `if`/`range`/`with`/`define` blocks close and that `else` sits inside one.
fn check_blocks(actions: &[String], what: &str) {
    let mut open: Vec<&str> = Vec::new();
    for a in actions {
        let word = a
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()
            .unwrap_or("");
        match word {
            "if" | "range" | "with" | "define" | "block" => open.push(word),
            "else" => assert!(
                matches!(open.last(), Some(&("if" | "range" | "with"))),
                "{what}: `{a}` outside if/range/with"
            ),
            "end" => {
                assert!(open.pop().is_some(), "{what}: `end` closes nothing");
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "{what}: unclosed {open:?}");
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The dotted names at the start of `s` (`.a.b.c | quote` gives `["a", "b", "c"]`).
fn dotted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(r) = rest.strip_prefix('.') {
        let len = r.find(|c: char| !is_ident(c)).unwrap_or(r.len());
        if len == 0 {
            break;
        }
        out.push(r[..len].to_string());
        rest = &r[len..];
    }
    out
}

/// Every values path a template action names: `.Values.a.b`, `$.Values.a.b`, and `$v.c` where
/// `$v := .Values.a.b` was assigned earlier in the same file.
fn values_references(actions: &[String]) -> Vec<Vec<String>> {
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for a in actions {
        // `$name := .Values.x.y` (a plain alias, nothing piped after it)
        if let Some((var, expr)) = a.split_once(":=") {
            let var = var.trim();
            let expr = expr.trim();
            let expr = expr.strip_prefix('$').unwrap_or(expr);
            if let Some(path) = expr.strip_prefix(".Values")
                && var.starts_with('$')
                && var[1..].chars().all(is_ident)
            {
                let segs = dotted(path);
                if segs.iter().map(|s| s.len() + 1).sum::<usize>() == path.len() {
                    aliases.insert(var.to_string(), segs);
                }
            }
        }
        for (i, _) in a.match_indices(".Values") {
            let before = a[..i].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == '.' || c == ')') {
                continue;
            }
            let segs = dotted(&a[i + ".Values".len()..]);
            if !segs.is_empty() {
                out.push(segs);
            }
        }
        for (var, base) in &aliases {
            for (i, _) in a.match_indices(var.as_str()) {
                let after = &a[i + var.len()..];
                if a[..i].ends_with(|c: char| is_ident(c) || c == '$')
                    || after.starts_with(is_ident)
                    || after.trim_start().starts_with(":=")
                {
                    continue;
                }
                let mut segs = base.clone();
                segs.extend(dotted(after));
                out.push(segs);
            }
        }
    }
    out
}

fn lookup<'a>(v: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

/// Paths of every leaf of `v` (scalars, lists, empty maps).
fn leaves(v: &Json, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v.as_object() {
        Some(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.clone()),
    }
}

/// The hand-rendered outputs in rendered/: each file, the values file it was rendered with
/// (`helm template tokenhook deploy/helm/tokenhook -n tokenhook [-f rendered/VALUES]`), and
/// the kinds it holds beyond the defaults' seven.
const RENDERED: &[(&str, Option<&str>, &[&str])] = &[
    ("default.yaml", None, &[]),
    (
        "cluster.yaml",
        Some("cluster-values.yaml"),
        &[
            "HorizontalPodAutoscaler",
            "ClusterRole",
            "ClusterRoleBinding",
        ],
    ),
];

/// One output of rendered/.
struct Rendered {
    /// `rendered/<file>`.
    name: String,
    /// values.yaml with the `-f` file coalesced onto it, as Helm does.
    values: Json,
    /// Kinds beyond the defaults'.
    extra_kinds: &'static [&'static str],
    docs: Vec<Json>,
    /// Each document's `# Source:` template and its text under that line, in order.
    sources: Vec<(String, String)>,
}

impl Rendered {
    /// The text of the one document `template` rendered.
    fn source(&self, template: &str) -> &str {
        let mut of = self.sources.iter().filter(|(t, _)| t == template);
        let (_, text) = of
            .next()
            .unwrap_or_else(|| panic!("{}: no {template}", self.name));
        assert!(of.next().is_none(), "{}: {template} twice", self.name);
        text
    }
}

fn rendered_file(
    file: &str,
    values_file: Option<&str>,
    extra_kinds: &'static [&'static str],
) -> Rendered {
    let name = format!("rendered/{file}");
    let text = read(&chart().join(&name));
    let docs = documents(&text, &name);
    let mut sources = Vec::new();
    for chunk in text.split("---\n# Source: ").skip(1) {
        let (template, body) = chunk.split_once('\n').unwrap();
        // Each document ends with one newline before the next `---`.
        sources.push((
            template.to_string(),
            body.trim_end_matches('\n').to_string(),
        ));
    }
    let mut values = values();
    if let Some(f) = values_file {
        let over: Json = serde_yaml_ng::from_str(&read(&chart().join("rendered").join(f)))
            .unwrap_or_else(|e| panic!("rendered/{f}: {e}"));
        coalesce(&mut values, &over);
    }
    Rendered {
        name,
        values,
        extra_kinds,
        docs,
        sources,
    }
}

/// rendered/default.yaml.
fn rendered() -> Rendered {
    let (file, values_file, extra) = RENDERED[0];
    rendered_file(file, values_file, extra)
}

/// Every output of rendered/.
fn all_rendered() -> Vec<Rendered> {
    RENDERED
        .iter()
        .map(|(file, values_file, extra)| rendered_file(file, *values_file, extra))
        .collect()
}

fn find<'a>(docs: &'a [Json], kind: &str) -> &'a Json {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} among the rendered objects"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    doc
}

fn str_at<'a>(v: &'a Json, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("{pointer}: missing or not a string in {v}"))
}

fn container(deployment: &Json) -> &Json {
    let containers = deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Json::as_array)
        .unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// Labels `selector` requires are all on `labels`.
fn selects(selector: &Json, labels: &Json) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn deploy_yaml_files_parse_and_templates_are_well_formed() {
    let all = files(&repo().join("deploy"));
    let mut parsed = BTreeSet::new();
    let mut templates = 0;
    for path in &all {
        let rel = path.strip_prefix(repo()).unwrap().display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let text = read(path);
        if in_templates(path) {
            // Not YAML before rendering: check the template syntax as text.
            assert!(!text.contains('\t'), "{rel}: tab characters");
            let acts = actions(&text, &rel);
            check_blocks(&acts, &rel);
            if ext == "yaml" {
                assert!(
                    text.contains("apiVersion:") && text.contains("kind:"),
                    "{rel}: not a manifest template"
                );
            }
            templates += 1;
        } else if ext == "yaml" || ext == "yml" {
            assert!(
                !documents(&text, &rel).is_empty(),
                "{rel}: no YAML document"
            );
            parsed.insert(rel);
        } else if ext == "json" {
            serde_json::from_str::<Json>(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
            parsed.insert(rel);
        }
    }
    for expected in [
        "deploy/helm/tokenhook/Chart.yaml",
        "deploy/helm/tokenhook/values.yaml",
        "deploy/helm/tokenhook/values.schema.json",
        "deploy/helm/tokenhook/rendered/default.yaml",
        "deploy/helm/tokenhook/rendered/cluster.yaml",
        "deploy/helm/tokenhook/rendered/cluster-values.yaml",
        "deploy/apiserver/webhook-kubeconfig.yaml",
        "deploy/apiserver/authentication-config.yaml",
    ] {
        assert!(
            parsed.contains(expected),
            "{expected} not parsed: {parsed:?}"
        );
    }
    let names: BTreeSet<String> = all
        .iter()
        .filter(|p| in_templates(p))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for t in [
        "_helpers.tpl",
        "deployment.yaml",
        "service.yaml",
        "configmap.yaml",
        "secret-tokens.yaml",
        "certificate.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
        "grafana-dashboard.yaml",
        "pdb.yaml",
        "networkpolicy.yaml",
        "hpa.yaml",
        "NOTES.txt",
    ] {
        assert!(names.contains(t), "templates/{t} missing");
    }
    assert_eq!(templates, names.len());
    // rendered/ holds the outputs these tests check and their values files, nothing else
    // (e2e.rs applies every output, and only those).
    let in_rendered: BTreeSet<String> = files(&chart().join("rendered"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = RENDERED
        .iter()
        .flat_map(|(file, values_file, _)| std::iter::once(*file).chain(*values_file))
        .map(str::to_string)
        .collect();
    assert_eq!(in_rendered, listed, "rendered/ and RENDERED");
    for (_, values_file, _) in RENDERED {
        if let Some(f) = values_file {
            assert!(
                f.ends_with("-values.yaml"),
                "{f}: e2e.rs skips only *-values.yaml"
            );
        }
    }

    let chart_yaml: Json = serde_yaml_ng::from_str(&read(&chart().join("Chart.yaml"))).unwrap();
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "tokenhook");
    assert_eq!(chart_yaml["version"], "0.1.0");
    assert_eq!(chart_yaml["appVersion"], "0.1.0");
    assert!(
        chart_yaml["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
}

#[test]
fn deploy_values_match_the_schema_and_bad_values_do_not() {
    let schema = schema();
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("values.schema.json: {e}"));
    assert_eq!(schema["additionalProperties"], false);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let defaults = values();
    let errors: Vec<String> = validator
        .iter_errors(&defaults)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "values.yaml: {errors:#?}");

    // `helm install -f FILE`: FILE coalesced onto values.yaml, then validated.
    let with = |file: &str| {
        let mut v = defaults.clone();
        coalesce(&mut v, &serde_yaml_ng::from_str(file).unwrap());
        v
    };
    for file in [
        "autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 10}",
        "tls: {certManager: {enabled: true, issuerRef: {name: cluster-ca, kind: ClusterIssuer}}}",
        "image: {tag: 0.1.0-rc.1, pullPolicy: Always}",
        "service: {type: NodePort, nodePort: 30443}",
        "podDisruptionBudget: {minAvailable: 50%}",
        "networkPolicy: {apiserverCIDRs: [10.0.0.10/32, 'fd00::10/128']}",
        "config: {callers: {tokens_file: /etc/tokenhook/tokens/callers.csv}}",
        "config: {metrics: {listen: '0.0.0.0:9443', anonymous: true}}",
        "config: {verifiers: [{type: service_account}, {type: jwt, issuer: {url: 'https://ci.example.com'}, jwks_file: /etc/tokenhook/mint/ci-jwks.json}]}",
        "authenticationConfig: {content: {apiVersion: apiserver.config.k8s.io/v1, kind: AuthenticationConfiguration}}",
        "prometheusRule: {enabled: true, namespace: monitoring, labels: {release: kube-prometheus-stack}}",
        "grafanaDashboard: {enabled: true, namespace: monitoring, annotations: {grafana_folder: Authentication}}",
    ] {
        let v = with(file);
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}");
    }
    // The values files the outputs of rendered/ were rendered with.
    for r in all_rendered() {
        let errors: Vec<String> = validator
            .iter_errors(&r.values)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}'s values: {errors:#?}", r.name);
    }
    for (file, at) in [
        ("replicaCount: 1", "/replicaCount"),
        ("replicas: 3", ""),
        ("image: {pullPolicy: Sometimes}", "/image/pullPolicy"),
        ("image: {digest: sha256:0}", "/image"),
        ("service: {type: Ingress}", "/service/type"),
        ("service: {port: 70000}", "/service/port"),
        ("autoscaling: {minReplicas: 1}", "/autoscaling/minReplicas"),
        (
            "config: {server: {lsten: '0.0.0.0:8443'}}",
            "/config/server",
        ),
        ("config: {server: {cert_file: null}}", "/config/server"),
        ("config: {log: {format: xml}}", "/config/log/format"),
        (
            "config: {metrics: {listen: 9443}}",
            "/config/metrics/listen",
        ),
        ("config: {verifiers: []}", "/config/verifiers"),
        (
            "config: {verifiers: [{type: static}]}",
            "/config/verifiers/0",
        ),
        (
            "config: {verifiers: [{type: ldap}]}",
            "/config/verifiers/0/type",
        ),
        ("serviceMonitor: {scheme: http}", "/serviceMonitor/scheme"),
        (
            "prometheusRule: {enabled: 'true'}",
            "/prometheusRule/enabled",
        ),
        ("prometheusRule: {severity: page}", "/prometheusRule"),
        (
            "grafanaDashboard: {labels: {grafana_dashboard: 1}}",
            "/grafanaDashboard/labels/grafana_dashboard",
        ),
        ("podAntiAffinityPreset: always", "/podAntiAffinityPreset"),
        (
            "resources: {limits: {memory: lots}}",
            "/resources/limits/memory",
        ),
    ] {
        let v = with(file);
        let paths: Vec<String> = validator
            .iter_errors(&v)
            .map(|e| e.instance_path().to_string())
            .collect();
        assert!(
            paths.iter().any(|p| p == at),
            "{file}: expected an error at {at:?}, got {paths:?}"
        );
    }
}

#[test]
fn deploy_schema_config_sections_are_tokenhooks() {
    // values.schema.json refuses unknown keys under `config`: its sections must list exactly
    // the keys tokenhook's FileConfig has, or valid configurations are refused (or invalid
    // ones let through to fail at pod start).
    let schema = schema();
    let config = &schema["properties"]["config"]["properties"];
    let defaults = serde_json::to_value(FileConfig::default()).unwrap();
    let sections: BTreeSet<&String> = defaults.as_object().unwrap().keys().collect();
    assert_eq!(
        config.as_object().unwrap().keys().collect::<BTreeSet<_>>(),
        sections,
        "values.schema.json config sections"
    );
    for section in sections {
        let Some(keys) = defaults[section].as_object() else {
            continue; // verifiers: a list, described by definitions/verifier
        };
        let schema_keys: BTreeSet<&String> = config[section]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("config.{section}: no properties in the schema"))
            .keys()
            .collect();
        assert_eq!(
            schema_keys,
            keys.keys().collect::<BTreeSet<_>>(),
            "values.schema.json config.{section} keys vs tokenhook's [{section}]"
        );
        assert_eq!(config[section]["additionalProperties"], false, "{section}");
    }
}

#[test]
fn deploy_values_reference_scanner() {
    let text = r#"{{- $np := .Values.networkPolicy }}{{ $x := include "a" . }}
{{ if and $np.egress (not $.Values.tls.certManager.enabled) }}{{ $np }}{{ $npx }}
{{- include (print $.Template.BasePath "/c.yaml") . | sha256sum }}{{/* .Values.comment */}}
{{ .Values.image.tag | default .Chart.AppVersion }}{{ (.Values.service).port }}{{ end }}"#;
    let acts = actions(text, "sample");
    check_blocks(&acts, "sample");
    let refs: Vec<String> = values_references(&acts)
        .iter()
        .map(|r| r.join("."))
        .collect();
    assert_eq!(
        refs,
        [
            "networkPolicy",
            "tls.certManager.enabled",
            "networkPolicy.egress",
            "networkPolicy",
            "image.tag",
            "service",
        ]
    );
}

#[test]
fn deploy_template_values_references_exist_and_every_value_is_used() {
    let values = values();
    let mut used: Vec<Vec<String>> = Vec::new();
    for path in files(&chart().join("templates")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let acts = actions(&read(&path), &name);
        let refs = values_references(&acts);
        for r in &refs {
            assert!(
                lookup(&values, r).is_some(),
                "templates/{name}: .Values.{} is not in values.yaml",
                r.join(".")
            );
        }
        used.extend(refs);
    }
    assert!(
        used.len() > 50,
        "scanner found only {} references",
        used.len()
    );
    // No dead values: every leaf of values.yaml is read (itself or through a parent).
    let mut all = Vec::new();
    leaves(&values, &mut Vec::new(), &mut all);
    let unused: Vec<String> = all
        .iter()
        .filter(|leaf| !used.iter().any(|r| leaf.starts_with(r)))
        .map(|leaf| leaf.join("."))
        .collect();
    assert!(unused.is_empty(), "values no template reads: {unused:?}");
}

#[test]
fn deploy_rendered_defaults_are_the_expected_objects() {
    for r in all_rendered() {
        let name = &r.name;
        let docs = &r.docs;
        let kinds: BTreeSet<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
        // RBAC renders only with config.mint.registry.source = kubernetes (cluster.yaml):
        // see deploy_rbac_grants_list_and_watch_of_exactly_the_registry_kinds.
        let mut expected: BTreeSet<&str> = [
            "Deployment",
            "Service",
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
        .into();
        expected.extend(r.extra_kinds);
        assert_eq!(kinds, expected, "{name}");
        assert_eq!(docs.len(), expected.len(), "{name}");
        assert_eq!(
            r.sources.len(),
            docs.len(),
            "{name}: one `# Source:` per document"
        );
        for (source, _) in &r.sources {
            let file = source
                .strip_prefix("tokenhook/templates/")
                .unwrap_or_else(|| panic!("{name}: # Source: {source}"));
            assert!(
                chart().join("templates").join(file).is_file(),
                "{name}: {source}"
            );
        }
        for d in docs {
            let what = format!("{name}: {} {}", d["kind"], d["metadata"]["name"]);
            let api = str_at(d, "/apiVersion");
            assert!(
                !api.is_empty() && !api.contains(' '),
                "{what}: apiVersion {api}"
            );
            assert!(!str_at(d, "/metadata/name").is_empty(), "{what}");
            if ["ClusterRole", "ClusterRoleBinding"].contains(&str_at(d, "/kind")) {
                assert!(
                    d["metadata"].get("namespace").is_none(),
                    "{what}: cluster-scoped"
                );
            } else {
                assert_eq!(str_at(d, "/metadata/namespace"), "tokenhook", "{what}");
            }
            let labels = &d["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/name"], "tokenhook", "{what}");
            assert_eq!(labels["app.kubernetes.io/instance"], "tokenhook", "{what}");
            assert_eq!(labels["app.kubernetes.io/version"], "0.1.0", "{what}");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{what}");
            assert_eq!(labels["helm.sh/chart"], "tokenhook-0.1.0", "{what}");
        }
        for (kind, api) in [
            ("Deployment", "apps/v1"),
            ("Service", "v1"),
            ("ServiceAccount", "v1"),
            ("ConfigMap", "v1"),
            ("Secret", "v1"),
            ("PodDisruptionBudget", "policy/v1"),
            ("NetworkPolicy", "networking.k8s.io/v1"),
            ("HorizontalPodAutoscaler", "autoscaling/v2"),
            ("ClusterRole", "rbac.authorization.k8s.io/v1"),
            ("ClusterRoleBinding", "rbac.authorization.k8s.io/v1"),
        ] {
            if kinds.contains(kind) {
                assert_eq!(find(docs, kind)["apiVersion"], api, "{name}: {kind}");
            }
        }
    }
}

/// The least number of pods the output runs: `replicas`, or the autoscaler's minimum.
fn min_pods(docs: &[Json]) -> u64 {
    let d = find(docs, "Deployment");
    match docs.iter().find(|o| o["kind"] == "HorizontalPodAutoscaler") {
        Some(hpa) => {
            // The autoscaler owns the replica count: the Deployment must not set it, or every
            // `helm upgrade` would reset what the autoscaler chose.
            assert!(
                d["spec"].get("replicas").is_none(),
                "replicas beside an HPA"
            );
            assert_eq!(
                hpa["spec"]["scaleTargetRef"],
                json!({"apiVersion": d["apiVersion"], "kind": "Deployment", "name": d["metadata"]["name"]})
            );
            let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
            assert!(hpa["spec"]["maxReplicas"].as_u64().unwrap() >= min);
            let cpu = &hpa["spec"]["metrics"][0]["resource"];
            assert_eq!(cpu["name"], "cpu");
            assert_eq!(cpu["target"]["type"], "Utilization");
            // Utilization is relative to requests: the container must request CPU.
            assert!(container(d)["resources"]["requests"].get("cpu").is_some());
            min
        }
        None => d["spec"]["replicas"].as_u64().unwrap(),
    }
}

#[test]
fn deploy_rendered_deployment_is_replicated_hardened_and_probed() {
    for r in all_rendered() {
        deployment_is_replicated_hardened_and_probed(&r);
    }
}

fn deployment_is_replicated_hardened_and_probed(r: &Rendered) {
    let docs = &r.docs;
    let d = find(docs, "Deployment");
    assert!(min_pods(docs) >= 2, "{}: replicas", r.name);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &d["spec"]["template"]["spec"];
    // The static registry never calls the API: no token in the pods. The kubernetes one
    // without a kubeconfig reads the cluster with the pods' own ServiceAccount.
    let in_cluster = r.values.pointer("/config/mint/registry/source") == Some(&json!("kubernetes"))
        && r.values
            .pointer("/config/mint/registry/kubeconfig")
            .is_none_or(Json::is_null);
    assert_eq!(
        pod["automountServiceAccountToken"], in_cluster,
        "{}",
        r.name
    );
    assert_eq!(
        pod["serviceAccountName"],
        find(docs, "ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(d);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(
        str_at(c, "/image").starts_with("tokenhook:"),
        "image {}",
        c["image"]
    );
    assert_eq!(
        c["args"],
        json!(["serve", "--config", "/etc/tokenhook/config/tokenhook.toml"])
    );
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        assert_eq!(get["port"], "https", "{probe}");
        assert!(c[probe]["periodSeconds"].as_u64().unwrap() > 0, "{probe}");
    }
    assert!(
        c.get("startupProbe").is_none(),
        "startup probe is off by default"
    );
    let port = &c["ports"][0];
    assert_eq!(port["name"], "https");
    assert_eq!(port["containerPort"], 8443);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            let q = &c["resources"][kind][resource];
            assert!(
                q.is_string() || q.is_number(),
                "resources.{kind}.{resource}"
            );
        }
    }
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&anti["labelSelector"]["matchLabels"], pod_labels));
    assert!(selects(&d["spec"]["selector"]["matchLabels"], pod_labels));
    let checksum = str_at(d, "/spec/template/metadata/annotations/checksum~1config");
    assert!(
        checksum.len() == 64 && checksum.chars().all(|c| c.is_ascii_hexdigit()),
        "checksum/config {checksum}"
    );
}

#[test]
fn deploy_rendered_selectors_ports_and_budget_agree() {
    for r in all_rendered() {
        selectors_ports_and_budget_agree(&r.docs);
    }
}

fn selectors_ports_and_budget_agree(docs: &[Json]) {
    let d = find(docs, "Deployment");
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    let c = container(d);

    let svc = find(docs, "Service");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(
        selects(&svc["spec"]["selector"], pod_labels),
        "Service selector"
    );
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["port"], 8443);
    assert_eq!(sp["targetPort"], c["ports"][0]["name"]);

    let pdb = find(docs, "PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    let min = pdb["spec"]["minAvailable"].as_u64().unwrap();
    assert!(min >= 1 && min < min_pods(docs));

    let np = find(docs, "NetworkPolicy");
    assert!(selects(
        &np["spec"]["podSelector"]["matchLabels"],
        pod_labels
    ));
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    let rule = &np["spec"]["ingress"][0];
    assert_eq!(rule["ports"][0]["port"], c["ports"][0]["containerPort"]);
    assert_eq!(rule["ports"][0]["protocol"], "TCP");
}

#[test]
fn deploy_rendered_config_is_a_valid_tokenhook_configuration_on_mounted_paths() {
    for r in all_rendered() {
        config_is_a_valid_tokenhook_configuration_on_mounted_paths(&r);
    }
}

fn config_is_a_valid_tokenhook_configuration_on_mounted_paths(r: &Rendered) {
    let docs = &r.docs;
    let d = find(docs, "Deployment");
    let c = container(d);
    let cm = find(docs, "ConfigMap");
    let toml_text = str_at(cm, "/data/tokenhook.toml");
    let file: FileConfig = toml::from_str::<FileConfig>(toml_text)
        .unwrap_or_else(|e| panic!("tokenhook.toml in the ConfigMap: {e}"));
    let config = tokenhook::config::validate::validate(&file, Path::new("/etc/tokenhook/config"))
        .unwrap_or_else(|e| panic!("tokenhook.toml in the ConfigMap: {e:#?}"));

    // The ConfigMap is the values' `config`, key for key.
    let from_values: FileConfig = serde_json::from_value(r.values["config"].clone())
        .unwrap_or_else(|e| panic!("{}: values' config: {e}", r.name));
    assert_eq!(
        file, from_values,
        "{}: rendered tokenhook.toml differs from values.config",
        r.name
    );
    // cluster.yaml mints with the registry backed by the cluster, reached in-cluster.
    if r.values.pointer("/config/mint/registry/source") == Some(&json!("kubernetes")) {
        let mint = config.mint.as_ref().expect("minting on");
        assert_eq!(mint.cluster, Some(None), "{}: in-cluster registry", r.name);
        assert!(
            file.verifiers
                .iter()
                .any(|v| matches!(v, VerifierConfig::ServiceAccount {})),
            "{}: minted tokens are verified",
            r.name
        );
    }

    assert_eq!(
        config.listen.port(),
        c["ports"][0]["containerPort"].as_u64().unwrap() as u16
    );
    assert_eq!(
        config.callers.allowed_names,
        vec!["kube-apiserver".to_string()]
    );
    assert!(config.log.json);
    assert!(config.cache.enabled);

    // Every file the configuration names is a key of a volume mounted at its directory.
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["readOnly"], true, "{m}");
            (str_at(m, "/mountPath"), str_at(m, "/name"))
        })
        .collect();
    let volumes: BTreeMap<&str, &Json> = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (str_at(v, "/name"), v))
        .collect();
    assert_eq!(
        mounts.values().copied().collect::<BTreeSet<_>>(),
        volumes.keys().copied().collect::<BTreeSet<_>>(),
        "mounts and volumes"
    );
    let provides = |path: &Path| -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy();
        let Some(volume) = mounts.get(&*dir.to_string_lossy()).map(|v| volumes[v]) else {
            return false;
        };
        let (source, kind) = if volume.get("secret").is_some() {
            (&volume["secret"], "Secret")
        } else {
            (&volume["configMap"], "ConfigMap")
        };
        if let Some(items) = source["items"].as_array() {
            return items.iter().any(|i| i["path"] == *name);
        }
        let object = source["secretName"].as_str().or(source["name"].as_str());
        match docs
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str() == object)
        {
            // An object of the chart: the key must be in it.
            Some(o) => o["data"].get(&*name).is_some(),
            // mint.existingSecret: the operator's Secret with the keys config.mint names.
            None if object.is_some() && object == r.values["mint"]["existingSecret"].as_str() => {
                true
            }
            // A kubernetes.io/tls Secret the operator or cert-manager provides.
            None => ["tls.crt", "tls.key", "ca.crt"].contains(&&*name),
        }
    };
    let mut named: Vec<PathBuf> = vec![
        PathBuf::from("/etc/tokenhook/config/tokenhook.toml"),
        config.cert_file.clone(),
        config.key_file.clone(),
    ];
    named.extend(config.callers.client_ca.clone());
    named.extend(config.callers.tokens_file.clone());
    if let Some(mint) = &config.mint {
        named.push(mint.signing_key_file.clone());
        named.extend(mint.verify_key_files.iter().cloned());
        named.extend(mint.revocations_file.clone());
    }
    for v in &file.verifiers {
        match v {
            VerifierConfig::Static { file } | VerifierConfig::AuthenticationConfig { file } => {
                named.push(file.clone());
            }
            VerifierConfig::Jwt { jwks_file, .. } => named.extend(jwks_file.clone()),
            VerifierConfig::TokenReview(t) => named.push(t.kubeconfig.clone()),
            VerifierConfig::Introspection(t) => {
                named.extend(t.client_secret_file.clone());
                named.extend(t.private_key_file.clone());
            }
            VerifierConfig::ServiceAccount {} => {}
        }
    }
    assert!(named.len() >= 5, "{named:?}");
    for path in &named {
        assert!(path.is_absolute(), "{}", path.display());
        assert!(provides(path), "{} is not mounted", path.display());
    }

    // The static tokens Secret holds a tokens.csv tokenhook accepts.
    let secret = find(docs, "Secret");
    let csv = base64::engine::general_purpose::STANDARD
        .decode(str_at(secret, "/data/tokens.csv"))
        .unwrap();
    tokenhook::verify::static_file::TokenTable::parse(&csv).unwrap();

    // checksum/config is the SHA-256 of configmap.yaml's output (the document and the
    // template's final newline), as `include … | sha256sum` computes it.
    let text = format!("{}\n", r.source("tokenhook/templates/configmap.yaml"));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    assert_eq!(
        str_at(d, "/spec/template/metadata/annotations/checksum~1config"),
        hex::encode(digest.as_ref())
    );
}

#[test]
fn deploy_dockerfile_builds_then_runs_tokenhook_as_nonroot() {
    let text = read(&repo().join("deploy/Dockerfile"));
    // Instructions, continuation lines joined, comments left out.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    struct Stage {
        name: String,
        image: String,
        /// (instruction, arguments)
        instructions: Vec<(String, String)>,
    }
    let mut stages: Vec<Stage> = Vec::new();
    for ins in instructions {
        let (op, args) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
        let (op, args) = (op.to_ascii_uppercase(), args.trim().to_string());
        if op == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push(Stage {
                name,
                image: words[0].to_string(),
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .instructions
                .push((op, args));
        }
    }
    assert!(stages.len() >= 2, "a builder and a runtime stage");
    let Stage {
        name: builder_name,
        image: builder_image,
        instructions: builder,
    } = &stages[0];
    assert_eq!(builder_name, "builder");
    assert!(
        builder_image.starts_with("rust:"),
        "builder {builder_image}"
    );
    assert!(
        builder
            .iter()
            .any(|(op, a)| op == "RUN" && a.contains("cargo build --release --locked")),
        "builder runs cargo build --release --locked"
    );
    let Stage {
        image: runtime_image,
        instructions: runtime,
        ..
    } = stages.last().unwrap();
    assert!(
        runtime_image.contains("distroless") || runtime_image.contains("debian"),
        "runtime {runtime_image}"
    );
    let last = |op: &str| {
        runtime
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .unwrap_or_else(|| panic!("runtime stage has no {op}"))
    };
    assert!(
        last("COPY").starts_with("--from=builder"),
        "binary from the builder"
    );
    let user = last("USER");
    assert_eq!(user.split(':').next(), Some("65532"), "USER {user}");
    let values = values();
    assert_eq!(
        user.split(':').next().unwrap(),
        values["podSecurityContext"]["runAsUser"].to_string()
    );
    assert_eq!(last("EXPOSE"), values["service"]["port"].to_string());
    let entrypoint: Vec<String> = serde_json::from_str(last("ENTRYPOINT")).unwrap();
    assert_eq!(entrypoint.len(), 1);
    assert!(entrypoint[0].ends_with("/tokenhook"), "{entrypoint:?}");
    let copied = last("COPY").split_whitespace().last().unwrap().to_string();
    assert_eq!(copied, entrypoint[0], "ENTRYPOINT is the copied binary");
    // CMD is what the chart passes as args.
    let cmd: Json = serde_json::from_str(last("CMD")).unwrap();
    let r = rendered();
    assert_eq!(cmd, container(find(&r.docs, "Deployment"))["args"]);

    let ignore = read(&repo().join(".dockerignore"));
    for excluded in ["target/", "certs/dev/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore lacks {excluded}"
        );
    }
}

/// templates/rbac.yaml: with the `kubernetes` registry, a ClusterRole allowing list and watch of
/// exactly ServiceAccounts, Pods, Secrets and Nodes, bound to the pods' ServiceAccount; and the
/// pods get their API token only in that case.
#[test]
fn deploy_rbac_grants_list_and_watch_of_exactly_the_registry_kinds() {
    let templates = chart().join("templates");
    let text = read(&templates.join("rbac.yaml"));
    assert!(
        text.contains("{{- if and .Values.rbac.create (include \"tokenhook.watchesCluster\" .) }}"),
        "rbac.yaml renders only for the kubernetes registry"
    );
    // The template's lines with no action are plain YAML: the rules among them.
    let plain: String = text
        .lines()
        .skip_while(|l| !l.starts_with("apiVersion:"))
        .filter(|l| !l.contains("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    let docs = documents(&plain, "rbac.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding"]);
    assert_eq!(
        docs[0]["rules"],
        json!([{
            "apiGroups": [""],
            "resources": ["serviceaccounts", "pods", "secrets", "nodes"],
            "verbs": ["list", "watch"],
        }])
    );
    assert_eq!(docs[1]["roleRef"]["kind"], "ClusterRole");
    assert_eq!(docs[1]["subjects"][0]["kind"], "ServiceAccount");
    for (doc, line) in [
        (
            "ClusterRole",
            "  name: {{ include \"tokenhook.fullname\" . }}-registry",
        ),
        (
            "binding's roleRef",
            "  name: {{ include \"tokenhook.fullname\" . }}-registry",
        ),
        (
            "binding's subject",
            "    name: {{ include \"tokenhook.serviceAccountName\" . }}",
        ),
    ] {
        assert!(text.contains(line), "{doc}: {line}");
    }
    let deployment = read(&templates.join("deployment.yaml"));
    assert!(deployment.contains(
        "automountServiceAccountToken: {{ include \"tokenhook.inCluster\" . | eq \"true\" }}"
    ));
    assert!(
        deployment.contains("serviceAccountName: {{ include \"tokenhook.serviceAccountName\" . }}")
    );
    // The condition reads tokenhook's own key and value.
    let helpers = read(&templates.join("_helpers.tpl"));
    assert!(helpers.contains(r#"dig "mint" "registry" "source" "static" .Values.config"#));
    let mut f = FileConfig::default();
    f.mint.registry.source = tokenhook::config::file::RegistrySource::Kubernetes;
    assert_eq!(
        serde_json::to_value(&f).unwrap()["mint"]["registry"]["source"],
        "kubernetes"
    );

    // rendered/cluster.yaml (the kubernetes registry, in-cluster): the same rules, bound to
    // the ServiceAccount the pods run as, which mount its token; e2e.rs has the API server
    // accept them and answer `kubectl auth can-i` for that account accordingly.
    let r = all_rendered()
        .into_iter()
        .find(|r| r.name == "rendered/cluster.yaml")
        .unwrap();
    let role = find(&r.docs, "ClusterRole");
    assert_eq!(role["rules"], docs[0]["rules"]);
    let binding = find(&r.docs, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]})
    );
    let account = find(&r.docs, "ServiceAccount");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}])
    );
    let pod = &find(&r.docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(pod["automountServiceAccountToken"], true);
    for d in all_rendered() {
        let has_rbac = d.docs.iter().any(|o| o["kind"] == "ClusterRole");
        assert_eq!(
            has_rbac,
            d.name == r.name,
            "{}: RBAC only with the kubernetes registry",
            d.name
        );
    }
}
