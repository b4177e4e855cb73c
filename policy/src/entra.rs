//! Microsoft Entra ID, as APIM's `validate-azure-ad-token` sees it: the authority and the
//! issuers it derives for each token version and cloud, the tenant rule, and the checks an
//! Entra access token must pass besides signature, times and audience.
//!
//! Entra issues two access-token shapes, chosen by the *API's* app registration
//! (`accessTokenAcceptedVersion`), not by the endpoint the client used:
//!
//! | version | `iss`                                  | client id in | `ver` |
//! |---------|----------------------------------------|--------------|-------|
//! | v1.0    | `https://sts.windows.net/{tenant}/`    | `appid`      | `1.0` |
//! | v2.0    | `{authority}/{tenant}/v2.0`            | `azp`        | `2.0` |
//!
//! The v1.0 issuer host differs per national cloud; see [`KNOWN_CLOUDS`].

use std::fmt;

use serde_json::{Map, Value};

/// The authority of the global Microsoft Entra cloud, APIM's default.
pub const DEFAULT_AUTHENTICATION_ENDPOINT: &str = "https://login.microsoftonline.com";

/// A cloud whose v1.0 issuer does not follow from its authority host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownCloud {
    pub name: &'static str,
    /// Host of the authority (`authenticationEndpoint`).
    pub authority_host: &'static str,
    /// Root of v1.0 issuers: `{root}/{tenant}/`.
    pub v1_issuer_root: &'static str,
}

/// The clouds Microsoft documents, with the issuer root of their v1.0 tokens. v2.0 issuers are
/// `{authority}/{tenant}/v2.0` everywhere. Source: Microsoft identity platform, "National
/// clouds" and Microsoft's answer "What are the token issuers for the sovereign clouds"
/// (global and US Government share `sts.windows.net`; 21Vianet uses `sts.chinacloudapi.cn`).
/// Azure Germany closed in 2021 and is not listed.
pub const KNOWN_CLOUDS: &[KnownCloud] = &[
    KnownCloud {
        name: "Azure (global)",
        authority_host: "login.microsoftonline.com",
        v1_issuer_root: "https://sts.windows.net",
    },
    KnownCloud {
        name: "Azure Government",
        authority_host: "login.microsoftonline.us",
        v1_issuer_root: "https://sts.windows.net",
    },
    KnownCloud {
        name: "Azure operated by 21Vianet",
        authority_host: "login.partner.microsoftonline.cn",
        v1_issuer_root: "https://sts.chinacloudapi.cn",
    },
];

/// An access-token version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenVersion {
    V1,
    V2,
}

impl TokenVersion {
    pub const ALL: [TokenVersion; 2] = [TokenVersion::V1, TokenVersion::V2];

    /// The `ver` claim value.
    pub fn claim(self) -> &'static str {
        match self {
            Self::V1 => "1.0",
            Self::V2 => "2.0",
        }
    }

    /// `1.0` or `2.0`, as `tokenVersions` and the `ver` claim write them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "1.0" => Some(Self::V1),
            "2.0" => Some(Self::V2),
            _ => None,
        }
    }

    /// The claim carrying the client application's id.
    pub fn client_claim(self) -> &'static str {
        match self {
            Self::V1 => "appid",
            Self::V2 => "azp",
        }
    }
}

impl fmt::Display for TokenVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.claim())
    }
}

/// The authority tokens come from, normalised, with the issuers it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// `scheme://host[:port][/path]`, no trailing slash.
    pub endpoint: String,
    /// Root of v1.0 issuers, no trailing slash.
    pub v1_issuer_root: String,
    /// The known cloud the endpoint belongs to, if any.
    pub cloud: Option<&'static str>,
}

