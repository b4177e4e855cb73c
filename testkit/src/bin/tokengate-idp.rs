//! Runs the test identity provider, or fetches a token from a running one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokengate_testkit::https;
use tokengate_testkit::idp::{
    DEFAULT_AUDIENCE, EntraApi, EntraTokenVersion, IdentityProvider, KeyFamily, ServeOptions,
};

const DEMO_CLIENT_ID: &str = "demo";
const DEMO_CLIENT_SECRET: &str = "demo-secret";

/// Test identity provider: OIDC discovery, JWKS and a client-credentials token endpoint.
#[derive(Debug, Parser)]
#[command(name = "tokengate-idp", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// A client allowed to use the token endpoint, as ID:SECRET (repeatable). Without any, the
    /// client demo:demo-secret is registered.
    #[arg(long = "client", value_name = "ID:SECRET")]
    clients: Vec<String>,

    /// The base URL clients reach the provider at, when it is not the listen address (a pod
    /// behind a Service): the issuer, discovery and keys URLs are under it.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,

    /// Serve https with the certificate chain in this PEM file (needs --tls-key); the default
    /// URLs then start with https.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Algorithm of tokens from the token endpoint.
    #[arg(long, default_value = "RS256", value_parser = parse_alg)]
    token_alg: Algorithm,

    /// Act as Microsoft Entra ID with this home tenant id: tenant-scoped discovery, keys and
    /// token endpoint under the provider's address, which is the authenticationEndpoint.
    #[arg(long, value_name = "TENANT_ID")]
    entra_tenant: Option<String>,

    /// An API registered with the Entra personality, as APP_ID or APP_ID:VERSION where VERSION
    /// is its accessTokenAcceptedVersion, 1 or 2 (default 2); App ID URI api://APP_ID
    /// (repeatable).
    #[arg(long = "entra-api", value_name = "APP_ID[:VERSION]", requires = "entra_tenant", value_parser = parse_entra_api)]
    entra_apis: Vec<EntraApi>,

    /// Write a token set for load tests into DIR: the public keys (`rsa.jwk.json`,
    /// `p256.jwk.json`), one RS256 and one ES256 token (`rs256.jwt`, `es256.jwt`), one RS256
    /// token with a broken signature (`rs256-bad-signature.jwt`), and `--unique-tokens` distinct
    /// RS256 tokens, one a line (`rs256-unique.txt`). Tokens live for a day.
    #[arg(long, value_name = "DIR")]
    write_tokens: Option<PathBuf>,

    /// Number of distinct RS256 tokens `--write-tokens` writes.
    #[arg(long, default_value_t = 0, requires = "write_tokens")]
    unique_tokens: usize,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Obtain an access token from a running provider (client-credentials grant) and print it.
    Token {
        /// Issuer URL of the running provider, as printed at its start.
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value = DEMO_CLIENT_ID)]
        client_id: String,
        #[arg(long, default_value = DEMO_CLIENT_SECRET)]
        client_secret: String,
        /// `<resource>/.default`; the token's audience is the resource.
        #[arg(long, default_value_t = format!("{DEFAULT_AUDIENCE}/.default"))]
        scope: String,
        /// For an https provider with a private CA: the PEM bundle of that CA, trusted besides
        /// the system roots.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

fn parse_entra_api(s: &str) -> Result<EntraApi, String> {
    let (app_id, version) = match s.split_once(':') {
        None => (s, EntraTokenVersion::V2),
        Some((app_id, "2")) => (app_id, EntraTokenVersion::V2),
        Some((app_id, "1")) => (app_id, EntraTokenVersion::V1),
        Some((_, other)) => return Err(format!("version {other:?}: use 1 or 2")),
    };
    if app_id.is_empty() {
        return Err("empty application id".to_owned());
    }
    Ok(EntraApi::new(app_id, version))
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    s.parse().map_err(|_| format!("unknown algorithm {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Token {
            issuer,
            client_id,
            client_secret,
            scope,
            ca_file,
        }) => {
            let token = fetch_token(
                &issuer,
                &client_id,
                &client_secret,
                &scope,
                ca_file.as_deref(),
            )
            .await?;
            println!("{token}");
            Ok(())
        }
        None => serve(&args).await,
    }
}

