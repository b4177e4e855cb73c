//! Byte-level test helpers: an upstream that records exactly what the application received
//! (request line, header names as sent, body, and every byte after a protocol switch), a
//! client that sends raw bytes over a TcpStream (so no client library normalises the request),
//! and the ways common application servers read what they receive.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Header of a request that makes the upstream answer `101` with this protocol even when the
/// request asked for no upgrade: an application that switches protocols on its own.
pub const SWITCH_HEADER: &str = "x-test-switch";

/// One request as the application received it.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    /// The request-target, byte for byte.
    pub target: String,
    pub version: String,
    /// Header names as sent (case kept) and values, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the upstream answered 101 and switched.
    pub switched: bool,
    /// Every byte received on the connection after the switch.
    pub after_switch: Vec<u8>,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Values of the headers named exactly `name` (case-insensitively).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }

    /// Values of every header a CGI-style server (PHP-FPM, WSGI, Rack) files under the same
    /// variable as `name`: `X-User-Id` and `x_user_id` are both `HTTP_X_USER_ID` there.
    pub fn cgi_values(&self, name: &str) -> Vec<&str> {
        let variable = cgi_variable(name);
        self.headers
            .iter()
            .filter(|(n, _)| cgi_variable(n) == variable)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub fn cgi_variable(name: &str) -> String {
    format!(
        "HTTP_{}",
        name.to_ascii_uppercase()
            .replace('-', "_")
            .trim_end_matches(' ')
    )
}

/// An upstream speaking HTTP/1.1 from raw bytes. It answers `200` without a body, and
/// `101` (then records and echoes every later byte) when a request offers an upgrade or
/// carries [`SWITCH_HEADER`] — the naive application that would switch to anything.
pub struct RawUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("upstream binds");
        let addr = listener.local_addr().expect("upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        RawUpstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests seen since the last call.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits until the requests seen stop changing for a moment (switched connections record
    /// their later bytes as they arrive), then takes them.
    pub async fn settle(&self) -> Vec<Seen> {
        let mut last = self.snapshot_len();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let now = self.snapshot_len();
            if now == last {
                break;
            }
            last = now;
        }
        self.take()
    }

    fn snapshot_len(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        (seen.len(), seen.iter().map(|s| s.after_switch.len()).sum())
    }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buffer = Vec::new();
    loop {
        let Some(head_end) = read_until_head_end(&mut stream, &mut buffer).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut words = request_line.splitn(3, ' ');
        let mut request = Seen {
            method: words.next().unwrap_or_default().to_owned(),
            target: words.next().unwrap_or_default().to_owned(),
            version: words.next().unwrap_or_default().to_owned(),
            ..Seen::default()
        };
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                request
                    .headers
                    .push((name.to_owned(), value.trim().to_owned()));
            }
        }
        if !read_body(&mut stream, &mut buffer, &mut request).await {
            return;
        }
        let switch_to = request
            .header(SWITCH_HEADER)
            .map(str::to_owned)
            .or_else(|| {
                request
                    .header("upgrade")
                    .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
            });
        let index = {
            let mut all = seen.lock().unwrap_or_else(PoisonError::into_inner);
            all.push(request.clone());
            all.len() - 1
        };
        if let Some(protocol) = switch_to {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            record(&seen, index, |s| s.switched = true);
            if !buffer.is_empty() {
                let early = std::mem::take(&mut buffer);
                record(&seen, index, |s| s.after_switch.extend_from_slice(&early));
                let _ = stream.write_all(&early).await;
            }
            let mut chunk = [0u8; 4096];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        record(&seen, index, |s| {
                            s.after_switch.extend_from_slice(&chunk[..n])
                        });
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        // No body, so the answer fits HEAD requests too.
        let answer = "HTTP/1.1 200 OK\r\nx-upstream: raw\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn record(seen: &Mutex<Vec<Seen>>, index: usize, change: impl FnOnce(&mut Seen)) {
    if let Some(s) = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(index)
    {
        change(s);
    }
}

