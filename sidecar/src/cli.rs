//! Command line of `tokengate-sidecar`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokengate_policy::contract;

use crate::gate::StartupMode;
use crate::load::{load_pod_labels, load_policy_files, select_policy};
use crate::proxy::{UpstreamProtocol, UpstreamSettings};
use crate::server::{Limits, SidecarConfig};
use tokengate_keys::{KeyCache, KeyMetrics, KeySettings};

fn every_address(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

#[derive(Parser, Debug)]
#[command(
    name = "tokengate-sidecar",
    version,
    about = "Validates the bearer token of every request before it reaches the application"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TOKENGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

pub use tokengate_runtime::LogFormat;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Explain the decision for one token, check by check.
    Check(CheckArgs),
    /// Install the pod firewall in this network namespace (the injected init container; needs
    /// NET_ADMIN): the application's port accepts connections only over loopback. Prints the
    /// rules installed.
    Firewall(FirewallArgs),
}

#[derive(Args, Debug)]
pub struct FirewallArgs {
    /// The application's port, closed to everything but loopback.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TokenPolicy YAML file (the same file `kubectl apply` takes); repeatable. Re-read when
    /// it changes.
    #[arg(
        long = "policy",
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    pub policies: Vec<PathBuf>,

    /// The operator's bundle as mounted in the pod: DIR/policies (ConfigMap
    /// tokengate-policies, one <policy>.yaml per TokenPolicy) and DIR/keys (Secret
    /// tokengate-keys, <secret>.<key> files for secretRef keys). Watched; may appear after
    /// start (NoPolicy until then).
    #[arg(long, value_name = "DIR", requires = "pod_labels")]
    pub bundle: Option<PathBuf>,

    /// Downward-API labels file of the pod; selects among several policies (the oldest
    /// wins when several match). Re-read when it changes.
    #[arg(long)]
    pub pod_labels: Option<PathBuf>,

    /// Address clients connect to (15080: the port the operator's NetworkPolicy admits).
    #[arg(long, default_value_t = every_address(contract::SIDECAR_PROXY_PORT))]
    pub listen: SocketAddr,

    /// The application, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub upstream: http::Uri,

    /// HTTP version spoken to the application.
    #[arg(long, value_enum, default_value_t = UpstreamProtocol::Auto)]
    pub upstream_protocol: UpstreamProtocol,

    /// Admin address serving /live, /ready and /metrics (15081, admitted by the operator's
    /// NetworkPolicy for scrapes and probes).
    #[arg(long, default_value_t = every_address(contract::SIDECAR_ADMIN_PORT))]
    pub admin: SocketAddr,

    #[command(flatten)]
    pub keys: KeyArgs,

    /// How often policy, bundle, key and pod-label files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,

    /// Verified tokens remembered (valid tokens only, 8 KiB at most, exp rechecked on every
    /// use); 0 disables the cache.
    #[arg(long, default_value_t = crate::token_cache::DEFAULT_ENTRIES)]
    pub token_cache_entries: usize,

    /// Requests before the first keys arrive: failClosed answers 503 KeysUnavailable at once;
    /// wait holds them until the keys are there (up to --startup-timeout), then judges them.
    #[arg(long, value_enum, default_value_t = StartupMode::FailClosed)]
    pub startup: StartupMode,

    /// Longest wait for keys at startup with --startup wait, counted from the start.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub startup_timeout: Duration,

    /// Time a client has to send its request headers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest request head accepted, in bytes.
    #[arg(long, default_value_t = 65536)]
    pub max_header_bytes: usize,

    /// Time in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Time a new client connection has to start its first request, protocol detection
    /// included (a connection that sends nothing, or only the HTTP/2 preface, is closed).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub first_request_timeout: Duration,

