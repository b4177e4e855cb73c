//! Prints the TokenPolicy CustomResourceDefinition as YAML:
//! `cargo run -p tokengate-operator --bin crdgen > crds/tokengate.dev_tokenpolicies.yaml`;
//! with `--reference`, the TokenPolicy reference rendered from its schema as Markdown:
//! `cargo run -p tokengate-operator --bin crdgen -- --reference > docs/reference.md`.

use std::io::Write as _;

use clap::Parser;

/// Prints the TokenPolicy CRD (YAML) or, with --reference, its field reference (Markdown).
#[derive(Parser)]
struct Args {
    /// Print the TokenPolicy reference (docs/reference.md) instead of the CRD.
    #[arg(long)]
    reference: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = if args.reference {
        tokengate_operator::reference::reference_markdown()?
    } else {
        tokengate_operator::crd::crd_yaml()?
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}
