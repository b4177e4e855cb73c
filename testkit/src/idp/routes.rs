//! Where each endpoint lives and what the discovery document says. A personality decides both:
//! the generic provider serves fixed paths, the Entra personality tenant-scoped ones (see
//! [`super::entra`]).

use serde_json::{Value, json};

use super::entra;
use super::keys::{KeyFamily, alg_name};

/// The endpoints the provider serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Discovery,
    Jwks,
    Token,
}

/// A request path resolved: the endpoint, and for tenant-scoped layouts the tenant segment of
/// the path and whether it is a v1.0 (unversioned) path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) endpoint: Endpoint,
    pub(crate) tenant: Option<String>,
    pub(crate) v1: bool,
}

impl Route {
    fn plain(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            tenant: None,
            v1: false,
        }
    }
}

/// The URL layout and token shapes of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Personality {
    /// A plain OIDC provider: issuer is the base URL, endpoints at fixed paths under it.
    Generic,
    /// Microsoft Entra ID: `/{tenant}/v2.0/.well-known/openid-configuration`,
    /// `/{tenant}/discovery/v2.0/keys`, `/{tenant}/oauth2/v2.0/token`.
    Entra,
}

impl Personality {
    /// The endpoint a request path addresses, if any.
    pub(crate) fn resolve(self, path: &str) -> Option<Route> {
        match self {
            Personality::Generic => match path {
                "/.well-known/openid-configuration" => Some(Route::plain(Endpoint::Discovery)),
                "/keys" => Some(Route::plain(Endpoint::Jwks)),
                "/token" => Some(Route::plain(Endpoint::Token)),
                _ => None,
            },
            Personality::Entra => entra::resolve(path),
        }
    }

    /// The generic issuer for a server reachable at `base` (`http://127.0.0.1:port`, no
    /// trailing slash).
    pub(crate) fn generic_issuer(base: &str) -> String {
        base.to_owned()
    }

    /// The absolute URL of a generic endpoint.
    pub(crate) fn generic_url(base: &str, endpoint: Endpoint) -> String {
        match endpoint {
            Endpoint::Discovery => format!("{base}/.well-known/openid-configuration"),
            Endpoint::Jwks => format!("{base}/keys"),
            Endpoint::Token => format!("{base}/token"),
        }
    }

    /// The generic OpenID Provider Metadata document (OpenID Connect Discovery 1.0, section 3).
    pub(crate) fn generic_discovery_document(base: &str) -> Value {
        let issuer = Self::generic_issuer(base);
        let algs: Vec<String> = KeyFamily::ALL
            .iter()
            .filter(|f| f.is_public())
            .flat_map(|f| f.algorithms())
            .map(|a| alg_name(*a))
            .collect();
        json!({
            "issuer": issuer,
            "jwks_uri": Self::generic_url(base, Endpoint::Jwks),
            "token_endpoint": Self::generic_url(base, Endpoint::Token),
            // Required by the discovery spec; the provider has no interactive login, so
            // nothing answers there.
            "authorization_endpoint": format!("{issuer}/authorize"),
            "response_types_supported": ["code", "id_token", "token id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["openid"],
            "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "azp", "client_id"],
        })
    }

    /// Claims of a generic access token granted to `client_id` for `audience`.
    pub(crate) fn generic_access_token_claims(
        issuer: &str,
        client_id: &str,
        audience: &str,
        now: u64,
        lifetime_secs: u64,
    ) -> Value {
        json!({
            "iss": issuer,
            "aud": audience,
            "sub": client_id,
            "azp": client_id,
            "client_id": client_id,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_secs,
        })
    }
}