async fn serve(args: &Args) -> anyhow::Result<()> {
    let (listen, clients) = (args.listen, &args.clients);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(https::server_config_from_files(cert, key)?)),
        _ => None,
    };
    let idp = IdentityProvider::start_with(ServeOptions {
        addr: listen,
        public_url: args.public_url.clone(),
        entra_home_tenant: args.entra_tenant.clone(),
        tls,
    })
    .await?;
    for api in &args.entra_apis {
        idp.register_api(api.clone());
    }
    idp.set_token_algorithm(args.token_alg);
    if clients.is_empty() {
        idp.register_client(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    }
    for client in clients {
        let Some((id, secret)) = client.split_once(':') else {
            bail!("--client {client:?}: expected ID:SECRET");
        };
        idp.register_client(id, secret);
    }
    if let Some(dir) = &args.write_tokens {
        write_tokens(&idp, dir, args.unique_tokens)
            .with_context(|| format!("writing tokens to {}", dir.display()))?;
    }
    // The issuer alone on stdout, so scripts can capture it.
    println!("{}", idp.issuer());
    eprintln!("discovery: {}", idp.discovery_url());
    eprintln!("jwks:      {}", idp.jwks_url());
    eprintln!("token:     {}", idp.token_url());
    // SIGTERM too: as a container's first process nothing else would stop it.
    tokengate_runtime::signals::wait_for_signal().await;
    Ok(())
}

/// Lifetime of `--write-tokens` tokens: longer than any load test.
const WRITTEN_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// Claims of a typical access token (about the size of an Entra one without groups), so that
/// per-token work such as hashing and claim parsing costs what it costs in practice.
fn load_test_claims(idp: &IdentityProvider, serial: usize) -> Value {
    let mut claims = idp.claims();
    let iat = claims["iat"].as_u64().unwrap_or_default();
    claims["exp"] = json!(iat + WRITTEN_TOKEN_LIFETIME_SECS);
    claims["jti"] = json!(format!("load-{serial:08}"));
    claims["azp"] = json!(DEMO_CLIENT_ID);
    claims["email"] = json!("load-test@example.com");
    claims["email_verified"] = json!(true);
    claims["name"] = json!("Load Test");
    claims["scp"] = json!("orders.read orders.write");
    claims["roles"] = json!(["Orders.Read", "Orders.Write"]);
    claims
}

fn write_tokens(idp: &IdentityProvider, dir: &Path, unique: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
    };
    write(
        "rsa.jwk.json",
        &idp.current_key(KeyFamily::Rsa).jwk.to_string(),
    )?;
    write(
        "p256.jwk.json",
        &idp.current_key(KeyFamily::EcP256).jwk.to_string(),
    )?;
    let rs256 = idp.sign(Algorithm::RS256, &load_test_claims(idp, 0));
    write("rs256.jwt", &format!("{rs256}\n"))?;
    let es256 = idp.sign(Algorithm::ES256, &load_test_claims(idp, 0));
    write("es256.jwt", &format!("{es256}\n"))?;
    // Same header and claims, another token's signature: verification runs to the end and fails.
    let signing_input = rs256.rsplit_once('.').map_or("", |(input, _)| input);
    let other = idp.sign(Algorithm::RS256, &load_test_claims(idp, 1));
    let other_signature = other.rsplit_once('.').map_or("", |(_, sig)| sig);
    write(
        "rs256-bad-signature.jwt",
        &format!("{signing_input}.{other_signature}\n"),
    )?;
    let mut lines = String::new();
    for serial in 1..=unique {
        lines.push_str(&idp.sign(Algorithm::RS256, &load_test_claims(idp, serial)));
        lines.push('\n');
    }
    write("rs256-unique.txt", &lines)?;
    Ok(())
}

async fn fetch_token(
    issuer: &str,
    client_id: &str,
    client_secret: &str,
    scope: &str,
    ca_file: Option<&Path>,
) -> anyhow::Result<String> {
    // The key fetches' connector: the system roots plus the provider's CA, if given.
    let connector = tokengate_keys::https_connector(ca_file)?;
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let discovery = send(&client, Request::get(&discovery_url).body(Full::default())?)
        .await
        .with_context(|| format!("fetching {discovery_url}"))?;
    let Some(token_url) = discovery["token_endpoint"].as_str() else {
        bail!("{discovery_url} has no token_endpoint");
    };
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("client_secret", client_secret)
        .append_pair("scope", scope)
        .finish();
    let request = Request::builder()
        .method(Method::POST)
        .uri(token_url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))?;
    let answer = send(&client, request)
        .await
        .with_context(|| format!("requesting {token_url}"))?;
    match answer["access_token"].as_str() {
        Some(token) => Ok(token.to_owned()),
        None => bail!("no access_token in {answer}"),
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn send(client: &HttpsClient, request: Request<Full<Bytes>>) -> anyhow::Result<Value> {
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).context("parsing JSON response")
}
