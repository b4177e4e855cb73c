//! One APIM token policy element (`validate-jwt` or `validate-azure-ad-token`) into the parts of
//! a TokenPolicy spec, following docs/apim-migration.md element by element. Whatever has no
//! equivalent goes to the report with what to do about it; nothing is dropped silently.

use std::time::Duration;

use roxmltree::Node;
use tokengate_policy::spec::{
    ClaimMatch, DEFAULT_TOKEN_HEADER, FailedValidation, HumanDuration, KeySelection, OpenIdConfig,
    RequiredClaim, SigningKey, TokenSource, ValidateAzureAdToken, ValidateJwt,
};

use crate::report::{Kind, Report};
use crate::values::{NamedValues, Value, one_line};

pub const VALIDATE_JWT: &str = "validate-jwt";
pub const VALIDATE_AZURE_AD_TOKEN: &str = "validate-azure-ad-token";

/// The parts of a spec one APIM token policy fills; the selector and metadata come from the
/// command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Converted {
    pub token: TokenSource,
    pub validate_jwt: Option<ValidateJwt>,
    pub validate_azure_ad_token: Option<ValidateAzureAdToken>,
    pub failed_validation: FailedValidation,
}

/// The path of an element in its document, XPath-like: `policies/inbound/validate-jwt[2]`, with
/// an index only where same-named siblings make one necessary.
pub fn element_path(node: Node<'_, '_>) -> String {
    let mut segments = Vec::new();
    let mut current = Some(node);
    while let Some(element) = current.filter(|n| n.is_element()) {
        let name = element.tag_name().name();
        if name == crate::import::FRAGMENT_ROOT && element.parent_element().is_none() {
            break;
        }
        let same = |n: &Node<'_, '_>| n.is_element() && n.tag_name().name() == name;
        let before = element.prev_siblings().skip(1).filter(same).count();
        let after = element.next_siblings().skip(1).filter(same).count();
        if before + after > 0 {
            segments.push(format!("{name}[{}]", before + 1));
        } else {
            segments.push(name.to_owned());
        }
        current = element.parent();
    }
    segments.reverse();
    segments.join("/")
}

fn attribute_path(node: Node<'_, '_>, attribute: &str) -> String {
    format!("{}/@{attribute}", element_path(node))
}

/// A value as the TokenPolicy receives it.
enum Resolved {
    Text(String),
    /// A policy expression, on one line.
    Expression(String),
}

/// Converts one policy element, reporting what it cannot carry over.
pub struct Converter<'a> {
    pub values: &'a NamedValues,
    pub report: &'a mut Report,
}

