//! A test identity provider: real HTTP on 127.0.0.1 serving OIDC discovery, a JWKS and an OAuth 2.0
//! token endpoint, with a Rust API to mint tokens (well-formed or hostile), rotate and publish
//! keys, and inject faults. Two personalities: a generic OIDC provider ([`IdentityProvider::start`])
//! and Microsoft Entra ID ([`IdentityProvider::start_entra`], tenant-scoped paths, v1.0 and v2.0
//! access tokens, see the `entra` module).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tokengate_testkit::idp::IdentityProvider;
//! use jsonwebtoken::Algorithm;
//!
//! let idp = IdentityProvider::start().await?;
//! let mut claims = idp.claims();
//! claims["aud"] = "api://orders".into();
//! let token = idp.sign(Algorithm::ES256, &claims);
//! # let _ = token; Ok(()) }
//! ```

mod entra;
mod jws;
mod keys;
mod routes;
mod server;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use entra::{COMMON, EntraApi, EntraTokenVersion, ORGANIZATIONS};
pub use jws::SignWith;
pub use keys::{KeyExport, KeyFamily, alg_name};

use keys::{Key, KeyStore};
use routes::{Endpoint, Personality};

/// The `aud` of [`IdentityProvider::claims`].
pub const DEFAULT_AUDIENCE: &str = "api://tokengate-tests";
/// The `sub` of [`IdentityProvider::claims`].
pub const DEFAULT_SUBJECT: &str = "test-subject";
/// Lifetime of tokens from [`IdentityProvider::claims`] and, by default, the token endpoint.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A running identity provider. Clones share the same server and state; the server stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct IdentityProvider {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: Arc<server::ServerTask>,
}

pub(crate) struct Shared {
    /// `http://127.0.0.1:port`, no trailing slash.
    base_url: String,
    issuer: String,
    personality: Personality,
    /// Tenants, domains and APIs of the Entra personality; unused by the generic one.
    directory: Mutex<entra::Directory>,
    keys: Mutex<KeyStore>,
    clients: Mutex<HashMap<String, Client>>,
    settings: Mutex<Settings>,
    available: AtomicBool,
    discovery_fetches: AtomicU64,
    jwks_fetches: AtomicU64,
    token_requests: AtomicU64,
    /// JWKS requests by client: the product of their `User-Agent` (`tokengate-operator`).
    jwks_fetches_by_client: Mutex<BTreeMap<String, u64>>,
    /// Clients (by `User-Agent` product) whose discovery and JWKS requests get 503.
    refused_clients: Mutex<Vec<String>>,
}

struct Client {
    secret: String,
    extra_claims: Value,
}

struct Settings {
    delay: Option<Duration>,
    jwks_override: Option<String>,
    discovery_override: Option<Value>,
    token_alg: Algorithm,
    token_lifetime: Duration,
}

/// A poisoned lock only means a test panicked mid-update; the state is still usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The header `sign` uses: `alg`, `typ: JWT`, and the kid of the family's current key.
pub(crate) fn header_for(keys: &KeyStore, alg: Algorithm) -> Value {
    let mut header = json!({ "alg": alg_name(alg), "typ": "JWT" });
    if let Some(key) = keys.current(KeyFamily::for_algorithm(alg)) {
        header["kid"] = json!(key.kid);
    }
    header
}

/// Where and how [`IdentityProvider::start_with`] serves.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (port 0 picks a free one).
    pub addr: SocketAddr,
    /// The base URL clients reach the provider at, when it is not the listen address (a pod
    /// behind a Service): the issuer, discovery and keys URLs are under it.
    pub public_url: Option<String>,
    /// Act as Microsoft Entra ID with this home tenant.
    pub entra_home_tenant: Option<String>,
    /// Serve https with this configuration instead of plain http.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServeOptions {
    /// Plain http on `addr`, the generic personality, URLs under the listen address.
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            public_url: None,
            entra_home_tenant: None,
            tls: None,
        }
    }
}

