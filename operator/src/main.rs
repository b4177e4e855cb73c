use clap::Parser as _;
use tokengate_operator::cli::{Cli, init_logging, run};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if let Err(err) = run(cli).await {
        tracing::error!("{err:#}");
        std::process::exit(tokengate_runtime::exit::FAILURE);
    }
}
