//! Where each endpoint lives and what the discovery document says. A personality decides both, so
//! another provider layout (tenant-scoped paths, say) is one more variant here rather than a new
//! server.

use serde_json::{Value, json};

use super::keys::{KeyFamily, alg_name};

/// The endpoints the provider serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Discovery,
    Jwks,
    Token,
}

/// The URL layout and token shapes of the provider.
#[derive(Debug, Clone)]
pub(crate) enum Personality {
    /// A plain OIDC provider: issuer is the base URL, endpoints at fixed paths under it.
    Generic,
}

impl Personality {
    /// The endpoint a request path addresses, if any.
    pub(crate) fn resolve(&self, path: &str) -> Option<Endpoint> {
        match self {
            Personality::Generic => match path {
                "/.well-known/openid-configuration" => Some(Endpoint::Discovery),
                "/keys" => Some(Endpoint::Jwks),
                "/token" => Some(Endpoint::Token),
                _ => None,
            },
        }
    }

    /// The issuer for a server reachable at `base` (`http://127.0.0.1:port`, no trailing slash).
    pub(crate) fn issuer(&self, base: &str) -> String {
        match self {
            Personality::Generic => base.to_owned(),
        }
    }

    /// The absolute URL of an endpoint.
    pub(crate) fn url(&self, base: &str, endpoint: Endpoint) -> String {
        match self {
            Personality::Generic => match endpoint {
                Endpoint::Discovery => format!("{base}/.well-known/openid-configuration"),
                Endpoint::Jwks => format!("{base}/keys"),
                Endpoint::Token => format!("{base}/token"),
            },
        }
    }

    /// The OpenID Provider Metadata document (OpenID Connect Discovery 1.0, section 3).
    pub(crate) fn discovery_document(&self, base: &str) -> Value {
        let issuer = self.issuer(base);
        let algs: Vec<String> = KeyFamily::ALL
            .iter()
            .filter(|f| f.is_public())
            .flat_map(|f| f.algorithms())
            .map(|a| alg_name(*a))
            .collect();
        json!({
            "issuer": issuer,
            "jwks_uri": self.url(base, Endpoint::Jwks),
            "token_endpoint": self.url(base, Endpoint::Token),
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

    /// Claims of an access token granted to `client_id` for `audience` by the token endpoint.
    pub(crate) fn access_token_claims(
        &self,
        issuer: &str,
        client_id: &str,
        audience: &str,
        now: u64,
        lifetime_secs: u64,
    ) -> Value {
        match self {
            Personality::Generic => json!({
                "iss": issuer,
                "aud": audience,
                "sub": client_id,
                "azp": client_id,
                "client_id": client_id,
                "iat": now,
                "nbf": now,
                "exp": now + lifetime_secs,
            }),
        }
    }
}
