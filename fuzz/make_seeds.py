#!/usr/bin/env python3
"""Regenerates fuzz/corpus/<target>/ seed files (deterministic; run from anywhere).

The seeds are committed; this script only documents how they were made. Protobuf is
encoded by hand (the wire format is tiny), so nothing beyond python3 is needed.
"""
import base64, json, os, pathlib

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 4096, (target, name, len(data))
    (d / name).write_bytes(data)


def j(v):
    return json.dumps(v, separators=(",", ":"))


# ---- review_json: what kube-apiserver and kubectl send -----------------------------------
TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIn0.c2ln"
for v in ("v1", "v1beta1"):
    put("review_json", f"apiserver_{v}.json", j({
        "kind": "TokenReview", "apiVersion": f"authentication.k8s.io/{v}",
        "metadata": {"creationTimestamp": None},
        "spec": {"token": TOKEN, "audiences": ["https://kubernetes.default.svc"]},
        "status": {"user": {}}}))
put("review_json", "minimal.json", '{"spec":{"token":"t"}}')
put("review_json", "nulls.json",
    '{"metadata":null,"spec":{"token":null,"audiences":null},"status":null}')
put("review_json", "unknown_and_duplicates.json",
    '{"spec":{"foo":1,"foo":2,"token":"a","token":"b"},"x":{"y":1,"y":2},'
    '"metadata":{"labels":{"a":"1","a":"2"}}}')
put("review_json", "status_filled.json", j({
    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
    "spec": {"token": "abc"},
    "status": {"authenticated": True, "user": {"username": "alice", "uid": "42",
               "groups": ["dev"], "extra": {"scopes.example.com/x": ["a", "b"]}},
               "audiences": ["api"], "error": ""}}))
put("review_json", "metadata_rich.json", j({
    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
    "metadata": {"name": "r", "generateName": "r-", "namespace": "ns", "uid": "u",
                 "resourceVersion": "1", "generation": 3,
                 "creationTimestamp": "2024-01-01T00:00:00Z",
                 "labels": {"app": "x"}, "annotations": {"a/b": "c"},
                 "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p",
                                      "uid": "u", "controller": True}],
                 "finalizers": ["f"],
                 "managedFields": [{"manager": "kubectl", "operation": "Update",
                                    "fieldsV1": {"f:spec": {}}, "n": 1.5e3}]},
    "spec": {"token": "t", "audiences": ["a", "b"]}}))
put("review_json", "token_request.json", j({
    "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
    "metadata": {"creationTimestamp": None},
    "spec": {"audiences": ["vault"], "expirationSeconds": 600,
             "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u"}},
    "status": {"token": "", "expirationTimestamp": None}}))
put("review_json", "token_request_min.json", '{"spec":{}}')


