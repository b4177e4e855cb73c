//! Validation and compilation of a TokenPolicy into the sidecar's runtime model.
//!
//! One pass does both: validation is compilation with every problem collected, so what the
//! admission webhook accepts is exactly what the sidecar can run.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use crate::claims::{ClaimPath, ClaimRequirement};
use crate::document::TokenPolicyDocument;
use crate::entra::{self, Authority, EntraRules, TokenVersion};
use crate::keys::VerificationKey;
use crate::routes::{CompiledRule, RouteTable};
use crate::selector::LabelSelector;
use crate::spec::{
    DEFAULT_MAX_TOKEN_LENGTH, FailedValidation, KeyDelivery, KeySelection, SigningKey,
    TokenPolicySpec, UnderscoreHeaders, ValidateAzureAdToken, ValidateJwt,
};

/// Longest clock skew accepted; beyond it `exp` stops meaning much.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Every asymmetric algorithm; the default for keys fetched from the network.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A policy ready for the request path.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub namespace: Option<String>,
    pub generation: Option<i64>,
    pub creation_timestamp: Option<String>,
    pub selector: LabelSelector,
    pub extraction: Extraction,
    pub verification: Verification,
    pub failed_validation: FailedValidation,
    pub forward_token: bool,
    pub claims_to_headers: Vec<ClaimHeader>,
    /// The rules with the path normalisation they are matched under.
    pub rules: RouteTable,
    pub requests: RequestRules,
}

/// How the proxy reads a request before judging it (besides paths, which live with the rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRules {
    pub headers_with_underscores: UnderscoreHeaders,
    /// Lower-case `Upgrade` protocol names passed to the application; never `h2c`.
    pub upgrades: Vec<String>,
    pub bypass_cors_preflight: bool,
}

impl Default for RequestRules {
    fn default() -> Self {
        Self {
            headers_with_underscores: UnderscoreHeaders::default(),
            upgrades: vec!["websocket".to_owned()],
            bypass_cors_preflight: false,
        }
    }
}

/// Where the token is read from, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extraction {
    /// Lower-case header name.
    pub header: String,
    pub scheme: Option<String>,
    pub query_parameter: Option<String>,
    pub cookie: Option<String>,
    pub max_length: usize,
}

/// A key set the sidecar fetches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RemoteKeySource {
    /// An OpenID Connect discovery document, whose `jwks_uri` is then fetched.
    Discovery(String),
    /// A JWKS document.
    Jwks(String),
}

impl RemoteKeySource {
    pub fn url(&self) -> &str {
        match self {
            Self::Discovery(url) | Self::Jwks(url) => url,
        }
    }
}

impl fmt::Display for RemoteKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discovery(url) => write!(f, "openid-config {url}"),
            Self::Jwks(url) => write!(f, "jwks {url}"),
        }
    }
}

/// Which `iss` values are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerRule {
    Any,
    Listed(Vec<String>),
    /// The `issuer` of each discovery document, known once they are fetched.
    FromDiscovery,
}

/// The token checks, in the order the verifier runs them.
#[derive(Clone, Debug)]
pub struct Verification {
    pub remote_sources: Vec<RemoteKeySource>,
    pub static_keys: Vec<VerificationKey>,
    pub algorithms: Vec<Algorithm>,
    /// `alg: none` accepted (requireSignedTokens false and `none` listed).
    pub allow_unsigned: bool,
    pub issuers: IssuerRule,
    pub audiences: Vec<String>,
    pub required_claims: Vec<ClaimRequirement>,
    pub require_expiration_time: bool,
    pub clock_skew: Duration,
    /// Which keys a token's signature is checked against when its `kid` names none.
    pub key_selection: KeySelection,
    /// Microsoft Entra checks (`validateAzureAdToken`). When set, they replace `issuers`, which
    /// is then `Any`, and add the client-application check.
    pub entra: Option<EntraRules>,
    /// Who fetches the `remote_sources` (`spec.keyDelivery`).
    pub key_delivery: KeyDelivery,
}

/// A claim copied into a request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimHeader {
    pub claim: ClaimPath,
    /// Lower-case header name.
    pub header: String,
}

/// One problem with a policy, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidPolicy {
    pub policy: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenPolicy {:?} is invalid: ", self.policy)?;
        for (i, err) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

/// Reads key files named by `issuerSigningKeys[].file`. Compilation itself does no I/O.
pub trait KeyFiles {
    fn read(&self, path: &str) -> std::io::Result<String>;

