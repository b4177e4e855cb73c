//! kubectl and helm, the tools users meet tokengate through, built by
//! `testkit/controlplane/build.sh` at pinned versions (`make kubectl helm`) and found through
//! `TOKENGATE_KUBECTL_BIN` / `TOKENGATE_HELM_BIN` (else the build script's cache directories).
//!
//! [`Tool::run`] fails on a non-zero exit and on any warning the tool prints, since a warning
//! on `kubectl apply` is what a user sees as a broken manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Environment variable naming the directory holding `kubectl`.
pub const KUBECTL_BIN_ENV: &str = "TOKENGATE_KUBECTL_BIN";
/// Environment variable naming the directory holding `helm`.
pub const HELM_BIN_ENV: &str = "TOKENGATE_HELM_BIN";

/// A command-line tool bound to one kubeconfig.
#[derive(Clone, Debug)]
pub struct Tool {
    program: PathBuf,
    kubeconfig: PathBuf,
    /// Directory for helm's cache, config and data, so no user state leaks in or out.
    home: PathBuf,
}

/// What a tool printed.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Tool {
    /// kubectl, talking to the cluster of `kubeconfig`.
    pub fn kubectl(kubeconfig: &Path, home: &Path) -> Result<Self> {
        Self::find(
            "kubectl",
            KUBECTL_BIN_ENV,
            "--print-kubectl-bin-dir",
            kubeconfig,
            home,
        )
    }

    /// helm, talking to the cluster of `kubeconfig`.
    pub fn helm(kubeconfig: &Path, home: &Path) -> Result<Self> {
        Self::find(
            "helm",
            HELM_BIN_ENV,
            "--print-helm-bin-dir",
            kubeconfig,
            home,
        )
    }

    fn find(name: &str, env: &str, flag: &str, kubeconfig: &Path, home: &Path) -> Result<Self> {
        let dir = match std::env::var_os(env) {
            Some(dir) => PathBuf::from(dir),
            None => super::build_script_dir(flag)?,
        };
        let program = dir.join(name);
        if !program.is_file() {
            bail!(
                "{} is missing: run `make {name}` (or `testkit/controlplane/build.sh {name}`) and \
                 export {env}, as `make test` does",
                program.display()
            );
        }
        Ok(Self {
            program,
            kubeconfig: kubeconfig.to_owned(),
            home: home.to_owned(),
        })
    }

    /// Runs the tool with `args`; fails on a non-zero exit or on a warning on stderr.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let output = self.run_unchecked(args)?;
        if let Some(line) = output
            .stderr
            .lines()
            .find(|line| line.to_ascii_lowercase().contains("warning"))
        {
            bail!(
                "{} printed a warning: {line}\n{}",
                self.name(),
                output.stderr
            );
        }
        Ok(output)
    }

    /// Runs the tool with `args` and returns what it printed; fails only on a non-zero exit,
    /// with stderr in the error.
    pub fn run_unchecked<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let output = self
            .command()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} {shown}", self.name()))?;
        let result = Output {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        if !output.status.success() {
            bail!(
                "{} {shown} failed ({}):\n{}",
                self.name(),
                output.status,
                result.stderr
            );
        }
        Ok(result)
    }

    /// The command with the kubeconfig and an isolated home set, for callers that need more.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.home.join("helm/config"))
            .env("HELM_DATA_HOME", self.home.join("helm/data"));
        command
    }

    fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The objects of a manifest file as kubectl reads it (YAML 1.1, sigs.k8s.io/yaml),
    /// without the server: `kubectl create --dry-run=client -o json`, lists flattened and
    /// numbers normalised ([`whole_numbers_as_integers`]), to compare with what we wrote.
    pub fn objects_as_read(&self, path: &Path) -> Result<Vec<Value>> {
        let out = self
            .run([
                "create",
                "--dry-run=client",
                "--validate=false",
                "-o",
                "json",
                "-f",
                path.to_str().context("a UTF-8 path")?,
            ])?
            .stdout;
        let mut objects = Vec::new();
        for value in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
            let value = whole_numbers_as_integers(value.context("kubectl prints JSON")?);
            if value["kind"] == "List" {
                objects.extend(value["items"].as_array().cloned().unwrap_or_default());
            } else {
                objects.push(value);
            }
        }
        Ok(objects)
    }
}

/// kubectl fills in its context's namespace where a file names none: drops it from `theirs`
/// (kubectl's reading, [`Tool::objects_as_read`]) wherever `ours` (the same objects as we read
/// them) has none, so the two compare equal when they agree on what the file says.
pub fn drop_context_namespaces(theirs: &mut [Value], ours: &[Value]) {
    for (their, our) in theirs.iter_mut().zip(ours) {
        if our["metadata"].get("namespace").is_none()
            && let Some(metadata) = their["metadata"].as_object_mut()
        {
            metadata.remove("namespace");
        }
    }
}

/// 400.0 and 400 are one number to an API server (JSON has no integer type); Rust's JSON values
/// tell them apart, so comparisons see whole numbers as integers.
pub fn whole_numbers_as_integers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                // Exact: a whole number below 2^53.
                #[allow(clippy::cast_possible_truncation)]
                let whole = f as i64;
                json!(whole)
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => {
            Value::Array(items.into_iter().map(whole_numbers_as_integers).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, whole_numbers_as_integers(v)))
                .collect(),
        ),
        other => other,
    }
}
