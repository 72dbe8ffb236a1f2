//! Signing and verification keys for minted tokens: PEM or JWK files, kube's `kid`, rotation, and the public JWKS.
//!
//! Keys go through openssl's `PKey` (the library josekit is built on) so that every source —
//! PEM private or public keys, JWK or JWKS files — ends as the same three things: a josekit
//! signer or verifier, the DER SubjectPublicKeyInfo (from which kube derives `kid`), and a
//! public JWK to publish.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jwk::Jwk;
use josekit::jws::{ES256, ES384, ES512, EdDSA, JwsSigner, JwsVerifier, RS256};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::Rsa;
use serde_json::{Map, Value, json};

use crate::verify::Digest;
use crate::verify::jwks::b64_field;

/// A JWS algorithm tokenhook signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (kube's default).
    RS256,
    /// ECDSA P-256 / SHA-256.
    ES256,
    /// ECDSA P-384 / SHA-384.
    ES384,
    /// ECDSA P-521 / SHA-512.
    ES512,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Unreadable file.
    #[error("reading key file {path}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a key we understand.
    #[error("key file {path}: {reason}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The signing key file holds no private key.
    #[error("signing key file {0} holds no private key")]
    NotPrivate(PathBuf),
}

/// A public key: verifier, `kid`, and the JWK to publish.
pub struct PublicKey {
    /// kube's key id: base64url(SHA-256(DER SubjectPublicKeyInfo)).
    pub kid: String,
    /// Algorithm implied by the key type.
    pub alg: Alg,
    /// Verifies signatures.
    pub verifier: Box<dyn JwsVerifier>,
    /// `{kty, …, kid, alg, use: "sig"}` without any private part.
    pub jwk: Value,
}

/// The active signing key.
pub struct SigningKey {
    /// Its public half.
    pub public: PublicKey,
    /// Signs.
    pub signer: Box<dyn JwsSigner>,
}

enum Loaded {
    Private(PKey<Private>),
    Public(PKey<Public>),
}

fn parse_err(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Parse {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads every key in `path`: PEM (private or SubjectPublicKeyInfo public), JWK or JWKS.
fn read_keys(path: &Path) -> Result<Vec<Loaded>, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_keys(&bytes).map_err(|r| parse_err(path, r))
}

fn parse_keys(bytes: &[u8]) -> Result<Vec<Loaded>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text (PEM or JWK expected)")?;
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let list = match v.get("keys") {
            Some(Value::Array(keys)) => keys.clone(),
            Some(_) => return Err("\"keys\" is not an array".into()),
            None => vec![v],
        };
        if list.is_empty() {
            return Err("the JWKS holds no keys".into());
        }
        return list.iter().map(from_jwk).collect();
    }
    if let Ok(k) = PKey::private_key_from_pem(bytes) {
        return Ok(vec![Loaded::Private(k)]);
    }
    if let Ok(k) = PKey::public_key_from_pem(bytes) {
        return Ok(vec![Loaded::Public(k)]);
    }
    Err("no PEM private key, PEM public key (SubjectPublicKeyInfo), JWK or JWKS found".into())
}

