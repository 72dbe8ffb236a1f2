//! What kubectl asks before it acts: API discovery (`/api`, `/apis`, group and version resource lists) and the OpenAPI v3 documents, listing exactly what tokenhook serves.

use serde_json::{Value, json};

/// Group/version/kind facts of one served resource.
struct Served {
    name: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const AUTHN_V1: &[Served] = &[
    Served {
        name: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
    Served {
        name: "tokenreviews",
        singular: "tokenreview",
        kind: "TokenReview",
        namespaced: false,
    },
];

const AUTHN_V1BETA1: &[Served] = &[Served {
    name: "tokenreviews",
    singular: "tokenreview",
    kind: "TokenReview",
    namespaced: false,
}];

fn resource_list(group_version: &str, served: &[Served]) -> Value {
    let resources: Vec<Value> = served
        .iter()
        .map(|s| {
            json!({"name": s.name, "singularName": s.singular, "namespaced": s.namespaced,
                   "kind": s.kind, "verbs": ["create"]})
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn group() -> Value {
    json!({
        "name": "authentication.k8s.io",
        "versions": [
            {"groupVersion": "authentication.k8s.io/v1", "version": "v1"},
            {"groupVersion": "authentication.k8s.io/v1beta1", "version": "v1beta1"}
        ],
        "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"}
    })
}

/// The discovery document at `path`, if it is one. `mint` says whether the TokenRequest
/// subresource is served.
pub fn document(path: &str, mint: bool) -> Option<Value> {
    Some(match path {
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": []}),
        "/api/v1" => {
            let resources: Vec<Value> = if mint {
                vec![
                    json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                            "group": "authentication.k8s.io", "version": "v1",
                            "kind": "TokenRequest", "verbs": ["create"]}),
                ]
            } else {
                vec![]
            };
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})
        }
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]}),
        "/apis/authentication.k8s.io" => {
            let mut g = group();
            if let Some(m) = g.as_object_mut() {
                m.insert("kind".into(), json!("APIGroup"));
                m.insert("apiVersion".into(), json!("v1"));
            }
            g
        }
        "/apis/authentication.k8s.io/v1" => resource_list("authentication.k8s.io/v1", AUTHN_V1),
        "/apis/authentication.k8s.io/v1beta1" => {
            resource_list("authentication.k8s.io/v1beta1", AUTHN_V1BETA1)
        }
        _ => return None,
    })
}

/// The paths [`document`] answers.
const PATHS: &[&str] = &[
    "/api",
    "/api/v1",
    "/apis",
    "/apis/authentication.k8s.io",
    "/apis/authentication.k8s.io/v1",
    "/apis/authentication.k8s.io/v1beta1",
];

/// Whether `path` is one of the discovery documents (routing only: builds nothing).
pub fn is_discovery(path: &str) -> bool {
    PATHS.contains(&path)
}

/// The create parameters kube documents for every create endpoint.
fn create_parameters() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true},
         "description": "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed"},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true},
         "description": "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters."},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
         "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn (default) or Strict."},
        {"name": "pretty", "in": "query", "schema": {"type": "string", "uniqueItems": true},
         "description": "If 'true', then the output is pretty printed."}
    ])
}

fn string_map_of_lists() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string", "default": ""}}})
}

