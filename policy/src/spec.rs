//! The `TokenPolicy` spec (`tokengate.dev/v1alpha1`), as users write it.
//!
//! Field names follow Azure API Management's `validate-jwt` and `validate-azure-ad-token`
//! policies so that an APIM policy translates line by line. Defaults are APIM's.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::selector::LabelSelector;
pub use crate::status::TokenPolicyStatus;

/// Desired token validation for the pods a selector picks.
#[derive(
    kube_derive::CustomResource,
    Serialize,
    Deserialize,
    JsonSchema,
    Clone,
    Debug,
    Default,
    PartialEq,
)]
#[kube(
    group = "tokengate.dev",
    version = "v1alpha1",
    kind = "TokenPolicy",
    namespaced,
    shortname = "tp",
    category = "tokengate",
    status = "TokenPolicyStatus",
    doc = "Bearer-token validation with Azure API Management's validate-jwt and \
           validate-azure-ad-token semantics, enforced by the tokengate sidecar of the pods \
           the selector picks.",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".status.mode"}"#,
    printcolumn = r#"{"name": "Selector", "type": "string", "jsonPath": ".status.selector"}"#,
    printcolumn = r#"{"name": "Pods", "type": "integer", "jsonPath": ".status.selectedPods"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicySpec {
    /// Pods this policy applies to, by label. Must not be empty: a policy that selects every
    /// pod of a namespace is written as an explicit label.
    pub selector: LabelSelector,

    /// Where the token is read from. Defaults to the `Authorization` header with the `Bearer`
    /// scheme.
    #[serde(default, skip_serializing_if = "TokenSource::is_default")]
    pub token: TokenSource,

    /// Validation with the semantics of APIM's `validate-jwt` policy. Exactly one of
    /// `validateJwt` and `validateAzureAdToken` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_jwt: Option<ValidateJwt>,

    /// Validation with the semantics of APIM's `validate-azure-ad-token` policy (Microsoft
    /// Entra ID). Exactly one of `validateJwt` and `validateAzureAdToken` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_azure_ad_token: Option<ValidateAzureAdToken>,

    /// Status code and message of the response to a request whose token fails validation
    /// (APIM `failed-validation-httpcode` and `failed-validation-error-message`).
    #[serde(default, skip_serializing_if = "FailedValidation::is_default")]
    pub failed_validation: FailedValidation,

    /// What reaches the application once a token is accepted.
    #[serde(default, skip_serializing_if = "Forwarding::is_default")]
    pub forwarding: Forwarding,

    /// Per-route requirements, first match wins. A request that matches no rule needs a valid
    /// token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,

    /// Make the application reachable only through the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_access: Option<PrivateAccess>,

    /// How requests are read before they are judged: path normalisation, headers with
    /// underscores, protocol upgrades, CORS preflights. The application receives the request
    /// exactly as it was judged; what cannot be made unambiguous is refused with 400.
    #[serde(default, skip_serializing_if = "Requests::is_default")]
    pub requests: Requests,

    /// Who fetches the public keys of the policy's key sources (`openidConfigs`, `jwksUris`,
    /// the Microsoft Entra authority). `OperatorWithFallback` (the default): the operator
    /// fetches each source once for the whole cluster and delivers its keys to the sidecars
    /// through the namespace bundle; a sidecar fetches itself only when a token names a key the
    /// bundle lacks (at most once per cooldown) or when the bundle's keys are older than its
    /// maximum stale age. `Operator`: sidecars never fetch, so application pods need no egress
    /// to the identity provider; a key reaches them once the operator's next refresh has put it
    /// in the bundle. `Sidecar`: every sidecar fetches its keys itself, as without an operator.
    #[serde(default, skip_serializing_if = "KeyDelivery::is_default")]
    pub key_delivery: KeyDelivery,
}