    /// Time a client connection may stay open with no request in flight.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Client connections held at most; new ones beyond are closed at once, and from 80% of
    /// it on idle and new connections get 1s until fewer remain. Lowered to what the
    /// descriptor limit allows (the soft limit is raised to the hard one at start).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// Time allowed to connect to the application.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Time allowed for the application's response headers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// The pod firewall (`tokengate-sidecar firewall`) is expected to close this application
    /// port: /ready fails until its rules are in force, and the sidecar says so in its log and
    /// in metric tokengate_pod_firewall.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub require_pod_firewall: Option<u16>,

    /// Application probes the sidecar runs on the application's behalf, served on the admin
    /// port at /app-health/<container>/<kind> (JSON, as the webhook writes it).
    #[arg(long, env = tokengate_policy::contract::APP_PROBES_ENV, value_parser = parse_app_probes, default_value = "[]", hide_default_value = true)]
    pub app_probes: AppProbes,

    /// Threads serving requests. 0: the CPUs the sidecar may use (its CPU affinity and cgroup
    /// CPU limit), at most 2, since a sidecar shares its pod's CPU with the application. With
    /// 1 everything runs on one thread, which costs the least per request.
    #[arg(long, default_value_t = 0, env = "TOKENGATE_WORKER_THREADS")]
    pub worker_threads: usize,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// Refresh interval of key sets the sidecar fetches itself (`keyDelivery: Sidecar`, or
    /// the fallback while the bundle has no fresh keys for a source).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub key_refresh_interval: Duration,

    /// Least time between refetches caused by unknown key ids; a key id still unknown after
    /// a refetch is refused without fetching for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub key_miss_cooldown: Duration,

    /// How long keys stay in use when refreshes fail, counted from their fetch (the
    /// operator's, for keys delivered in the bundle).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub key_max_stale: Duration,

    /// Timeout of one key fetch.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub key_fetch_timeout: Duration,

    /// PEM bundle trusted besides the system roots when fetching keys.
    #[arg(long)]
    pub extra_ca_file: Option<PathBuf>,
}