impl IdentityProvider {
    /// Starts a provider on 127.0.0.1 with an ephemeral port and fresh keys of every family.
    pub async fn start() -> anyhow::Result<IdentityProvider> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a provider listening on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<IdentityProvider> {
        Self::start_with(ServeOptions::at(addr)).await
    }

    /// Starts a Microsoft Entra ID provider on 127.0.0.1 with an ephemeral port: its base URL
    /// is the authority (`authenticationEndpoint`), `home_tenant` its first directory.
    pub async fn start_entra(home_tenant: &str) -> anyhow::Result<IdentityProvider> {
        Self::start_entra_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), home_tenant).await
    }

    /// Like [`start_entra`](Self::start_entra), listening on `addr`.
    pub async fn start_entra_on(
        addr: SocketAddr,
        home_tenant: &str,
    ) -> anyhow::Result<IdentityProvider> {
        Self::start_with(ServeOptions {
            entra_home_tenant: Some(home_tenant.to_owned()),
            ..ServeOptions::at(addr)
        })
        .await
    }

    /// Starts a provider as `options` say: where it listens, the URL it is reached at, its
    /// personality (Entra with a home tenant, generic without) and whether it serves https.
    pub async fn start_with(options: ServeOptions) -> anyhow::Result<IdentityProvider> {
        let ServeOptions {
            addr,
            public_url,
            entra_home_tenant,
            tls,
        } = options;
        let personality = match entra_home_tenant {
            Some(_) => Personality::Entra,
            None => Personality::Generic,
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding identity provider to {addr}"))?;
        let addr = listener
            .local_addr()
            .context("reading identity provider address")?;
        // RSA key generation takes a moment; keep it off the async workers.
        let keys = tokio::task::spawn_blocking(KeyStore::generate)
            .await
            .context("key generation task failed")?
            .context("generating identity provider keys")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = public_url.map_or_else(
            || format!("{scheme}://{addr}"),
            |url| url.trim_end_matches('/').to_owned(),
        );
        let directory = entra::Directory::new(entra_home_tenant.as_deref().unwrap_or_default());
        let issuer = match personality {
            Personality::Generic => Personality::generic_issuer(&base_url),
            Personality::Entra => entra::issuer(&base_url, EntraTokenVersion::V2, &directory.home),
        };
        let shared = Arc::new(Shared {
            issuer,
            base_url,
            personality,
            directory: Mutex::new(directory),
            keys: Mutex::new(keys),
            clients: Mutex::new(HashMap::new()),
            settings: Mutex::new(Settings {
                delay: None,
                jwks_override: None,
                discovery_override: None,
                token_alg: Algorithm::RS256,
                token_lifetime: DEFAULT_LIFETIME,
            }),
            available: AtomicBool::new(true),
            discovery_fetches: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            jwks_fetches_by_client: Mutex::new(BTreeMap::new()),
            refused_clients: Mutex::new(Vec::new()),
        });
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let server = server::spawn(listener, shared.clone(), tls);
        Ok(IdentityProvider {
            shared,
            addr,
            _server: Arc::new(server),
        })
    }

    // ----- addresses -----

    /// The socket address the provider listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL its endpoints are under: `http://127.0.0.1:port`, or the public URL it was
    /// started with ([`ServeOptions::public_url`]).
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The `iss` of every token and of the discovery document.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// The discovery document: the generic one, or the Entra home tenant's v2.0 document.
    pub fn discovery_url(&self) -> String {
        self.endpoint_url(Endpoint::Discovery)
    }

    pub fn jwks_url(&self) -> String {
        self.endpoint_url(Endpoint::Jwks)
    }

    pub fn token_url(&self) -> String {
        self.endpoint_url(Endpoint::Token)
    }

    fn endpoint_url(&self, endpoint: Endpoint) -> String {
        let base = &self.shared.base_url;
        match self.shared.personality {
            Personality::Generic => Personality::generic_url(base, endpoint),
            Personality::Entra => {
                let home = lock(&self.shared.directory).home.clone();
                match endpoint {
                    Endpoint::Discovery => self.entra_discovery_url(&home),
                    Endpoint::Jwks => format!("{base}/{home}/discovery/v2.0/keys"),
                    Endpoint::Token => self.entra_token_url(&home),
                }
            }
        }
    }

    // ----- minting -----

    /// Standard claims: `iss` = issuer, `aud` = [`DEFAULT_AUDIENCE`], `sub` =
    /// [`DEFAULT_SUBJECT`], `iat` = `nbf` = now, `exp` = now + 1h. Override fields by indexing:
    /// `claims["aud"] = "api://other".into()`.
    pub fn claims(&self) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer(),
            "aud": DEFAULT_AUDIENCE,
            "sub": DEFAULT_SUBJECT,
            "iat": now,
            "nbf": now,
            "exp": now + DEFAULT_LIFETIME.as_secs(),
        })
    }

    /// The header [`sign`](Self::sign) uses for `alg`: `alg`, `typ: JWT`, current `kid`.
    pub fn header(&self, alg: Algorithm) -> Value {
        header_for(&lock(&self.shared.keys), alg)
    }

    /// Signs `claims` with the current key of `alg`'s family (RSA for RS*/PS*, P-256 for ES256,
    /// P-384 for ES384, Ed25519 for EdDSA, the HMAC secret for HS*).
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        self.sign_with_header(&self.header(alg), claims, SignWith::Current(alg))
    }

    /// A token with [`claims`](Self::claims) signed with `alg`.
    pub fn token(&self, alg: Algorithm) -> String {
        self.sign(alg, &self.claims())
    }

    /// Signs `claims` with the key `kid` (which may be retired or unpublished) using `alg`; the
    /// header names that kid.
    ///
    /// # Panics
    /// If `kid` is unknown or its key cannot sign `alg`.
    pub fn sign_with_kid(&self, kid: &str, alg: Algorithm, claims: &Value) -> String {
        let header = json!({ "alg": alg_name(alg), "typ": "JWT", "kid": kid });
        self.sign_with_header(&header, claims, SignWith::Kid(kid.to_owned(), alg))
    }

    /// A compact JWS whose header is exactly `header` (so `alg: none`, `jku`, `x5u`, `jwk`, `crit`,
    /// odd or absent `kid` are all possible), signed as `with` says. The header's `alg` is not
    /// consulted: mismatches are the point of some tests.
    ///
    /// # Panics
    /// If `with` names an unknown kid, or a key that cannot sign the requested algorithm.
    pub fn sign_with_header(&self, header: &Value, claims: &Value, with: SignWith) -> String {
        self.sign_raw(
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            with,
        )
    }

    /// Like [`sign_with_header`](Self::sign_with_header) with the header and payload bytes given
    /// verbatim (duplicate JSON members, non-JSON, odd whitespace).
    ///
    /// # Panics
    /// As [`sign_with_header`](Self::sign_with_header).
    pub fn sign_raw(&self, header: &[u8], payload: &[u8], with: SignWith) -> String {
        self.try_sign_raw(header, payload, &with)
            .unwrap_or_else(|e| panic!("test identity provider cannot sign: {e:#}"))
    }

    /// Fallible form of [`sign_raw`](Self::sign_raw).
    pub fn try_sign_raw(
        &self,
        header: &[u8],
        payload: &[u8],
        with: &SignWith,
    ) -> anyhow::Result<String> {
        jws::compact(&lock(&self.shared.keys), header, payload, with)
    }

    // ----- keys -----

    /// The kid of the family's current signing key.
    pub fn current_kid(&self, family: KeyFamily) -> String {
        self.current_key(family).kid
    }

    /// Every export form of the family's current key.
    pub fn current_key(&self, family: KeyFamily) -> KeyExport {
        let keys = lock(&self.shared.keys);
        match keys.current(family) {
            Some(key) => key.export(keys.is_published(&key.kid)),
            // Every family gets a key at start and current keys are never removed.
            None => unreachable!("no current {family} key"),
        }
    }

    /// Every export form of key `kid`, published or not.
    pub fn key(&self, kid: &str) -> Option<KeyExport> {
        let keys = lock(&self.shared.keys);
        keys.get(kid).map(|key| key.export(keys.is_published(kid)))
    }

    /// All keys ever generated, in generation order.
    pub fn keys(&self) -> Vec<KeyExport> {
        let keys = lock(&self.shared.keys);
        keys.all()
            .map(|key| key.export(keys.is_published(&key.kid)))
            .collect()
    }

    /// The JWKS the provider serves now (ignoring any override). The Entra personality serves
    /// the RSA keys only, as Entra does.
    pub fn jwks(&self) -> Value {
        let jwks = lock(&self.shared.keys).jwks();
        match self.shared.personality {
            Personality::Generic => jwks,
            Personality::Entra => entra::rsa_only(jwks),
        }
    }

    /// The current HMAC secret, standard base64.
    pub fn hmac_secret_base64(&self) -> String {
        self.current_key(KeyFamily::Hmac)
            .secret_base64
            .unwrap_or_default()
    }

    /// Generates a new key for `family`, publishes it and makes it current. Older keys stay
    /// published until [`retire`](Self::retire)d. Returns the new kid.
    ///
    /// # Panics
    /// If key generation fails (the crypto library is broken).
    pub fn rotate(&self, family: KeyFamily) -> String {
        self.new_key(family, true, true)
    }

    /// Generates a key that is neither published nor current: a key the relying party has
    /// never seen, for "signed by an unknown key" tests. Returns its kid.
    ///
    /// # Panics
    /// If key generation fails (the crypto library is broken).
    pub fn add_unpublished_key(&self, family: KeyFamily) -> String {
        self.new_key(family, false, false)
    }

    fn new_key(&self, family: KeyFamily, publish: bool, make_current: bool) -> String {
        let kid = lock(&self.shared.keys).allocate_kid(family);
        // Generate outside the lock so JWKS requests are not held up.
        let key = Key::generate(family, kid.clone())
            .unwrap_or_else(|e| panic!("generating {family} key: {e:#}"));
        lock(&self.shared.keys).insert(key, publish, make_current);
        kid
    }

    /// Removes `kid` from the JWKS. The key can still sign (see [`sign_with_kid`](Self::sign_with_kid)).
    /// Returns whether it was published.
    pub fn retire(&self, kid: &str) -> bool {
        lock(&self.shared.keys).unpublish(kid)
    }

    /// Adds `kid` to the JWKS. Returns false for unknown or HMAC kids.
    pub fn publish(&self, kid: &str) -> bool {
        lock(&self.shared.keys).publish(kid)
    }

    /// Makes the JWKS show exactly `kids`, in that order.
    ///
    /// # Panics
    /// If a kid is unknown or names the HMAC secret.
    pub fn publish_only(&self, kids: &[&str]) {
        let skipped = lock(&self.shared.keys).publish_only(kids);
        assert!(skipped.is_empty(), "cannot publish kids {skipped:?}");
    }

    /// The kids the JWKS shows, in order.
    pub fn published_kids(&self) -> Vec<String> {
        lock(&self.shared.keys).published().to_vec()
    }

    /// Makes `kid` its family's signing key. Returns false for unknown kids.
    pub fn set_current(&self, kid: &str) -> bool {
        lock(&self.shared.keys).set_current(kid)
    }

    // ----- faults and counters -----

    /// When false, discovery and JWKS answer 503 (the token endpoint keeps working).
    pub fn set_available(&self, available: bool) {
        self.shared.available.store(available, Ordering::SeqCst);
    }

    /// Delays every discovery and JWKS response by `delay`.
    pub fn set_delay(&self, delay: Option<Duration>) {
        lock(&self.shared.settings).delay = delay;
    }

    /// Serves `body` verbatim as the JWKS (malformed key sets, odd key parameters).
    pub fn set_jwks_override(&self, body: Option<String>) {
        lock(&self.shared.settings).jwks_override = body;
    }

    /// Serves `document` as the discovery document (wrong issuer, foreign `jwks_uri`, ...).
    pub fn set_discovery_override(&self, document: Option<Value>) {
        lock(&self.shared.settings).discovery_override = document;
    }

    /// The discovery document the provider would serve without an override.
    pub fn discovery_document(&self) -> Value {
        let base = &self.shared.base_url;
        match self.shared.personality {
            Personality::Generic => Personality::generic_discovery_document(base),
            Personality::Entra => {
                let home = lock(&self.shared.directory).home.clone();
                entra::discovery_document(base, &home, &entra::Scope::Tenant(home.clone()), false)
            }
        }
    }

    /// Discovery requests received, including those answered 503.
    pub fn discovery_fetches(&self) -> u64 {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// JWKS requests received, including those answered 503.
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// JWKS requests received from `client` (the product of its `User-Agent`, such as
    /// `tokengate-operator` or `tokengate-sidecar`), refused ones included.
    pub fn jwks_fetches_by(&self, client: &str) -> u64 {
        lock(&self.shared.jwks_fetches_by_client)
            .get(client)
            .copied()
            .unwrap_or(0)
    }

    /// JWKS requests received, by client.
    pub fn jwks_fetches_by_client(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.jwks_fetches_by_client).clone()
    }

    /// Answers the discovery and JWKS requests of these clients (by `User-Agent` product) 503,
    /// as a provider the clients cannot reach would fail them; others are served.
    pub fn refuse_clients(&self, clients: &[&str]) {
        *lock(&self.shared.refused_clients) = clients.iter().map(|c| (*c).to_owned()).collect();
    }

    /// Token endpoint requests received, failed ones included.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Sets every counter back to zero.
    pub fn reset_counters(&self) {
        self.shared.discovery_fetches.store(0, Ordering::SeqCst);
        self.shared.jwks_fetches.store(0, Ordering::SeqCst);
        self.shared.token_requests.store(0, Ordering::SeqCst);
        lock(&self.shared.jwks_fetches_by_client).clear();
    }

    // ----- token endpoint -----

    /// Lets `client_id` obtain tokens from the token endpoint with `secret`.
    pub fn register_client(&self, client_id: &str, secret: &str) {
        self.register_client_with_claims(client_id, secret, json!({}));
    }

    /// Like [`register_client`](Self::register_client); the members of `extra_claims` (an
    /// object, e.g. `{"roles": ["reader"]}`) are added to, or replace, the token's claims.
    pub fn register_client_with_claims(&self, client_id: &str, secret: &str, extra_claims: Value) {
        lock(&self.shared.clients).insert(
            client_id.to_owned(),
            Client {
                secret: secret.to_owned(),
                extra_claims,
            },
        );
    }

    /// The algorithm the token endpoint signs with (default RS256).
    pub fn set_token_algorithm(&self, alg: Algorithm) {
        lock(&self.shared.settings).token_alg = alg;
    }

    /// The lifetime of tokens from the token endpoint (default one hour).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.shared.settings).token_lifetime = lifetime;
    }
}