impl Converter<'_> {
    /// `validate-jwt` or `validate-azure-ad-token`; any other element is the caller's mistake.
    pub fn convert(&mut self, element: Node<'_, '_>) -> Converted {
        match element.tag_name().name() {
            VALIDATE_AZURE_AD_TOKEN => self.validate_azure_ad_token(element),
            _ => self.validate_jwt(element),
        }
    }

    fn resolve(&mut self, path: &str, raw: &str) -> Resolved {
        match self.values.resolve(raw) {
            Value::Literal { text, unset } => {
                for name in unset {
                    self.report.push(
                        Kind::Placeholder,
                        path,
                        format!(
                            "named value {{{{{name}}}}} was not given: it stays in the output as written; give it with --set {name}=VALUE, or edit the output"
                        ),
                    );
                }
                Resolved::Text(text)
            }
            Value::Expression(expression) => Resolved::Expression(one_line(&expression)),
        }
    }

    /// A string field: an expression becomes a placeholder that no token or request matches
    /// (so the policy fails closed until it is edited), and is reported.
    fn string(&mut self, path: &str, raw: &str, advice: &str) -> String {
        match self.resolve(path, raw) {
            Resolved::Text(text) => text.trim().to_owned(),
            Resolved::Expression(expression) => {
                self.report.push(
                    Kind::Expression,
                    path,
                    format!(
                        "{expression} is evaluated per request in APIM; written as the placeholder \"{}\", which nothing matches: {advice}",
                        expression_placeholder(&expression)
                    ),
                );
                expression_placeholder(&expression)
            }
        }
    }

    /// A typed field: an expression leaves the field at its default (named in `default`).
    fn typed(&mut self, path: &str, raw: &str, default: &str) -> Option<String> {
        match self.resolve(path, raw) {
            Resolved::Text(text) => Some(text.trim().to_owned()),
            Resolved::Expression(expression) => {
                self.expression_left_out(path, &expression, default);
                None
            }
        }
    }

    fn expression_left_out(&mut self, path: &str, expression: &str, default: &str) {
        self.report.push(
            Kind::Expression,
            path,
            format!(
                "{expression} is evaluated per request in APIM; a TokenPolicy holds fixed values, so {default}: set the value the expression yields"
            ),
        );
    }

    fn boolean(&mut self, path: &str, raw: &str, default: bool) -> bool {
        let Some(text) = self.typed(path, raw, &format!("the default ({default}) is written"))
        else {
            return default;
        };
        match text.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                self.report.push(
                    Kind::NotCarriedOver,
                    path,
                    format!("{text:?} is not true or false; the default ({default}) is written"),
                );
                default
            }
        }
    }

    fn unknown_attribute(&mut self, element: Node<'_, '_>, name: &str) {
        self.report.push(
            Kind::NotCarriedOver,
            attribute_path(element, name),
            format!(
                "not an attribute of {} that tokengate knows; left out: check what it does in APIM and whether a TokenPolicy field covers it",
                element.tag_name().name()
            ),
        );
    }

    fn unknown_element(&mut self, element: Node<'_, '_>) {
        self.report.push(
            Kind::NotCarriedOver,
            element_path(element),
            format!(
                "not an element of {} that tokengate knows; left out: check what it does in APIM and whether a TokenPolicy field covers it",
                element
                    .parent_element()
                    .map(|p| p.tag_name().name())
                    .unwrap_or_default()
            ),
        );
    }

    /// `header-name`, `query-parameter-name`, `token-value`, `failed-validation-*` and
    /// `output-token-variable-name`, common to both policies. Returns whether the attribute was
    /// one of them.
    fn common_attribute(
        &mut self,
        element: Node<'_, '_>,
        name: &str,
        raw: &str,
        out: &mut Converted,
    ) -> bool {
        let path = attribute_path(element, name);
        match name {
            "header-name" => {
                out.token.header = self.string(
                    &path,
                    raw,
                    "set spec.token.header to the header your clients send the token in",
                );
            }
            "query-parameter-name" => {
                out.token.query_parameter = Some(self.string(
                    &path,
                    raw,
                    "set spec.token.queryParameter to the parameter your clients send the token in",
                ));
            }
            "token-value" => self.report.push(
                Kind::NotCarriedOver,
                path,
                "the token comes from a value APIM computes; the sidecar reads the token from the request itself: set spec.token (header, scheme, queryParameter or cookie) to where your clients send it",
            ),
            "failed-validation-httpcode" => {
                if let Some(text) = self.typed(&path, raw, "the default (401) is written") {
                    match text.parse::<u16>() {
                        Ok(code) if (400..=599).contains(&code) => {
                            out.failed_validation.http_code = code;
                        }
                        _ => self.report.push(
                            Kind::NotCarriedOver,
                            path,
                            format!(
                                "{text:?} is not an HTTP error status (400 to 599); the default (401) is written"
                            ),
                        ),
                    }
                }
            }
            "failed-validation-error-message" => {
                if let Some(text) = self.typed(&path, raw, "the default message is written") {
                    out.failed_validation.message = text;
                }
            }
            "output-token-variable-name" => self.report.push(
                Kind::NotCarriedOver,
                path,
                format!(
                    "no later policy reads a token variable ({:?}) behind the sidecar; if the application needs claims of the token, pass them as headers with spec.forwarding.claimsToHeaders (or keep spec.forwarding.forwardToken: true, the default, and read the token)",
                    raw.trim()
                ),
            ),
            _ => return false,
        }
        true
    }

    fn validate_jwt(&mut self, element: Node<'_, '_>) -> Converted {
        let mut out = Converted::default();
        let mut jwt = ValidateJwt {
            openid_configs: Vec::new(),
            jwks_uris: Vec::new(),
            issuer_signing_keys: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: Vec::new(),
            required_claims: Vec::new(),
            require_expiration_time: true,
            require_signed_tokens: true,
            clock_skew: HumanDuration::default(),
            key_selection: KeySelection::default(),
        };
        let mut scheme: Option<(String, String)> = None;
        let mut header_given = false;
        let mut query_given = false;
        for attribute in element.attributes() {
            let (name, raw) = (attribute.name(), attribute.value());
            header_given |= name == "header-name";
            query_given |= name == "query-parameter-name";
            if self.common_attribute(element, name, raw, &mut out) {
                continue;
            }
            let path = attribute_path(element, name);
            match name {
                "require-expiration-time" => {
                    jwt.require_expiration_time = self.boolean(&path, raw, true);
                }
                "require-signed-tokens" => {
                    jwt.require_signed_tokens = self.boolean(&path, raw, true);
                    if !jwt.require_signed_tokens {
                        self.report.push(
                            Kind::NotCarriedOver,
                            path,
                            "written as requireSignedTokens: false, but the sidecar still refuses unsigned tokens unless validateJwt.algorithms also lists none: add algorithms: [none, <the algorithms your issuer signs with>] if unsigned tokens must pass",
                        );
                    }
                }
                "require-scheme" => {
                    let value = self.string(
                        &path,
                        raw,
                        "set spec.token.scheme to the scheme your clients send",
                    );
                    scheme = Some((path, value));
                }
                "clock-skew" => {
                    if let Some(text) = self.typed(&path, raw, "no clock skew (0s) is written") {
                        match parse_clock_skew(&text) {
                            Some(skew) => jwt.clock_skew = HumanDuration(skew),
                            None => self.report.push(
                                Kind::NotCarriedOver,
                                path,
                                format!(
                                    "{text:?} is not a number of seconds; no clock skew (0s) is written: set validateJwt.clockSkew (30s, 2m)"
                                ),
                            ),
                        }
                    }
                }
                _ => self.unknown_attribute(element, name),
            }
        }
        if let Some((path, value)) = scheme {
            if out.token.header.eq_ignore_ascii_case(DEFAULT_TOKEN_HEADER) {
                out.token.scheme = Some(value);
            } else {
                // APIM documents that a custom header carries the bare token and the scheme is
                // ignored there; the sidecar would enforce it, so it is left out.
                self.report.push(
                    Kind::Note,
                    path,
                    format!(
                        "APIM ignores require-scheme on a header other than Authorization, so it is left out and the sidecar reads the whole {} header as the token, as APIM does",
                        out.token.header
                    ),
                );
            }
        }
        if query_given && !header_given {
            self.report.push(
                Kind::Note,
                attribute_path(element, "query-parameter-name"),
                "the sidecar reads the Authorization header (Bearer) first and the query parameter when the header is absent; set spec.token.header to another header name if Authorization must not carry tokens for this application",
            );
        }

        for child in element.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "openid-config" => self.openid_config(child, &mut jwt),
                "issuer-signing-keys" => self.issuer_signing_keys(child, &mut jwt),
                "decryption-keys" => self.decryption_keys(child),
                "audiences" => jwt.audiences.extend(self.list(
                    child,
                    "audience",
                    "write the audience your clients' tokens carry in aud",
                )),
                "issuers" => jwt.issuers.extend(self.list(
                    child,
                    "issuer",
                    "write the issuer your clients' tokens carry in iss",
                )),
                "required-claims" => jwt.required_claims.extend(self.required_claims(child)),
                _ => self.unknown_element(child),
            }
        }

        let unnamed = jwt
            .issuer_signing_keys
            .iter()
            .filter(|key| key.id.is_none())
            .count();
        if unnamed > 1 {
            // APIM tries every key on a token without a kid; ByKid would refuse such a policy.
            jwt.key_selection = KeySelection::TryAll;
            self.report.push(
                Kind::Note,
                format!("{}/issuer-signing-keys", element_path(element)),
                format!(
                    "{unnamed} keys have no id: written with keySelection: TryAll, so a token without a kid is checked against each key that fits, as APIM does (at most 4); give each key an id (its kid) and drop keySelection to check one key per token"
                ),
            );
        }
        out.validate_jwt = Some(jwt);
        out
    }

    fn openid_config(&mut self, element: Node<'_, '_>, jwt: &mut ValidateJwt) {
        let mut url = None;
        for attribute in element.attributes() {
            let path = attribute_path(element, attribute.name());
            match attribute.name() {
                "url" => {
                    url = Some(self.string(
                        &path,
                        attribute.value(),
                        "set validateJwt.openidConfigs[].url to the discovery document's URL",
                    ));
                }
                "validate-connectivity" => self.report.push(
                    Kind::Note,
                    path,
                    "APIM's check of the endpoint when the policy is saved has no counterpart: the operator reports a key source it cannot reach on the TokenPolicy's status (condition KeysResolved)",
                ),
                other => self.unknown_attribute(element, other),
            }
        }
        match url {
            Some(url) => jwt.openid_configs.push(OpenIdConfig { url }),
            None => self.report.push(
                Kind::NotCarriedOver,
                element_path(element),
                "has no url attribute; left out",
            ),
        }
    }

    fn issuer_signing_keys(&mut self, element: Node<'_, '_>, jwt: &mut ValidateJwt) {
        for child in element.children().filter(Node::is_element) {
            if child.tag_name().name() != "key" {
                self.unknown_element(child);
                continue;
            }
            if let Some(key) = self.signing_key(child) {
                jwt.issuer_signing_keys.push(key);
            }
        }
    }

    /// `<key>`: base64 text (symmetric), `n` + `e` (RSA), `certificate-id` (a certificate
    /// uploaded to APIM, which the cluster cannot see), and `id` (the token's `kid`).
    fn signing_key(&mut self, element: Node<'_, '_>) -> Option<SigningKey> {
        let path = element_path(element);
        let mut key = SigningKey::default();
        let mut certificate = None;
        for attribute in element.attributes() {
            let attribute_path = attribute_path(element, attribute.name());
            let raw = attribute.value();
            match attribute.name() {
                "id" => {
                    key.id = Some(self.string(
                        &attribute_path,
                        raw,
                        "set the key's id to the kid its tokens carry",
                    ));
                }
                "n" => {
                    key.modulus = Some(self.string(
                        &attribute_path,
                        raw,
                        "set the key's modulus (base64url)",
                    ));
                }
                "e" => {
                    key.exponent = Some(self.string(
                        &attribute_path,
                        raw,
                        "set the key's exponent (base64url)",
                    ));
                }
                "certificate-id" => {
                    certificate = Some((
                        attribute_path.clone(),
                        self.string(
                            &attribute_path,
                            raw,
                            "name the certificate whose public key verifies tokens",
                        ),
                    ));
                }
                other => self.unknown_attribute(element, other),
            }
        }
        let text = element
            .children()
            .filter(Node::is_text)
            .filter_map(|n| n.text())
            .collect::<String>();
        let text = text.trim();
        let rsa = key.modulus.is_some() || key.exponent.is_some();
        if !text.is_empty() {
            let value = self.string(
                &path,
                text,
                "set the key's value to the base64 symmetric key, or keep the key in a Secret and give it as secretRef",
            );
            if rsa || certificate.is_some() {
                self.report.push(
                    Kind::NotCarriedOver,
                    &path,
                    "gives a symmetric key as text besides an RSA key or certificate; one key is one form: only the RSA key or certificate is written, so the text is left out",
                );
            } else {
                key.value = Some(value);
                self.report.push(
                    Kind::Note,
                    &path,
                    "a symmetric key written in the TokenPolicy itself (value) is readable by everyone who can read the TokenPolicy; in a cluster, keep it in a Secret of the policy's namespace and refer to it with secretRef: {name, key}",
                );
            }
        }
        if let Some((attribute_path, id)) = certificate {
            if rsa {
                self.report.push(
                    Kind::NotCarriedOver,
                    attribute_path,
                    "a certificate besides n and e; one key is one form: the n and e key is written, the certificate left out",
                );
            } else {
                self.report.push(
                    Kind::NotCarriedOver,
                    attribute_path,
                    format!(
                        "a certificate uploaded to APIM ({id:?}) is out of the cluster's reach; written as a placeholder pem: replace it with the certificate's public key in PEM (BEGIN PUBLIC KEY), or give the key as jwk or modulus + exponent"
                    ),
                );
                key.pem = Some(format!("<public key of the APIM certificate {id}, in PEM>"));
            }
        }
        if key.modulus.is_some() != key.exponent.is_some() {
            self.report.push(
                Kind::NotCarriedOver,
                &path,
                "an RSA key needs both n and e; left out: give the key's n and e (base64url)",
            );
            return None;
        }
        if key.value.is_none() && key.pem.is_none() && !rsa {
            self.report.push(
                Kind::NotCarriedOver,
                path,
                "gives no key (no base64 text, no n and e, no certificate-id); left out",
            );
            return None;
        }
        Some(key)
    }

    fn decryption_keys(&mut self, element: Node<'_, '_>) {
        let keys = element
            .children()
            .filter(|n| n.is_element() && n.tag_name().name() == "key")
            .count();
        self.report.push(
            Kind::NotCarriedOver,
            element_path(element),
            format!(
                "encrypted tokens (JWE) are not supported: the sidecar refuses them as JwtInvalid, and the {keys} decryption key(s) are left out; have the issuer send signed, unencrypted access tokens to this API"
            ),
        );
    }

    /// The text of each `<item>` child of a list element (`audiences/audience`).
    fn list(&mut self, element: Node<'_, '_>, item: &str, advice: &str) -> Vec<String> {
        let mut out = Vec::new();
        for child in element.children().filter(Node::is_element) {
            if child.tag_name().name() != item {
                self.unknown_element(child);
                continue;
            }
            let path = element_path(child);
            let text = child.text().unwrap_or_default();
            let value = self.string(&path, text, advice);
            if value.is_empty() {
                self.report.push(
                    Kind::NotCarriedOver,
                    path,
                    format!("an empty {item}; left out"),
                );
            } else {
                out.push(value);
            }
        }
        out
    }

    fn required_claims(&mut self, element: Node<'_, '_>) -> Vec<RequiredClaim> {
        let mut claims = Vec::new();
        for child in element.children().filter(Node::is_element) {
            if child.tag_name().name() != "claim" {
                self.unknown_element(child);
                continue;
            }
            let mut claim = RequiredClaim::default();
            for attribute in child.attributes() {
                let path = attribute_path(child, attribute.name());
                let raw = attribute.value();
                match attribute.name() {
                    "name" => {
                        claim.name =
                            self.string(&path, raw, "write the name of the claim to check");
                    }
                    "match" => {
                        let Some(text) =
                            self.typed(&path, raw, "match: all (the default) is written")
                        else {
                            continue;
                        };
                        match text.to_ascii_lowercase().as_str() {
                            "all" => claim.match_ = ClaimMatch::All,
                            "any" => claim.match_ = ClaimMatch::Any,
                            _ => self.report.push(
                                Kind::NotCarriedOver,
                                path,
                                format!(
                                    "{text:?} is neither all nor any; match: all (the default) is written"
                                ),
                            ),
                        }
                    }
                    // Not trimmed: a separator is often a space.
                    "separator" => match self.resolve(&path, raw) {
                        Resolved::Text(text) => claim.separator = Some(text),
                        Resolved::Expression(expression) => {
                            self.expression_left_out(&path, &expression, "no separator is written");
                        }
                    },
                    other => self.unknown_attribute(child, other),
                }
            }
            claim.values = self.list(child, "value", "write the claim value the token must carry");
            if claim.name.is_empty() {
                self.report.push(
                    Kind::NotCarriedOver,
                    element_path(child),
                    "a claim without a name; left out",
                );
            } else {
                claims.push(claim);
            }
        }
        claims
    }

    fn validate_azure_ad_token(&mut self, element: Node<'_, '_>) -> Converted {
        let mut out = Converted::default();
        let mut entra = ValidateAzureAdToken::default();
        let mut endpoint_from_tenant = None;
        for attribute in element.attributes() {
            let (name, raw) = (attribute.name(), attribute.value());
            if self.common_attribute(element, name, raw, &mut out) {
                continue;
            }
            let path = attribute_path(element, name);
            match name {
                "tenant-id" => {
                    let tenant = self.string(
                        &path,
                        raw,
                        "set validateAzureAdToken.tenantId to the tenant",
                    );
                    match split_authority(&tenant) {
                        Some((authority, tenant)) => {
                            endpoint_from_tenant = Some((path, authority));
                            entra.tenant_id = tenant;
                        }
                        None => entra.tenant_id = tenant,
                    }
                }
                "authentication-endpoint" => {
                    entra.authentication_endpoint = Some(self.string(
                        &path,
                        raw,
                        "set validateAzureAdToken.authenticationEndpoint to the Entra authority of your cloud",
                    ));
                }
                _ => self.unknown_attribute(element, name),
            }
        }
        if let Some((path, authority)) = endpoint_from_tenant {
            match &entra.authentication_endpoint {
                None => entra.authentication_endpoint = Some(authority),
                Some(given) if given.trim_end_matches('/') == authority => {}
                Some(given) => self.report.push(
                    Kind::NotCarriedOver,
                    path,
                    format!(
                        "names the authority {authority}, but authentication-endpoint says {given}; {given} is written: check which cloud the tenant lives in"
                    ),
                ),
            }
        }
        if !element.has_attribute("tenant-id") {
            self.report.push(
                Kind::NotCarriedOver,
                element_path(element),
                "has no tenant-id; validateAzureAdToken.tenantId is left empty: set the directory (tenant) id",
            );
        }
        for child in element.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "client-application-ids" => entra.client_application_ids.extend(self.list(
                    child,
                    "application-id",
                    "write the application (client) id of each client allowed to call",
                )),
                "backend-application-ids" => entra.backend_application_ids.extend(self.list(
                    child,
                    "application-id",
                    "write the API's application (client) id",
                )),
                "audiences" => entra.audiences.extend(self.list(
                    child,
                    "audience",
                    "write the audience your clients' tokens carry in aud (the API's App ID URI or application id)",
                )),
                "required-claims" => entra.required_claims.extend(self.required_claims(child)),
                "decryption-keys" => self.decryption_keys(child),
                _ => self.unknown_element(child),
            }
        }
        out.validate_azure_ad_token = Some(entra);
        out
    }
}