impl KeyArgs {
    fn settings(&self) -> KeySettings {
        KeySettings {
            refresh_interval: self.key_refresh_interval,
            miss_cooldown: self.key_miss_cooldown,
            max_stale: self.key_max_stale,
            fetch_timeout: self.key_fetch_timeout,
            user_agent: tokengate_keys::user_agent("tokengate-sidecar"),
            ..KeySettings::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// TokenPolicy YAML file; repeatable.
    #[arg(long = "policy", required = true)]
    pub policies: Vec<PathBuf>,

    /// Downward-API labels file choosing among several policies.
    #[arg(long)]
    pub pod_labels: Option<PathBuf>,

    /// The token (without the scheme).
    #[arg(long, env = "TOKENGATE_TOKEN")]
    pub token: String,

    #[arg(long, default_value = "GET")]
    pub method: String,

    #[arg(long, default_value = "/")]
    pub path: String,

    #[command(flatten)]
    pub keys: KeyArgs,
}

/// Most worker threads chosen when `--worker-threads` is 0.
pub const DEFAULT_MAX_WORKER_THREADS: usize = 2;

/// The worker threads `--worker-threads` asks for: `requested`, or when 0 the CPUs available
/// (`available`, from the affinity mask and cgroup quota) up to [`DEFAULT_MAX_WORKER_THREADS`].
pub fn worker_threads(requested: usize, available: Option<usize>) -> usize {
    match requested {
        0 => available.unwrap_or(1).clamp(1, DEFAULT_MAX_WORKER_THREADS),
        n => n,
    }
}

/// The runtime the proxy runs on: a single-threaded one for one worker (no work stealing, no
/// cross-thread wake-ups), else a multi-threaded one with `workers` threads.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}

impl RunArgs {
    pub fn into_config(self) -> SidecarConfig {
        SidecarConfig {
            policy_files: self.policies,
            bundle: self.bundle,
            pod_labels: self.pod_labels,
            listen: self.listen,
            admin: self.admin,
            upstream: UpstreamSettings {
                base: self.upstream,
                protocol: self.upstream_protocol,
                connect_timeout: self.upstream_connect_timeout,
                response_timeout: self.upstream_timeout,
            },
            keys: self.keys.settings(),
            limits: Limits {
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes,
                drain_timeout: self.drain_timeout,
                first_request_timeout: self.first_request_timeout,
                idle_timeout: self.idle_timeout,
                max_connections: self.max_connections,
            },
            extra_ca: self.keys.extra_ca_file,
            reload_interval: self.reload_interval,
            token_cache_entries: self.token_cache_entries,
            startup: self.startup,
            startup_timeout: self.startup_timeout,
            pod_firewall: self.require_pod_firewall,
            app_probes: self.app_probes.0,
        }
    }
}

/// The `--app-probes` list.
#[derive(Clone, Debug, Default)]
pub struct AppProbes(pub Vec<contract::AppProbe>);

fn parse_app_probes(text: &str) -> Result<AppProbes, String> {
    serde_json::from_str(text)
        .map(AppProbes)
        .map_err(|e| format!("not a list of application probes: {e}"))
}

/// Runs `firewall`: installs the rules, prints them, and checks that they answer.
pub async fn run_firewall(args: FirewallArgs) -> anyhow::Result<()> {
    let firewall = crate::firewall::PodFirewall { port: args.port };
    let started = std::time::Instant::now();
    firewall.install().context("installing the pod firewall")?;
    let installed = started.elapsed();
    print!("{}", firewall.nft_text());
    let state = crate::firewall::canary(Duration::from_secs(2))
        .await
        .context("checking the pod firewall's canary")?;
    if state != crate::firewall::CanaryState::InPlace {
        anyhow::bail!(
            "the rules were accepted but the canary rule does not answer: the pod firewall is not in force"
        );
    }
    tracing::info!(
        port = args.port,
        "pod firewall installed in {:.1} ms: port {} accepts connections over loopback only",
        installed.as_secs_f64() * 1000.0,
        args.port
    );
    Ok(())
}

/// Runs `check`; `Ok(true)` when the token is allowed.
pub async fn run_check(args: CheckArgs) -> anyhow::Result<bool> {
    let policies = load_policy_files(&args.policies)?;
    let labels = args
        .pod_labels
        .as_deref()
        .map(load_pod_labels)
        .transpose()?;
    let (chosen, conflicts) = select_policy(policies, labels.as_ref());
    let policy = chosen.context("no policy selects a pod with these labels")?;
    if !conflicts.is_empty() {
        println!(
            "note: also selecting this pod, not applied: {}",
            conflicts.join(", ")
        );
    }
    let keys = KeyCache::new(
        args.keys.settings(),
        Arc::new(KeyMetrics::unregistered()?),
        args.keys.extra_ca_file.as_deref(),
    )?;
    let token = args.token.trim();
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .unwrap_or(token);
    let report = crate::check::check(
        policy,
        keys,
        token,
        &args.method.to_ascii_uppercase(),
        &args.path,
    )
    .await;
    print!("{}", report.text);
    Ok(report.allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_follow_the_cpus_available_up_to_two() {
        assert_eq!(worker_threads(0, Some(1)), 1);
        assert_eq!(worker_threads(0, Some(2)), 2);
        assert_eq!(worker_threads(0, Some(64)), DEFAULT_MAX_WORKER_THREADS);
        // Unknown: one thread.
        assert_eq!(worker_threads(0, None), 1);
        // Asked for: as asked, beyond the default cap too.
        assert_eq!(worker_threads(1, Some(8)), 1);
        assert_eq!(worker_threads(4, Some(1)), 4);
    }

    #[test]
    fn one_worker_is_a_single_threaded_runtime() {
        let single = runtime(1).expect("runtime");
        assert_eq!(
            single.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let multi = runtime(2).expect("runtime");
        assert_eq!(
            multi.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert_eq!(multi.metrics().num_workers(), 2);
    }
}
