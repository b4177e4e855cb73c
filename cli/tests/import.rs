//! The import fixtures (`tests/fixtures/`): each `<case>.xml` is converted with the arguments
//! of `<case>.args` (one per line, if the file exists); the YAML must equal `<case>.yaml` and
//! the report `<case>.report`, and the exit code must be the one the report's summary names.
//! `TOKENGATE_UPDATE_GOLDEN=1` rewrites the expected files.
//!
//! The fixtures are the examples of APIM's policy reference for both policies, written out,
//! and a few more that reach every attribute and element.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokengate_cli::exit;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "the fixtures are missing");
    cases
}

fn extra_args(case: &Path) -> Vec<String> {
    std::fs::read_to_string(case.with_extension("args"))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Runs `tokengate import-apim <case>.xml <args>` in process: exit code, stdout, stderr.
fn import(case: &Path) -> (i32, String, String) {
    let mut args: Vec<OsString> = vec!["tokengate".into(), "import-apim".into(), case.into()];
    args.extend(extra_args(case).into_iter().map(OsString::from));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tokengate_cli::cli::main(&args, &mut std::io::empty(), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("UTF-8 YAML"),
        String::from_utf8(err).expect("UTF-8 report"),
    )
}

fn expected_code(report: &str) -> i32 {
    if report.contains(&format!("(exit {})", exit::INCOMPLETE)) {
        exit::INCOMPLETE
    } else {
        exit::OK
    }
}

#[test]
fn every_fixture_converts_to_its_golden_yaml_and_report() {
    let update = std::env::var_os("TOKENGATE_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in fixtures() {
        let (code, yaml, report) = import(&case);
        let name = case
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        assert_ne!(code, exit::UNUSABLE, "{name}: {report}");
        assert_eq!(
            code,
            expected_code(&report),
            "{name}: exit code and summary disagree"
        );
        // What was written is TokenPolicy YAML the policy crate reads back.
        let documents = tokengate_policy::parse_documents(&yaml)
            .unwrap_or_else(|e| panic!("{name}: the output does not read back: {e}\n{yaml}"));
        assert!(!documents.is_empty());
        for (extension, actual) in [("yaml", &yaml), ("report", &report)] {
            let golden = case.with_extension(extension);
            if update {
                std::fs::write(&golden, actual).expect("write golden");
                continue;
            }
            let expected = std::fs::read_to_string(&golden).unwrap_or_default();
            if &expected != actual {
                failures.push(format!(
                    "{} differs (TOKENGATE_UPDATE_GOLDEN=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
                    golden.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The binary itself: reads standard input, writes YAML to stdout and the report to stderr,
/// and exits with the code the report names.
#[test]
fn the_binary_reads_standard_input_and_exits_with_the_reports_code() {
    let case = fixtures()
        .into_iter()
        .find(|c| c.ends_with("jwt-rsa-certificate.xml"))
        .expect("fixture");
    let xml = std::fs::read(&case).expect("fixture");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["import-apim", "-", "--name", "jwt-rsa-certificate"])
        .args(extra_args(&case))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokengate runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&xml).expect("write stdin");
    }
    let output = child.wait_with_output().expect("tokengate ends");
    let yaml = String::from_utf8_lossy(&output.stdout);
    let report = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(exit::INCOMPLETE), "{report}");
    assert_eq!(
        yaml,
        std::fs::read_to_string(case.with_extension("yaml")).expect("golden")
    );
    assert_eq!(
        report,
        std::fs::read_to_string(case.with_extension("report")).expect("golden")
    );

    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["import-apim", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("tokengate runs");
    assert_eq!(output.status.code(), Some(exit::UNUSABLE));
    assert!(output.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the input is empty"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