/// What an expression becomes where a string is needed: visibly not a value, and matched by no
/// token.
pub fn expression_placeholder(expression: &str) -> String {
    format!("<policy expression: {expression}>")
}

/// APIM's `clock-skew`: seconds (`30`), or a .NET TimeSpan (`00:00:30`, `1.00:00:00`).
pub fn parse_clock_skew(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let (days, clock) = match text.split_once('.') {
        Some((days, rest)) if rest.contains(':') && !days.contains(':') => {
            (days.parse::<u64>().ok()?, rest)
        }
        _ => (0, text),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let [hours, minutes, seconds] = parts.as_slice() else {
        return None;
    };
    let hours: u64 = hours.parse().ok()?;
    let minutes: u64 = minutes.parse().ok()?;
    let seconds: u64 = seconds.parse().ok()?;
    if minutes > 59 || seconds > 59 {
        return None;
    }
    Some(Duration::from_secs(
        ((days * 24 + hours) * 60 + minutes) * 60 + seconds,
    ))
}

/// `https://login.microsoftonline.com/organizations` (APIM accepts a tenant as a URL under its
/// authority): the authority and the tenant. A bare host (`https://contoso.onmicrosoft.com`)
/// is a tenant's domain, which the TokenPolicy takes as it is.
fn split_authority(tenant: &str) -> Option<(String, String)> {
    let (scheme, rest) = tenant
        .strip_prefix("https://")
        .map(|rest| ("https", rest))
        .or_else(|| tenant.strip_prefix("http://").map(|rest| ("http", rest)))?;
    let (host, path) = rest.split_once('/')?;
    let segment = path.trim_end_matches('/');
    if host.is_empty() || segment.is_empty() || segment.contains('/') {
        return None;
    }
    Some((format!("{scheme}://{host}"), segment.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Item;

    /// Converts the one policy element of `xml` with the named values `sets`.
    fn convert(xml: &str, sets: &[&str]) -> (Converted, Vec<Item>) {
        let document = roxmltree::Document::parse(xml).expect("test XML");
        let values = NamedValues::parse(sets.iter().copied()).expect("test values");
        let mut report = Report::default();
        let converted = Converter {
            values: &values,
            report: &mut report,
        }
        .convert(document.root_element());
        (converted, report.items)
    }

    fn jwt(xml: &str) -> (ValidateJwt, Converted, Vec<Item>) {
        let (converted, items) = convert(xml, &[]);
        let jwt = converted.validate_jwt.clone().expect("validateJwt");
        (jwt, converted, items)
    }

    /// The (kind, path) of each item.
    fn kinds(items: &[Item]) -> Vec<(Kind, &str)> {
        items.iter().map(|i| (i.kind, i.path.as_str())).collect()
    }

    const OIDC: &str =
        r#"<openid-config url="https://idp.example/.well-known/openid-configuration"/>"#;

    #[test]
    fn token_source_attributes() {
        let (_, out, items) = jwt(&format!(
            r#"<validate-jwt header-name="Authorization" require-scheme="Token">{OIDC}</validate-jwt>"#
        ));
        assert_eq!(out.token.header, "Authorization");
        assert_eq!(out.token.scheme.as_deref(), Some("Token"));
        assert!(items.is_empty(), "{items:?}");

        let (_, out, items) = jwt(&format!(
            r#"<validate-jwt header-name="X-Token" require-scheme="Bearer">{OIDC}</validate-jwt>"#
        ));
        assert_eq!(
            (out.token.header.as_str(), out.token.scheme),
            ("X-Token", None)
        );
        assert_eq!(
            kinds(&items),
            [(Kind::Note, "validate-jwt/@require-scheme")]
        );

        let (_, out, items) = jwt(&format!(
            r#"<validate-jwt query-parameter-name="access_token">{OIDC}</validate-jwt>"#
        ));
        assert_eq!(out.token.query_parameter.as_deref(), Some("access_token"));
        assert_eq!(
            kinds(&items),
            [(Kind::Note, "validate-jwt/@query-parameter-name")]
        );

        let (_, _, items) = jwt(&format!(
            r#"<validate-jwt token-value="@(context.Variables[&quot;t&quot;])">{OIDC}</validate-jwt>"#
        ));
        assert_eq!(
            kinds(&items),
            [(Kind::NotCarriedOver, "validate-jwt/@token-value")]
        );
    }

    #[test]
    fn failed_validation_attributes() {
        let (_, out, items) = jwt(&format!(
            r#"<validate-jwt failed-validation-httpcode="403" failed-validation-error-message="No entry">{OIDC}</validate-jwt>"#
        ));
        assert_eq!(out.failed_validation.http_code, 403);
        assert_eq!(out.failed_validation.message, "No entry");
        assert!(items.is_empty());

        let (_, out, items) = jwt(&format!(
            r#"<validate-jwt failed-validation-httpcode="200" failed-validation-error-message="@(&quot;x&quot;)">{OIDC}</validate-jwt>"#
        ));
        assert_eq!(out.failed_validation, FailedValidation::default());
        assert_eq!(
            kinds(&items),
            [
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/@failed-validation-httpcode"
                ),
                (
                    Kind::Expression,
                    "validate-jwt/@failed-validation-error-message"
                ),
            ]
        );
    }

    #[test]
    fn booleans_and_clock_skew() {
        let (jwt_, _, items) = jwt(&format!(
            r#"<validate-jwt require-expiration-time="False" clock-skew="45">{OIDC}</validate-jwt>"#
        ));
        assert!(!jwt_.require_expiration_time);
        assert_eq!(jwt_.clock_skew.0, Duration::from_secs(45));
        assert!(items.is_empty());

        let (jwt_, _, items) = jwt(&format!(
            r#"<validate-jwt require-signed-tokens="false" require-expiration-time="maybe" clock-skew="a while">{OIDC}</validate-jwt>"#
        ));
        assert!(!jwt_.require_signed_tokens);
        assert!(jwt_.require_expiration_time, "the default stays");
        assert!(jwt_.clock_skew.is_zero());
        assert_eq!(
            kinds(&items),
            [
                (Kind::NotCarriedOver, "validate-jwt/@require-signed-tokens"),
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/@require-expiration-time"
                ),
                (Kind::NotCarriedOver, "validate-jwt/@clock-skew"),
            ]
        );
        assert!(
            items[0].message.contains("algorithms"),
            "{}",
            items[0].message
        );
    }

    #[test]
    fn openid_configs() {
        let (jwt_, _, items) = jwt(
            r#"<validate-jwt><openid-config url="https://a.example/.well-known/openid-configuration" validate-connectivity="true"/><openid-config/></validate-jwt>"#,
        );
        assert_eq!(
            jwt_.openid_configs,
            [OpenIdConfig {
                url: "https://a.example/.well-known/openid-configuration".to_owned()
            }]
        );
        assert_eq!(
            kinds(&items),
            [
                (
                    Kind::Note,
                    "validate-jwt/openid-config[1]/@validate-connectivity"
                ),
                (Kind::NotCarriedOver, "validate-jwt/openid-config[2]"),
            ]
        );
    }

    #[test]
    fn issuer_signing_keys_in_each_form() {
        let (jwt_, _, items) = jwt(r#"<validate-jwt><issuer-signing-keys>
                <key id="hmac">c2VjcmV0</key>
                <key id="rsa" n="AQAB-modulus" e="AQAB"/>
                <key id="cert" certificate-id="my-cert"/>
                <key n="only-n"/>
                <key/>
               </issuer-signing-keys></validate-jwt>"#);
        let keys = &jwt_.issuer_signing_keys;
        assert_eq!(keys.len(), 3);
        assert_eq!(
            (keys[0].id.as_deref(), keys[0].value.as_deref()),
            (Some("hmac"), Some("c2VjcmV0"))
        );
        assert_eq!(
            (keys[1].modulus.as_deref(), keys[1].exponent.as_deref()),
            (Some("AQAB-modulus"), Some("AQAB"))
        );
        assert_eq!(
            keys[2].pem.as_deref(),
            Some("<public key of the APIM certificate my-cert, in PEM>")
        );
        assert_eq!(
            jwt_.key_selection,
            KeySelection::ByKid,
            "one key without an id"
        );
        assert_eq!(
            kinds(&items),
            [
                (Kind::Note, "validate-jwt/issuer-signing-keys/key[1]"),
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/issuer-signing-keys/key[3]/@certificate-id"
                ),
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/issuer-signing-keys/key[4]"
                ),
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/issuer-signing-keys/key[5]"
                ),
            ]
        );
    }

    #[test]
    fn keys_without_ids_are_tried_in_turn_as_apim_does() {
        let (jwt_, _, items) = jwt(
            r#"<validate-jwt><issuer-signing-keys><key>a2V5MQ==</key><key>a2V5Mg==</key></issuer-signing-keys></validate-jwt>"#,
        );
        assert_eq!(jwt_.key_selection, KeySelection::TryAll);
        assert_eq!(
            kinds(&items).last(),
            Some(&(Kind::Note, "validate-jwt/issuer-signing-keys"))
        );
    }

    #[test]
    fn decryption_keys_are_reported_not_carried() {
        let (converted, items) = convert(
            r#"<validate-azure-ad-token tenant-id="common"><decryption-keys><key>a2V5</key></decryption-keys></validate-azure-ad-token>"#,
            &[],
        );
        assert_eq!(
            kinds(&items),
            [(
                Kind::NotCarriedOver,
                "validate-azure-ad-token/decryption-keys"
            )]
        );
        assert_eq!(
            converted.validate_azure_ad_token.map(|e| e.tenant_id),
            Some("common".to_owned())
        );
    }

    #[test]
    fn audiences_issuers_named_values_and_expressions() {
        let (converted, items) = convert(
            r#"<validate-jwt>
                <openid-config url="https://{{host}}/.well-known/openid-configuration"/>
                <audiences><audience>{{aud}}</audience><audience>@(context.Request.OriginalUrl.Host)</audience></audiences>
                <issuers><issuer>https://{{host}}</issuer><issuer> </issuer></issuers>
               </validate-jwt>"#,
            &["host=idp.example"],
        );
        let jwt_ = converted.validate_jwt.expect("validateJwt");
        assert_eq!(
            jwt_.openid_configs[0].url,
            "https://idp.example/.well-known/openid-configuration"
        );
        assert_eq!(
            jwt_.audiences,
            [
                "{{aud}}",
                "<policy expression: @(context.Request.OriginalUrl.Host)>"
            ]
        );
        assert_eq!(jwt_.issuers, ["https://idp.example"]);
        assert_eq!(
            kinds(&items),
            [
                (Kind::Placeholder, "validate-jwt/audiences/audience[1]"),
                (Kind::Expression, "validate-jwt/audiences/audience[2]"),
                (Kind::NotCarriedOver, "validate-jwt/issuers/issuer[2]"),
            ]
        );
        assert!(
            items[0].message.contains("--set aud=VALUE"),
            "{}",
            items[0].message
        );
    }

    #[test]
    fn required_claims() {
        let (jwt_, _, items) = jwt(&format!(
            r#"<validate-jwt>{OIDC}<required-claims>
                <claim name="scp" match="any" separator=" "><value>a.read</value><value>a.write</value></claim>
                <claim name="tier"><value>gold</value></claim>
                <claim name="x" match="some" separator="@(&quot;,&quot;)"/>
                <claim match="all"/>
               </required-claims></validate-jwt>"#
        ));
        let claims = &jwt_.required_claims;
        assert_eq!(claims.len(), 3);
        assert_eq!(
            claims[0],
            RequiredClaim {
                name: "scp".to_owned(),
                match_: ClaimMatch::Any,
                separator: Some(" ".to_owned()),
                values: vec!["a.read".to_owned(), "a.write".to_owned()],
            }
        );
        assert_eq!(
            (claims[1].match_, claims[1].separator.as_deref()),
            (ClaimMatch::All, None)
        );
        assert_eq!(
            (claims[2].match_, claims[2].separator.as_deref()),
            (ClaimMatch::All, None)
        );
        assert_eq!(
            kinds(&items),
            [
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/required-claims/claim[3]/@match"
                ),
                (
                    Kind::Expression,
                    "validate-jwt/required-claims/claim[3]/@separator"
                ),
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/required-claims/claim[4]"
                ),
            ]
        );
    }

    #[test]
    fn what_has_no_equivalent_is_reported() {
        let (_, _, items) = jwt(&format!(
            r#"<validate-jwt output-token-variable-name="jwt" colour="blue">{OIDC}<extra/></validate-jwt>"#
        ));
        assert_eq!(
            kinds(&items),
            [
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/@output-token-variable-name"
                ),
                (Kind::NotCarriedOver, "validate-jwt/@colour"),
                (Kind::NotCarriedOver, "validate-jwt/extra"),
            ]
        );
    }

    #[test]
    fn validate_azure_ad_token_element_by_element() {
        let (converted, items) = convert(
            r#"<validate-azure-ad-token tenant-id="{{tenant}}" authentication-endpoint="https://login.microsoftonline.us"
                 header-name="X-Token" failed-validation-httpcode="403" output-token-variable-name="jwt">
                <client-application-ids><application-id>11111111-2222-4333-8444-555555555555</application-id></client-application-ids>
                <backend-application-ids><application-id>6e74172b-be56-4843-9ff4-e66a39bb12e3</application-id></backend-application-ids>
                <audiences><audience>api://orders</audience></audiences>
                <required-claims><claim name="roles" match="any"><value>Orders.Read</value></claim></required-claims>
               </validate-azure-ad-token>"#,
            &["tenant=8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f"],
        );
        let entra = converted
            .validate_azure_ad_token
            .expect("validateAzureAdToken");
        assert_eq!(entra.tenant_id, "8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f");
        assert_eq!(
            entra.authentication_endpoint.as_deref(),
            Some("https://login.microsoftonline.us")
        );
        assert_eq!(
            entra.client_application_ids,
            ["11111111-2222-4333-8444-555555555555"]
        );
        assert_eq!(
            entra.backend_application_ids,
            ["6e74172b-be56-4843-9ff4-e66a39bb12e3"]
        );
        assert_eq!(entra.audiences, ["api://orders"]);
        assert_eq!(entra.required_claims[0].match_, ClaimMatch::Any);
        assert_eq!(converted.token.header, "X-Token");
        assert_eq!(converted.failed_validation.http_code, 403);
        assert!(converted.validate_jwt.is_none());
        assert_eq!(
            kinds(&items),
            [(
                Kind::NotCarriedOver,
                "validate-azure-ad-token/@output-token-variable-name"
            )]
        );
    }

    #[test]
    fn a_tenant_url_gives_the_authority_unless_the_endpoint_disagrees() {
        let (converted, items) = convert(
            r#"<validate-azure-ad-token tenant-id="https://login.microsoftonline.us/organizations"/>"#,
            &[],
        );
        let entra = converted.validate_azure_ad_token.expect("entra");
        assert_eq!(
            (
                entra.tenant_id.as_str(),
                entra.authentication_endpoint.as_deref()
            ),
            ("organizations", Some("https://login.microsoftonline.us"))
        );
        assert!(items.is_empty());

        let (converted, items) = convert(
            r#"<validate-azure-ad-token tenant-id="https://login.microsoftonline.us/common" authentication-endpoint="https://login.microsoftonline.com"/>"#,
            &[],
        );
        let entra = converted.validate_azure_ad_token.expect("entra");
        assert_eq!(
            entra.authentication_endpoint.as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            kinds(&items),
            [(Kind::NotCarriedOver, "validate-azure-ad-token/@tenant-id")]
        );

        let (_, items) = convert(r#"<validate-azure-ad-token/>"#, &[]);
        assert_eq!(
            kinds(&items),
            [(Kind::NotCarriedOver, "validate-azure-ad-token")]
        );
    }

    #[test]
    fn clock_skew_in_seconds_or_as_a_timespan() {
        assert_eq!(parse_clock_skew("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_clock_skew(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_clock_skew("00:02:30"), Some(Duration::from_secs(150)));
        assert_eq!(
            parse_clock_skew("1.00:00:05"),
            Some(Duration::from_secs(86_405))
        );
        assert_eq!(parse_clock_skew("soon"), None);
        assert_eq!(parse_clock_skew("-5"), None);
        assert_eq!(parse_clock_skew("00:61:00"), None);
    }

    #[test]
    fn a_tenant_given_as_a_url_under_its_authority_is_split() {
        assert_eq!(
            split_authority("https://login.microsoftonline.com/organizations"),
            Some((
                "https://login.microsoftonline.com".to_owned(),
                "organizations".to_owned()
            ))
        );
        assert_eq!(split_authority("https://contoso.onmicrosoft.com"), None);
        assert_eq!(split_authority("https://contoso.onmicrosoft.com/"), None);
        assert_eq!(
            split_authority("8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f"),
            None
        );
    }
}
