//! Key material of the test identity provider: generation, the key store with rotation and
//! publication state, and every public export form (JWK, SPKI PEM, RSA n/e, HMAC secret).

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, anyhow};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey};
use serde_json::{Value, json};

/// The kinds of key the identity provider holds. Each family has one current key at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// RSA 2048: RS256/384/512 and PS256/384/512.
    Rsa,
    /// EC P-256: ES256.
    EcP256,
    /// EC P-384: ES384.
    EcP384,
    /// Ed25519: EdDSA.
    Ed25519,
    /// Shared secret: HS256/384/512. Never published in the JWKS.
    Hmac,
}

impl KeyFamily {
    /// Every family, in the order keys are generated at start.
    pub const ALL: [KeyFamily; 5] = [
        KeyFamily::Rsa,
        KeyFamily::EcP256,
        KeyFamily::EcP384,
        KeyFamily::Ed25519,
        KeyFamily::Hmac,
    ];

    /// The family whose key signs `alg`.
    pub fn for_algorithm(alg: Algorithm) -> KeyFamily {
        match alg {
            Algorithm::ES384 => KeyFamily::EcP384,
            _ => match alg.family() {
                AlgorithmFamily::Hmac => KeyFamily::Hmac,
                AlgorithmFamily::Rsa => KeyFamily::Rsa,
                AlgorithmFamily::Ec => KeyFamily::EcP256,
                AlgorithmFamily::Ed => KeyFamily::Ed25519,
            },
        }
    }

    /// The algorithms a key of this family signs.
    pub fn algorithms(self) -> &'static [Algorithm] {
        match self {
            KeyFamily::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyFamily::EcP256 => &[Algorithm::ES256],
            KeyFamily::EcP384 => &[Algorithm::ES384],
            KeyFamily::Ed25519 => &[Algorithm::EdDSA],
            KeyFamily::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        }
    }

    /// Whether keys of this family appear in the JWKS (symmetric secrets never do).
    pub fn is_public(self) -> bool {
        self != KeyFamily::Hmac
    }

    fn kid_prefix(self) -> &'static str {
        match self {
            KeyFamily::Rsa => "rsa",
            KeyFamily::EcP256 => "p256",
            KeyFamily::EcP384 => "p384",
            KeyFamily::Ed25519 => "ed25519",
            KeyFamily::Hmac => "hmac",
        }
    }
}

impl fmt::Display for KeyFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kid_prefix())
    }
}

/// The JOSE name of an algorithm (`RS256`, `EdDSA`, ...).
pub fn alg_name(alg: Algorithm) -> String {
    // Debug of jsonwebtoken's Algorithm is exactly the JOSE name; the enum is non-exhaustive, so
    // this stays correct for variants added later.
    format!("{alg:?}")
}

/// Every export form of one key. Public-key forms are `None` for the HMAC secret, and the secret
/// is `None` for asymmetric keys.
#[derive(Debug, Clone)]
pub struct KeyExport {
    pub kid: String,
    pub family: KeyFamily,
    /// Whether the key is currently in the JWKS.
    pub published: bool,
    /// The JWK as published (for HMAC: an `oct` JWK with `k`, which is never published).
    pub jwk: Value,
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub pem: Option<String>,
    /// RSA modulus, base64url without padding.
    pub rsa_n: Option<String>,
    /// RSA public exponent, base64url without padding.
    pub rsa_e: Option<String>,
    /// HMAC secret, standard base64 with padding (the form APIM's `issuer-signing-keys` takes).
    pub secret_base64: Option<String>,
}

pub(crate) enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        crv: &'static str,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed {
        x: Vec<u8>,
    },
    Hmac {
        secret: Vec<u8>,
    },
}

pub(crate) struct Key {
    pub(crate) kid: String,
    pub(crate) family: KeyFamily,
    pub(crate) encoding: EncodingKey,
    material: Material,
    /// SPKI DER of the public key; empty for HMAC.
    spki_der: Vec<u8>,
}