impl Authority {
    /// Parses `authenticationEndpoint` (default: the global cloud). https is required, except
    /// for loopback hosts, where a local identity provider speaks plain http.
    pub fn parse(endpoint: Option<&str>) -> Result<Self, String> {
        let text = endpoint.unwrap_or(DEFAULT_AUTHENTICATION_ENDPOINT).trim();
        let url = url::Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
        let Some(host) = url.host() else {
            return Err(format!("{text:?} has no host"));
        };
        let loopback = match &host {
            url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(format!(
                    "{text:?}: http is accepted only for loopback hosts (a local test identity provider); Microsoft Entra authorities use https"
                ));
            }
            other => return Err(format!("{text:?}: scheme {other} is not https")),
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(format!(
                "{text:?}: give the authority alone, like {DEFAULT_AUTHENTICATION_ENDPOINT}, without query, fragment or user"
            ));
        }
        let endpoint = url.as_str().trim_end_matches('/').to_owned();
        let host_name = url.host_str().unwrap_or_default();
        let cloud = KNOWN_CLOUDS.iter().find(|cloud| {
            url.port().is_none() && url.path() == "/" && host_name == cloud.authority_host
        });
        let v1_issuer_root =
            cloud.map_or_else(|| endpoint.clone(), |c| c.v1_issuer_root.to_owned());
        Ok(Self {
            endpoint,
            v1_issuer_root,
            cloud: cloud.map(|c| c.name),
        })
    }

    /// The OpenID Connect discovery document of a tenant (or `organizations`, `common`).
    pub fn discovery_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            self.endpoint
        )
    }

    /// The `iss` of a `version` token from `tenant`.
    pub fn issuer(&self, version: TokenVersion, tenant: &str) -> String {
        match version {
            TokenVersion::V1 => format!("{}/{tenant}/", self.v1_issuer_root),
            TokenVersion::V2 => format!("{}/{tenant}/v2.0", self.endpoint),
        }
    }

    /// The version and tenant an `iss` names, when it is one of this authority's issuers.
    pub fn classify_issuer<'i>(&self, iss: &'i str) -> Option<(TokenVersion, &'i str)> {
        let v2 = iss
            .strip_prefix(self.endpoint.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix("/v2.0"))
            .filter(|tenant| is_guid(tenant))
            .map(|tenant| (TokenVersion::V2, tenant));
        // Loopback and unknown authorities share one root for both versions, so the v2.0 form
        // is tried first: `{root}/{tenant}/v2.0` is never a v1.0 issuer.
        v2.or_else(|| {
            iss.strip_prefix(self.v1_issuer_root.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .and_then(|rest| rest.strip_suffix('/'))
                .filter(|tenant| is_guid(tenant))
                .map(|tenant| (TokenVersion::V1, tenant))
        })
    }
}

/// Which directories' tokens are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantRule {
    /// One directory, by its id (lower case).
    Single(String),
    /// One directory, by a verified domain such as `contoso.onmicrosoft.com` (lower case), as
    /// APIM's `tenant-id` allows. Tokens name their tenant by id: the id is the one the
    /// domain's discovery document names in its `issuer`.
    Domain(String),
    /// `organizations` or `common`: any directory whose id matches the token's issuer, limited
    /// to `allowed` (lower case) when that is not empty.
    Multi {
        keyword: String,
        allowed: Vec<String>,
    },
}

impl TenantRule {
    /// The path segment of the discovery and key URLs.
    pub fn path_segment(&self) -> &str {
        match self {
            Self::Single(id) | Self::Domain(id) => id,
            Self::Multi { keyword, .. } => keyword,
        }
    }

    /// How issuers are written in messages: the tenant id, or a placeholder.
    fn issuer_tenant(&self, resolved: Option<&str>) -> String {
        match (self, resolved) {
            (Self::Single(id), _) => id.clone(),
            (Self::Domain(_), Some(id)) => id.to_owned(),
            (Self::Domain(domain), None) => format!("{{id of {domain}}}"),
            (Self::Multi { .. }, _) => "{tenant}".to_owned(),
        }
    }
}

