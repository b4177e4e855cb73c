use clap::Parser as _;
use tokengate_runtime::{exit, init_logging, wait_for_signal};
use tokengate_sidecar::cli::{Cli, Command};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let code = match cli.command {
        Command::Run(args) => match tokengate_sidecar::start(args.into_config()).await {
            Ok(running) => {
                wait_for_signal().await;
                tracing::info!("shutting down");
                running.shutdown().await;
                exit::OK
            }
            Err(err) => {
                tracing::error!("{err:#}");
                exit::CONFIG
            }
        },
        Command::Check(args) => match tokengate_sidecar::cli::run_check(args).await {
            Ok(true) => exit::OK,
            Ok(false) => exit::FAILURE,
            Err(err) => {
                eprintln!("error: {err:#}");
                exit::CONFIG
            }
        },
    };
    std::process::exit(code);
}
