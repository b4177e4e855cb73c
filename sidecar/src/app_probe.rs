//! Application probes run on the kubelet's behalf. With the pod firewall the kubelet cannot
//! reach the application's port (it connects from the node, not over loopback), so the webhook
//! points those probes at the sidecar's admin port, `/app-health/<container>/<kind>`, and the
//! sidecar performs the original check against the application on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokengate_policy::contract::{self, AppProbe, AppProbeAction};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The probes by admin path.
#[derive(Clone, Debug, Default)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

impl AppProbes {
    pub fn new(probes: Vec<AppProbe>) -> Self {
        Self(
            probes
                .into_iter()
                .map(|p| (contract::app_probe_path(&p.container, &p.kind), p))
                .collect(),
        )
    }

    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }
}

/// Runs one probe: `Ok` with what answered, or why it failed. Within the probe's timeout.
pub async fn run(probe: &AppProbe) -> Result<String, String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    match tokio::time::timeout(timeout, check(&probe.action)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

async fn check(action: &AppProbeAction) -> Result<String, String> {
    let port = match action {
        AppProbeAction::HttpGet { port, .. } | AppProbeAction::TcpSocket { port } => *port,
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let AppProbeAction::HttpGet { path, headers, .. } = action else {
        return Ok(format!("connected to {addr}"));
    };
    let path = if path.starts_with('/') {
        path.clone()
    } else {
        format!("/{path}")
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe (tokengate-sidecar)\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(format!("header {name:?} cannot be sent"));
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending GET {path}: {e}"))?;
    // The status line is all that counts; read until it is complete.
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer to GET {path}: {e}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default().trim();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| format!("GET {path}: not an HTTP answer: {line:?}"))?;
    if (200..400).contains(&status) {
        Ok(format!("GET {path}: {status}"))
    } else {
        Err(format!("GET {path}: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokengate_testkit::echo::EchoServer;

    fn probe(action: AppProbeAction) -> AppProbe {
        AppProbe {
            container: "app".to_owned(),
            kind: "readiness".to_owned(),
            timeout_seconds: 1,
            action,
        }
    }

    #[tokio::test]
    async fn http_probes_pass_on_success_statuses_and_fail_otherwise() {
        let echo = EchoServer::start().await.expect("echo");
        let port = echo.port();
        let get = |headers: Vec<(String, String)>| {
            probe(AppProbeAction::HttpGet {
                port,
                path: "/healthz".to_owned(),
                headers,
            })
        };
        assert!(run(&get(vec![])).await.is_ok());
        let seen = echo.last_request().expect("a request");
        assert_eq!(seen.path, "/healthz");
        // The echo server answers with the status a request asks for.
        let failing = get(vec![("X-Echo-Status".to_owned(), "503".to_owned())]);
        let err = run(&failing).await.expect_err("503 fails");
        assert!(err.contains("503"), "{err}");
        let tcp = probe(AppProbeAction::TcpSocket { port });
        assert!(run(&tcp).await.is_ok());
        drop(echo);
        let err = run(&tcp).await.expect_err("nothing listens");
        assert!(err.contains("connecting"), "{err}");
    }

    #[test]
    fn probes_are_found_by_their_admin_path() {
        let probes = AppProbes::new(vec![probe(AppProbeAction::TcpSocket { port: 1 })]);
        assert!(probes.get("/app-health/app/readiness").is_some());
        assert!(probes.get("/app-health/app/liveness").is_none());
    }
}
