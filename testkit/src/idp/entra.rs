//! The Microsoft Entra ID personality: tenant-scoped endpoints under one authority (the
//! provider's base URL), v1.0 and v2.0 access tokens with Entra's claim shapes, and the
//! client-credentials grant, whose token version follows the requested API's
//! `accessTokenAcceptedVersion` as in Entra.
//!
//! | path                                             | serves                               |
//! |--------------------------------------------------|--------------------------------------|
//! | `/{tenant}/v2.0/.well-known/openid-configuration`| v2.0 discovery                       |
//! | `/{tenant}/.well-known/openid-configuration`     | v1.0 discovery                       |
//! | `/{tenant}/discovery/v2.0/keys`, `/discovery/keys`| the RSA signing keys                |
//! | `/{tenant}/oauth2/v2.0/token`                    | client credentials                   |
//!
//! `{tenant}` is a tenant id, a domain registered with [`add_tenant_domain`], or
//! `organizations` / `common`, whose discovery documents carry the `{tenantid}` issuer
//! template. A loopback authority is no known cloud, so its v1.0 issuer is
//! `{authority}/{tenant}/` where the global cloud would write `https://sts.windows.net/{tenant}/`.
//!
//! [`add_tenant_domain`]: super::IdentityProvider::add_tenant_domain

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use http::StatusCode;
use serde_json::{Value, json};

use super::routes::{Endpoint, Route};

/// The multi-tenant path segments.
pub const ORGANIZATIONS: &str = "organizations";
pub const COMMON: &str = "common";

/// An access-token version: Entra issues the one the API's registration accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntraTokenVersion {
    V1,
    V2,
}

impl EntraTokenVersion {
    /// The `ver` claim.
    pub fn claim(self) -> &'static str {
        match self {
            Self::V1 => "1.0",
            Self::V2 => "2.0",
        }
    }
}

/// An API (resource) registered in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraApi {
    /// Application (client) id, a GUID: the `aud` of v2.0 tokens.
    pub app_id: String,
    /// App ID URIs (`identifierUris`); clients ask for `{uri}/.default`. v1.0 tokens carry the
    /// URI that was asked for as `aud`.
    pub identifier_uris: Vec<String>,
    /// The manifest's `accessTokenAcceptedVersion`: null or 1 give v1.0 tokens, 2 gives v2.0.
    pub access_token_accepted_version: EntraTokenVersion,
}

impl EntraApi {
    /// An API with the default App ID URI `api://{app_id}`.
    pub fn new(app_id: &str, access_token_accepted_version: EntraTokenVersion) -> Self {
        Self {
            app_id: app_id.to_owned(),
            identifier_uris: vec![format!("api://{app_id}")],
            access_token_accepted_version,
        }
    }

    /// Adds an App ID URI such as `api://orders`.
    pub fn with_identifier_uri(mut self, uri: &str) -> Self {
        self.identifier_uris.push(uri.to_owned());
        self
    }

    fn answers_to(&self, resource: &str) -> bool {
        resource.eq_ignore_ascii_case(&self.app_id)
            || self
                .identifier_uris
                .iter()
                .any(|uri| uri.trim_end_matches('/') == resource.trim_end_matches('/'))
    }
}

/// What a tenant path segment names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Tenant(String),
    Multi(&'static str),
}

/// The directories and APIs the authority knows.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub(crate) home: String,
    tenants: Vec<String>,
    domains: HashMap<String, String>,
    apis: Vec<EntraApi>,
}

impl Directory {
    pub(crate) fn new(home: &str) -> Self {
        Self {
            home: home.to_ascii_lowercase(),
            tenants: vec![home.to_ascii_lowercase()],
            ..Self::default()
        }
    }

    pub(crate) fn add_tenant(&mut self, tenant_id: &str) {
        let tenant = tenant_id.to_ascii_lowercase();
        if !self.tenants.contains(&tenant) {
            self.tenants.push(tenant);
        }
    }

    pub(crate) fn add_domain(&mut self, domain: &str, tenant_id: &str) {
        self.add_tenant(tenant_id);
        self.domains
            .insert(domain.to_ascii_lowercase(), tenant_id.to_ascii_lowercase());
    }

    pub(crate) fn register_api(&mut self, api: EntraApi) {
        self.apis.retain(|known| known.app_id != api.app_id);
        self.apis.push(api);
    }

