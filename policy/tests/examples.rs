//! Every example under examples/ parses and validates, so the docs cannot drift from the API.

use std::path::Path;

use tokengate_policy::{parse_documents, validate};

#[test]
fn examples_are_valid_token_policies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example readable");
        let docs = parse_documents(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        for doc in docs {
            let errors = validate(&doc.spec);
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected the examples, found {seen}");
}