# ---- protobuf: k8s\0 + runtime.Unknown{TypeMeta, raw TokenRequest} -----------------------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(tag, value):
    if isinstance(value, int):
        return varint(tag << 3 | 0) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(tag << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(fields)


def envelope(api_version, kind, raw):
    tm = msg(field(1, api_version), field(2, kind))
    return b"k8s\x00" + msg(field(1, tm), field(2, raw), field(3, ""), field(4, ""))


def token_request(meta, audiences, exp=None, bound=None):
    spec = msg(*[field(1, a) for a in audiences],
               *([field(3, bound)] if bound is not None else []),
               *([field(4, exp)] if exp is not None else []))
    return msg(field(1, meta), field(2, spec))


bound = msg(field(1, "Pod"), field(2, "v1"), field(3, "web-0"), field(4, "3f1c-uid"))
# kubectl create token builder --audience vault --duration 10m --bound-object-kind Pod ...
put("protobuf", "kubectl_create_token.pb",
    envelope("authentication.k8s.io/v1", "TokenRequest",
             token_request(b"", ["vault"], 600, bound)))
put("protobuf", "kubectl_default.pb",
    envelope("authentication.k8s.io/v1", "TokenRequest",
             token_request(b"", [], 3600)))
meta = msg(field(1, "builder"), field(3, "default"), field(5, "uid-1"),
           field(11, msg(field(1, "app"), field(2, "x"))),
           field(12, msg(field(1, "a/b"), field(2, "c"))), field(14, "fin"))
put("protobuf", "with_metadata.pb",
    envelope("authentication.k8s.io/v1", "TokenRequest",
             token_request(meta, ["a", "b"], 7200)))
put("protobuf", "negative_expiration.pb",
    envelope("authentication.k8s.io/v1", "TokenRequest",
             token_request(b"", ["x"], (1 << 64) - 600)))
put("protobuf", "self_subject_review.pb",
    envelope("authentication.k8s.io/v1", "SelfSubjectReview", b""))
put("protobuf", "wrong_kind.pb", envelope("v1", "Pod", b""))
put("protobuf", "empty_envelope.pb", b"k8s\x00")


# ---- jwt: mode byte + token / HEADER\nPAYLOAD[\nSIG] / payload (see targets/jwt.rs) ---
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


NOW = 1_700_000_000
oidc = {"iss": "https://issuer.example", "sub": "user-1", "aud": "kubernetes",
        "exp": NOW + 600, "iat": NOW - 10, "nbf": NOW - 10, "email": "alice@example.com",
        "email_verified": True, "groups": ["dev", "ops"], "tenant": "t1", "jti": "id-1"}
gh = {"iss": "https://gh.example", "sub": "repo:example-org/app:ref:refs/heads/main",
      "aud": ["https://kubernetes.example.com"], "exp": NOW + 300, "iat": NOW,
      "repository": "example-org/app", "repository_owner": "example-org", "ref": "refs/heads/main"}
sa = {"aud": ["https://kubernetes.default.svc"], "exp": NOW + 3600, "iat": NOW, "nbf": NOW,
      "iss": "https://tokenhook.example", "jti": "5a3c0d8e-0000-4000-8000-000000000001",
      "kubernetes.io": {"namespace": "default",
                        "serviceaccount": {"name": "builder", "uid": "uid-builder"}},
      "sub": "system:serviceaccount:default:builder"}
hdr = '{"alg":"ES256","kid":"$KID"}'
for name, claims in (("oidc", oidc), ("github", gh), ("service_account", sa)):
    put("jwt", f"signed_payload_{name}", b"\x03" + j(claims).encode())
    put("jwt", f"signed_header_payload_{name}", b"\x02" + (hdr + "\n" + j(claims)).encode())
    put("jwt", f"unsigned_{name}", b"\x01" + (hdr + "\n" + j(claims) + "\n").encode() + b"\x00" * 64)
    put("jwt", f"raw_{name}", b"\x00" + ("%s.%s.%s" % (
        b64(b'{"alg":"ES256","kid":"k1"}'), b64(j(claims).encode()), b64(b"\x01" * 64))).encode())
put("jwt", "raw_opaque", b"\x00" + b"0123456789abcdef.opaque-token")
put("jwt", "raw_jwe_five_parts", b"\x00" + b"a.b.c.d.e")
put("jwt", "unsigned_alg_none", b"\x01" + ('{"alg":"none"}\n' + j(oidc) + "\n").encode())
put("jwt", "unsigned_jku", b"\x01" + ('{"alg":"ES256","jku":"https://evil.example/jwks"}\n'
                                      + j(oidc) + "\nsig").encode())
put("jwt", "signed_crit", b"\x02" + ('{"alg":"ES256","crit":["exp"]}\n' + j(oidc)).encode())
put("jwt", "signed_no_kid", b"\x02" + ('{"alg":"ES256"}\n' + j(gh)).encode())
put("jwt", "signed_expired", b"\x03" + j(dict(oidc, exp=NOW - 3600)).encode())

# ---- token_file: kube --token-auth-file plus tokenhook's columns -------------------------
put("token_file", "kube_basic.csv", "31ada4fd-adec-460c-809a-9e56ceadb1a7,alice,1001\n")
put("token_file", "full.csv",
    "# token,user,uid,groups,audiences,extra\n"
    't1,alice,1001,"dev,ops"\n'
    't2,bob,1002,"dev","https://kubernetes.default.svc,vault","scopes.example.com/a=1,scopes.example.com/a=2"\n'
    "sha256:" + "ab" * 32 + ',ci,ci-uid,"system:masters",,\n'
    ",empty,token\n"
    "t1,alice-again,1003\n")
put("token_file", "crlf_quotes.csv", 't3,"carol, c",1004,"a,b"\r\nt4,dan,1005\r\n')
put("token_file", "bad_hash.csv", "sha256:xyz,eve,1006\n")
put("token_file", "bad_extra.csv", 't5,frank,1007,,,"novalue"\n')

# ---- config: tokenhook.toml ----------------------------------------------------------------
put("config", "static.toml", """[server]
listen = "0.0.0.0:8443"
cert_file = "tls/server.crt"
key_file = "tls/server.key"

[callers]
client_ca_file = "ca.crt"
allowed_names = ["kube-apiserver"]

[review]
api_audiences = ["https://kubernetes.default.svc"]

[[verifiers]]
type = "static"
file = "tokens.csv"
""")
put("config", "full.toml", """[server]
listen = "127.0.0.1:9443"
cert_file = "server.crt"
key_file = "server.key"
webhook_path = "/authenticate"
max_body_bytes = 3145728
handshake_timeout_seconds = 10
header_read_timeout_seconds = 10
body_read_timeout_seconds = 10
max_connections = 10000
max_in_flight = 4096
shutdown_grace_seconds = 30
reload_interval_ms = 5000

[callers]
tokens_file = "callers.csv"

[cache]
enabled = true
max_entries = 100000
ttl_seconds = 120
negative_ttl_seconds = 10

[log]
format = "text"
level = "tokenhook=debug,warn"

[jwt]
leeway_seconds = 60
refresh_interval_seconds = 600
min_refresh_interval_seconds = 1
fetch_timeout_seconds = 10

[metrics]
listen = "0.0.0.0:9090"
anonymous = true

[mint]
issuer = "https://tokenhook.example.com"
signing_key_file = "sa-signing.key"
verify_key_files = ["old.key"]
revocations_file = "revocations.txt"
max_expiration_seconds = 86400
extend_expiration = true

[[mint.service_accounts]]
namespace = "ci"
name = "builder"
pods = [{ name = "web-0", uid = "u-1" }, { name = "web-1" }]

[[mint.policy]]
users = ["alice"]
groups = ["system:masters"]
namespaces = ["ci"]
service_accounts = ["*"]
audiences = ["vault*"]
max_expiration_seconds = 3600

[[verifiers]]
type = "service_account"

[[verifiers]]
type = "authentication_config"
file = "authentication-config.yaml"
""")
put("config", "jwt_inline.toml", """[server]
cert_file = "s.crt"
key_file = "s.key"

[[verifiers]]
type = "jwt"
jwks = { keys = [{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }] }
[verifiers.issuer]
url = "https://ci.example.com"
audiences = ["kubernetes"]
[verifiers.claimMappings.username]
expression = "'ci:' + claims.sub"
[[verifiers.claimValidationRules]]
claim = "repository_owner"
requiredValue = "example-org"

[[verifiers]]
type = "jwt"
jwks_url = "https://idp.example.com/jwks"
[verifiers.issuer]
url = "https://idp.example.com"
audiences = ["a", "b"]
audienceMatchPolicy = "MatchAny"
[verifiers.claimMappings.username]
claim = "sub"
prefix = "idp:"
""")
put("config", "invalid.toml", '[server]\nlisten = "nope"\nmax_body_bytes = 0\n[log]\nformat = "xml"\n')

# ---- authn_config: kube AuthenticationConfiguration ---------------------------------------
deploy = (ROOT.parent / "deploy" / "apiserver" / "authentication-config.yaml").read_text()
put("authn_config", "deploy_authentication_config.yaml", deploy)
put("authn_config", "minimal_v1beta1.yaml", """apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://example.com
    audiences:
    - my-app
  claimMappings:
    username:
      claim: sub
      prefix: ""
""")
put("authn_config", "json.json", j({
    "apiVersion": "apiserver.config.k8s.io/v1alpha1", "kind": "AuthenticationConfiguration",
    "jwt": [{"issuer": {"url": "https://a.example", "discoveryURL": "https://a.example/discovery",
                        "audiences": ["x", "y"], "audienceMatchPolicy": "MatchAny"},
             "claimValidationRules": [{"expression": "claims.exp - claims.iat <= 3600",
                                       "message": "too long"}],
             "claimMappings": {"username": {"expression": "claims.sub"},
                               "groups": {"expression": "claims.groups.map(g, 'a:' + g)"},
                               "uid": {"expression": "string(claims.iat)"},
                               "extra": [{"key": "example.com/x",
                                          "valueExpression": "claims.nested.list.filter(x, type(x) == string)"}]},
             "userValidationRules": [{"expression": "user.extra.size() >= 0 && user.uid != ''",
                                      "message": "m"}]}],
    "anonymous": {"enabled": False}}))
put("authn_config", "invalid_rules.yaml", """apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: http://example.com?x
    audiences: [a, b]
    egressSelectorType: controlplane
    certificateAuthority: "not pem"
  claimValidationRules:
  - claim: c
    expression: "true"
  claimMappings:
    username:
      expression: claims.email
    extra:
    - key: kubernetes.io/Foo
      valueExpression: "'x'"
""")
