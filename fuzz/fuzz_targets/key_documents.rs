//! OpenID discovery and JWKS documents, through the sidecar's real key cache over real HTTP
//! on 127.0.0.1: the input is a discovery document and a JWKS document separated by a 0xFF
//! byte. Nothing panics; keys are taken only from a JWKS that holds usable keys, each with the
//! `kid` its entry names, and a discovery source reports the document's own `issuer`; the keys
//! taken read back unchanged from the document the operator delivers them in, and the input read
//! as such a document never panics.
//!
//! A string `jwks_uri` is pointed at the local JWKS before serving, so no input makes the
//! cache fetch from anywhere else.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokengate_keys::{KeyCache, KeyMetrics, KeySettings, Source, SourceKeys, delivery};
use tokengate_policy::RemoteKeySource;

struct Bench {
    runtime: tokio::runtime::Runtime,
    documents: Arc<Mutex<(Vec<u8>, Vec<u8>)>>,
    jwks_url: String,
    keys: Arc<KeyCache>,
    discovery: Arc<Source>,
    jwks: Arc<Source>,
}

static BENCH: LazyLock<Bench> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let documents = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let served = Arc::clone(&documents);
    let (keys, discovery, jwks, jwks_url) =
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let addr = listener.local_addr().expect("address");
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let served = Arc::clone(&served);
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let documents = served.lock().unwrap_or_else(PoisonError::into_inner);
                            let body = if request.uri().path() == "/discovery" {
                                documents.0.clone()
                            } else {
                                documents.1.clone()
                            };
                            async move {
                                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                    body,
                                ))))
                            }
                        });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
            let settings = KeySettings {
                refresh_interval: Duration::from_secs(3600),
                retry_interval: Duration::from_secs(3600),
                fetch_timeout: Duration::from_secs(2),
                ..KeySettings::default()
            };
            let metrics = Arc::new(KeyMetrics::unregistered().expect("metrics"));
            let keys = KeyCache::new(settings, metrics, None).expect("key cache");
            let sources = keys.sources(&[
                RemoteKeySource::Discovery(format!("http://{addr}/discovery")),
                RemoteKeySource::Jwks(format!("http://{addr}/jwks")),
            ]);
            let [discovery, jwks] = <[Arc<Source>; 2]>::try_from(sources)
                .ok()
                .expect("two sources");
            (keys, discovery, jwks, format!("http://{addr}/jwks"))
        });
    Bench {
        runtime,
        documents,
        jwks_url,
        keys,
        discovery,
        jwks,
    }
});

fuzz_target!(|data: &[u8]| {
    let bench = &*BENCH;
    let (discovery, jwks) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let mut discovery = discovery.to_vec();
    let parsed_discovery = serde_json::from_slice::<serde_json::Value>(&discovery).ok();
    if let Some(mut document) = parsed_discovery.clone()
        && let Some(uri) = document.get_mut("jwks_uri")
        && uri.is_string()
    {
        *uri = serde_json::Value::String(bench.jwks_url.clone());
        discovery = document.to_string().into_bytes();
    }
    *bench
        .documents
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = (discovery, jwks.to_vec());
    let sources = [Arc::clone(&bench.discovery), Arc::clone(&bench.jwks)];
    let max_stale = Duration::from_secs(3600);
    let before: Vec<_> = sources.iter().map(|s| s.current(max_stale)).collect();
    bench.runtime.block_on(bench.keys.fetch_all(&sources));
    // Keys that changed came from this input; a failed fetch keeps the last good ones.
    let fresh = |i: usize| {
        let now = sources[i].current(max_stale)?;
        match &before[i] {
            Some(old) if Arc::ptr_eq(old, &now) => None,
            _ => Some(now),
        }
    };

    let served_keys = serde_json::from_slice::<serde_json::Value>(jwks)
        .ok()
        .and_then(|doc| doc.get("keys").and_then(|k| k.as_array()).cloned());
    for i in 0..sources.len() {
        let Some(current) = fresh(i) else {
            continue;
        };
        assert!(
            !current.keys.is_empty(),
            "a key set without keys was accepted"
        );
        let entries = served_keys
            .as_ref()
            .expect("keys came from a JWKS document");
        for key in &current.keys {
            let named = entries.iter().any(|entry| {
                entry.get("kid").and_then(serde_json::Value::as_str) == key.kid.as_deref()
            });
            assert!(named, "key {:?} answers to a kid no entry names", key.kid);
        }
        if i == 0 {
            let issuer = parsed_discovery
                .as_ref()
                .and_then(|d| d.get("issuer"))
                .and_then(serde_json::Value::as_str);
            assert_eq!(current.issuer.as_deref(), issuer);
        }
        // Delivered through the bundle, the same keys arrive: the operator's document of them
        // reads back to the same kids and issuer.
        let id = if i == 0 {
            RemoteKeySource::Discovery("http://idp.invalid/discovery".to_owned())
        } else {
            RemoteKeySource::Jwks(bench.jwks_url.clone())
        };
        let document = delivery::render(&id, &current).expect("a fetched key set renders");
        let (source, delivered) = delivery::parse(&document).expect("and reads back");
        assert_eq!(source, id);
        let kids = |keys: &SourceKeys| keys.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
        assert_eq!(kids(&delivered), kids(&current));
        assert_eq!(delivered.issuer, current.issuer);
    }
    // The input as a delivered document itself (a bundle file): refused or read, never a panic.
    let _ = delivery::parse(&String::from_utf8_lossy(data));
});