/// Parses `tenantId` and `allowedTenants`. Errors are `(field suffix, message)`.
pub fn parse_tenant(
    tenant_id: &str,
    allowed_tenants: &[String],
) -> Result<TenantRule, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let trimmed = tenant_id.trim();
    // APIM also takes the tenant as a URL, `https://contoso.onmicrosoft.com`.
    let lower = trimmed.to_ascii_lowercase();
    let lower = lower
        .strip_prefix("https://")
        .map_or(lower.as_str(), |host| host.trim_end_matches('/'))
        .to_owned();
    let rule = if lower == "organizations" || lower == "common" {
        let mut allowed = Vec::new();
        for (i, tenant) in allowed_tenants.iter().enumerate() {
            let tenant = tenant.trim().to_ascii_lowercase();
            if is_guid(&tenant) {
                if !allowed.contains(&tenant) {
                    allowed.push(tenant);
                }
            } else {
                errors.push((
                    format!("allowedTenants[{i}]"),
                    format!("{tenant:?} is not a directory (tenant) id; give the GUID"),
                ));
            }
        }
        Some(TenantRule::Multi {
            keyword: lower,
            allowed,
        })
    } else if is_guid(&lower) || is_domain(&lower) {
        if !allowed_tenants.is_empty() {
            errors.push((
                "allowedTenants".to_owned(),
                "applies only to multi-tenant policies (tenantId organizations or common); a single tenant is given by tenantId alone".to_owned(),
            ));
        }
        Some(if is_guid(&lower) {
            TenantRule::Single(lower)
        } else {
            TenantRule::Domain(lower)
        })
    } else if lower.is_empty() {
        errors.push((
            "tenantId".to_owned(),
            "must be the directory (tenant) id, organizations or common".to_owned(),
        ));
        None
    } else if lower == "consumers" {
        errors.push((
            "tenantId".to_owned(),
            "consumers (personal Microsoft accounts only) is not supported; use common".to_owned(),
        ));
        None
    } else {
        errors.push((
            "tenantId".to_owned(),
            format!(
                "{trimmed:?} is not a directory (tenant) id, a verified domain (contoso.onmicrosoft.com), organizations or common"
            ),
        ));
        None
    };
    match rule {
        Some(rule) if errors.is_empty() => Ok(rule),
        _ => Err(errors),
    }
}

/// The audiences a token may carry: each listed audience, each backend application id, and
/// for every application id its default App ID URI `api://{id}` (and the reverse), since v1.0
/// tokens carry the URI the client asked for and v2.0 tokens the bare id.
pub fn accepted_audiences(audiences: &[String], backend_application_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |value: String| {
        if !value.is_empty() && !out.contains(&value) {
            out.push(value);
        }
    };
    for audience in audiences {
        let audience = audience.trim();
        push(audience.to_owned());
        if let Some(id) = audience.strip_prefix("api://").filter(|id| is_guid(id)) {
            push(id.to_owned());
        } else if is_guid(audience) {
            push(format!("api://{audience}"));
        }
    }
    for id in backend_application_ids {
        let id = id.trim();
        push(id.to_owned());
        push(format!("api://{id}"));
    }
    out
}

/// The Entra part of a compiled policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraRules {
    pub authority: Authority,
    pub tenant: TenantRule,
    /// Accepted versions, at least one.
    pub versions: Vec<TokenVersion>,
    /// Accepted client application ids (lower case when GUIDs).
    pub client_application_ids: Vec<String>,
}

/// What the issuer checks learned about an accepted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraIdentity {
    pub version: TokenVersion,
    /// The directory the token comes from.
    pub tenant: String,
    /// The accepted `iss`.
    pub issuer: String,
}

/// Why an Entra check refused a token. `detail` is for the log and `check`: it may name the
/// issuer, tenant and client application, never other token contents. `hint` is a fixed phrase
/// safe for the client's `WWW-Authenticate` description: it names claims and versions, never
/// values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntraFailure {
    Issuer {
        detail: String,
        hint: Option<&'static str>,
    },
    ClientApplication {
        detail: String,
        hint: &'static str,
    },
}