/// Who fetches a policy's remote keys (`spec.keyDelivery`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyDelivery {
    // The operator, through the bundle; sidecars fall back to fetching themselves.
    #[default]
    OperatorWithFallback,
    // The operator only, through the bundle: sidecars need no egress.
    Operator,
    // Each sidecar itself.
    Sidecar,
}

impl KeyDelivery {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the operator delivers this policy's keys in the bundle.
    pub fn through_bundle(self) -> bool {
        self != Self::Sidecar
    }

    /// Whether a sidecar may fetch keys itself.
    pub fn sidecar_fetches(self) -> bool {
        self != Self::Operator
    }
}

/// Where the token is read from. Sources are tried in order: header, query parameter, cookie.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenSource {
    /// Request header carrying the token (APIM `header-name`).
    #[serde(default = "default_header")]
    pub header: String,

    /// Scheme the header value must start with, compared case-insensitively (APIM
    /// `require-scheme`). Defaults to `Bearer` for the `Authorization` header and to none for
    /// other headers; the empty string means the whole header value is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,

    /// Query parameter carrying the token when the header is absent (APIM
    /// `query-parameter-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,

    /// Cookie carrying the token when neither the header nor the query parameter is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,

    /// Longest token accepted, in bytes. Longer tokens are refused before any parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 65536))]
    pub max_length: Option<u32>,
}

pub const DEFAULT_TOKEN_HEADER: &str = "Authorization";
pub const DEFAULT_SCHEME: &str = "Bearer";
pub const DEFAULT_MAX_TOKEN_LENGTH: u32 = 8192;

fn default_header() -> String {
    DEFAULT_TOKEN_HEADER.to_owned()
}

impl Default for TokenSource {
    fn default() -> Self {
        Self {
            header: default_header(),
            scheme: None,
            query_parameter: None,
            cookie: None,
            max_length: None,
        }
    }
}

impl TokenSource {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The scheme in force: the explicit one, else `Bearer` on `Authorization`. `None` means
    /// the header value is the token itself.
    pub fn effective_scheme(&self) -> Option<&str> {
        match self.scheme.as_deref() {
            Some("") => None,
            Some(scheme) => Some(scheme),
            None if self.header.eq_ignore_ascii_case(DEFAULT_TOKEN_HEADER) => Some(DEFAULT_SCHEME),
            None => None,
        }
    }
}

/// APIM `validate-jwt`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValidateJwt {
    /// OpenID Connect discovery documents; their `jwks_uri` keys are trusted, and when
    /// `issuers` is empty, their `issuer` values are the accepted issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub openid_configs: Vec<OpenIdConfig>,

    /// JSON Web Key Set URLs whose keys are trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub jwks_uris: Vec<String>,

    /// Keys given in the policy itself (APIM `issuer-signing-keys`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub issuer_signing_keys: Vec<SigningKey>,

    /// Accepted `iss` values (any of). Empty: the discovery documents' issuers, or any issuer
    /// when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,

    /// Accepted `aud` values (any of; `aud` may be a string or an array). Empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,

    /// Accepted signature algorithms. Empty: every algorithm the configured keys can verify.
    /// The token's own `alg` never widens this set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,

    /// Claims the token must carry (APIM `required-claims`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<RequiredClaim>,

    /// Refuse tokens without an `exp` claim (APIM `require-expiration-time`).
    #[serde(default = "yes")]
    pub require_expiration_time: bool,

    /// Refuse unsigned tokens (APIM `require-signed-tokens`). Setting it to false accepts
    /// `alg: none` only when `algorithms` also lists `none`.
    #[serde(default = "yes")]
    pub require_signed_tokens: bool,

    /// Tolerance for `exp`, `nbf` and `iat`, e.g. `30s` or `2m` (APIM `clock-skew`).
    #[serde(default, skip_serializing_if = "HumanDuration::is_zero")]
    pub clock_skew: HumanDuration,

    /// How the key that verifies a token is found. `ByKid` (default): the token's `kid` names
    /// it; a token without a `kid`, or whose `kid` names no key (keys given without an `id`
    /// then serve), is checked only when exactly one key fits its algorithm, and refused with
    /// `TokenSignatureKeyNotFound` otherwise. `TryAll`: such a token is checked against every
    /// key that fits, as APIM does, at most 4, so one forged token never costs more than 4
    /// signature checks.
    #[serde(default, skip_serializing_if = "KeySelection::is_default")]
    pub key_selection: KeySelection,
}

