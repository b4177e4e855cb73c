//! TokenPolicy YAML: parsing and compilation never panic; what compiles also passes the
//! webhook's validation, and survives a round trip through YAML unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate_policy::{KeyFiles, compile, parse_documents, validate};

struct NoFiles;

impl KeyFiles for NoFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_owned(),
        ))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(documents) = parse_documents(text) else {
        return;
    };
    for document in documents.iter().take(4) {
        let compiled = compile(document, &NoFiles);
        let problems = validate(&document.spec);
        if compiled.is_ok() {
            assert!(
                problems.is_empty(),
                "compiles but the webhook refuses: {problems:?}"
            );
        }
        let yaml = serde_yaml::to_string(&document.spec).expect("a parsed spec serialises");
        let again: tokengate_policy::TokenPolicySpec =
            serde_yaml::from_str(&yaml).expect("a serialised spec parses");
        assert_eq!(again, document.spec, "round trip changed the spec:\n{yaml}");
    }
});