impl Key {
    pub(crate) fn generate(family: KeyFamily, kid: String) -> anyhow::Result<Key> {
        let (encoding, material, spki_der) = match family {
            KeyFamily::Rsa => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|e| anyhow!("generating RSA key: {e}"))?;
                // jsonwebtoken wants PKCS#1 DER for RSA while aws-lc-rs exports PKCS#8; its PEM
                // loader unwraps PKCS#8 for us.
                let pkcs8: Pkcs8V1Der<'static> = pair
                    .as_der()
                    .map_err(|e| anyhow!("encoding RSA key: {e}"))?;
                let pem = pem_encode("PRIVATE KEY", pkcs8.as_ref());
                let encoding =
                    EncodingKey::from_rsa_pem(pem.as_bytes()).context("loading RSA key")?;
                let public = pair.public_key();
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(public);
                let spki: PublicKeyX509Der<'static> = public
                    .as_der()
                    .map_err(|e| anyhow!("encoding RSA public key: {e}"))?;
                (
                    encoding,
                    Material::Rsa {
                        n: components.n,
                        e: components.e,
                    },
                    spki.as_ref().to_vec(),
                )
            }
            KeyFamily::EcP256 | KeyFamily::EcP384 => {
                let (alg, crv, coord_len) = if family == KeyFamily::EcP256 {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
                } else {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
                };
                let pair =
                    EcdsaKeyPair::generate(alg).map_err(|e| anyhow!("generating EC key: {e}"))?;
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|e| anyhow!("encoding EC key: {e}"))?;
                let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
                let point = pair.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || x || y.
                if point.len() != 1 + 2 * coord_len || point[0] != 4 {
                    return Err(anyhow!("unexpected EC public key encoding"));
                }
                let (x, y) = point[1..].split_at(coord_len);
                let spki: PublicKeyX509Der<'static> = pair
                    .public_key()
                    .as_der()
                    .map_err(|e| anyhow!("encoding EC public key: {e}"))?;
                (
                    encoding,
                    Material::Ec {
                        crv,
                        x: x.to_vec(),
                        y: y.to_vec(),
                    },
                    spki.as_ref().to_vec(),
                )
            }
            KeyFamily::Ed25519 => {
                let pair = Ed25519KeyPair::generate()
                    .map_err(|e| anyhow!("generating Ed25519 key: {e}"))?;
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|e| anyhow!("encoding Ed25519 key: {e}"))?;
                let encoding = EncodingKey::from_ed_der(pkcs8.as_ref());
                let spki: PublicKeyX509Der<'static> = pair
                    .public_key()
                    .as_der()
                    .map_err(|e| anyhow!("encoding Ed25519 public key: {e}"))?;
                (
                    encoding,
                    Material::Ed {
                        x: pair.public_key().as_ref().to_vec(),
                    },
                    spki.as_ref().to_vec(),
                )
            }
            KeyFamily::Hmac => {
                // 64 bytes: long enough for HS512 (RFC 7518 3.2 wants at least the hash size).
                let mut secret = vec![0u8; 64];
                aws_lc_rs::rand::fill(&mut secret)
                    .map_err(|e| anyhow!("generating HMAC secret: {e}"))?;
                let encoding = EncodingKey::from_secret(&secret).context("loading HMAC secret")?;
                (encoding, Material::Hmac { secret }, Vec::new())
            }
        };
        Ok(Key {
            kid,
            family,
            encoding,
            material,
            spki_der,
        })
    }

    /// The JWK for this key: `kty`, `kid`, `use`, `alg` when the key serves a single algorithm,
    /// and the key parameters.
    pub(crate) fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.material {
            Material::Rsa { n, e } => json!({ "kty": "RSA", "n": b64(n), "e": b64(e) }),
            Material::Ec { crv, x, y } => {
                json!({ "kty": "EC", "crv": crv, "x": b64(x), "y": b64(y) })
            }
            Material::Ed { x } => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(x) }),
            Material::Hmac { secret } => json!({ "kty": "oct", "k": b64(secret) }),
        };
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        if let [alg] = self.family.algorithms() {
            jwk["alg"] = json!(alg_name(*alg));
        }
        jwk
    }

    pub(crate) fn export(&self, published: bool) -> KeyExport {
        let (rsa_n, rsa_e) = match &self.material {
            Material::Rsa { n, e } => (
                Some(URL_SAFE_NO_PAD.encode(n)),
                Some(URL_SAFE_NO_PAD.encode(e)),
            ),
            _ => (None, None),
        };
        let secret_base64 = match &self.material {
            Material::Hmac { secret } => Some(STANDARD.encode(secret)),
            _ => None,
        };
        let pem = (!self.spki_der.is_empty()).then(|| pem_encode("PUBLIC KEY", &self.spki_der));
        KeyExport {
            kid: self.kid.clone(),
            family: self.family,
            published,
            jwk: self.jwk(),
            pem,
            rsa_n,
            rsa_e,
            secret_base64,
        }
    }
}