/// How the key that verifies a token is found (`validateJwt.keySelection`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeySelection {
    // By the token's `kid`; without one, only when a single key fits.
    #[default]
    ByKid,
    // Every key that fits, at most 4 (APIM's behaviour for tokens without a `kid`).
    TryAll,
}

impl KeySelection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn yes() -> bool {
    true
}

/// APIM `validate-azure-ad-token`: access tokens of Microsoft Entra ID, v1.0 and v2.0.
///
/// Keys come from the tenant's discovery document under `authenticationEndpoint`; the accepted
/// issuers follow from the tenant, the token version and the cloud.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ValidateAzureAdToken {
    /// Directory (tenant) id, a GUID, or a verified domain such as `contoso.onmicrosoft.com`
    /// (the id is then the one the domain's discovery document names); or `organizations` /
    /// `common` for multi-tenant applications, which accept a token of any tenant whose `tid`
    /// matches its issuer.
    pub tenant_id: String,

    /// Microsoft Entra authority, for national clouds: `https://login.microsoftonline.us`
    /// (Azure Government), `https://login.partner.microsoftonline.cn` (21Vianet). Default
    /// `https://login.microsoftonline.com`. https, except for loopback hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_endpoint: Option<String>,

    /// Accepted audiences (any of). An application id and its default App ID URI
    /// (`api://{id}`) are accepted for each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,

    /// Client applications allowed to call: the `appid` claim of v1.0 tokens, `azp` of v2.0
    /// tokens. At least one, as in APIM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_application_ids: Vec<String>,

    /// Application ids of the protected API, accepted as audiences (also as `api://{id}`).
    /// `audiences` and `backendApplicationIds` together must name at least one audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_application_ids: Vec<String>,

    /// Claims the token must carry, as in `validateJwt` (`roles`; `scp` with separator `" "`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<RequiredClaim>,

    /// With `tenantId` `organizations` or `common`: the only tenants accepted. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tenants: Vec<String>,

    /// Accepted access-token versions, `"1.0"` and/or `"2.0"`. Empty: both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_versions: Vec<String>,
}

/// One OpenID Connect discovery document.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenIdConfig {
    /// Full URL of the discovery document, e.g.
    /// `https://issuer.example/.well-known/openid-configuration`.
    pub url: String,
}

/// A key given in the policy: exactly one form per key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    /// Key id matched against the token's `kid`. A token without a `kid` verifies with the one
    /// key that fits its algorithm; when several fit, `keySelection` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,

    /// A public JSON Web Key (RSA, EC or OKP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub jwk: Option<serde_json::Value>,

    /// A PEM public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,

    /// RSA modulus, base64url (APIM and JWK `n`). Named in full because YAML 1.1 readers
    /// (kubectl, helm) read an unquoted `n` key as the boolean false; `n` is still accepted
    /// in policy files and JSON.
    #[serde(default, alias = "n", skip_serializing_if = "Option::is_none")]
    pub modulus: Option<String>,

    /// RSA public exponent, base64url (APIM and JWK `e`); `e` is still accepted in policy
    /// files and JSON.
    #[serde(default, alias = "e", skip_serializing_if = "Option::is_none")]
    pub exponent: Option<String>,

    /// Symmetric (HMAC) key, base64. Prefer `secretRef` in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,

    /// Path of a file holding a base64 symmetric key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,

    /// Secret in the policy's namespace holding a base64 symmetric key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A key of a Secret in the policy's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A claim the token must carry (APIM `<claim>`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequiredClaim {
    /// Claim name; a dotted path such as `realm_access.roles` reaches nested objects when no
    /// top-level claim has the literal name.
    pub name: String,

    /// `all`: every listed value must be present; `any`: at least one.
    #[serde(default, rename = "match")]
    pub match_: ClaimMatch,

    /// Splits a string claim into values, e.g. `" "` for `scp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,

    /// Accepted values. Empty: the claim only has to be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClaimMatch {
    #[default]
    All,
    Any,
}

