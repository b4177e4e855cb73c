//! Command line of `tokengate`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::exit;
use crate::import::{DEFAULT_NAME, Import, Options, import};
use crate::values::NamedValues;

#[derive(Parser, Debug)]
#[command(
    name = "tokengate",
    version,
    about = "tokengate for its users: policy conversion"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert Azure API Management validate-jwt and validate-azure-ad-token policies into
    /// TokenPolicy YAML (stdout); what cannot be carried over is reported on stderr.
    ///
    /// Exit codes: 0 everything carried over; 2 YAML written, but the report lists something
    /// to resolve before applying; 64 unusable input, nothing written.
    #[command(name = "import-apim")]
    ImportApim(ImportApimArgs),
}

#[derive(Args, Debug)]
pub struct ImportApimArgs {
    /// The policy XML: one validate-jwt or validate-azure-ad-token element, several policies,
    /// a policy <fragment> or a whole <policies> document; `-` reads standard input.
    #[arg(value_name = "FILE|-")]
    pub input: PathBuf,

    /// A named value ({{NAME}} in the policy); repeatable. Named values not given stay in the
    /// output as {{NAME}} and are reported.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,

    /// metadata.name of the TokenPolicy (suffixed -1, -2, ... when the input holds several
    /// token policies). Default: the file's name without its extension.
    #[arg(long)]
    pub name: Option<String>,

    /// metadata.namespace. Default: none, so kubectl applies to its current namespace.
    #[arg(long)]
    pub namespace: Option<String>,

    /// A label of the pods to protect (spec.selector.matchLabels); repeatable. Without it the
    /// selector is a placeholder that selects no pod: tokengate.dev/edit-selector.
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    pub selector: Vec<String>,
}

/// Runs `tokengate` with `args` (the program name first) and returns the exit code.
pub fn main(
    args: &[OsString],
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                exit::UNUSABLE
            } else {
                exit::OK
            };
            let text = err.render().to_string();
            let out: &mut dyn Write = if err.use_stderr() { stderr } else { stdout };
            let _ = out.write_all(text.as_bytes());
            return code;
        }
    };
    match cli.command {
        Command::ImportApim(args) => match import_apim(&args, stdin) {
            Ok((yaml, import)) => {
                let report = import.report.render(import.policies.len());
                if let Err(err) = stdout
                    .write_all(yaml.as_bytes())
                    .and_then(|()| stdout.flush())
                {
                    let _ = writeln!(stderr, "error: writing the TokenPolicy YAML: {err}");
                    return exit::UNUSABLE;
                }
                let _ = stderr.write_all(report.as_bytes());
                if import.report.is_complete() {
                    exit::OK
                } else {
                    exit::INCOMPLETE
                }
            }
            Err(err) => {
                let _ = writeln!(stderr, "error: {err:#}");
                exit::UNUSABLE
            }
        },
    }
}

/// Reads, converts and renders; an error is unusable input.
pub fn import_apim(
    args: &ImportApimArgs,
    stdin: &mut dyn Read,
) -> anyhow::Result<(String, Import)> {
    let from_stdin = args.input.as_os_str() == "-";
    let xml = if from_stdin {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .context("reading the policy from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?
    };
    let name = match &args.name {
        Some(name) => {
            // 240: room for the `-N` suffix of several policies within 253.
            if !is_dns_subdomain(name) || name.len() > 240 {
                bail!(
                    "--name {name:?}: a TokenPolicy name is lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 240 characters"
                );
            }
            name.clone()
        }
        None if from_stdin => DEFAULT_NAME.to_owned(),
        None => name_from_file(&args.input),
    };
    if let Some(namespace) = &args.namespace
        && !is_dns_label(namespace)
    {
        bail!(
            "--namespace {namespace:?}: a namespace is lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
        );
    }
    let mut selector = BTreeMap::new();
    for pair in &args.selector {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--selector {pair:?}: write it as KEY=VALUE"))?;
        if !is_label_key(key) || !is_label_value(value) {
            bail!(
                "--selector {pair:?}: not a valid label (KEY: [prefix/]name, each name part up to 63 letters, digits, '-', '_' or '.'; VALUE: the same, up to 63 characters)"
            );
        }
        selector.insert(key.to_owned(), value.to_owned());
    }
    let values =
        NamedValues::parse(args.set.iter().map(String::as_str)).map_err(anyhow::Error::msg)?;
    let options = Options {
        name,
        namespace: args.namespace.clone(),
        selector,
        values,
    };
    let import = import(&xml, &options)?;
    let yaml = render(&import)?;
    Ok((yaml, import))
}

/// The TokenPolicies as one YAML stream, each introduced by a comment naming its source.
pub fn render(import: &Import) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, (path, document)) in import.policies.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&format!(
            "# Imported from APIM {path} by tokengate import-apim.\n"
        ));
        let yaml = serde_saphyr::to_string(document)
            .with_context(|| format!("writing TokenPolicy {} as YAML", document.metadata.name))?;
        out.push_str(&yaml);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// A TokenPolicy name from the file's name: `Orders API.xml` is `orders-api`.
