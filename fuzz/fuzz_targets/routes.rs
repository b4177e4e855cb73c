//! Rule matching: the rule a request meets covers the path forwarded, and no earlier rule
//! does. Input: an options byte, a method byte, then rule patterns and the request path, one
//! per line (the last line is the path).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate_policy::routes::{CompiledRule, RouteTable, canonical_path, route};
use tokengate_policy::spec::{
    Authentication, Backslashes, EscapedSlashes, PathNormalization, PathParameters, Rule,
};

const METHODS: [&str; 8] = [
    "GET", "get", "HEAD", "head", "POST", "Delete", "PUT", "OPTIONS",
];

fuzz_target!(|data: &[u8]| {
    let [options, method, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let paths = PathNormalization {
        merge_slashes: options & 1 == 0,
        escaped_slashes: [
            EscapedSlashes::Reject,
            EscapedSlashes::Unescape,
            EscapedSlashes::Keep,
        ][usize::from(options >> 1 & 3) % 3],
        backslashes: [Backslashes::Reject, Backslashes::Slash, Backslashes::Keep]
            [usize::from(options >> 3 & 3) % 3],
        path_parameters: [
            PathParameters::Reject,
            PathParameters::Strip,
            PathParameters::Keep,
        ][usize::from(options >> 5 & 3) % 3],
        case_sensitive: options & 0x80 == 0,
    };
    let method = METHODS[usize::from(*method) % METHODS.len()];
    let mut lines: Vec<&str> = text.split('\n').collect();
    let Some(raw_path) = lines.pop() else {
        return;
    };
    // A request path as the proxy sees it: the query and fragment are not part of it.
    let raw_path = raw_path.split(['?', '#']).next().unwrap_or_default();
    let mut rules = Vec::new();
    for (i, pattern) in lines.iter().take(8).enumerate() {
        let rule = Rule {
            paths: vec![(*pattern).to_owned()],
            methods: if i % 3 == 1 {
                vec!["get".into()]
            } else {
                Vec::new()
            },
            authentication: if i % 2 == 0 {
                Authentication::Disabled
            } else {
                Authentication::Required
            },
            required_claims: Vec::new(),
        };
        if let Ok(compiled) = CompiledRule::compile_with(&rule, &paths) {
            // A compiled pattern is canonical itself.
            for pattern in &compiled.paths {
                if !pattern.base.is_empty() {
                    let again = canonical_path(&pattern.base, &paths).expect("canonical pattern");
                    assert_eq!(again, pattern.base.as_str());
                }
            }
            rules.push(compiled);
        }
    }
    let table = RouteTable { rules, paths };
    let Ok(forwarded) = table.canonical_path(raw_path) else {
        return;
    };
    let judged = route(&table, method, &forwarded);
    // Judging the raw path and the forwarded one is the same decision.
    assert_eq!(route(&table, method, raw_path).rule, judged.rule);
    match judged.rule {
        Some(i) => {
            let rule = &table.rules[i];
            assert!(rule.matches(method, &forwarded));
            assert_eq!(judged.authentication, rule.authentication);
            assert!(
                !table.rules[..i]
                    .iter()
                    .any(|r| r.matches(method, &forwarded))
            );
            let pattern = rule
                .paths
                .iter()
                .find(|p| p.matches(&forwarded))
                .expect("a pattern of the rule covers the path");
            let (head, rest) = forwarded.split_at(pattern.base.len().min(forwarded.len()));
            let same = if pattern.case_sensitive {
                head == pattern.base
            } else {
                head.eq_ignore_ascii_case(&pattern.base)
            };
            assert!(same, "{forwarded:?} under {pattern}");
            if pattern.prefix {
                assert!(
                    rest.is_empty() || rest.starts_with('/'),
                    "{forwarded:?} under {pattern}"
                );
            } else {
                assert!(rest.is_empty(), "{forwarded:?} under {pattern}");
            }
        }
        None => {
            assert!(!table.rules.iter().any(|r| r.matches(method, &forwarded)));
            assert_eq!(judged.authentication, Authentication::Required);
        }
    }
});