/// The response to a failed validation.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailedValidation {
    /// HTTP status code, 400 to 599.
    #[serde(default = "default_http_code")]
    #[schemars(range(min = 400, max = 599))]
    pub http_code: u16,

    /// Message in the response body.
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_http_code() -> u16 {
    401
}

fn default_message() -> String {
    "Unauthorized".to_owned()
}

impl Default for FailedValidation {
    fn default() -> Self {
        Self {
            http_code: default_http_code(),
            message: default_message(),
        }
    }
}

impl FailedValidation {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What reaches the application once a token is accepted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Forwarding {
    /// Pass the token on to the application; false removes it from the request.
    #[serde(default = "yes")]
    pub forward_token: bool,

    /// Request headers set from claims. Incoming headers of the same names are always removed
    /// first, so a client cannot forge them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeader>,
}

impl Default for Forwarding {
    fn default() -> Self {
        Self {
            forward_token: true,
            claims_to_headers: Vec::new(),
        }
    }
}

impl Forwarding {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// One claim copied into a request header.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// Claim name or dotted path. Arrays become comma-separated values, objects compact JSON.
    pub claim: String,
    /// Header name.
    pub header: String,
}

/// A per-route requirement.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Paths this rule matches: exact (`/healthz`) or a prefix ending in `/*` (`/public/*`
    /// matches `/public` and everything below it).
    pub paths: Vec<String>,

    /// Methods this rule matches, compared case-insensitively; `GET` also covers `HEAD`,
    /// which servers answer with the `GET` handler. Empty: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,

    /// `Required` (default): a valid token is needed; `Optional`: requests without a token pass
    /// but a presented token must be valid; `Disabled`: no validation.
    #[serde(default)]
    pub authentication: Authentication,

    /// Further claims this route needs; a valid token without them is refused with 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<RequiredClaim>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Authentication {
    #[default]
    Required,
    Optional,
    Disabled,
}

/// How requests are read before they are judged and forwarded.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Requests {
    /// Path normalisation (Envoy's options). Rules match the normalised path, and the
    /// application receives that same path.
    #[serde(default, skip_serializing_if = "PathNormalization::is_default")]
    pub paths: PathNormalization,

    /// Headers whose names contain `_`, which CGI-style servers (PHP, WSGI, Rack) merge with
    /// the `-` spelling: `Drop` (default, as nginx and gunicorn do) removes them, `Reject`
    /// refuses the request with 400, `Keep` forwards them (the spellings of the headers the
    /// sidecar writes are removed in any case).
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,

    /// Protocol upgrades passed to the application, by `Upgrade` token (case-insensitive).
    /// Default `[websocket]`; `[]` allows none. `h2c` is never allowed: the upgraded
    /// connection would carry HTTP/2 requests the sidecar cannot judge. Other upgrade requests
    /// are forwarded as plain requests without their `Upgrade` header.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,

    /// Let CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`, no
    /// body) through without a token, as Envoy's `bypass_cors_preflight` does, so a browser
    /// can ask before it sends the token. Default false: preflights are judged like any other
    /// request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bypass_cors_preflight: bool,
}

fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            paths: PathNormalization::default(),
            headers_with_underscores: UnderscoreHeaders::default(),
            upgrades: default_upgrades(),
            bypass_cors_preflight: false,
        }
    }
}

