use clap::Parser as _;
use tokengate_operator::cli::{Cli, init_logging, run};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match run(cli).await {
        Ok(()) => tokengate_runtime::exit::OK,
        Err(err) => {
            tracing::error!("{err:#}");
            tokengate_runtime::exit::FAILURE
        }
    };
    // Exits without waiting for the runtime's blocking threads: a name lookup that hangs must
    // not hold up a shutdown.
    std::process::exit(code);
}