/// Microsoft Entra ID personality. The methods compute URLs and claims for any personality;
/// only a provider started with [`IdentityProvider::start_entra`] serves them.
impl IdentityProvider {
    /// The home directory of an Entra provider (empty for the generic personality).
    pub fn tenant_id(&self) -> String {
        lock(&self.shared.directory).home.clone()
    }

    /// Serves another directory under the same authority, for multi-tenant tests. Entra signs
    /// every tenant's tokens with the same keys, and so does this provider.
    pub fn add_tenant(&self, tenant_id: &str) {
        lock(&self.shared.directory).add_tenant(tenant_id);
    }

    /// Lets paths name `tenant_id` by a domain, as `contoso.onmicrosoft.com` names a tenant.
    pub fn add_tenant_domain(&self, domain: &str, tenant_id: &str) {
        lock(&self.shared.directory).add_domain(domain, tenant_id);
    }

    /// Registers an API the token endpoint issues tokens for; the token version follows its
    /// `access_token_accepted_version`. Registering an app id again replaces it.
    pub fn register_api(&self, api: EntraApi) {
        lock(&self.shared.directory).register_api(api);
    }

    /// `{authority}/{tenant}/v2.0` or, for v1.0, `{authority}/{tenant}/`.
    pub fn entra_issuer(&self, version: EntraTokenVersion, tenant: &str) -> String {
        entra::issuer(&self.shared.base_url, version, tenant)
    }