fn from_jwk(v: &Value) -> Result<Loaded, String> {
    let private = v.get("d").is_some();
    let kty = v.get("kty").and_then(Value::as_str).unwrap_or("");
    let jwk = || Jwk::from_bytes(v.to_string()).map_err(|e| format!("invalid JWK: {e}"));
    let der_to_private = |der: Vec<u8>| {
        PKey::private_key_from_der(&der)
            .map(Loaded::Private)
            .map_err(|e| e.to_string())
    };
    match (kty, private) {
        ("RSA", true) => der_to_private(
            josekit::jwk::alg::rsa::RsaKeyPair::from_jwk(&jwk()?)
                .map_err(|e| e.to_string())?
                .to_der_private_key(),
        ),
        ("EC", true) => der_to_private(
            josekit::jwk::alg::ec::EcKeyPair::from_jwk(&jwk()?)
                .map_err(|e| e.to_string())?
                .to_der_private_key(),
        ),
        ("OKP", true) => der_to_private(
            josekit::jwk::alg::ed::EdKeyPair::from_jwk(&jwk()?)
                .map_err(|e| e.to_string())?
                .to_der_private_key(),
        ),
        ("RSA", false) => {
            let n = BigNum::from_slice(&b64_field(v, "n")?).map_err(|e| e.to_string())?;
            let e = BigNum::from_slice(&b64_field(v, "e")?).map_err(|e| e.to_string())?;
            let rsa = Rsa::from_public_components(n, e).map_err(|e| e.to_string())?;
            PKey::from_rsa(rsa)
                .map(Loaded::Public)
                .map_err(|e| e.to_string())
        }
        ("EC", false) => {
            let nid = match v.get("crv").and_then(Value::as_str) {
                Some("P-256") => Nid::X9_62_PRIME256V1,
                Some("P-384") => Nid::SECP384R1,
                Some("P-521") => Nid::SECP521R1,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let group = EcGroup::from_curve_name(nid).map_err(|e| e.to_string())?;
            let x = BigNum::from_slice(&b64_field(v, "x")?).map_err(|e| e.to_string())?;
            let y = BigNum::from_slice(&b64_field(v, "y")?).map_err(|e| e.to_string())?;
            let ec = EcKey::from_public_key_affine_coordinates(&group, &x, &y)
                .map_err(|e| e.to_string())?;
            PKey::from_ec_key(ec)
                .map(Loaded::Public)
                .map_err(|e| e.to_string())
        }
        ("OKP", false) => {
            if v.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("only the Ed25519 OKP curve is supported".into());
            }
            PKey::public_key_from_raw_bytes(&b64_field(v, "x")?, Id::ED25519)
                .map(Loaded::Public)
                .map_err(|e| e.to_string())
        }
        (kty, _) => Err(format!("unsupported JWK kty {kty:?}")),
    }
}

/// SPKI DER, algorithm, and the public JWK members of a key.
type PublicParts = (Vec<u8>, Alg, Map<String, Value>);

/// Public facts of any key.
fn public_parts<T: openssl::pkey::HasPublic>(k: &PKey<T>) -> Result<PublicParts, String> {
    let spki = k.public_key_to_der().map_err(|e| e.to_string())?;
    let mut jwk = Map::new();
    let alg = match k.id() {
        Id::RSA => {
            let rsa = k.rsa().map_err(|e| e.to_string())?;
            if rsa.n().num_bits() < 2048 {
                return Err("RSA keys must have at least 2048 bits".into());
            }
            jwk.insert("kty".into(), json!("RSA"));
            jwk.insert("n".into(), json!(b64(&rsa.n().to_vec())));
            jwk.insert("e".into(), json!(b64(&rsa.e().to_vec())));
            Alg::RS256
        }
        Id::EC => {
            let ec = k.ec_key().map_err(|e| e.to_string())?;
            let group = ec.group();
            let (alg, crv, size) = match group.curve_name() {
                Some(Nid::X9_62_PRIME256V1) => (Alg::ES256, "P-256", 32),
                Some(Nid::SECP384R1) => (Alg::ES384, "P-384", 48),
                Some(Nid::SECP521R1) => (Alg::ES512, "P-521", 66),
                _ => return Err("EC keys must be on P-256, P-384 or P-521".into()),
            };
            let mut ctx = BigNumContext::new().map_err(|e| e.to_string())?;
            let (mut x, mut y) = (
                BigNum::new().map_err(|e| e.to_string())?,
                BigNum::new().map_err(|e| e.to_string())?,
            );
            ec.public_key()
                .affine_coordinates(group, &mut x, &mut y, &mut ctx)
                .map_err(|e| e.to_string())?;
            let pad = |b: &BigNum| b.to_vec_padded(size).map_err(|e| e.to_string());
            jwk.insert("kty".into(), json!("EC"));
            jwk.insert("crv".into(), json!(crv));
            jwk.insert("x".into(), json!(b64(&pad(&x)?)));
            jwk.insert("y".into(), json!(b64(&pad(&y)?)));
            alg
        }
        Id::ED25519 => {
            jwk.insert("kty".into(), json!("OKP"));
            jwk.insert("crv".into(), json!("Ed25519"));
            jwk.insert(
                "x".into(),
                json!(b64(&k.raw_public_key().map_err(|e| e.to_string())?)),
            );
            Alg::EdDSA
        }
        _ => return Err("unsupported key type (RSA, EC P-256/384/521 or Ed25519)".into()),
    };
    Ok((spki, alg, jwk))
}