impl EntraRules {
    /// `iss`, `ver` and `tid`: the token comes from this authority, in an accepted version,
    /// from an accepted tenant, and its `tid` agrees with its issuer. `discovery_issuer` is the
    /// `issuer` of the fetched discovery document, which names the tenant of a
    /// [`TenantRule::Domain`].
    pub fn check_issuer(
        &self,
        claims: &Map<String, Value>,
        discovery_issuer: Option<&str>,
    ) -> Result<EntraIdentity, EntraFailure> {
        let resolved = self.resolved_tenant(discovery_issuer);
        let issuer_failure =
            |detail: String, hint: Option<&'static str>| EntraFailure::Issuer { detail, hint };
        let Some(iss) = claims.get("iss").and_then(Value::as_str) else {
            return Err(issuer_failure(
                format!(
                    "iss is missing; expected {}",
                    self.expected_issuers(resolved.as_deref())
                ),
                None,
            ));
        };
        let Some((version, issuer_tenant)) = self.authority.classify_issuer(iss) else {
            return Err(issuer_failure(
                format!(
                    "iss {iss} is not a Microsoft Entra issuer of {}; expected {}",
                    self.authority.endpoint,
                    self.expected_issuers(resolved.as_deref())
                ),
                Some("the token is not from the expected Microsoft Entra authority"),
            ));
        };
        match claims.get("ver") {
            None => {}
            Some(Value::String(ver)) if ver == version.claim() => {}
            Some(other) => {
                return Err(issuer_failure(
                    format!(
                        "iss {iss} is a {version} issuer but ver is {other}; a Microsoft Entra token's ver matches its issuer"
                    ),
                    None,
                ));
            }
        }
        if !self.versions.contains(&version) {
            return Err(self.version_refused(version, iss, resolved.as_deref()));
        }
        let issuer_tenant = issuer_tenant.to_ascii_lowercase();
        let expected = match &self.tenant {
            TenantRule::Single(id) => Some(id.as_str()),
            TenantRule::Domain(_) => resolved.as_deref(),
            TenantRule::Multi { .. } => None,
        };
        if let TenantRule::Domain(domain) = &self.tenant
            && expected.is_none()
        {
            return Err(issuer_failure(
                format!(
                    "the tenant id of {domain} is not known: its discovery document names no {} issuer",
                    self.authority.endpoint
                ),
                None,
            ));
        }
        if let Some(expected) = expected
            && expected != issuer_tenant
        {
            let named = match &self.tenant {
                TenantRule::Domain(domain) => format!("{expected} ({domain})"),
                _ => expected.to_owned(),
            };
            return Err(issuer_failure(
                format!(
                    "token from tenant {issuer_tenant} (iss {iss}); this policy accepts tenant {named} only"
                ),
                Some("the token was issued by another tenant"),
            ));
        }
        if let TenantRule::Multi { keyword, allowed } = &self.tenant
            && !allowed.is_empty()
            && !allowed.contains(&issuer_tenant)
        {
            return Err(issuer_failure(
                format!(
                    "token from tenant {issuer_tenant} (iss {iss}), which is not in allowedTenants of this {keyword} policy"
                ),
                Some("the token was issued by a tenant that is not allowed"),
            ));
        }
        match claims.get("tid").and_then(Value::as_str) {
            Some(tid) if tid.eq_ignore_ascii_case(&issuer_tenant) => {}
            Some(tid) => {
                return Err(issuer_failure(
                    format!("tid {tid} does not match tenant {issuer_tenant} of iss {iss}"),
                    Some("the token's tenant does not match its issuer"),
                ));
            }
            None => {
                return Err(issuer_failure(
                    format!(
                        "tid is missing; Microsoft Entra access tokens name their tenant ({issuer_tenant} by iss)"
                    ),
                    None,
                ));
            }
        }
        Ok(EntraIdentity {
            version,
            tenant: issuer_tenant,
            issuer: iss.to_owned(),
        })
    }