    /// Reads key `key` of Secret `name` for `issuerSigningKeys[].secretRef`, where the Secret
    /// is mounted (the bundle's keys directory). `None`: no Secrets are available here.
    fn read_secret(&self, name: &str, key: &str) -> Option<std::io::Result<String>> {
        let _ = (name, key);
        None
    }
}

/// Validates a spec as the admission webhook does: everything but the contents of key files,
/// which live where the sidecar runs.
pub fn validate(spec: &TokenPolicySpec) -> Vec<FieldError> {
    let mut compiler = Compiler {
        errors: Vec::new(),
        files: None,
    };
    compiler.spec(spec);
    compiler.errors
}

/// Compiles a policy for the sidecar, reading key files through `files`.
pub fn compile(
    doc: &TokenPolicyDocument,
    files: &dyn KeyFiles,
) -> Result<CompiledPolicy, InvalidPolicy> {
    let mut compiler = Compiler {
        errors: Vec::new(),
        files: Some(files),
    };
    let parts = compiler.spec(&doc.spec);
    match parts {
        Some((extraction, verification, claims_to_headers, rules, requests))
            if compiler.errors.is_empty() =>
        {
            Ok(CompiledPolicy {
                name: doc.metadata.name.clone(),
                namespace: doc.metadata.namespace.clone(),
                generation: doc.metadata.generation,
                creation_timestamp: doc.metadata.creation_timestamp.clone(),
                selector: doc.spec.selector.clone(),
                extraction,
                verification,
                failed_validation: doc.spec.failed_validation.clone(),
                forward_token: doc.spec.forwarding.forward_token,
                claims_to_headers,
                rules,
                requests,
            })
        }
        _ => Err(InvalidPolicy {
            policy: doc.metadata.name.clone(),
            errors: compiler.errors,
        }),
    }
}

