//! Monitoring material in deploy/: the alerting rules (promtool's unit tests; the chart's PrometheusRule holds the same rules) and the Grafana dashboard, whose queries `operate::a_real_prometheus_scrapes_it` runs against a real Prometheus.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

use crate::support::ensure_debian_package;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Json {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const RULES: &str = "deploy/prometheus/tokenhook.rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/tokenhook.rules.test.yaml";
const TEMPLATE: &str = "deploy/helm/tokenhook/templates/prometheusrule.yaml";
const DASHBOARD: &str = "deploy/helm/tokenhook/dashboards/tokenhook.json";
const DASHBOARD_TEMPLATE: &str = "deploy/helm/tokenhook/templates/grafana-dashboard.yaml";

/// Names of the metrics tokenhook registers (the string literals of src/metrics.rs) plus the
/// `process_*` and `up` series that the process collector and Prometheus add.
fn exported_metrics() -> BTreeSet<String> {
    let src = read(&repo().join("src/metrics.rs"));
    let mut names: BTreeSet<String> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("tokenhook_"))
        .map(str::to_owned)
        .collect();
    assert!(
        names.len() >= 15,
        "metric names in src/metrics.rs: {names:?}"
    );
    for extra in [
        "up",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        names.insert(extra.to_owned());
    }
    names
}

/// The `tokenhook_*` and `process_*` metric names an expression reads, histogram suffixes
/// removed.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tokenhook_") || w.starts_with("process_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_owned()
        })
        .collect()
}

fn promtool(dir: &Path, args: &[&str]) {
    ensure_debian_package("promtool", "prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is required (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_alert_rules_pass_promtool_and_every_alert_is_tested() {
    let dir = repo().join("deploy/prometheus");
    promtool(&dir, &["check", "rules", "tokenhook.rules.yaml"]);
    promtool(&dir, &["test", "rules", "tokenhook.rules.test.yaml"]);

    let rules = yaml(&repo().join(RULES));
    let exported = exported_metrics();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().expect("only alerting rules");
            alerts.insert(name.to_owned());
            let expr = rule["expr"].as_str().unwrap();
            for m in metrics_in(expr) {
                assert!(exported.contains(&m), "{name}: tokenhook exports no {m}");
            }
            assert!(
                ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap()),
                "{name}: severity"
            );
            for a in ["summary", "description"] {
                assert!(
                    rule["annotations"][a]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: {a}"
                );
            }
        }
    }
    for expected in [
        "TokenhookNoHealthyReplica",
        "TokenhookReviewErrors",
        "TokenhookReview503Rate",
        "TokenhookReviewLatencyHigh",
        "TokenhookJWKSRefreshFailing",
        "TokenhookReloadFailed",
        "TokenhookCertificateExpiresSoon",
    ] {
        assert!(alerts.contains(expected), "{expected} missing");
    }
    // Each alert fires in at least one unit test (a test expecting silence only would pass
    // with a broken expression).
    let tests = yaml(&repo().join(RULE_TESTS));
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap())
        .collect();
    for alert in &alerts {
        assert!(fired.contains(alert.as_str()), "no test fires {alert}");
    }
    // The README documents each one.
    let readme = read(&repo().join("deploy/README.md"));
    for alert in &alerts {
        assert!(
            readme.contains(alert.as_str()),
            "deploy/README.md lacks {alert}"
        );
    }
}

#[test]
fn deploy_prometheus_rule_template_holds_the_rules_file() {
    let template = read(&repo().join(TEMPLATE));
    assert!(template.starts_with("{{- if .Values.prometheusRule.enabled }}\n"));
    assert!(template.contains("apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"));
    // The release's matchers: the ServiceMonitor's targets are labelled job=<Service name>
    // (the fullname) and the Service's namespace; kube-state-metrics names the Deployment.
    assert!(
        template.contains(
            "{{- $sel := printf \"job=%q,namespace=%q\" $fullname .Release.Namespace }}\n"
        )
    );
    assert!(template.contains(
        "{{- $deployment := printf \"namespace=%q,deployment=%q\" .Release.Namespace $fullname }}\n"
    ));
    let (_, spec) = template.split_once("\nspec:\n").unwrap();
    let spec = spec.strip_suffix("{{- end }}\n").unwrap();
    // With the rules file's matchers in their place, the spec is the rules file.
    let plain = spec
        .replace("{ {{- $sel }}", "{job=\"tokenhook\"")
        .replace("{ {{- $deployment }}", "{deployment=\"tokenhook\"");
    assert!(!plain.contains("{{"), "other template actions in the rules");
    let spec: Json = serde_yaml_ng::from_str(&plain).unwrap();
    let rules = yaml(&repo().join(RULES));
    assert_eq!(spec["groups"], rules["groups"], "{TEMPLATE} vs {RULES}");
    assert_eq!(spec.as_object().unwrap().len(), 1);
}

/// The dashboard's PromQL, each with what it is for (panel title or variable name), with
/// Grafana's variables set as for job `job` and all of its instances: `$instance` is the
/// variable's `allValue`, `$__rate_interval` one minute. A variable's `label_values(Q, L)`
/// becomes Q.
pub fn dashboard_queries(job: &str) -> Vec<(String, String)> {
    let d: Json = serde_json::from_str(&read(&repo().join(DASHBOARD))).unwrap();
    let vars = d["templating"]["list"].as_array().unwrap();
    let all = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .and_then(|v| v["allValue"].as_str())
        .unwrap()
        .to_owned();
    let substitute = |e: &str| {
        e.replace("$__rate_interval", "1m")
            .replace("$job", job)
            .replace("$instance", &all)
    };
    let mut out = Vec::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(series, _)| series)
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        out.push((format!("variable {}", v["name"]), substitute(inner)));
    }
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {} {}", p["title"], t["refId"]),
                substitute(t["expr"].as_str().unwrap()),
            ));
        }
    }
    for (what, q) in &out {
        assert!(!q.contains('$'), "{what}: variable left in {q}");
    }
    out
}

#[test]
fn deploy_grafana_dashboard_is_well_formed() {
    let d: Json = serde_json::from_str(&read(&repo().join(DASHBOARD))).unwrap();
    assert_eq!(d["uid"], "tokenhook");
    let names: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["datasource", "job", "instance"]);
    let exported = exported_metrics();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            // Every series the panel reads follows the job and instance pickers.
            let selectors = expr.matches('{').count();
            assert_eq!(
                expr.matches("job=\"$job\",instance=~\"$instance\"").count(),
                selectors,
                "{title}: {expr}"
            );
            for m in metrics_in(expr) {
                assert!(exported.contains(&m), "{title}: tokenhook exports no {m}");
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // The chart's ConfigMap carries the file as it is (`.Files.Get` does not template it, so
    // legends such as `{{version}}` survive).
    let template = read(&repo().join(DASHBOARD_TEMPLATE));
    assert!(template.starts_with("{{- if .Values.grafanaDashboard.enabled }}\n"));
    assert!(template.contains(
        "  tokenhook.json: |-\n    {{- .Files.Get \"dashboards/tokenhook.json\" | nindent 4 }}\n"
    ));
    assert_eq!(
        DASHBOARD.strip_prefix("deploy/helm/tokenhook/"),
        Some("dashboards/tokenhook.json")
    );
    // Whatever Prometheus makes of them is checked in operate::a_real_prometheus_scrapes_it.
    assert_eq!(
        dashboard_queries("tokenhook").len(),
        queries + 2,
        "panel queries plus the job and instance variables"
    );
}
