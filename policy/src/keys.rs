//! Verification keys in every form a policy or a JWKS document can give them.
//!
//! Parsing happens once, when a policy is compiled or a key set is fetched; the request path
//! only looks keys up.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// Shortest HMAC secret accepted, in bytes. Shorter secrets can be brute-forced offline from a
/// single token.
pub const MIN_SYMMETRIC_KEY_BYTES: usize = 16;

/// A parsed public (or symmetric) key ready to verify signatures.
#[derive(Clone)]
pub struct VerificationKey {
    /// `kid` this key answers to; keys without one are tried for tokens without a `kid`.
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    /// The one algorithm this key may verify, when the key says so (JWK `alg`, or the curve of
    /// an EC key). Otherwise any algorithm of its family.
    pub algorithm: Option<Algorithm>,
    pub key: DecodingKey,
    /// SHA-256 of the family and key material, computed once at parse time.
    fingerprint: KeyFingerprint,
}

/// Identifies a key by its material (and family), so "the key that verified this token" can be
/// recognised after a key set is fetched again, without holding the key itself.
pub type KeyFingerprint = [u8; 32];

impl fmt::Debug for VerificationKey {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    fn new(
        kid: Option<String>,
        family: AlgorithmFamily,
        algorithm: Option<Algorithm>,
        key: DecodingKey,
    ) -> Self {
        let fingerprint = fingerprint(family, &key);
        Self {
            kid,
            family,
            algorithm,
            key,
            fingerprint,
        }
    }

    /// See [`KeyFingerprint`].
    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        match self.algorithm {
            Some(own) => own == alg,
            None => self.family.algorithms().contains(&alg),
        }
    }

    /// A public JSON Web Key. Keys marked for encryption are refused; symmetric (`oct`) keys
    /// are refused too, because a key set fetched over the network must not be able to hand
    /// out HMAC secrets (and with them, the power to mint tokens).
    pub fn from_jwk_value(value: &serde_json::Value) -> Result<Self, KeyError> {
        let jwk: Jwk = serde_json::from_value(value.clone())
            .map_err(|err| KeyError(format!("not a JSON Web Key: {err}")))?;
        Self::from_jwk(&jwk)
    }

    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(KeyError("key is for encryption (use=enc)".into()));
        }
        let declared = match jwk.common.key_algorithm {
            None => None,
            Some(alg) => {
                // KeyAlgorithm serializes to its JOSE name, which Algorithm parses.
                let name = serde_json::to_value(alg)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                Some(name.parse::<Algorithm>().map_err(|_| {
                    KeyError(format!("key algorithm {name:?} cannot verify signatures"))
                })?)
            }
        };
        let (key, implied) = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                (DecodingKey::from_rsa_components(&rsa.n, &rsa.e), None)
            }
            AlgorithmParameters::EllipticCurve(ec) => {
                let alg = match ec.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    ref other => {
                        return Err(KeyError(format!("unsupported EC curve {other:?}")));
                    }
                };
                (DecodingKey::from_ec_components(&ec.x, &ec.y), Some(alg))
            }
            AlgorithmParameters::OctetKeyPair(okp) => {
                if okp.curve != EllipticCurve::Ed25519 {
                    return Err(KeyError(format!("unsupported OKP curve {:?}", okp.curve)));
                }
                (
                    DecodingKey::from_ed_components(&okp.x),
                    Some(Algorithm::EdDSA),
                )
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err(KeyError(
                    "symmetric (oct) keys are not accepted as JWKs; give them as `value`, `file` or `secretRef`"
                        .into(),
                ));
            }
            _ => {
                return Err(KeyError("unsupported key type".into()));
            }
        };
        let key = key.map_err(|err| KeyError(format!("invalid key parameters: {err}")))?;
        if let (Some(declared), Some(implied)) = (declared, implied)
            && declared != implied
        {
            return Err(KeyError(format!(
                "key says alg {declared:?} but its curve only signs {implied:?}"
            )));
        }
        let algorithm = declared.or(implied);
        if let Some(alg) = algorithm
            && !key.family().algorithms().contains(&alg)
        {
            return Err(KeyError(format!(
                "alg {alg:?} does not fit a {:?} key",
                key.family()
            )));
        }
        Ok(Self::new(
            jwk.common.key_id.clone(),
            key.family(),
            algorithm,
            key,
        ))
    }

    /// A PEM public key: RSA (SPKI or PKCS#1), EC or Ed25519.
    pub fn from_pem(kid: Option<String>, pem: &str) -> Result<Self, KeyError> {
        let bytes = pem.trim().as_bytes();
        let key = DecodingKey::from_rsa_pem(bytes)
            .or_else(|_| DecodingKey::from_ec_pem(bytes))
            .or_else(|_| DecodingKey::from_ed_pem(bytes))
            .map_err(|err| KeyError(format!("not a PEM public key (RSA, EC or Ed25519): {err}")))?;
        let algorithm = (key.family() == AlgorithmFamily::Ed).then_some(Algorithm::EdDSA);
        Ok(Self::new(kid, key.family(), algorithm, key))
    }

    /// RSA modulus and exponent, base64url (APIM `n` and `e`).
    pub fn from_rsa_components(kid: Option<String>, n: &str, e: &str) -> Result<Self, KeyError> {
        let n_bytes = decode_base64_any(n).ok_or_else(|| KeyError("n is not base64url".into()))?;
        decode_base64_any(e).ok_or_else(|| KeyError("e is not base64url".into()))?;
        if n_bytes.len() < 256 {
            return Err(KeyError(format!(
                "RSA modulus is {} bits; at least 2048 are required",
                n_bytes.len() * 8
            )));
        }
        let key =
            DecodingKey::from_rsa_components(n.trim_end_matches('='), e.trim_end_matches('='))
                .map_err(|err| KeyError(format!("invalid RSA components: {err}")))?;
        Ok(Self::new(kid, AlgorithmFamily::Rsa, None, key))
    }

    /// A symmetric key, base64 (standard or url-safe alphabet), as APIM takes it.
    pub fn from_symmetric_base64(kid: Option<String>, text: &str) -> Result<Self, KeyError> {
        let secret = decode_base64_any(text.trim())
            .ok_or_else(|| KeyError("symmetric key is not base64".into()))?;
        if secret.len() < MIN_SYMMETRIC_KEY_BYTES {
            return Err(KeyError(format!(
                "symmetric key is {} bytes; at least {MIN_SYMMETRIC_KEY_BYTES} are required",
                secret.len()
            )));
        }
        let key = DecodingKey::from_secret(&secret)
            .map_err(|err| KeyError(format!("invalid symmetric key: {err}")))?;
        Ok(Self::new(kid, AlgorithmFamily::Hmac, None, key))
    }
}

fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    STANDARD
        .decode(text)
        .ok()
        .or_else(|| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok())
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(text.trim_end_matches('='))
                .ok()
        })
}

/// Why key material was refused, phrased for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

fn fingerprint(family: AlgorithmFamily, key: &DecodingKey) -> KeyFingerprint {
    use aws_lc_rs::digest::{Context, SHA256};
    use jsonwebtoken::DecodingKeyKind;
    let family: &[u8] = match family {
        AlgorithmFamily::Hmac => b"hmac",
        AlgorithmFamily::Rsa => b"rsa",
        AlgorithmFamily::Ec => b"ec",
        AlgorithmFamily::Ed => b"ed",
    };
    let mut context = Context::new(&SHA256);
    context.update(family);
    match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => {
            context.update(&[0]);
            context.update(bytes);
        }
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            context.update(&[1]);
            context.update(&(n.len() as u64).to_be_bytes());
            context.update(n);
            context.update(e);
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ec_jwk_takes_its_algorithm_from_the_curve() {
        // A P-256 public point (from RFC 7515 appendix A.3).
        let key = VerificationKey::from_jwk_value(&json!({
            "kty": "EC", "crv": "P-256", "kid": "ec",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))
        .expect("valid EC JWK");
        assert_eq!(key.algorithm, Some(Algorithm::ES256));
        assert!(key.fits(Algorithm::ES256));
        assert!(!key.fits(Algorithm::ES384));
        assert!(!key.fits(Algorithm::HS256));
    }

    #[test]
    fn oct_and_encryption_jwks_are_refused() {
        let oct = VerificationKey::from_jwk_value(
            &json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}),
        );
        assert!(oct.is_err());
        let enc = VerificationKey::from_jwk_value(&json!({
            "kty": "EC", "crv": "P-256", "use": "enc",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }));
        assert!(enc.is_err());
    }

    #[test]
    fn short_symmetric_keys_are_refused() {
        let err = VerificationKey::from_symmetric_base64(None, "c2hvcnQ=").expect_err("too short");
        assert!(err.0.contains("at least 16"), "{err}");
        let ok = VerificationKey::from_symmetric_base64(
            None,
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .expect("32 bytes");
        assert!(ok.fits(Algorithm::HS512));
        assert!(!ok.fits(Algorithm::RS256));
    }

    #[test]
    fn garbage_pem_is_refused() {
        assert!(
            VerificationKey::from_pem(
                None,
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
            )
            .is_err()
        );
    }
}
