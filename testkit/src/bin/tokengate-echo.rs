//! Runs the upstream echo server: HTTP/1.1 and h2c on one port, `/bytes/{n}`, `/ws`.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokengate_testkit::echo::EchoServer;

/// Echo server: answers every request with a JSON description of it.
#[derive(Debug, Parser)]
#[command(name = "tokengate-echo", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = EchoServer::start_on(args.listen).await?;
    // The URL alone on stdout, so scripts can capture it.
    println!("{}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