/// kube's `kid`: base64url(SHA-256(DER SubjectPublicKeyInfo)), no padding.
pub fn key_id(spki_der: &[u8]) -> String {
    b64(&Digest::of(spki_der).0)
}

fn public_key<T: openssl::pkey::HasPublic>(k: &PKey<T>) -> Result<PublicKey, String> {
    let (spki, alg, mut jwk) = public_parts(k)?;
    let verifier: Box<dyn JwsVerifier> = match alg {
        Alg::RS256 => Box::new(RS256.verifier_from_der(&spki).map_err(|e| e.to_string())?),
        Alg::ES256 => Box::new(ES256.verifier_from_der(&spki).map_err(|e| e.to_string())?),
        Alg::ES384 => Box::new(ES384.verifier_from_der(&spki).map_err(|e| e.to_string())?),
        Alg::ES512 => Box::new(ES512.verifier_from_der(&spki).map_err(|e| e.to_string())?),
        Alg::EdDSA => Box::new(EdDSA.verifier_from_der(&spki).map_err(|e| e.to_string())?),
    };
    let kid = key_id(&spki);
    jwk.insert("use".into(), json!("sig"));
    jwk.insert("kid".into(), json!(kid));
    jwk.insert("alg".into(), json!(alg.as_str()));
    Ok(PublicKey {
        kid,
        alg,
        verifier,
        jwk: Value::Object(jwk),
    })
}

fn signing_key(k: &PKey<Private>) -> Result<SigningKey, String> {
    let public = public_key(k)?;
    let pkcs8 = k.private_key_to_pkcs8().map_err(|e| e.to_string())?;
    let signer: Box<dyn JwsSigner> = match public.alg {
        Alg::RS256 => Box::new(RS256.signer_from_der(&pkcs8).map_err(|e| e.to_string())?),
        Alg::ES256 => Box::new(ES256.signer_from_der(&pkcs8).map_err(|e| e.to_string())?),
        Alg::ES384 => Box::new(ES384.signer_from_der(&pkcs8).map_err(|e| e.to_string())?),
        Alg::ES512 => Box::new(ES512.signer_from_der(&pkcs8).map_err(|e| e.to_string())?),
        Alg::EdDSA => Box::new(EdDSA.signer_from_der(&pkcs8).map_err(|e| e.to_string())?),
    };
    Ok(SigningKey { public, signer })
}

/// The active signing key plus every key tokens may be verified with.
pub struct KeySet {
    /// Signs new tokens.
    pub signing: SigningKey,
    /// Verify-only keys (the signing key's public half is not repeated here).
    pub verify_only: Vec<PublicKey>,
}

impl KeySet {
    /// Loads the signing key file and the verify-only files.
    ///
    /// # Errors
    /// Unreadable or unusable files; a signing file without a private key.
    pub fn load(signing: &Path, verify: &[PathBuf]) -> Result<Self, KeyError> {
        let first = read_keys(signing)?.into_iter().next();
        let signing_key = match first {
            Some(Loaded::Private(k)) => signing_key(&k).map_err(|r| parse_err(signing, r))?,
            _ => return Err(KeyError::NotPrivate(signing.to_owned())),
        };
        let mut verify_only: Vec<PublicKey> = Vec::new();
        for path in verify {
            for k in read_keys(path)? {
                let pk = match k {
                    Loaded::Private(k) => public_key(&k),
                    Loaded::Public(k) => public_key(&k),
                }
                .map_err(|r| parse_err(path, r))?;
                if pk.kid != signing_key.public.kid && !verify_only.iter().any(|v| v.kid == pk.kid)
                {
                    verify_only.push(pk);
                }
            }
        }
        Ok(KeySet {
            signing: signing_key,
            verify_only,
        })
    }