    pub(crate) fn scope(&self, segment: &str) -> Option<Scope> {
        let lower = segment.to_ascii_lowercase();
        match lower.as_str() {
            ORGANIZATIONS => Some(Scope::Multi(ORGANIZATIONS)),
            COMMON => Some(Scope::Multi(COMMON)),
            _ if self.tenants.contains(&lower) => Some(Scope::Tenant(lower)),
            _ => self.domains.get(&lower).cloned().map(Scope::Tenant),
        }
    }

    fn api_for(&self, resource: &str) -> Option<&EntraApi> {
        self.apis.iter().find(|api| api.answers_to(resource))
    }
}

/// The endpoint an Entra path addresses.
pub(crate) fn resolve(path: &str) -> Option<Route> {
    let (segment, rest) = path.strip_prefix('/')?.split_once('/')?;
    if segment.is_empty() {
        return None;
    }
    let (endpoint, v1) = match rest {
        "v2.0/.well-known/openid-configuration" => (Endpoint::Discovery, false),
        ".well-known/openid-configuration" => (Endpoint::Discovery, true),
        "discovery/v2.0/keys" => (Endpoint::Jwks, false),
        "discovery/keys" => (Endpoint::Jwks, true),
        "oauth2/v2.0/token" => (Endpoint::Token, false),
        _ => return None,
    };
    Some(Route {
        endpoint,
        tenant: Some(segment.to_owned()),
        v1,
    })
}

/// The `iss` of a token of `version` from `tenant` under `authority`.
pub(crate) fn issuer(authority: &str, version: EntraTokenVersion, tenant: &str) -> String {
    match version {
        EntraTokenVersion::V1 => format!("{authority}/{tenant}/"),
        EntraTokenVersion::V2 => format!("{authority}/{tenant}/v2.0"),
    }
}

/// Entra's answer for a path naming a tenant it does not know.
pub(crate) fn unknown_tenant(segment: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({
            "error": "invalid_tenant",
            "error_description": format!("Tenant '{segment}' not found. Check to make sure you have the correct tenant ID."),
        }),
    )
}

/// The discovery document for a tenant segment.
pub(crate) fn discovery_document(authority: &str, segment: &str, scope: &Scope, v1: bool) -> Value {
    let tenant = match scope {
        Scope::Tenant(id) => id.as_str(),
        // The template multi-tenant applications substitute with the token's tid.
        Scope::Multi(_) => "{tenantid}",
    };
    if v1 {
        return json!({
            "issuer": issuer(authority, EntraTokenVersion::V1, tenant),
            "jwks_uri": format!("{authority}/common/discovery/keys"),
            "token_endpoint": format!("{authority}/{segment}/oauth2/token"),
            "authorization_endpoint": format!("{authority}/{segment}/oauth2/authorize"),
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "appid", "ver"],
        });
    }
    json!({
        "issuer": issuer(authority, EntraTokenVersion::V2, tenant),
        "jwks_uri": format!("{authority}/{segment}/discovery/v2.0/keys"),
        "token_endpoint": format!("{authority}/{segment}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{authority}/{segment}/oauth2/v2.0/authorize"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "azp", "azpacr", "roles", "scp", "ver"],
        "request_uri_parameter_supported": false,
        "tenant_region_scope": null,
    })
}

/// Entra publishes RSA keys only; the provider's other families stay out of its key set.
pub(crate) fn rsa_only(jwks: Value) -> Value {
    let keys: Vec<Value> = jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|key| key["kty"] == "RSA")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    json!({ "keys": keys })
}

/// An app-only access token as Entra shapes it for `client_id` in `tenant`: `appid`/`appidacr`
/// and `idp` in v1.0, `azp`/`azpacr` in v2.0; `oid` and `sub` name the client's service
/// principal in that tenant. `roles` and `scp` come from the caller.
pub(crate) fn access_token_claims(
    authority: &str,
    version: EntraTokenVersion,
    tenant: &str,
    client_id: &str,
    audience: &str,
    now: u64,
    lifetime_secs: u64,
) -> Value {
    let iss = issuer(authority, version, tenant);
    let service_principal = derived_guid(&[client_id, tenant]);
    let mut claims = json!({
        "aud": audience,
        "iss": iss,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_secs,
        "oid": service_principal,
        "sub": service_principal,
        "tid": tenant,
        "ver": version.claim(),
    });
    match version {
        EntraTokenVersion::V1 => {
            claims["appid"] = client_id.into();
            // 0: public client, 1: client secret, 2: certificate.
            claims["appidacr"] = "1".into();
            claims["idp"] = iss.into();
        }
        EntraTokenVersion::V2 => {
            claims["azp"] = client_id.into();
            claims["azpacr"] = "1".into();
        }
    }
    claims
}

