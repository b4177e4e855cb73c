use clap::Parser as _;
use tokengate_sidecar::cli::{Cli, Command, EXIT_CONFIG, LogFormat};

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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