    /// The client application (`appid` in v1.0 tokens, `azp` in v2.0) is one of
    /// `clientApplicationIds`. Returns the claim and its value.
    pub fn check_client(
        &self,
        claims: &Map<String, Value>,
        version: TokenVersion,
    ) -> Result<(&'static str, String), EntraFailure> {
        let claim = version.client_claim();
        let Some(value) = claims.get(claim).and_then(Value::as_str) else {
            let other = match version {
                TokenVersion::V1 => "azp",
                TokenVersion::V2 => "appid",
            };
            let note = if claims.contains_key(other) {
                format!(" (it has {other}, which {version} tokens do not use)")
            } else {
                String::new()
            };
            return Err(EntraFailure::ClientApplication {
                detail: format!("{version} token has no {claim} claim{note}"),
                hint: match version {
                    TokenVersion::V1 => "the v1.0 token names no client application (appid)",
                    TokenVersion::V2 => "the v2.0 token names no client application (azp)",
                },
            });
        };
        if self
            .client_application_ids
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(value))
        {
            Ok((claim, value.to_owned()))
        } else {
            Err(EntraFailure::ClientApplication {
                detail: format!("{claim} {value} is not in clientApplicationIds"),
                hint: match version {
                    TokenVersion::V1 => "the client application in appid is not allowed",
                    TokenVersion::V2 => "the client application in azp is not allowed",
                },
            })
        }
    }

    /// Added to an audience refusal: which form of audience each version carries.
    pub fn audience_advice(version: TokenVersion) -> &'static str {
        match version {
            TokenVersion::V1 => {
                "v1.0 tokens carry the App ID URI (or id) the client requested as aud; list it in audiences"
            }
            TokenVersion::V2 => {
                "v2.0 tokens carry the API's application (client) id as aud; list it in backendApplicationIds"
            }
        }
    }

    /// The directory id a domain policy stands for, from the discovery document's issuer.
    pub fn resolved_tenant(&self, discovery_issuer: Option<&str>) -> Option<String> {
        match &self.tenant {
            TenantRule::Domain(_) => discovery_issuer
                .and_then(|iss| self.authority.classify_issuer(iss))
                .map(|(_, tenant)| tenant.to_ascii_lowercase()),
            _ => None,
        }
    }

    fn version_refused(
        &self,
        got: TokenVersion,
        iss: &str,
        resolved: Option<&str>,
    ) -> EntraFailure {
        let tenant = self.tenant.issuer_tenant(resolved);
        let wanted: Vec<String> = self
            .versions
            .iter()
            .map(|v| format!("{v} tokens (iss {})", self.authority.issuer(*v, &tenant)))
            .collect();
        let advice = match got {
            TokenVersion::V1 => {
                "the API's app registration issues v1.0 tokens unless its manifest sets accessTokenAcceptedVersion: 2; change that, or add \"1.0\" to tokenVersions"
            }
            TokenVersion::V2 => {
                "the API's app registration sets accessTokenAcceptedVersion: 2; set it to 1 (or null), or add \"2.0\" to tokenVersions"
            }
        };
        EntraFailure::Issuer {
            detail: format!(
                "{got} token (iss {iss}) but this policy accepts only {}; {advice}",
                wanted.join(" or ")
            ),
            hint: Some(match got {
                TokenVersion::V1 => "a v1.0 token was presented where v2.0 tokens are required",
                TokenVersion::V2 => "a v2.0 token was presented where v1.0 tokens are required",
            }),
        }
    }

    /// The accepted issuers, for messages; `resolved` is a domain policy's tenant id.
    pub fn expected_issuers(&self, resolved: Option<&str>) -> String {
        let tenant = self.tenant.issuer_tenant(resolved);
        let mut list: Vec<String> = self
            .versions
            .iter()
            .rev()
            .map(|v| format!("{v} issuer {}", self.authority.issuer(*v, &tenant)))
            .collect();
        if let TenantRule::Multi { allowed, .. } = &self.tenant
            && !allowed.is_empty()
        {
            list.push(format!("{{tenant}} one of {}", allowed.join(", ")));
        }
        list.join(" or ")
    }
}