/// What the token endpoint of `segment` issues for `resource` (from `scope`
/// `{resource}/.default`): the tenant, the token version and the audience. Errors are OAuth
/// 2.0 error codes and descriptions.
pub(crate) fn grant(
    directory: &Directory,
    segment: &str,
    resource: &str,
) -> Result<(String, EntraTokenVersion, String), (&'static str, String)> {
    let tenant = match directory.scope(segment) {
        Some(Scope::Tenant(id)) => id,
        Some(Scope::Multi(keyword)) => {
            return Err((
                "invalid_request",
                format!(
                    "the client credentials grant needs a tenant-specific endpoint, not /{keyword}; use /{{tenant}}/oauth2/v2.0/token"
                ),
            ));
        }
        None => return Err(("invalid_tenant", format!("Tenant '{segment}' not found."))),
    };
    let Some(api) = directory.api_for(resource) else {
        return Err((
            "invalid_resource",
            format!(
                "The resource principal named {resource} was not found in the tenant {tenant}."
            ),
        ));
    };
    let audience = match api.access_token_accepted_version {
        // v1.0 tokens carry the identifier the client asked for.
        EntraTokenVersion::V1 => resource.to_owned(),
        EntraTokenVersion::V2 => api.app_id.clone(),
    };
    Ok((tenant, api.access_token_accepted_version, audience))
}

/// A stable GUID-shaped id derived from `parts`, so a client's service principal keeps its
/// `oid` within a test run.
fn derived_guid(parts: &[&str]) -> String {
    let hash = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        parts.hash(&mut hasher);
        hasher.finish()
    };
    let (a, b) = (hash(1), hash(2));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "aaaaaaaa-0000-4000-8000-000000000001";

    #[test]
    fn paths_name_tenant_and_endpoint() {
        let route =
            resolve(&format!("/{HOME}/v2.0/.well-known/openid-configuration")).expect("discovery");
        assert_eq!(route.endpoint, Endpoint::Discovery);
        assert_eq!(route.tenant.as_deref(), Some(HOME));
        assert!(!route.v1);
        assert!(resolve("/common/discovery/keys").is_some_and(|r| r.v1));
        assert!(resolve("/organizations/oauth2/v2.0/token").is_some());
        assert_eq!(resolve("//v2.0/.well-known/openid-configuration"), None);
        assert_eq!(resolve("/.well-known/openid-configuration"), None);
    }

    #[test]
    fn token_version_follows_the_api_registration() {
        let mut directory = Directory::new(HOME);
        directory.add_domain("contoso.example", HOME);
        directory.register_api(
            EntraApi::new(
                "bbbbbbbb-0000-4000-8000-000000000002",
                EntraTokenVersion::V1,
            )
            .with_identifier_uri("api://orders"),
        );
        directory.register_api(EntraApi::new(
            "cccccccc-0000-4000-8000-000000000003",
            EntraTokenVersion::V2,
        ));
        assert_eq!(
            grant(&directory, "contoso.example", "api://orders"),
            Ok((
                HOME.to_owned(),
                EntraTokenVersion::V1,
                "api://orders".to_owned()
            ))
        );
        assert_eq!(
            grant(
                &directory,
                HOME,
                "api://cccccccc-0000-4000-8000-000000000003"
            ),
            Ok((
                HOME.to_owned(),
                EntraTokenVersion::V2,
                "cccccccc-0000-4000-8000-000000000003".to_owned()
            ))
        );
        assert_eq!(
            grant(&directory, COMMON, "api://orders").map_err(|e| e.0),
            Err("invalid_request")
        );
        assert_eq!(
            grant(&directory, HOME, "api://unknown").map_err(|e| e.0),
            Err("invalid_resource")
        );
        assert_eq!(
            grant(&directory, "elsewhere.example", "api://orders").map_err(|e| e.0),
            Err("invalid_tenant")
        );
    }

    #[test]
    fn derived_ids_are_stable_guids() {
        let a = derived_guid(&["client", HOME]);
        assert_eq!(a, derived_guid(&["client", HOME]));
        assert_ne!(a, derived_guid(&["client", "other"]));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
