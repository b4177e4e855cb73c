use clap::Parser as _;
use tokengate_sidecar::cli::{Cli, Command, EXIT_CONFIG};
use tokengate_sidecar::process::{init_logging, wait_for_signal};

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
                0
            }
            Err(err) => {
                tracing::error!("{err:#}");
                EXIT_CONFIG
            }
        },
        Command::Check(args) => match tokengate_sidecar::cli::run_check(args).await {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(err) => {
                eprintln!("error: {err:#}");
                EXIT_CONFIG
            }
        },
    };
    std::process::exit(code);
}
