//! Path normalisation: whatever the sidecar forwards is its own canonical form, and every
//! application server reads it as the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate_policy::routes::canonical_path;
use tokengate_policy::spec::{Backslashes, EscapedSlashes, PathNormalization, PathParameters};

/// The options from one byte.
fn options(byte: u8) -> PathNormalization {
    PathNormalization {
        merge_slashes: byte & 1 == 0,
        escaped_slashes: [
            EscapedSlashes::Reject,
            EscapedSlashes::Unescape,
            EscapedSlashes::Keep,
        ][usize::from(byte >> 1 & 3) % 3],
        backslashes: [Backslashes::Reject, Backslashes::Slash, Backslashes::Keep]
            [usize::from(byte >> 3 & 3) % 3],
        path_parameters: [
            PathParameters::Reject,
            PathParameters::Strip,
            PathParameters::Keep,
        ][usize::from(byte >> 5 & 3) % 3],
        case_sensitive: byte & 0x80 == 0,
    }
}

fn decode(path: &str, slashes: bool) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(value) = u8::from_str_radix(hex, 16)
        {
            if slashes || (value != b'/' && value != b'\\') {
                out.push(value);
            } else {
                out.extend_from_slice(&bytes[i..i + 3]);
            }
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn resolve(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in path.split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::new();
    for s in segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&byte, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let paths = options(byte);
    let Ok(canonical) = canonical_path(raw, &paths) else {
        return;
    };
    assert!(canonical.starts_with('/'), "{raw:?} -> {canonical:?}");
    assert!(canonical.is_ascii(), "{raw:?} -> {canonical:?}");
    assert!(
        !canonical.bytes().any(|b| b < 0x20 || b == 0x7f),
        "{raw:?} -> {canonical:?}"
    );
    let again = canonical_path(&canonical, &paths).expect("a canonical path is accepted");
    assert_eq!(again, canonical, "not a fixed point: {raw:?}");
    // The defaults (and Unescape/Slash/Strip) leave nothing for servers to disagree about:
    // decoding, decoding `%2F` too, dropping `;` parameters, reading `\` as `/`, resolving
    // dot segments and merging slashes all give the same path.
    let unambiguous = paths.merge_slashes
        && paths.escaped_slashes != EscapedSlashes::Keep
        && paths.backslashes != Backslashes::Keep
        && paths.path_parameters != PathParameters::Keep;
    if unambiguous {
        let plain = decode(&canonical, false);
        assert!(!plain.contains(&b'\\'), "{raw:?} -> {canonical:?}");
        assert!(!canonical.contains(';'), "{raw:?} -> {canonical:?}");
        let everything = decode(&canonical, true);
        assert_eq!(
            plain, everything,
            "{raw:?} -> {canonical:?}: encoded separator"
        );
        let mut routed = resolve(&plain);
        if plain.ends_with(b"/") && !routed.is_empty() {
            routed.push(b'/');
        }
        if routed.is_empty() {
            routed.push(b'/');
        }
        assert_eq!(
            routed, plain,
            "{raw:?} -> {canonical:?}: a server would resolve further"
        );
    }
});