fn name_from_file(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    for c in stem.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' {
            c
        } else {
            '-'
        };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    // Room for a `-NN` suffix.
    name.truncate(240);
    let name = name.trim_matches(|c: char| c == '-' || c == '.').to_owned();
    if is_dns_subdomain(&name) {
        name
    } else {
        DEFAULT_NAME.to_owned()
    }
}

fn is_dns_label(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn is_dns_subdomain(text: &str) -> bool {
    (1..=253).contains(&text.len())
        && text.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn is_label_name(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_key(text: &str) -> bool {
    match text.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(text),
    }
}

fn is_label_value(text: &str) -> bool {
    text.is_empty() || is_label_name(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files_and_labels() {
        assert_eq!(
            name_from_file(Path::new("dir/Orders API.xml")),
            "orders-api"
        );
        assert_eq!(name_from_file(Path::new("__.xml")), DEFAULT_NAME);
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("app"));
        assert!(!is_label_key("-app"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
        assert!(is_dns_subdomain("orders.v2"));
        assert!(!is_dns_subdomain("Orders"));
        assert!(!is_dns_label("shop.eu"));
    }

    fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
        let args: Vec<OsString> = std::iter::once("tokengate")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = main(&args, &mut stdin.as_bytes(), &mut out, &mut err);
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn exit_codes() {
        let policy = r#"<validate-jwt><openid-config url="https://idp.example/.well-known/openid-configuration"/></validate-jwt>"#;
        let (code, out, err) = run(&["import-apim", "-", "--selector", "app=orders"], policy);
        assert_eq!(code, exit::OK, "{err}");
        assert!(out.contains("name: apim-import"), "{out}");
        assert!(err.contains("everything carried over"), "{err}");

        let (code, _, err) = run(
            &["import-apim", "-", "--selector", "app=orders"],
            r#"<validate-jwt output-token-variable-name="jwt"><openid-config url="https://idp.example/.well-known/openid-configuration"/></validate-jwt>"#,
        );
        assert_eq!(code, exit::INCOMPLETE, "{err}");

        for (args, stdin) in [
            (&["import-apim", "-"][..], "not xml"),
            (&["import-apim", "-", "--name", "Bad_Name"][..], policy),
            (&["import-apim", "-", "--selector", "app"][..], policy),
            (&["import-apim", "-", "--set", "x"][..], policy),
            (&["import-apim", "does-not-exist.xml"][..], ""),
            (&["import-apim"][..], ""),
            (&["nonsense"][..], ""),
        ] {
            let (code, out, err) = run(args, stdin);
            assert_eq!(code, exit::UNUSABLE, "{args:?}: {err}");
            assert!(out.is_empty(), "{args:?} wrote {out}");
            assert!(!err.is_empty());
        }
        let (code, out, _) = run(&["import-apim", "--help"], "");
        assert_eq!(code, exit::OK);
        assert!(out.contains("Exit codes"), "{out}");
    }
}