/// PEM armour: base64 in 64-character lines between BEGIN/END lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// All keys ever generated, which of them the JWKS shows, and the current key per family.
/// Retired keys keep their material so tests can still sign with a key the JWKS no longer has.
pub(crate) struct KeyStore {
    keys: Vec<Key>,
    published: Vec<String>,
    current: HashMap<KeyFamily, String>,
    next_serial: u64,
    /// Random per-provider tag in every kid, so two providers never share a kid.
    tag: String,
}

impl KeyStore {
    pub(crate) fn generate() -> anyhow::Result<KeyStore> {
        let mut tag = [0u8; 3];
        aws_lc_rs::rand::fill(&mut tag).map_err(|e| anyhow!("generating kid tag: {e}"))?;
        let mut store = KeyStore {
            keys: Vec::new(),
            published: Vec::new(),
            current: HashMap::new(),
            next_serial: 1,
            tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
        };
        for family in KeyFamily::ALL {
            let key = Key::generate(family, store.allocate_kid(family))?;
            store.insert(key, true, true);
        }
        Ok(store)
    }

    /// A fresh kid; key generation happens outside the store's lock, then `insert` adds it.
    pub(crate) fn allocate_kid(&mut self, family: KeyFamily) -> String {
        let kid = format!("{}-{}-{}", family.kid_prefix(), self.tag, self.next_serial);
        self.next_serial += 1;
        kid
    }

    /// Adds a generated key. `publish` puts it in the JWKS (ignored for HMAC); `make_current`
    /// makes it the key its family signs with.
    pub(crate) fn insert(&mut self, key: Key, publish: bool, make_current: bool) {
        if publish && key.family.is_public() {
            self.published.push(key.kid.clone());
        }
        if make_current {
            self.current.insert(key.family, key.kid.clone());
        }
        self.keys.push(key);
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub(crate) fn current(&self, family: KeyFamily) -> Option<&Key> {
        self.current.get(&family).and_then(|kid| self.get(kid))
    }

    pub(crate) fn set_current(&mut self, kid: &str) -> bool {
        match self.get(kid).map(|k| k.family) {
            Some(family) => {
                self.current.insert(family, kid.to_owned());
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_published(&self, kid: &str) -> bool {
        self.published.iter().any(|k| k == kid)
    }

    pub(crate) fn published(&self) -> &[String] {
        &self.published
    }

    pub(crate) fn publish(&mut self, kid: &str) -> bool {
        match self.get(kid) {
            Some(key) if key.family.is_public() => {
                if !self.is_published(kid) {
                    self.published.push(kid.to_owned());
                }
                true
            }
            _ => false,
        }
    }

    pub(crate) fn unpublish(&mut self, kid: &str) -> bool {
        let before = self.published.len();
        self.published.retain(|k| k != kid);
        self.published.len() != before
    }

    /// Replaces the published set; unknown kids and HMAC kids are skipped and returned.
    pub(crate) fn publish_only(&mut self, kids: &[&str]) -> Vec<String> {
        self.published.clear();
        let mut skipped = Vec::new();
        for kid in kids {
            if !self.publish(kid) {
                skipped.push((*kid).to_owned());
            }
        }
        skipped
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    /// The JWKS document, keys in publication order.
    pub(crate) fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .published
            .iter()
            .filter_map(|kid| self.get(kid))
            .map(Key::jwk)
            .collect();
        json!({ "keys": keys })
    }
}
