//! OpenAPI v2 for kubectl's client-side validation: the same schemas as the v3 documents, as the gnostic protobuf kubectl reads (`/openapi/v2`).
//!
//! kubectl asks the v3 documents whether a kind's PATCH takes `fieldValidation`; TokenReview
//! has no PATCH (on kube-apiserver neither), so kubectl validates client-side from
//! `/openapi/v2`, which it only accepts as protobuf (gnostic's `openapi.v2.Document`). The
//! few messages needed are declared here with prost, field numbers as in
//! gnostic's `OpenAPIv2.proto`.

use prost::Message;
use serde_json::Value;

/// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Paths {}

#[derive(Clone, PartialEq, Message)]
struct Definitions {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedSchema {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Schema {
    #[prost(string, tag = "1")]
    r#ref: String,
    #[prost(string, tag = "2")]
    format: String,
    #[prost(string, tag = "4")]
    description: String,
    #[prost(string, repeated, tag = "19")]
    required: Vec<String>,
    #[prost(message, optional, boxed, tag = "21")]
    additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    items: Option<ItemsItem>,
    #[prost(message, optional, tag = "25")]
    properties: Option<Properties>,
    #[prost(message, repeated, tag = "31")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct AdditionalPropertiesItem {
    #[prost(message, optional, tag = "1")]
    schema: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Properties {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

/// gnostic's `Any`: the extension's value as YAML text.
#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(string, tag = "2")]
    yaml: String,
}

/// v3 `#/components/schemas/X` references become v2 `#/definitions/X`.
fn v2_ref(r: &str) -> String {
    r.replacen("#/components/schemas/", "#/definitions/", 1)
}

/// Converts one v3 schema (the subset our documents use) to v2's JSON form.
fn to_v2_json(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            // `allOf: [{$ref}]` wrappers (v3's way to add a default) are plain refs in v2.
            if let Some(Value::Array(all)) = m.get("allOf")
                && let [one] = all.as_slice()
                && let Some(r) = one.get("$ref").and_then(Value::as_str)
            {
                return serde_json::json!({"$ref": v2_ref(r)});
            }
            let mut out = serde_json::Map::new();
            for (k, val) in m {
                match k.as_str() {
                    "$ref" => {
                        out.insert(k.clone(), Value::String(v2_ref(val.as_str().unwrap_or(""))));
                    }
                    "default" | "x-kubernetes-list-type" => {}
                    _ => {
                        out.insert(k.clone(), to_v2_json(val));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v2_json).collect()),
        other => other.clone(),
    }
}

fn to_proto(v: &Value) -> Schema {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let named = |m: &serde_json::Map<String, Value>| -> Vec<NamedSchema> {
        m.iter()
            .map(|(name, s)| NamedSchema {
                name: name.clone(),
                value: Some(to_proto(s)),
            })
            .collect()
    };
    Schema {
        r#ref: s("$ref"),
        format: s("format"),
        description: s("description"),
        required: v
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        additional_properties: v.get("additionalProperties").map(|a| {
            Box::new(AdditionalPropertiesItem {
                schema: Some(to_proto(a)),
            })
        }),
        r#type: v.get("type").and_then(Value::as_str).map(|t| TypeItem {
            value: vec![t.to_owned()],
        }),
        items: v.get("items").map(|i| ItemsItem {
            schema: vec![to_proto(i)],
        }),
        properties: v
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| Properties {
                additional_properties: named(p),
            }),
        vendor_extension: v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.starts_with("x-kubernetes-"))
                    .map(|(k, val)| NamedAny {
                        name: k.clone(),
                        value: Some(AnyValue {
                            yaml: serde_yaml_ng::to_string(val).unwrap_or_default(),
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every schema of both served versions, in v2 JSON form, by definition name.
fn definitions() -> serde_json::Map<String, Value> {
    let mut defs = serde_json::Map::new();
    for v in ["v1", "v1beta1"] {
        if let Some(doc) = super::discovery::openapi(v)
            && let Some(schemas) = doc
                .pointer("/components/schemas")
                .and_then(Value::as_object)
        {
            for (name, s) in schemas {
                defs.insert(name.clone(), to_v2_json(s));
            }
        }
    }
    defs
}

/// The swagger 2.0 document as JSON.
pub fn json() -> Value {
    serde_json::json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": {},
        "definitions": definitions()
    })
}

/// The same document as gnostic protobuf.
pub fn protobuf() -> Vec<u8> {
    Document {
        swagger: "2.0".into(),
        info: Some(Info {
            title: "Kubernetes".into(),
            version: "v1.36.0".into(),
        }),
        paths: Some(Paths {}),
        definitions: Some(Definitions {
            additional_properties: definitions()
                .iter()
                .map(|(name, s)| NamedSchema {
                    name: name.clone(),
                    value: Some(to_proto(s)),
                })
                .collect(),
        }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_extensions_carry_over() {
        let j = json();
        let tr = &j["definitions"]["io.k8s.api.authentication.v1.TokenReview"];
        assert_eq!(
            tr["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.authentication.v1.TokenReviewSpec"
        );
        assert_eq!(
            tr["x-kubernetes-group-version-kind"][0]["kind"],
            "TokenReview"
        );
        let doc = Document::decode(protobuf().as_slice()).unwrap();
        let defs = doc.definitions.unwrap().additional_properties;
        let tr = defs
            .iter()
            .find(|d| d.name == "io.k8s.api.authentication.v1.TokenReview")
            .unwrap();
        let ext = &tr.value.as_ref().unwrap().vendor_extension[0];
        assert_eq!(ext.name, "x-kubernetes-group-version-kind");
        assert!(
            ext.value
                .as_ref()
                .unwrap()
                .yaml
                .contains("kind: TokenReview")
        );
    }
}
