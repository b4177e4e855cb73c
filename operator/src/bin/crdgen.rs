//! Prints the TokenPolicy CustomResourceDefinition as YAML:
//! `cargo run -p tokengate-operator --bin crdgen > crds/tokengate.dev_tokenpolicies.yaml`.

use std::io::Write as _;

fn main() -> anyhow::Result<()> {
    let yaml = tokengate_operator::crd::crd_yaml()?;
    std::io::stdout().write_all(yaml.as_bytes())?;
    Ok(())
}
