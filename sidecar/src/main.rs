use clap::Parser as _;
use tokengate_runtime::{exit, init_logging, wait_for_signal};
use tokengate_sidecar::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let workers = match &cli.command {
        Command::Run(args) => cli::worker_threads(
            args.worker_threads,
            std::thread::available_parallelism().ok().map(usize::from),
        ),
        Command::Check(_) | Command::Firewall(_) => 1,
    };
    let runtime = match cli::runtime(workers) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                tracing::info!(worker_threads = workers, "starting");
                match tokengate_sidecar::start(args.into_config()).await {
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
                }
            }
            Command::Firewall(args) => match cli::run_firewall(args).await {
                Ok(()) => exit::OK,
                Err(err) => {
                    tracing::error!("{err:#}");
                    exit::FAILURE
                }
            },
            Command::Check(args) => match cli::run_check(args).await {
                Ok(true) => exit::OK,
                Ok(false) => exit::FAILURE,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    exit::CONFIG
                }
            },
        }
    });
    std::process::exit(code);
}