/// The key sets a spec makes the sidecar fetch, in either mode, without fetching anything:
/// `validateJwt`'s discovery documents and JWKS URLs, or the Entra tenant's discovery document.
/// Sources a compile would refuse (malformed URLs, a bad authority) are left out.
pub fn remote_key_sources(spec: &TokenPolicySpec) -> Vec<RemoteKeySource> {
    let mut sources = Vec::new();
    if let Some(jwt) = &spec.validate_jwt {
        for config in &jwt.openid_configs {
            if is_fetchable_url(&config.url) {
                sources.push(RemoteKeySource::Discovery(config.url.clone()));
            }
        }
        for url in &jwt.jwks_uris {
            if is_fetchable_url(url) {
                sources.push(RemoteKeySource::Jwks(url.clone()));
            }
        }
    }
    if let Some(entra) = &spec.validate_azure_ad_token
        && let Ok(authority) = Authority::parse(entra.authentication_endpoint.as_deref())
        && let Ok(tenant) = entra::parse_tenant(&entra.tenant_id, &entra.allowed_tenants)
    {
        sources.push(RemoteKeySource::Discovery(
            authority.discovery_url(tenant.path_segment()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    sources.retain(|source| seen.insert(source.clone()));
    sources
}

fn is_fetchable_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|url| matches!(url.scheme(), "https" | "http") && url.host().is_some())
}

type Parts = (
    Extraction,
    Verification,
    Vec<ClaimHeader>,
    RouteTable,
    RequestRules,
);

struct Compiler<'f> {
    errors: Vec<FieldError>,
    files: Option<&'f dyn KeyFiles>,
}

impl Compiler<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn spec(&mut self, spec: &TokenPolicySpec) -> Option<Parts> {
        if spec.selector.is_empty() {
            self.error(
                "spec.selector",
                "must select pods by at least one label (matchLabels or matchExpressions)",
            );
        }
        for problem in spec.selector.problems() {
            self.error("spec.selector", problem);
        }
        let extraction = self.extraction(spec);
        let code = spec.failed_validation.http_code;
        if !(400..=599).contains(&code) {
            self.error(
                "spec.failedValidation.httpCode",
                format!("{code} is not an error status; use 400 to 599"),
            );
        }
        if spec.failed_validation.message.contains(['\r', '\n']) {
            self.error("spec.failedValidation.message", "must be a single line");
        }
        let verification = match (&spec.validate_jwt, &spec.validate_azure_ad_token) {
            (Some(jwt), None) => self.validate_jwt(jwt),
            (None, Some(entra)) => self.validate_azure_ad_token(entra),
            (None, None) => {
                self.error(
                    "spec",
                    "set one of validateJwt or validateAzureAdToken: a policy must say how tokens are validated",
                );
                None
            }
            (Some(_), Some(_)) => {
                self.error(
                    "spec",
                    "validateJwt and validateAzureAdToken are exclusive: keep one",
                );
                None
            }
        };
        let verification = verification.map(|verification| Verification {
            key_delivery: spec.key_delivery,
            ..verification
        });
        let claims_to_headers = self.claims_to_headers(spec, &extraction);
        let paths = &spec.requests.paths;
        let mut rules = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            match CompiledRule::compile_with(rule, paths) {
                Ok(rule) => rules.push(rule),
                Err(message) => self.error(format!("spec.rules[{i}]"), message),
            }
        }
        let rules = RouteTable {
            rules,
            paths: paths.clone(),
        };
        let requests = self.requests(spec);
        Some((
            extraction,
            verification?,
            claims_to_headers,
            rules,
            requests,
        ))
    }

    fn requests(&mut self, spec: &TokenPolicySpec) -> RequestRules {
        let requests = &spec.requests;
        let mut upgrades: Vec<String> = Vec::new();
        for (i, protocol) in requests.upgrades.iter().enumerate() {
            let field = format!("spec.requests.upgrades[{i}]");
            let lower = protocol.to_ascii_lowercase();
            let name = lower.split('/').next().unwrap_or_default();
            if lower.split('/').count() > 2 || !lower.split('/').all(is_token_chars) {
                self.error(
                    field,
                    format!("{protocol:?} is not an Upgrade protocol name"),
                );
            } else if name == "h2c" || name == "h2" || name == "http" {
                self.error(
                    field,
                    format!(
                        "{protocol:?} is never allowed: the upgraded connection would carry HTTP requests the sidecar cannot judge"
                    ),
                );
            } else if !upgrades.contains(&lower) {
                upgrades.push(lower);
            }
        }
        RequestRules {
            headers_with_underscores: requests.headers_with_underscores,
            upgrades,
            bypass_cors_preflight: requests.bypass_cors_preflight,
        }
    }

    fn extraction(&mut self, spec: &TokenPolicySpec) -> Extraction {
        let token = &spec.token;
        if !is_header_name(&token.header) {
            self.error(
                "spec.token.header",
                format!("{:?} is not a valid header name", token.header),
            );
        }
        if let Some(scheme) = &token.scheme
            && !scheme.is_empty()
            && !is_token_chars(scheme)
        {
            self.error(
                "spec.token.scheme",
                format!("{scheme:?} is not a valid authentication scheme"),
            );
        }
        if token.query_parameter.as_deref() == Some("") {
            self.error("spec.token.queryParameter", "must not be empty");
        }
        if let Some(cookie) = &token.cookie
            && !is_token_chars(cookie)
        {
            self.error(
                "spec.token.cookie",
                format!("{cookie:?} is not a valid cookie name"),
            );
        }
        let max_length = token.max_length.unwrap_or(DEFAULT_MAX_TOKEN_LENGTH);
        if !(64..=65536).contains(&max_length) {
            self.error("spec.token.maxLength", "must be between 64 and 65536");
        }
        Extraction {
            header: token.header.to_ascii_lowercase(),
            scheme: token.effective_scheme().map(str::to_owned),
            query_parameter: token.query_parameter.clone(),
            cookie: token.cookie.clone(),
            max_length: max_length as usize,
        }
    }

    fn validate_jwt(&mut self, jwt: &ValidateJwt) -> Option<Verification> {
        let base = "spec.validateJwt";
        let mut remote_sources = Vec::new();
        for (i, config) in jwt.openid_configs.iter().enumerate() {
            if self.url(format!("{base}.openidConfigs[{i}].url"), &config.url) {
                remote_sources.push(RemoteKeySource::Discovery(config.url.clone()));
            }
        }
        for (i, url) in jwt.jwks_uris.iter().enumerate() {
            if self.url(format!("{base}.jwksUris[{i}]"), url) {
                remote_sources.push(RemoteKeySource::Jwks(url.clone()));
            }
        }
        let mut static_keys = Vec::new();
        let mut static_key_fields = Vec::new();
        for (i, key) in jwt.issuer_signing_keys.iter().enumerate() {
            let field = format!("{base}.issuerSigningKeys[{i}]");
            if let Some(key) = self.signing_key(&field, key) {
                static_keys.push(key);
                static_key_fields.push(field);
            }
        }

        let mut algorithms = Vec::new();
        let mut none_listed = false;
        for (i, name) in jwt.algorithms.iter().enumerate() {
            if name == "none" {
                none_listed = true;
                continue;
            }
            match name.parse::<Algorithm>() {
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(_) => self.error(
                    format!("{base}.algorithms[{i}]"),
                    format!(
                        "unknown algorithm {name:?}; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512"
                    ),
                ),
            }
        }
        if none_listed && jwt.require_signed_tokens {
            self.error(
                format!("{base}.algorithms"),
                "`none` is only allowed together with requireSignedTokens: false",
            );
        }
        let allow_unsigned = none_listed && !jwt.require_signed_tokens;
        let has_keys = !remote_sources.is_empty() || !jwt.issuer_signing_keys.is_empty();
        if !(has_keys || (allow_unsigned && algorithms.is_empty())) {
            self.error(
                base,
                "no keys: give at least one of openidConfigs, jwksUris or issuerSigningKeys",
            );
        }
        if jwt.algorithms.is_empty() {
            if !remote_sources.is_empty() {
                algorithms.extend(ASYMMETRIC_ALGORITHMS);
            }
            for key in &static_keys {
                for alg in key.family.algorithms() {
                    if key.fits(*alg) && !algorithms.contains(alg) {
                        algorithms.push(*alg);
                    }
                }
            }
        } else if !algorithms.is_empty() && (!static_keys.is_empty() || !remote_sources.is_empty())
        {
            // An allowed algorithm no key can verify is almost always a typo.
            let usable = |alg: &Algorithm| {
                static_keys.iter().any(|k| k.fits(*alg))
                    || (!remote_sources.is_empty() && family_of(*alg) != AlgorithmFamily::Hmac)
            };
            let unusable: Vec<String> = algorithms
                .iter()
                .filter(|a| !usable(a))
                .map(|a| format!("{a:?}"))
                .collect();
            if !unusable.is_empty() && static_keys.len() == jwt.issuer_signing_keys.len() {
                self.error(
                    format!("{base}.algorithms"),
                    format!(
                        "no configured key can verify {}; HMAC algorithms need a symmetric key in issuerSigningKeys",
                        unusable.join(", ")
                    ),
                );
            }
        }

        if jwt.key_selection == KeySelection::ByKid {
            self.unnamed_keys_sharing_an_algorithm(&static_keys, &static_key_fields, &algorithms);
        }

        let issuers = if !jwt.issuers.is_empty() {
            for (i, issuer) in jwt.issuers.iter().enumerate() {
                if issuer.is_empty() {
                    self.error(format!("{base}.issuers[{i}]"), "must not be empty");
                }
            }
            IssuerRule::Listed(jwt.issuers.clone())
        } else if !jwt.openid_configs.is_empty() {
            IssuerRule::FromDiscovery
        } else {
            IssuerRule::Any
        };
        for (i, aud) in jwt.audiences.iter().enumerate() {
            if aud.is_empty() {
                self.error(format!("{base}.audiences[{i}]"), "must not be empty");
            }
        }
        let required_claims =
            self.required_claims(&format!("{base}.requiredClaims"), &jwt.required_claims);
        let clock_skew = jwt.clock_skew.0;
        if clock_skew > MAX_CLOCK_SKEW {
            self.error(format!("{base}.clockSkew"), "must be at most 1h");
        }
        Some(Verification {
            remote_sources,
            static_keys,
            algorithms,
            allow_unsigned,
            issuers,
            audiences: jwt.audiences.clone(),
            required_claims,
            require_expiration_time: jwt.require_expiration_time,
            clock_skew,
            key_selection: jwt.key_selection,
            entra: None,
            key_delivery: KeyDelivery::default(),
        })
    }

    /// With `keySelection: ByKid`, two different keys without an `id` that fit one algorithm
    /// can never verify anything: no `kid` chooses between them.
    fn unnamed_keys_sharing_an_algorithm(
        &mut self,
        keys: &[VerificationKey],
        fields: &[String],
        algorithms: &[Algorithm],
    ) {
        for (later, key) in keys.iter().enumerate() {
            if key.kid.is_some() {
                continue;
            }
            let clash = keys[..later]
                .iter()
                .enumerate()
                .find_map(|(earlier, other)| {
                    let shared = algorithms
                        .iter()
                        .find(|alg| key.fits(**alg) && other.fits(**alg))?;
                    (other.kid.is_none() && other.fingerprint() != key.fingerprint())
                        .then_some((earlier, shared))
                });
            if let Some((earlier, alg)) = clash {
                self.error(
                    &fields[later],
                    format!(
                        "this key and {} both have no id and both verify {alg:?}: give each an id (tokens name it in their kid), or set keySelection: TryAll",
                        fields[earlier]
                    ),
                );
            }
        }
    }

    fn validate_azure_ad_token(&mut self, spec: &ValidateAzureAdToken) -> Option<Verification> {
        let base = "spec.validateAzureAdToken";
        let authority = match Authority::parse(spec.authentication_endpoint.as_deref()) {
            Ok(authority) => Some(authority),
            Err(message) => {
                self.error(format!("{base}.authenticationEndpoint"), message);
                None
            }
        };
        let tenant = match entra::parse_tenant(&spec.tenant_id, &spec.allowed_tenants) {
            Ok(tenant) => Some(tenant),
            Err(errors) => {
                for (field, message) in errors {
                    self.error(format!("{base}.{field}"), message);
                }
                None
            }
        };
        let mut versions = Vec::new();
        for (i, text) in spec.token_versions.iter().enumerate() {
            match TokenVersion::parse(text.trim()) {
                Some(version) if !versions.contains(&version) => versions.push(version),
                Some(_) => {}
                None => self.error(
                    format!("{base}.tokenVersions[{i}]"),
                    format!("unknown access-token version {text:?}; use \"1.0\" or \"2.0\""),
                ),
            }
        }
        if versions.is_empty() {
            versions.extend(TokenVersion::ALL);
        }
        versions.sort();

        if spec.client_application_ids.is_empty() {
            self.error(
                format!("{base}.clientApplicationIds"),
                "list at least one client application (its application id, matched against appid or azp): without it any application in the tenant could call",
            );
        }
        let mut client_application_ids = Vec::new();
        for (i, id) in spec.client_application_ids.iter().enumerate() {
            let id = id.trim();
            if id.is_empty() {
                self.error(
                    format!("{base}.clientApplicationIds[{i}]"),
                    "must not be empty",
                );
            } else {
                client_application_ids.push(id.to_owned());
            }
        }
        for (i, aud) in spec.audiences.iter().enumerate() {
            if aud.trim().is_empty() {
                self.error(format!("{base}.audiences[{i}]"), "must not be empty");
            }
        }
        for (i, id) in spec.backend_application_ids.iter().enumerate() {
            if !entra::is_guid(id.trim()) {
                self.error(
                    format!("{base}.backendApplicationIds[{i}]"),
                    format!("{id:?} is not an application id; give the API's application (client) id, a GUID"),
                );
            }
        }
        let audiences = entra::accepted_audiences(&spec.audiences, &spec.backend_application_ids);
        if audiences.is_empty() {
            self.error(
                base,
                "name the API: give audiences or backendApplicationIds; without them any token of the tenant, one for Microsoft Graph included, would pass",
            );
        }
        let required_claims =
            self.required_claims(&format!("{base}.requiredClaims"), &spec.required_claims);
        let (authority, tenant) = (authority?, tenant?);
        Some(Verification {
            remote_sources: vec![RemoteKeySource::Discovery(
                authority.discovery_url(tenant.path_segment()),
            )],
            static_keys: Vec::new(),
            // Microsoft Entra signs access tokens with RS256 only.
            algorithms: vec![Algorithm::RS256],
            allow_unsigned: false,
            issuers: IssuerRule::Any,
            audiences,
            required_claims,
            require_expiration_time: true,
            clock_skew: Duration::ZERO,
            // Entra's tokens always carry a `kid`.
            key_selection: KeySelection::ByKid,
            entra: Some(EntraRules {
                authority,
                tenant,
                versions,
                client_application_ids,
            }),
            key_delivery: KeyDelivery::default(),
        })
    }

    fn required_claims(
        &mut self,
        field: &str,
        claims: &[crate::spec::RequiredClaim],
    ) -> Vec<ClaimRequirement> {
        let mut out = Vec::new();
        for (i, claim) in claims.iter().enumerate() {
            match ClaimRequirement::compile(claim) {
                Ok(req) => out.push(req),
                Err(message) => self.error(format!("{field}[{i}].name"), message),
            }
        }
        out
    }

    fn signing_key(&mut self, field: &str, key: &SigningKey) -> Option<VerificationKey> {
        let forms = [
            key.jwk.is_some(),
            key.pem.is_some(),
            key.modulus.is_some() || key.exponent.is_some(),
            key.value.is_some(),
            key.file.is_some(),
            key.secret_ref.is_some(),
        ];
        let count = forms.iter().filter(|set| **set).count();
        if count != 1 {
            self.error(
                field,
                "give exactly one of jwk, pem, modulus+exponent, value, file or secretRef",
            );
            return None;
        }
        let kid = key.id.clone();
        let parsed = if let Some(jwk) = &key.jwk {
            VerificationKey::from_jwk_value(jwk).map(|mut parsed| {
                if kid.is_some() {
                    parsed.kid = kid;
                }
                parsed
            })
        } else if let Some(pem) = &key.pem {
            VerificationKey::from_pem(kid, pem)
        } else if key.modulus.is_some() || key.exponent.is_some() {
            match (&key.modulus, &key.exponent) {
                (Some(n), Some(e)) => VerificationKey::from_rsa_components(kid, n, e),
                _ => {
                    self.error(field, "an RSA key needs both modulus and exponent");
                    return None;
                }
            }
        } else if let Some(value) = &key.value {
            VerificationKey::from_symmetric_base64(kid, value)
        } else if let Some(path) = &key.file {
            if path.is_empty() {
                self.error(format!("{field}.file"), "must not be empty");
                return None;
            }
            let files = self.files?;
            match files.read(path) {
                Ok(text) => VerificationKey::from_symmetric_base64(kid, &text),
                Err(err) => {
                    self.error(
                        format!("{field}.file"),
                        format!("cannot read {path}: {err}"),
                    );
                    return None;
                }
            }
        } else if let Some(secret) = &key.secret_ref {
            if secret.name.is_empty() || secret.key.is_empty() {
                self.error(format!("{field}.secretRef"), "needs both name and key");
                return None;
            }
            let files = self.files?;
            match files.read_secret(&secret.name, &secret.key) {
                Some(Ok(text)) => VerificationKey::from_symmetric_base64(kid, &text),
                Some(Err(err)) => {
                    self.error(
                        format!("{field}.secretRef"),
                        format!(
                            "cannot read key {:?} of Secret {:?}: {err}",
                            secret.key, secret.name
                        ),
                    );
                    return None;
                }
                None => {
                    self.error(
                        format!("{field}.secretRef"),
                        "secretRef is resolved by the operator in a cluster; standalone, give the key as value or file",
                    );
                    return None;
                }
            }
        } else {
            return None;
        };
        match parsed {
            Ok(key) => Some(key),
            Err(err) => {
                self.error(field, err.0);
                None
            }
        }
    }

    fn claims_to_headers(
        &mut self,
        spec: &TokenPolicySpec,
        extraction: &Extraction,
    ) -> Vec<ClaimHeader> {
        let mut out: Vec<ClaimHeader> = Vec::new();
        for (i, mapping) in spec.forwarding.claims_to_headers.iter().enumerate() {
            let field = format!("spec.forwarding.claimsToHeaders[{i}]");
            let header = mapping.header.to_ascii_lowercase();
            if !is_header_name(&header) {
                self.error(
                    format!("{field}.header"),
                    format!("{:?} is not a valid header name", mapping.header),
                );
                continue;
            }
            if RESERVED_HEADERS.contains(&header.as_str()) || header == extraction.header {
                self.error(
                    format!("{field}.header"),
                    format!(
                        "{:?} cannot carry a claim: the proxy or the token owns it",
                        mapping.header
                    ),
                );
                continue;
            }
            if out.iter().any(|c| c.header == header) {
                self.error(
                    format!("{field}.header"),
                    format!("{:?} is set twice", mapping.header),
                );
                continue;
            }
            match ClaimPath::parse(&mapping.claim) {
                Ok(claim) => out.push(ClaimHeader { claim, header }),
                Err(message) => self.error(format!("{field}.claim"), message),
            }
        }
        out
    }

    fn url(&mut self, field: String, text: &str) -> bool {
        match url::Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "https" | "http") && url.host().is_some() => true,
            Ok(url) => {
                self.error(
                    field,
                    format!("{text:?}: scheme {} is not http or https", url.scheme()),
                );
                false
            }
            Err(err) => {
                self.error(field, format!("{text:?} is not a URL: {err}"));
                false
            }
        }
    }
}