impl Requests {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How request paths are normalised. Dot segments (`.`, `..`, also percent-encoded) are always
/// resolved and percent-encoded unreserved characters always decoded; these options decide the
/// rest. The defaults refuse what application servers disagree about.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalization {
    /// Merge repeated slashes (`/a//b` is `/a/b`). Default true.
    #[serde(default = "yes")]
    pub merge_slashes: bool,

    /// `%2F` and `%5C` in the path: `Reject` (default) refuses the request with 400;
    /// `Unescape` decodes them to `/` before normalising; `Keep` leaves them encoded, as data
    /// inside a segment, only for applications that never decode them into separators.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,

    /// `\` in the path: `Reject` (default); `Slash` reads it as `/`, as Windows servers and
    /// some frameworks do; `Keep` forwards it as data.
    #[serde(default)]
    pub backslashes: Backslashes,

    /// `;` in the path (matrix or path parameters; `/public/..;/admin` is `/admin` to a
    /// servlet container): `Reject` (default) refuses the request (also `%3B`); `Strip` removes
    /// the parameters from every segment, as servlet containers do, and forwards the path
    /// without them; `Keep` forwards them as data.
    #[serde(default)]
    pub path_parameters: PathParameters,

    /// Compare rule paths case-sensitively. Default true; set false when the application
    /// routes paths without regard to case (ASP.NET Core, Express by default), so that `/ADMIN`
    /// meets the rule written for `/admin`.
    #[serde(default = "yes")]
    pub case_sensitive: bool,
}

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
            backslashes: Backslashes::default(),
            path_parameters: PathParameters::default(),
            case_sensitive: true,
        }
    }
}

impl PathNormalization {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    #[default]
    Reject,
    Unescape,
    Keep,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backslashes {
    #[default]
    Reject,
    Slash,
    Keep,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PathParameters {
    #[default]
    Reject,
    Strip,
    Keep,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    #[default]
    Drop,
    Reject,
    Keep,
}

/// Make the application reachable only through the sidecar: with a NetworkPolicy (enforced by
/// the CNI), with the pod's own firewall (enforced in the pod), or both. Neither is on by
/// default.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrivateAccess {
    /// Render a NetworkPolicy that admits ingress to the selected pods only on the sidecar's
    /// ports. Needs a CNI that enforces NetworkPolicy; without one it does nothing.
    #[serde(default)]
    pub network_policy: bool,

    /// Give pods created from now on a firewall of their own: an init container (the sidecar's
    /// image, with capability NET_ADMIN and nothing else, before the sidecar starts) installs
    /// nftables rules in the pod's network namespace so that the application's protected port
    /// accepts connections only from the pod itself (the sidecar, over loopback). Works with
    /// any CNI; the sidecar's /ready fails until the rules are in force. The rules belong to
    /// the pod: later label or policy changes do not remove them. Namespaces that enforce Pod
    /// Security `restricted` (or `baseline`) refuse NET_ADMIN: use networkPolicy there, or
    /// exempt the namespace. Kubelet probes on the protected port are sent to the sidecar,
    /// which runs them against the application over loopback.
    #[serde(default)]
    pub pod_firewall: bool,

    /// Further pod ports left open, such as an application's own metrics port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_ports: Vec<u16>,
}

/// A duration written the human way (`30s`, `2m`, `1h30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The schema's pattern for a duration; the generated reference recognises durations by it.
    pub const PATTERN: &str = "^\\s*([0-9]+\\s*(ns|us|ms|s|m|h|d|sec|min|hour|hours|second|seconds|minute|minutes)\\s*)+$";

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|err| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({err}); write it like 30s, 2m or 1h"
                ))
            })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 30s, 2m or 1h30m.",
            "pattern": HumanDuration::PATTERN,
        })
    }

    fn inline_schema() -> bool {
        true
    }
}
