//! The operator's error type: what failed, with the object or action it concerns, and a bounded
//! label for `tokengate_reconcile_total{result}`.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The namespace's bundle could not be assembled (a policy that cannot be written as YAML).
    #[error("rendering the bundle of namespace {namespace}: {source:#}")]
    Render {
        namespace: String,
        #[source]
        source: anyhow::Error,
    },
    /// An object could not be encoded for server-side apply.
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A reconcile took longer than its limit (an API server that accepts and never answers).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// The value of `tokengate_reconcile_total{result}` for this error; `success` is the other.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { .. } => "api_error",
            Error::Render { .. } => "render_error",
            Error::Encode { .. } => "encode_error",
            Error::Timeout(_) => "timeout",
        }
    }

    /// Wraps an API error with what was being done.
    pub fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Api { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_bounded_label_and_says_what_failed() {
        let api = Error::api("applying ConfigMap shop/tokengate-policies")(
            kube::Error::LinesCodecMaxLineLengthExceeded,
        );
        assert_eq!(api.metric_label(), "api_error");
        assert!(
            api.to_string()
                .starts_with("applying ConfigMap shop/tokengate-policies: "),
            "{api}"
        );
        let timeout = Error::Timeout(Duration::from_secs(30));
        assert_eq!(timeout.metric_label(), "timeout");
        let render = Error::Render {
            namespace: "shop".to_string(),
            source: anyhow::anyhow!("writing TokenPolicy a as YAML"),
        };
        assert_eq!(render.metric_label(), "render_error");
        assert!(render.to_string().contains("namespace shop"));
    }
}