/// A DNS name with at least two labels, as verified domains are.
fn is_domain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').count() >= 2
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A directory or application id: a GUID in its 8-4-4-4-12 form.
pub fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const OTHER: &str = "0b1e3c0c-3f5a-4a8e-9d1c-111111111111";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn rules(endpoint: Option<&str>, tenant: &str, versions: &[TokenVersion]) -> EntraRules {
        EntraRules {
            authority: Authority::parse(endpoint).expect("authority"),
            tenant: parse_tenant(tenant, &[]).expect("tenant"),
            versions: versions.to_vec(),
            client_application_ids: vec![CLIENT.to_owned()],
        }
    }

    #[test]
    fn national_clouds_derive_their_issuers() {
        let cases = [
            (
                None,
                "https://sts.windows.net/T/",
                "https://login.microsoftonline.com/T/v2.0",
            ),
            (
                Some("https://login.microsoftonline.com/"),
                "https://sts.windows.net/T/",
                "https://login.microsoftonline.com/T/v2.0",
            ),
            (
                Some("https://login.microsoftonline.us"),
                "https://sts.windows.net/T/",
                "https://login.microsoftonline.us/T/v2.0",
            ),
            (
                Some("https://LOGIN.partner.microsoftonline.cn"),
                "https://sts.chinacloudapi.cn/T/",
                "https://login.partner.microsoftonline.cn/T/v2.0",
            ),
            // Unknown authorities, loopback included, issue v1.0 tokens under their own root.
            (
                Some("https://login.example.test"),
                "https://login.example.test/T/",
                "https://login.example.test/T/v2.0",
            ),
            (
                Some("http://127.0.0.1:8080"),
                "http://127.0.0.1:8080/T/",
                "http://127.0.0.1:8080/T/v2.0",
            ),
        ];
        for (endpoint, v1, v2) in cases {
            let authority = Authority::parse(endpoint).expect("valid endpoint");
            assert_eq!(authority.issuer(TokenVersion::V1, "T"), v1, "{endpoint:?}");
            assert_eq!(authority.issuer(TokenVersion::V2, "T"), v2, "{endpoint:?}");
        }
        let china = Authority::parse(Some("https://login.partner.microsoftonline.cn")).expect("cn");
        assert_eq!(china.cloud, Some("Azure operated by 21Vianet"));
        assert_eq!(
            china.discovery_url("organizations"),
            "https://login.partner.microsoftonline.cn/organizations/v2.0/.well-known/openid-configuration"
        );
        // A global-cloud v1.0 issuer is not a 21Vianet issuer.
        assert_eq!(
            china.classify_issuer(&format!("https://sts.windows.net/{TENANT}/")),
            None
        );
        assert_eq!(
            china.classify_issuer(&format!("https://sts.chinacloudapi.cn/{TENANT}/")),
            Some((TokenVersion::V1, TENANT))
        );
    }

    #[test]
    fn endpoints_need_https_except_on_loopback() {
        for ok in [
            "https://login.microsoftonline.us",
            "http://127.0.0.1:9400",
            "http://localhost:9400",
            "http://[::1]:9400",
        ] {
            assert!(Authority::parse(Some(ok)).is_ok(), "{ok}");
        }
        for (bad, message) in [
            (
                "http://login.microsoftonline.com",
                "only for loopback hosts",
            ),
            ("http://10.0.0.1", "only for loopback hosts"),
            ("ftp://login.microsoftonline.com", "scheme ftp is not https"),
            ("login.microsoftonline.com", "is not a URL"),
            ("https://login.microsoftonline.com/?x=1", "without query"),
        ] {
            let err = Authority::parse(Some(bad)).expect_err(bad);
            assert!(err.contains(message), "{bad}: {err}");
        }
    }

    #[test]
    fn issuers_are_classified_by_version_and_tenant() {
        let authority = Authority::parse(None).expect("default");
        assert_eq!(
            authority.classify_issuer(&format!("https://login.microsoftonline.com/{TENANT}/v2.0")),
            Some((TokenVersion::V2, TENANT))
        );
        assert_eq!(
            authority.classify_issuer(&format!("https://sts.windows.net/{TENANT}/")),
            Some((TokenVersion::V1, TENANT))
        );
        for foreign in [
            format!("https://sts.windows.net/{TENANT}"),
            format!("https://login.microsoftonline.com/{TENANT}/"),
            "https://login.microsoftonline.com/organizations/v2.0".to_owned(),
            format!("https://login.microsoftonline.com.evil.test/{TENANT}/v2.0"),
            format!("https://evil.test/{TENANT}/v2.0"),
        ] {
            assert_eq!(authority.classify_issuer(&foreign), None, "{foreign}");
        }
        // Loopback: one root, both forms.
        let local = Authority::parse(Some("http://127.0.0.1:1")).expect("loopback");
        assert_eq!(
            local.classify_issuer(&format!("http://127.0.0.1:1/{TENANT}/v2.0")),
            Some((TokenVersion::V2, TENANT))
        );
        assert_eq!(
            local.classify_issuer(&format!("http://127.0.0.1:1/{TENANT}/")),
            Some((TokenVersion::V1, TENANT))
        );
    }

    #[test]
    fn tenants_parse_with_clear_errors() {
        assert_eq!(
            parse_tenant(&TENANT.to_uppercase(), &[]),
            Ok(TenantRule::Single(TENANT.to_owned()))
        );
        assert_eq!(
            parse_tenant("Organizations", &[TENANT.to_owned()]),
            Ok(TenantRule::Multi {
                keyword: "organizations".into(),
                allowed: vec![TENANT.to_owned()]
            })
        );
        assert_eq!(
            parse_tenant("Contoso.onmicrosoft.com", &[]),
            Ok(TenantRule::Domain("contoso.onmicrosoft.com".into()))
        );
        assert_eq!(
            parse_tenant("https://contoso.onmicrosoft.com/", &[]),
            Ok(TenantRule::Domain("contoso.onmicrosoft.com".into()))
        );
        let err = parse_tenant("contoso", &[]).expect_err("no domain");
        assert!(
            err[0].1.contains("is not a directory (tenant) id"),
            "{err:?}"
        );
        let err = parse_tenant(TENANT, &[OTHER.to_owned()]).expect_err("allowed on single");
        assert_eq!(err[0].0, "allowedTenants");
        let err = parse_tenant("common", &["contoso".to_owned()]).expect_err("bad allowed");
        assert_eq!(err[0].0, "allowedTenants[0]");
        assert!(parse_tenant("consumers", &[]).is_err());
        assert!(parse_tenant("", &[]).is_err());
    }

    #[test]
    fn audiences_accept_both_forms_of_an_application_id() {
        let accepted = accepted_audiences(
            &[
                format!("api://{CLIENT}"),
                "https://orders.example.com".to_owned(),
                OTHER.to_owned(),
            ],
            &[TENANT.to_owned()],
        );
        for expected in [
            format!("api://{CLIENT}"),
            CLIENT.to_owned(),
            "https://orders.example.com".to_owned(),
            OTHER.to_owned(),
            format!("api://{OTHER}"),
            TENANT.to_owned(),
            format!("api://{TENANT}"),
        ] {
            assert!(accepted.contains(&expected), "{expected} in {accepted:?}");
        }
        // A named App ID URI has no bare form: the v2.0 aud is the GUID, which the policy names.
        let named = accepted_audiences(&["api://orders".to_owned()], &[]);
        assert_eq!(named, vec!["api://orders".to_owned()]);
    }

    #[test]
    fn a_version_mix_up_names_both_versions() {
        let v2_only = rules(None, TENANT, &[TokenVersion::V2]);
        let v1_token = claims(json!({
            "iss": format!("https://sts.windows.net/{TENANT}/"), "ver": "1.0", "tid": TENANT,
        }));
        let Err(EntraFailure::Issuer { detail, hint }) = v2_only.check_issuer(&v1_token, None)
        else {
            panic!("v1 token accepted by a v2-only policy");
        };
        assert!(detail.starts_with("v1.0 token"), "{detail}");
        assert!(detail.contains("accepts only v2.0 tokens"), "{detail}");
        assert!(detail.contains("accessTokenAcceptedVersion"), "{detail}");
        assert_eq!(
            hint,
            Some("a v1.0 token was presented where v2.0 tokens are required")
        );

        let v1_only = rules(None, TENANT, &[TokenVersion::V1]);
        let v2_token = claims(json!({
            "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "ver": "2.0", "tid": TENANT,
        }));
        let Err(EntraFailure::Issuer { detail, .. }) = v1_only.check_issuer(&v2_token, None) else {
            panic!("v2 token accepted by a v1-only policy");
        };
        assert!(
            detail.contains("v2.0 token") && detail.contains("accepts only v1.0 tokens"),
            "{detail}"
        );
        let both = rules(None, TENANT, &TokenVersion::ALL);
        assert_eq!(
            both.check_issuer(&v2_token, None).map(|id| id.version),
            Ok(TokenVersion::V2)
        );
        assert_eq!(
            both.check_issuer(&v1_token, None).map(|id| id.version),
            Ok(TokenVersion::V1)
        );
    }

    #[test]
    fn tenant_and_tid_must_agree() {
        let single = rules(None, TENANT, &TokenVersion::ALL);
        let from = |tenant: &str, tid: Option<&str>| {
            let mut c = json!({
                "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"), "ver": "2.0",
            });
            if let Some(tid) = tid {
                c["tid"] = tid.into();
            }
            claims(c)
        };
        let issuer_detail = |result: Result<EntraIdentity, EntraFailure>| match result {
            Err(EntraFailure::Issuer { detail, .. }) => detail,
            other => panic!("expected an issuer failure, got {other:?}"),
        };
        let detail = issuer_detail(single.check_issuer(&from(OTHER, Some(OTHER)), None));
        assert!(
            detail.contains(&format!("token from tenant {OTHER}"))
                && detail.contains(&format!("accepts tenant {TENANT} only")),
            "{detail}"
        );
        let detail = issuer_detail(single.check_issuer(&from(TENANT, Some(OTHER)), None));
        assert!(
            detail.starts_with(&format!("tid {OTHER} does not match")),
            "{detail}"
        );
        let detail = issuer_detail(single.check_issuer(&from(TENANT, None), None));
        assert!(detail.starts_with("tid is missing"), "{detail}");

        let multi = rules(None, "organizations", &TokenVersion::ALL);
        assert_eq!(
            multi
                .check_issuer(&from(OTHER, Some(OTHER)), None)
                .map(|id| id.tenant),
            Ok(OTHER.to_owned())
        );
        let detail = issuer_detail(multi.check_issuer(&from(OTHER, Some(TENANT)), None));
        assert!(detail.contains("does not match"), "{detail}");
        let restricted = EntraRules {
            tenant: parse_tenant("common", &[TENANT.to_owned()]).expect("tenant"),
            ..multi
        };
        let detail = issuer_detail(restricted.check_issuer(&from(OTHER, Some(OTHER)), None));
        assert!(detail.contains("not in allowedTenants"), "{detail}");
        assert!(
            restricted
                .check_issuer(&from(TENANT, Some(TENANT)), None)
                .is_ok()
        );
    }

    #[test]
    fn a_domain_tenant_is_the_id_its_discovery_document_names() {
        let rules = rules(None, "contoso.onmicrosoft.com", &TokenVersion::ALL);
        let discovery = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
        assert_eq!(
            rules.resolved_tenant(Some(&discovery)),
            Some(TENANT.to_owned())
        );
        let token = |tenant: &str| {
            claims(json!({
                "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"), "ver": "2.0", "tid": tenant,
            }))
        };
        assert!(rules.check_issuer(&token(TENANT), Some(&discovery)).is_ok());
        assert!(matches!(
            rules.check_issuer(&token(OTHER), Some(&discovery)),
            Err(EntraFailure::Issuer { detail, .. })
                if detail.contains(&format!("accepts tenant {TENANT} (contoso.onmicrosoft.com) only"))
        ));
        // Without the document's word, no tenant passes.
        assert!(matches!(
            rules.check_issuer(&token(TENANT), None),
            Err(EntraFailure::Issuer { detail, .. }) if detail.contains("tenant id of contoso.onmicrosoft.com is not known")
        ));
        assert_eq!(
            rules.expected_issuers(None),
            "v2.0 issuer https://login.microsoftonline.com/{id of contoso.onmicrosoft.com}/v2.0 or v1.0 issuer https://sts.windows.net/{id of contoso.onmicrosoft.com}/"
        );
    }

    #[test]
    fn ver_must_match_the_issuer_form() {
        let both = rules(None, TENANT, &TokenVersion::ALL);
        let odd = claims(json!({
            "iss": format!("https://sts.windows.net/{TENANT}/"), "ver": "2.0", "tid": TENANT,
        }));
        assert!(matches!(
            both.check_issuer(&odd, None),
            Err(EntraFailure::Issuer { detail, .. }) if detail.contains("but ver is \"2.0\"")
        ));
    }

    #[test]
    fn client_application_comes_from_appid_or_azp() {
        let both = rules(None, TENANT, &TokenVersion::ALL);
        let v1 = claims(json!({ "appid": CLIENT.to_uppercase() }));
        assert_eq!(
            both.check_client(&v1, TokenVersion::V1),
            Ok(("appid", CLIENT.to_uppercase()))
        );
        // A v2.0 token is judged by azp alone.
        assert_eq!(
            both.check_client(&v1, TokenVersion::V2),
            Err(EntraFailure::ClientApplication {
                detail: "v2.0 token has no azp claim (it has appid, which v2.0 tokens do not use)"
                    .into(),
                hint: "the v2.0 token names no client application (azp)",
            })
        );
        let stranger = claims(json!({ "azp": OTHER }));
        assert_eq!(
            both.check_client(&stranger, TokenVersion::V2),
            Err(EntraFailure::ClientApplication {
                detail: format!("azp {OTHER} is not in clientApplicationIds"),
                hint: "the client application in azp is not allowed",
            })
        );
    }

    #[test]
    fn guids() {
        assert!(is_guid(TENANT));
        assert!(is_guid(&TENANT.to_uppercase()));
        assert!(!is_guid("72f988bf86f141af91ab2d7cd011db47"));
        assert!(!is_guid("72f988bf-86f1-41af-91ab-2d7cd011db4g"));
        assert!(!is_guid("organizations"));
    }
}