    /// Every verification key, the active one first.
    pub fn public_keys(&self) -> impl Iterator<Item = &PublicKey> {
        std::iter::once(&self.signing.public).chain(self.verify_only.iter())
    }

    /// The key with `kid`.
    pub fn find(&self, kid: &str) -> Option<&PublicKey> {
        self.public_keys().find(|k| k.kid == kid)
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.public_keys().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }
}

/// Generates a new private key as PKCS#8 PEM (`tokenhook keys generate`).
///
/// # Errors
/// Only if the crypto library fails.
pub fn generate_pem(alg: Alg) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let k = match alg {
        Alg::RS256 => PKey::from_rsa(Rsa::generate(2048)?)?,
        Alg::ES256 | Alg::ES384 | Alg::ES512 => {
            let nid = match alg {
                Alg::ES384 => Nid::SECP384R1,
                Alg::ES512 => Nid::SECP521R1,
                _ => Nid::X9_62_PRIME256V1,
            };
            PKey::from_ec_key(EcKey::generate(EcGroup::from_curve_name(nid)?.as_ref())?)?
        }
        Alg::EdDSA => PKey::generate_ed25519()?,
    };
    k.private_key_to_pem_pkcs8()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn every_algorithm_signs_and_verifies_and_publishes() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [Alg::RS256, Alg::ES256, Alg::ES384, Alg::ES512, Alg::EdDSA] {
            let p = write(dir.path(), "k.pem", &generate_pem(alg).unwrap());
            let ks = KeySet::load(&p, &[]).unwrap();
            assert_eq!(ks.signing.public.alg, alg);
            let mut h = josekit::jws::JwsHeader::new();
            h.set_key_id(&ks.signing.public.kid);
            let jws = josekit::jws::serialize_compact(b"{}", &h, &*ks.signing.signer).unwrap();
            let (payload, _) =
                josekit::jws::deserialize_compact(&jws, &*ks.signing.public.verifier).unwrap();
            assert_eq!(payload, b"{}");
            // The published JWK alone verifies it too, and yields the same kid.
            let jwks = serde_json::to_vec(&ks.jwks()).unwrap();
            let pubfile = write(dir.path(), "pub.json", &jwks);
            let again = KeySet::load(&p, &[pubfile]).unwrap();
            assert!(again.verify_only.is_empty(), "same kid must not repeat");
            assert!(ks.jwks()["keys"][0].get("d").is_none());
            assert_eq!(ks.jwks()["keys"][0]["use"], "sig");
        }
    }

    #[test]
    fn kid_is_sha256_of_spki_base64url() {
        let k = PKey::private_key_from_pem(&generate_pem(Alg::ES256).unwrap()).unwrap();
        let spki = k.public_key_to_der().unwrap();
        let kid = key_id(&spki);
        assert_eq!(kid.len(), 43);
        assert!(!kid.contains('='));
        assert_eq!(public_key(&k).unwrap().kid, kid);
    }

    #[test]
    fn public_pem_and_jwk_files_are_verify_only() {
        let dir = tempfile::tempdir().unwrap();
        let active = write(dir.path(), "a.pem", &generate_pem(Alg::RS256).unwrap());
        let old = PKey::private_key_from_pem(&generate_pem(Alg::ES256).unwrap()).unwrap();
        let old_pub = write(dir.path(), "old.pub", &old.public_key_to_pem().unwrap());
        let ks = KeySet::load(&active, std::slice::from_ref(&old_pub)).unwrap();
        assert_eq!(ks.verify_only.len(), 1);
        assert_eq!(ks.verify_only[0].alg, Alg::ES256);
        assert!(matches!(
            KeySet::load(&old_pub, &[]),
            Err(KeyError::NotPrivate(_))
        ));
        let junk = write(dir.path(), "junk", b"hello");
        assert!(KeySet::load(&active, &[junk]).is_err());
    }
}
