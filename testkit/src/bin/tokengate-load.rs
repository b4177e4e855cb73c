//! Open-loop load at a fixed rate, for latency figures: requests are scheduled at exact
//! intervals whatever the server does, rotate through a list of bearer tokens, and their
//! latencies are reported as percentiles.
//!
//! A request's latency runs from its send; when the previous response on the same connection
//! came back after this request's scheduled time, it runs from the scheduled time instead, so a
//! stalled server is not hidden by the requests it delayed (coordinated omission). Timer slack
//! of the load generator itself is not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokengate_testkit::metrics::nearest_rank;
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(name = "tokengate-load", version)]
struct Args {
    /// `http://127.0.0.1:PORT/path` (loopback only).
    url: Uri,

    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,

    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,

    /// Seconds at the same rate before measuring (connection set-up, pools, caches).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Connections; request i goes on connection i mod N.
    #[arg(long, default_value_t = 16)]
    connections: usize,

    /// File of tokens, one a line, sent as `Authorization: Bearer` in turn; none: no header.
    #[arg(long)]
    tokens: Option<std::path::PathBuf>,

    /// Status every response must have; others are counted as errors.
    #[arg(long, default_value_t = 200)]
    expect_status: u16,
}

struct Outcome {
    latencies_us: Vec<u32>,
    errors: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = args.url.host().context("the URL has no host")?.to_owned();
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]") {
        bail!("only loopback targets are allowed, not {host}");
    }
    let port = args.url.port_u16().unwrap_or(80);
    let authority = format!("{host}:{port}");
    let path: Uri = args
        .url
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()?;
    let tokens: Vec<String> = match &args.tokens {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| format!("Bearer {}", line.trim()))
            .collect(),
        None => Vec::new(),
    };
    if args.tokens.is_some() && tokens.is_empty() {
        bail!("the token file is empty");
    }
    if args.rate == 0 || args.connections == 0 {
        bail!("--rate and --connections must be positive");
    }
    let tokens = Arc::new(tokens);
    let interval = Duration::from_secs(1) / args.rate;
    let warmup = (args.warmup * f64::from(args.rate)) as u64;
    let measured = (args.duration * f64::from(args.rate)) as u64;
    let total = warmup + measured;
    let connections = args.connections as u64;
    // Connections open before the clock starts.
    let mut senders = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    let start = Instant::now() + Duration::from_millis(10);
    let mut tasks = Vec::new();
    for (lane, mut sender) in senders.into_iter().enumerate() {
        let tokens = Arc::clone(&tokens);
        let (authority, path) = (authority.clone(), path.clone());
        let expect = args.expect_status;
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome {
                latencies_us: Vec::with_capacity((measured / connections + 1) as usize),
                errors: 0,
            };
            let mut previous_done = start;
            let mut index = lane as u64;
            while index < total {
                let scheduled = start + interval * u32::try_from(index).unwrap_or(u32::MAX);
                tokio::time::sleep_until(scheduled.into()).await;
                let mut request = Request::get(path.clone()).header(header::HOST, &authority);
                if !tokens.is_empty() {
                    let token = &tokens[(index % tokens.len() as u64) as usize];
                    request = request.header(header::AUTHORIZATION, token.as_str());
                }
                let request = request.body(Empty::<Bytes>::new())?;
                let began = if previous_done > scheduled {
                    scheduled
                } else {
                    Instant::now()
                };
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        response.into_body().collect().await.is_ok() && status == expect
                    }
                    Err(_) => false,
                };
                let done = Instant::now();
                previous_done = done;
                if index >= warmup {
                    if ok {
                        let micros = done.duration_since(began).as_micros();
                        outcome
                            .latencies_us
                            .push(u32::try_from(micros).unwrap_or(u32::MAX));
                    } else {
                        outcome.errors += 1;
                    }
                }
                if sender.ready().await.is_err() {
                    bail!("connection {lane} closed by the server");
                }
                index += connections;
            }
            Ok::<_, anyhow::Error>(outcome)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let outcome = task.await??;
        latencies.extend(outcome.latencies_us);
        errors += outcome.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let quantile =
        |q: f64| nearest_rank(&latencies, q).map_or(f64::NAN, |micros| f64::from(micros) / 1000.0);
    // One line of key=value pairs (milliseconds), for scripts.
    println!(
        "requests={} errors={} rate={} seconds={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
        latencies.len(),
        errors,
        args.rate,
        elapsed,
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        quantile(0.999),
        quantile(1.0),
    );
    if errors > 0 {
        bail!(
            "{errors} requests failed or had another status than {expect}",
            expect = args.expect_status
        );
    }
    Ok(())
}