async fn read_until_head_end(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            return Some(end);
        }
        if buffer.len() > 256 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, want: usize) -> bool {
    while buffer.len() < want {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

async fn read_body(stream: &mut TcpStream, buffer: &mut Vec<u8>, request: &mut Seen) -> bool {
    if let Some(length) = request
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if !fill(stream, buffer, length).await {
            return false;
        }
        request.body = buffer.drain(..length).collect();
        return true;
    }
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return true;
    }
    loop {
        let line_end = loop {
            if let Some(end) = find(buffer, b"\r\n") {
                break end;
            }
            let len = buffer.len();
            if !fill(stream, buffer, len + 1).await {
                return false;
            }
        };
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        buffer.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                let end = loop {
                    if let Some(end) = find(buffer, b"\r\n") {
                        break end;
                    }
                    let len = buffer.len();
                    if !fill(stream, buffer, len + 1).await {
                        return false;
                    }
                };
                let line: Vec<u8> = buffer.drain(..end + 2).collect();
                if line.len() == 2 {
                    return true;
                }
            }
        }
        if !fill(stream, buffer, size + 2).await {
            return false;
        }
        request.body.extend(buffer.drain(..size));
        buffer.drain(..2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response read off a raw connection.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that writes bytes as given.
pub struct RawClient {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connects"),
            buffer: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writes");
    }

    /// Reads one response (head, then a body by `content-length`, or none for 1xx/204/304;
    /// until close otherwise). `None` when the connection closes first or nothing complete
    /// arrives within 5s.
    pub async fn response(&mut self) -> Option<RawResponse> {
        tokio::time::timeout(Duration::from_secs(5), self.read_response())
            .await
            .ok()
            .flatten()
    }

    async fn read_response(&mut self) -> Option<RawResponse> {
        let head_end = read_until_head_end(&mut self.stream, &mut self.buffer).await?;
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(response);
        }
        match response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(length) => {
                if fill(&mut self.stream, &mut self.buffer, length).await {
                    response.body = self.buffer.drain(..length).collect();
                }
            }
            None => {
                let _ = self.stream.read_to_end(&mut self.buffer).await;
                response.body = std::mem::take(&mut self.buffer);
            }
        }
        Some(response)
    }

    /// Reads what arrives within `wait`, for bytes after a protocol switch.
    pub async fn read_for(&mut self, wait: Duration) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buffer);
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        out
    }

    /// How long until the peer closes the connection (reading and dropping whatever arrives),
    /// or `None` when it is still open after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            let left = limit.checked_sub(started.elapsed())?;
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// How an application server turns the request-target it received into the path it routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppServer {
    /// Decodes once and resolves dot segments (nginx, Express, Go's ServeMux).
    Resolving,
    /// Decodes everything, `%2F` included, then resolves (a file server on Go's `URL.Path`,
    /// Werkzeug).
    DecodingSlashes,
    /// Drops `;` parameters from each segment before decoding, then resolves; `..;` is `..`
    /// (Tomcat, Jetty).
    Servlet,
    /// Reads `\` (and `%5C`) as `/` (IIS, and frameworks that mimic it).
    Backslash,
    /// Routes the raw target without decoding or resolving.
    Raw,
}

impl AppServer {
    pub const ALL: [AppServer; 5] = [
        AppServer::Resolving,
        AppServer::DecodingSlashes,
        AppServer::Servlet,
        AppServer::Backslash,
        AppServer::Raw,
    ];

    /// The decoded path this server routes for `target`.
    pub fn route(self, target: &str) -> String {
        let path = target.split('?').next().unwrap_or_default();
        match self {
            AppServer::Raw => String::from_utf8_lossy(&decode(path, false)).into_owned(),
            AppServer::Resolving => resolve(&decode(path, false)),
            AppServer::DecodingSlashes => resolve(&decode(path, true)),
            AppServer::Servlet => {
                let stripped: Vec<&str> = path
                    .split('/')
                    .map(|s| s.split(';').next().unwrap_or_default())
                    .collect();
                resolve(&decode(&stripped.join("/"), false))
            }
            AppServer::Backslash => {
                let decoded = decode(path, true);
                let slashed: Vec<u8> = decoded
                    .iter()
                    .map(|b| if *b == b'\\' { b'/' } else { *b })
                    .collect();
                resolve(&slashed)
            }
        }
    }
}

/// Percent-decoding; `%2F` and `%5C` stay encoded unless `slashes`.
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

/// Dot segments resolved and empty segments merged, as routers do.
fn resolve(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = format!("/{}", segments.join("/"));
    if text.ends_with('/') && out.len() > 1 {
        out.push('/');
    }
    out
}
