//! Running processes as a ServiceAccount, with a token from the TokenRequest API, so that RBAC
//! rules are exercised by the real authorizer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

use super::{ControlPlane, Credentials, Process, write_kubeconfig};

/// Asks the API server for a token of ServiceAccount `namespace/name`, valid for `ttl`.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audiences: &[String],
    ttl: Duration,
) -> Result<String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences.to_vec()),
            expiration_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
    response
        .status
        .and_then(|status| status.token)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} returned no token"))
}

impl ControlPlane {
    /// Writes a kubeconfig at `path` that authenticates as ServiceAccount `namespace/name`
    /// (token valid for an hour) with `namespace` as its default namespace.
    pub async fn write_service_account_kubeconfig(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Result<()> {
        let token =
            service_account_token(client, namespace, name, &[], Duration::from_secs(3600)).await?;
        write_kubeconfig(
            path,
            self.server(),
            self.ca_pem(),
            &format!("system:serviceaccount:{namespace}:{name}"),
            &Credentials::Token(token),
            Some(namespace),
        )
    }

    /// A fresh directory under the control plane's for one process's kubeconfig and log.
    fn process_dir(&self, label: &str) -> Result<PathBuf> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(self.dir())
            .with_context(|| format!("creating a directory for {label}"))?
            .keep();
        Ok(dir)
    }

    /// Starts `command` with `KUBECONFIG` pointing at a ServiceAccount kubeconfig (see
    /// [`ControlPlane::write_service_account_kubeconfig`]); its output goes to a log file in the
    /// control plane's directory. The process is killed when the returned handle is dropped.
    pub async fn spawn_as_service_account(
        &self,
        client: &kube::Client,
        namespace: &str,
        service_account: &str,
        mut command: Command,
    ) -> Result<Process> {
        let label = program_label(&command);
        let dir = self.process_dir(&label)?;
        let kubeconfig = dir.join("kubeconfig");
        self.write_service_account_kubeconfig(client, namespace, service_account, &kubeconfig)
            .await?;
        isolate_from_cluster_env(&mut command, &kubeconfig);
        Process::spawn(label, command, &dir.join("output.log"))
    }

    /// Runs `command` to completion as ServiceAccount `namespace/service_account` and returns
    /// its output.
    pub async fn run_as_service_account(
        &self,
        client: &kube::Client,
        namespace: &str,
        service_account: &str,
        mut command: Command,
    ) -> Result<Output> {
        let label = program_label(&command);
        let dir = self.process_dir(&label)?;
        let kubeconfig = dir.join("kubeconfig");
        self.write_service_account_kubeconfig(client, namespace, service_account, &kubeconfig)
            .await?;
        isolate_from_cluster_env(&mut command, &kubeconfig);
        tokio::process::Command::from(command)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {label}"))
    }
}

fn program_label(command: &Command) -> String {
    Path::new(command.get_program())
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "process".to_string())
}

/// Points the process at the kubeconfig and hides any in-cluster configuration it could
/// otherwise fall back to.
fn isolate_from_cluster_env(command: &mut Command, kubeconfig: &Path) {
    command
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
}
