//! Runs the upstream echo server: HTTP/1.1 and h2c on one port, `/bytes/{n}`, `/ws`. With
//! `request`, it is the client instead (the node tier's client pods have no curl): one HTTP
//! request, the response printed as status line, headers and body.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokengate_testkit::echo::EchoServer;

/// Echo server: answers every request with a JSON description of it.
#[derive(Debug, Parser)]
#[command(name = "tokengate-echo", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one HTTP/1.1 request and print the response: `HTTP/1.1 STATUS`, the headers, an
    /// empty line and the body. Exits 0 whatever the status; 1 when no response came.
    Request {
        /// http:// URL.
        url: String,
        /// A request header, as "Name: value" (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        #[arg(short = 'X', long, default_value = "GET")]
        method: Method,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Request {
        url,
        headers,
        method,
        timeout,
    }) = args.command
    {
        return request(&url, &headers, method, Duration::from_secs(timeout)).await;
    }
    let server = EchoServer::start_on(args.listen).await?;
    // The URL alone on stdout, so scripts can capture it.
    println!("{}", server.url());
    // SIGTERM too: as a container's first process nothing else would stop it.
    tokengate_runtime::signals::wait_for_signal().await;
    Ok(())
}

async fn request(
    url: &str,
    headers: &[String],
    method: Method,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut builder = Request::builder().method(method).uri(url);
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            bail!("--header {header:?}: expected \"Name: value\"");
        };
        let name = HeaderName::try_from(name.trim()).with_context(|| format!("header {name:?}"))?;
        let value =
            HeaderValue::try_from(value.trim()).with_context(|| format!("header {name}"))?;
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .with_context(|| format!("request to {url}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .with_context(|| format!("no response from {url} within {timeout:?}"))?
        .with_context(|| format!("requesting {url}"))?;
    println!("HTTP/1.1 {}", response.status().as_u16());
    for (name, value) in response.headers() {
        println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
    }
    println!();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the body from {url}"))?
        .to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