    /// The v2.0 discovery document of a tenant id, domain, `organizations` or `common`.
    pub fn entra_discovery_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            self.shared.base_url
        )
    }

    /// The v2.0 token endpoint of a tenant id or domain.
    pub fn entra_token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// An app-only access token's claims as Entra shapes them for `client_id` calling the API
    /// `audience` in `tenant`: `iss`, `aud`, `tid`, `oid`, `sub`, `ver`, `iat`, `nbf`, `exp`,
    /// plus `appid`, `appidacr` and `idp` (v1.0) or `azp` and `azpacr` (v2.0). Add `roles` or
    /// `scp` by indexing.
    pub fn entra_claims(
        &self,
        version: EntraTokenVersion,
        tenant: &str,
        client_id: &str,
        audience: &str,
    ) -> Value {
        entra::access_token_claims(
            &self.shared.base_url,
            version,
            tenant,
            client_id,
            audience,
            unix_now(),
            DEFAULT_LIFETIME.as_secs(),
        )
    }

    /// [`entra_claims`](Self::entra_claims) signed with the current RSA key (RS256).
    pub fn entra_token(
        &self,
        version: EntraTokenVersion,
        tenant: &str,
        client_id: &str,
        audience: &str,
    ) -> String {
        self.sign(
            Algorithm::RS256,
            &self.entra_claims(version, tenant, client_id, audience),
        )
    }
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.shared.issuer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_public_url_is_what_the_provider_advertises() {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let idp = IdentityProvider::start_with(ServeOptions {
            public_url: Some("http://10.0.0.7/".to_owned()),
            ..ServeOptions::at(listen)
        })
        .await
        .expect("provider");
        assert_eq!(idp.base_url(), "http://10.0.0.7");
        assert!(
            idp.issuer().starts_with("http://10.0.0.7"),
            "{}",
            idp.issuer()
        );
        let discovery = idp.discovery_document();
        assert!(
            discovery["jwks_uri"]
                .as_str()
                .is_some_and(|uri| uri.starts_with("http://10.0.0.7/")),
            "{discovery}"
        );
        // It still listens where it was told to.
        assert!(idp.addr().ip().is_loopback());

        let entra = IdentityProvider::start_with(ServeOptions {
            public_url: Some("http://10.0.0.8".to_owned()),
            entra_home_tenant: Some("tenant-a".to_owned()),
            ..ServeOptions::at(listen)
        })
        .await
        .expect("Entra provider");
        assert!(
            entra.issuer().starts_with("http://10.0.0.8/tenant-a"),
            "{}",
            entra.issuer()
        );
    }

    /// With TLS the provider serves https with the certificate it was given, and only https.
    #[tokio::test]
    async fn tls_serves_https_with_the_given_certificate() {
        use crate::cluster::pki::CertificateAuthority;
        use http_body_util::{BodyExt as _, Empty};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let ca = CertificateAuthority::new("idp test CA").expect("CA");
        let served = ca.issue_server("idp", &["127.0.0.1"]).expect("certificate");
        let tls = served.server_config().expect("server config");
        let idp = IdentityProvider::start_with(ServeOptions {
            entra_home_tenant: Some("tenant-a".to_owned()),
            tls: Some(Arc::new(tls)),
            ..ServeOptions::at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        })
        .await
        .expect("provider");
        assert!(
            idp.base_url().starts_with("https://127.0.0.1:"),
            "{}",
            idp.base_url()
        );

        let ca_file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(ca_file.path(), ca.cert_pem()).expect("CA written");
        let connector = tokengate_keys::https_connector(Some(ca_file.path())).expect("connector");
        let client =
            Client::builder(TokioExecutor::new()).build::<_, Empty<bytes::Bytes>>(connector);
        let url = idp.entra_discovery_url("tenant-a");
        let response = client
            .get(url.parse().expect("URL"))
            .await
            .expect("https request");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let document: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(
            document["jwks_uri"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://")),
            "{document}"
        );
        // Plain http to the same port gets no answer.
        let plain = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let http_url = url.replacen("https://", "http://", 1);
        assert!(plain.get(http_url.parse().expect("URL")).await.is_err());
    }
}
