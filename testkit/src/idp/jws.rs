//! Compact JWS built by hand, so tests control every byte of the header (attack tokens).

use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};

use super::keys::{KeyFamily, KeyStore};

/// What produces the signature segment of a hand-built token.
#[derive(Debug, Clone)]
pub enum SignWith {
    /// The current key of the algorithm's family, signing with that algorithm.
    Current(Algorithm),
    /// A specific key by kid (published, retired or never published) with the given algorithm.
    Kid(String, Algorithm),
    /// An arbitrary HMAC secret, e.g. an RSA public key PEM for algorithm-confusion tests.
    Secret(Vec<u8>, Algorithm),
    /// An empty signature segment, as `alg: none` tokens have.
    Unsigned,
    /// This exact signature segment.
    Signature(String),
}

/// `base64url(header) . base64url(payload) . signature`, signing the exact encoded bytes.
pub(crate) fn compact(
    keys: &KeyStore,
    header: &[u8],
    payload: &[u8],
    with: &SignWith,
) -> anyhow::Result<String> {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = match with {
        SignWith::Current(alg) => {
            let family = KeyFamily::for_algorithm(*alg);
            let key = keys
                .current(family)
                .ok_or_else(|| anyhow!("no current {family} key"))?;
            sign(&signing_input, &key.encoding, *alg)?
        }
        SignWith::Kid(kid, alg) => {
            let key = keys
                .get(kid)
                .ok_or_else(|| anyhow!("unknown kid {kid:?}"))?;
            sign(&signing_input, &key.encoding, *alg)
                .with_context(|| format!("signing with key {kid:?}"))?
        }
        SignWith::Secret(secret, alg) => {
            let key = EncodingKey::from_secret(secret).context("loading HMAC secret")?;
            sign(&signing_input, &key, *alg)?
        }
        SignWith::Unsigned => String::new(),
        SignWith::Signature(signature) => signature.clone(),
    };
    Ok(format!("{signing_input}.{signature}"))
}

fn sign(signing_input: &str, key: &EncodingKey, alg: Algorithm) -> anyhow::Result<String> {
    jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg)
        .with_context(|| format!("signing with {alg:?}"))
}