fn schemas(version: &str) -> Value {
    let gvk =
        |kind: &str| json!([{"group": "authentication.k8s.io", "kind": kind, "version": version}]);
    let p = format!("io.k8s.api.authentication.{version}");
    let r = |name: &str| json!({"allOf": [{"$ref": format!("#/components/schemas/{p}.{name}")}], "default": {}});
    let meta = json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "default": {}});
    let mut s = serde_json::Map::new();
    s.insert(
        format!("{p}.TokenReview"),
        json!({
            "description": "TokenReview attempts to authenticate a token to a known user.",
            "type": "object", "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": meta, "spec": r("TokenReviewSpec"), "status": r("TokenReviewStatus")
            },
            "x-kubernetes-group-version-kind": gvk("TokenReview")
        }),
    );
    s.insert(format!("{p}.TokenReviewSpec"), json!({
        "type": "object",
        "properties": {
            "audiences": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "atomic"},
            "token": {"type": "string"}
        }
    }));
    s.insert(format!("{p}.TokenReviewStatus"), json!({
        "type": "object",
        "properties": {
            "audiences": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "atomic"},
            "authenticated": {"type": "boolean"}, "error": {"type": "string"}, "user": r("UserInfo")
        }
    }));
    s.insert(format!("{p}.UserInfo"), json!({
        "type": "object",
        "properties": {
            "extra": string_map_of_lists(),
            "groups": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "atomic"},
            "uid": {"type": "string"}, "username": {"type": "string"}
        }
    }));
    if version == "v1" {
        s.insert(
            format!("{p}.SelfSubjectReview"),
            json!({
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": meta, "status": r("SelfSubjectReviewStatus")
                },
                "x-kubernetes-group-version-kind": gvk("SelfSubjectReview")
            }),
        );
        s.insert(
            format!("{p}.SelfSubjectReviewStatus"),
            json!({
                "type": "object", "properties": {"userInfo": r("UserInfo")}
            }),
        );
    }
    s.insert("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(), json!({
        "type": "object",
        "properties": {
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "generateName": {"type": "string"}, "generation": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "resourceVersion": {"type": "string"}, "uid": {"type": "string"}
        }
    }));
    Value::Object(s)
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn openapi_index() -> Value {
    json!({"paths": {
        "apis/authentication.k8s.io/v1": {"serverRelativeURL": "/openapi/v3/apis/authentication.k8s.io/v1"},
        "apis/authentication.k8s.io/v1beta1": {"serverRelativeURL": "/openapi/v3/apis/authentication.k8s.io/v1beta1"}
    }})
}

/// `GET /openapi/v3/apis/authentication.k8s.io/{version}`.
pub fn openapi(version: &str) -> Option<Value> {
    if version != "v1" && version != "v1beta1" {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let kinds: &[&str] = if version == "v1" {
        &["SelfSubjectReview", "TokenReview"]
    } else {
        &["TokenReview"]
    };
    for kind in kinds {
        let plural = format!("{}s", kind.to_lowercase());
        let schema = json!({"$ref": format!("#/components/schemas/io.k8s.api.authentication.{version}.{kind}")});
        let content = json!({"application/json": {"schema": schema}, "application/yaml": {"schema": schema},
                             "application/vnd.kubernetes.protobuf": {"schema": schema}});
        paths.insert(
            format!("/apis/authentication.k8s.io/{version}/{plural}"),
            json!({"post": {
                "tags": [format!("authentication_{version}")],
                "description": format!("create a {kind}"),
                "operationId": format!("createAuthentication{}{kind}", if version == "v1" { "V1" } else { "V1beta1" }),
                "requestBody": {"content": {"*/*": {"schema": schema}}, "required": true},
                "responses": {"200": {"description": "OK", "content": content},
                              "201": {"description": "Created", "content": content},
                              "401": {"description": "Unauthorized"}},
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": {"group": "authentication.k8s.io", "version": version, "kind": kind}
            },
            "parameters": create_parameters()}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths,
        "components": {"schemas": schemas(version)}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_exactly_what_is_served() {
        let v1 = document("/apis/authentication.k8s.io/v1", true).unwrap();
        let names: Vec<&str> = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["selfsubjectreviews", "tokenreviews"]);
        assert!(
            document("/api/v1", false).unwrap()["resources"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            document("/api/v1", true).unwrap()["resources"][0]["name"],
            "serviceaccounts/token"
        );
        assert!(document("/apis/apps/v1", true).is_none());
        for p in PATHS {
            assert!(document(p, true).is_some(), "{p}");
        }
        let doc = openapi("v1").unwrap();
        assert!(
            doc["components"]["schemas"]["io.k8s.api.authentication.v1.TokenReview"].is_object()
        );
        assert!(openapi("v2").is_none());
    }
}