/// Headers the proxy manages itself; a claim must not overwrite them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
    "cookie",
];

fn family_of(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

/// RFC 9110 token characters.
fn is_token_chars(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_name(text: &str) -> bool {
    is_token_chars(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::parse_documents;

    struct NoFiles;
    impl KeyFiles for NoFiles {
        fn read(&self, path: &str) -> std::io::Result<String> {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                path.to_owned(),
            ))
        }
    }

    fn doc(spec_yaml: &str) -> TokenPolicyDocument {
        let text = format!(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: t}}\nspec:\n{spec_yaml}"
        );
        parse_documents(&text).expect("parses").remove(0)
    }

    fn errors(spec_yaml: &str) -> Vec<String> {
        match compile(&doc(spec_yaml), &NoFiles) {
            Ok(_) => Vec::new(),
            Err(err) => err.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_follow_apim() {
        let policy = compile(
            &doc("  selector: {matchLabels: {app: a}}\n  validateJwt:\n    openidConfigs: [{url: https://idp.example/.well-known/openid-configuration}]\n"),
            &NoFiles,
        )
        .expect("compiles");
        assert_eq!(policy.extraction.header, "authorization");
        assert_eq!(policy.extraction.scheme.as_deref(), Some("Bearer"));
        assert_eq!(policy.failed_validation.http_code, 401);
        assert!(policy.forward_token);
        let v = &policy.verification;
        assert!(v.require_expiration_time);
        assert!(!v.allow_unsigned);
        assert_eq!(v.issuers, IssuerRule::FromDiscovery);
        assert!(v.algorithms.contains(&Algorithm::RS256));
        assert!(
            !v.algorithms.contains(&Algorithm::HS256),
            "HMAC never defaults in for fetched keys"
        );
    }

    #[test]
    fn each_mistake_is_named_with_its_field() {
        let errs = errors(
            "  selector: {}\n  validateJwt: {algorithms: [RS999, none], jwksUris: [\"ftp://x/keys\"]}\n  failedValidation: {httpCode: 302}\n  forwarding: {claimsToHeaders: [{claim: sub, header: Host}]}\n  rules: [{paths: [admin]}]\n",
        );
        let joined = errs.join("\n");
        for expected in [
            "spec.selector: must select pods",
            "spec.failedValidation.httpCode: 302",
            "spec.validateJwt.jwksUris[0]: \"ftp://x/keys\": scheme ftp",
            "spec.validateJwt.algorithms[0]: unknown algorithm \"RS999\"",
            "spec.validateJwt.algorithms: `none` is only allowed",
            "spec.forwarding.claimsToHeaders[0].header: \"Host\" cannot carry a claim",
            "spec.rules[0]: path \"admin\" must start with /",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }

    #[test]
    fn keys_must_have_exactly_one_form_and_valid_material() {
        let errs = errors(
            "  selector: {matchLabels: {app: a}}\n  validateJwt:\n    issuerSigningKeys:\n      - {value: c2hvcnQ=}\n      - {n: abc}\n      - {pem: x, value: abc}\n      - {secretRef: {name: s, key: k}}\n",
        );
        let joined = errs.join("\n");
        assert!(
            joined.contains("issuerSigningKeys[0]: symmetric key is 5 bytes"),
            "{joined}"
        );
        assert!(
            joined.contains("issuerSigningKeys[1]: an RSA key needs both modulus and exponent"),
            "{joined}"
        );
        assert!(
            joined.contains("issuerSigningKeys[2]: give exactly one of"),
            "{joined}"
        );
        assert!(
            joined
                .contains("issuerSigningKeys[3].secretRef: secretRef is resolved by the operator"),
            "{joined}"
        );
    }

    #[test]
    fn validate_accepts_secret_refs_for_the_webhook() {
        let d = doc(
            "  selector: {matchLabels: {app: a}}\n  validateJwt:\n    issuerSigningKeys: [{id: h, secretRef: {name: s, key: k}}]\n    algorithms: [HS256]\n",
        );
        assert_eq!(validate(&d.spec), Vec::new());
    }

    #[test]
    fn exactly_one_validator() {
        assert!(
            errors("  selector: {matchLabels: {app: a}}\n")
                .join("")
                .contains("set one of validateJwt")
        );
    }

    #[test]
    fn unusable_algorithms_are_flagged() {
        let errs = errors(
            "  selector: {matchLabels: {app: a}}\n  validateJwt: {jwksUris: [\"https://idp/keys\"], algorithms: [HS256]}\n",
        );
        assert!(
            errs.join("").contains("no configured key can verify HS256"),
            "{errs:?}"
        );
    }

    #[test]
    fn key_selection_defaults_to_by_kid_and_unnamed_keys_must_not_compete() {
        let secret = |byte: u8| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        };
        let spec = |selection: &str, second_id: &str| {
            format!(
                "  selector: {{matchLabels: {{app: a}}}}\n  validateJwt:\n    algorithms: [HS256]\n    issuerSigningKeys: [{{value: \"{}\"}}, {{{second_id}value: \"{}\"}}]\n{selection}",
                secret(1),
                secret(2)
            )
        };
        let errs = errors(&spec("", ""));
        assert!(
            errs.iter().any(|e| e.starts_with(
                "spec.validateJwt.issuerSigningKeys[1]: this key and spec.validateJwt.issuerSigningKeys[0] both have no id and both verify HS256"
            )),
            "{errs:?}"
        );
        assert_eq!(errors(&spec("", "id: second, ")), Vec::<String>::new());
        let policy = compile(&doc(&spec("    keySelection: TryAll\n", "")), &NoFiles)
            .expect("TryAll accepts keys without ids");
        assert_eq!(policy.verification.key_selection, KeySelection::TryAll);
        let policy = compile(&doc(&spec("", "id: second, ")), &NoFiles).expect("compiles");
        assert_eq!(policy.verification.key_selection, KeySelection::ByKid);
        // The same key twice is one key.
        let same = format!(
            "  selector: {{matchLabels: {{app: a}}}}\n  validateJwt:\n    algorithms: [HS256]\n    issuerSigningKeys: [{{value: \"{0}\"}}, {{value: \"{0}\"}}]\n",
            secret(1)
        );
        assert_eq!(errors(&same), Vec::<String>::new());
    }

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const API: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn entra_compiles_into_a_discovery_source_and_entra_rules() {
        let policy = compile(
            &doc(&format!(
                "  selector: {{matchLabels: {{app: a}}}}\n  validateAzureAdToken:\n    tenantId: {TENANT}\n    authenticationEndpoint: https://login.microsoftonline.us\n    backendApplicationIds: [{API}]\n    clientApplicationIds: [{CLIENT}]\n    tokenVersions: [\"2.0\"]\n    requiredClaims: [{{name: roles, values: [Orders.Read]}}]\n"
            )),
            &NoFiles,
        )
        .expect("compiles");
        let v = &policy.verification;
        assert_eq!(
            v.remote_sources,
            vec![RemoteKeySource::Discovery(format!(
                "https://login.microsoftonline.us/{TENANT}/v2.0/.well-known/openid-configuration"
            ))]
        );
        assert_eq!(v.algorithms, vec![Algorithm::RS256]);
        assert!(v.audiences.contains(&API.to_owned()));
        assert!(v.audiences.contains(&format!("api://{API}")));
        assert_eq!(v.required_claims.len(), 1);
        let entra = v.entra.as_ref().expect("entra rules");
        assert_eq!(entra.versions, vec![TokenVersion::V2]);
        assert_eq!(entra.client_application_ids, vec![CLIENT.to_owned()]);
        assert_eq!(
            entra.authority.issuer(TokenVersion::V1, TENANT),
            format!("https://sts.windows.net/{TENANT}/")
        );
    }

    #[test]
    fn entra_mistakes_are_named_with_their_field() {
        let errs = errors(
            "  selector: {matchLabels: {app: a}}\n  validateAzureAdToken:\n    tenantId: contoso_corp\n    authenticationEndpoint: http://login.microsoftonline.com\n    backendApplicationIds: [orders]\n    tokenVersions: [\"3.0\"]\n    allowedTenants: [x]\n",
        )
        .join("\n");
        for expected in [
            "spec.validateAzureAdToken.authenticationEndpoint: \"http://login.microsoftonline.com\": http is accepted only for loopback hosts",
            "spec.validateAzureAdToken.tenantId: \"contoso_corp\" is not a directory (tenant) id, a verified domain",
            "spec.validateAzureAdToken.tokenVersions[0]: unknown access-token version \"3.0\"",
            "spec.validateAzureAdToken.clientApplicationIds: list at least one client application",
            "spec.validateAzureAdToken.backendApplicationIds[0]: \"orders\" is not an application id",
        ] {
            assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
        }
        let errs = errors(&format!(
            "  selector: {{matchLabels: {{app: a}}}}\n  validateAzureAdToken: {{tenantId: {TENANT}, clientApplicationIds: [{CLIENT}]}}\n"
        ));
        assert!(
            errs.join("")
                .contains("give audiences or backendApplicationIds"),
            "{errs:?}"
        );
    }

    #[test]
    fn remote_key_sources_list_either_mode_without_io() {
        let jwt = doc(
            "  selector: {matchLabels: {app: a}}\n  validateJwt:\n    openidConfigs: [{url: https://a.example/.well-known/openid-configuration}, {url: \"not a url\"}]\n    jwksUris: [https://b.example/keys, https://b.example/keys]\n",
        );
        assert_eq!(
            remote_key_sources(&jwt.spec),
            vec![
                RemoteKeySource::Discovery(
                    "https://a.example/.well-known/openid-configuration".into()
                ),
                RemoteKeySource::Jwks("https://b.example/keys".into()),
            ]
        );
        let multi = doc(&format!(
            "  selector: {{matchLabels: {{app: a}}}}\n  validateAzureAdToken: {{tenantId: organizations, audiences: [api://{API}], clientApplicationIds: [{CLIENT}]}}\n"
        ));
        assert_eq!(
            remote_key_sources(&multi.spec),
            vec![RemoteKeySource::Discovery(
                "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"
                    .into()
            )]
        );
        let compiled = compile(&multi, &NoFiles).expect("compiles");
        assert_eq!(
            compiled.verification.remote_sources,
            remote_key_sources(&multi.spec),
            "what the operator lists is what the sidecar fetches"
        );
    }
}
