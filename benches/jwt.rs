//! Criterion: JWT signature verification per algorithm, josekit (what the verifiers use) beside the raw aws-lc-rs verify (the crypto floor), and minting.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use openssl::pkey::PKey;
use tokenhook::mint::keys::{Alg, KeySet, generate_pem};

/// The public key in the form aws-lc-rs takes for `alg`.
fn raw_public(pem: &[u8], alg: Alg) -> (Vec<u8>, &'static dyn VerificationAlgorithm) {
    let k = PKey::private_key_from_pem(pem).unwrap();
    match alg {
        Alg::RS256 => (
            k.rsa().unwrap().public_key_to_der_pkcs1().unwrap(),
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        Alg::ES256 => {
            let ec = k.ec_key().unwrap();
            let mut ctx = openssl::bn::BigNumContext::new().unwrap();
            let point = ec
                .public_key()
                .to_bytes(
                    ec.group(),
                    openssl::ec::PointConversionForm::UNCOMPRESSED,
                    &mut ctx,
                )
                .unwrap();
            (point, &signature::ECDSA_P256_SHA256_FIXED)
        }
        Alg::EdDSA => (k.raw_public_key().unwrap(), &signature::ED25519),
        _ => unreachable!(),
    }
}

fn jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let pem = generate_pem(alg).unwrap();
        let path = dir.path().join(format!("{}.pem", alg.as_str()));
        std::fs::write(&path, &pem).unwrap();
        let keys = KeySet::load(&path, &[]).unwrap();
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}","kid":"k"}}"#, alg.as_str()));
        let payload = URL_SAFE_NO_PAD.encode(
            r#"{"aud":["vault"],"exp":4102444800,"iat":1700000000,"iss":"https://issuer.example","sub":"system:serviceaccount:ci:builder"}"#,
        );
        let input = format!("{header}.{payload}");
        let sig = keys.signing.signer.sign(input.as_bytes()).unwrap();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        let verifier = &*keys.signing.public.verifier;
        assert!(josekit::jws::deserialize_compact(&token, verifier).is_ok());
        c.bench_function(&format!("jwt_verify/{}/josekit", alg.as_str()), |b| {
            b.iter(|| {
                josekit::jws::deserialize_compact(std::hint::black_box(&token), verifier).unwrap()
            })
        });
        let (public, algorithm) = raw_public(&pem, alg);
        let key = UnparsedPublicKey::new(algorithm, public);
        key.verify(input.as_bytes(), &sig).unwrap();
        c.bench_function(&format!("jwt_verify/{}/aws-lc-rs", alg.as_str()), |b| {
            b.iter(|| {
                let (signed, s) = token.rsplit_once('.').unwrap();
                let s = URL_SAFE_NO_PAD.decode(s).unwrap();
                key.verify(signed.as_bytes(), &s).unwrap()
            })
        });
        // The crypto floor: the key parsed once, as tokenhook's issuer keys are.
        let parsed = key.parse().unwrap();
        c.bench_function(
            &format!("jwt_verify/{}/aws-lc-rs-parsed", alg.as_str()),
            |b| {
                b.iter(|| {
                    let (signed, s) = token.rsplit_once('.').unwrap();
                    let s = URL_SAFE_NO_PAD.decode(s).unwrap();
                    parsed.verify_sig(signed.as_bytes(), &s).unwrap()
                })
            },
        );
        if alg == Alg::RS256 {
            // The key as a JWK gives it (n, e), built the way tokenhook's issuer keys are.
            let rsa = PKey::private_key_from_pem(&pem).unwrap().rsa().unwrap();
            let (n, e) = (rsa.n().to_vec(), rsa.e().to_vec());
            let from_parts = signature::RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
            .unwrap();
            c.bench_function("jwt_verify/RS256/aws-lc-rs-parsed-from-components", |b| {
                b.iter(|| {
                    let (signed, s) = token.rsplit_once('.').unwrap();
                    let s = URL_SAFE_NO_PAD.decode(s).unwrap();
                    from_parts.verify_sig(signed.as_bytes(), &s).unwrap()
                })
            });
        }
        c.bench_function(&format!("jwt_sign/{}/josekit", alg.as_str()), |b| {
            b.iter(|| {
                keys.signing
                    .signer
                    .sign(std::hint::black_box(input.as_bytes()))
                    .unwrap()
            })
        });
    }
}

criterion_group!(benches, jwt);
criterion_main!(benches);
