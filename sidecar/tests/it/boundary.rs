//! The application receives exactly what the policy judged: an attack corpus, one row per
//! request, each sent as raw bytes (or through a real HTTP/2 client) to the real sidecar in
//! front of an upstream that records what it received byte for byte. Every row states the
//! status the client gets and what the application saw; every request that reaches the
//! application is also read the way common application servers read it (resolving dot
//! segments or not, decoding `%2F`, servlet `;` parameters, `\` as `/`, CGI header names), and
//! all of them must agree.

use std::fmt::Write as _;
use std::time::Duration;

use crate::raw::{AppServer, RawClient, RawUpstream, Seen};
use crate::support::Bench;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokengate_sidecar::proxy::UpstreamProtocol;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// 1. The path judged is the path forwarded.
    Paths,
    /// 2. Methods in any case; GET covers HEAD; overrides refused.
    Methods,
    /// 3. Identity headers in every spelling.
    Headers,
    /// 4. One token, from one place, forwarded only when verified.
    Tokens,
    /// 5. Upgrades by list, never h2c.
    Upgrades,
    /// 6. Connections that send nothing are closed.
    Idle,
}

/// The sidecars of the corpus, one policy each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Every default: ambiguous paths refused, underscores dropped, WebSocket only.
    Strict,
    /// `forwardToken: false`.
    Private,
    /// `escapedSlashes: Unescape`, `backslashes: Slash`, `pathParameters: Strip`,
    /// `caseSensitive: false`, `headersWithUnderscores: Keep`, `bypassCorsPreflight: true`.
    Lenient,
    /// `headersWithUnderscores: Reject`, `upgrades: []`.
    Refusing,
    /// Defaults, with short connection timeouts.
    Timeouts,
}

const POLICIES: [Policy; 5] = [
    Policy::Strict,
    Policy::Private,
    Policy::Lenient,
    Policy::Refusing,
    Policy::Timeouts,
];

const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_millis(400);
const IDLE_TIMEOUT: Duration = Duration::from_millis(600);

/// How a row reaches the sidecar.
enum Send {
    /// One HTTP/1.1 request: request line and headers (`Host` added, `{user}`, `{admin}`,
    /// `{forged}`, `{other}` replaced by tokens), then the body.
    Http(String, Vec<String>, String),
    /// A request, then these bytes on the same connection once its response has arrived.
    Then(String, Vec<String>, &'static [u8]),
    /// HTTP/2 with prior knowledge, through a real client (which does not touch the path).
    H2(&'static str, String, Vec<(&'static str, String)>),
    /// These bytes, then silence: the sidecar must close the connection.
    Silent(&'static [u8]),
}

/// What the application must have seen.
#[derive(Default)]
struct View {
    reached: bool,
    path: Option<&'static str>,
    method: Option<&'static str>,
    /// `Some(None)`: no query at all.
    query: Option<Option<&'static str>>,
    /// Header (by CGI variable, so every spelling counts) and its one value.
    headers: Vec<(&'static str, String)>,
    /// Headers (by CGI variable) that must be absent in every spelling.
    absent: Vec<&'static str>,
    /// Whether the upstream switched protocols, and the bytes it got after the switch.
    switched: Option<bool>,
    after_switch: Option<&'static [u8]>,
}

fn nothing() -> View {
    View::default()
}

fn saw() -> View {
    View {
        reached: true,
        ..View::default()
    }
}

impl View {
    fn path(mut self, path: &'static str) -> Self {
        self.path = Some(path);
        self
    }
    fn method(mut self, method: &'static str) -> Self {
        self.method = Some(method);
        self
    }
    fn query(mut self, query: Option<&'static str>) -> Self {
        self.query = Some(query);
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn absent(mut self, name: &'static str) -> Self {
        self.absent.push(name);
        self
    }
    fn switched(mut self, after: &'static [u8]) -> Self {
        self.switched = Some(true);
        self.after_switch = Some(after);
        self
    }
    fn not_switched(mut self) -> Self {
        self.switched = Some(false);
        self.after_switch = Some(b"");
        self
    }
}

struct Case {
    class: Class,
    name: &'static str,
    policy: Policy,
    send: Send,
    /// Status the client gets; 0 for a connection the sidecar closes without answering.
    status: u16,
    view: View,
}

fn http(line: &str, headers: &[&str]) -> Send {
    Send::Http(
        line.to_owned(),
        headers.iter().map(|h| (*h).to_owned()).collect(),
        String::new(),
    )
}

fn http_body(line: &str, headers: &[&str], body: &str) -> Send {
    Send::Http(
        line.to_owned(),
        headers.iter().map(|h| (*h).to_owned()).collect(),
        body.to_owned(),
    )
}

fn then(line: &str, headers: &[&str], after: &'static [u8]) -> Send {
    Send::Then(
        line.to_owned(),
        headers.iter().map(|h| (*h).to_owned()).collect(),
        after,
    )
}

fn h2(method: &'static str, path: &str, headers: &[(&'static str, &str)]) -> Send {
    Send::H2(
        method,
        path.to_owned(),
        headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
    )
}

const USER: &str = "Authorization: Bearer {user}";
const ADMIN: &str = "Authorization: Bearer {admin}";
const FORGED: &str = "Authorization: Bearer {forged}";
const WS: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];
/// The HTTP/2 connection preface, a SETTINGS frame and a HEADERS frame for `GET /admin`
/// (HPACK: :method GET, :scheme http, :path /admin literal, :authority x).
const H2_AFTER_UPGRADE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x0f\x01\x05\x00\x00\x00\x03\x82\x86\x44\x06/admin\x41\x01x";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn corpus() -> Vec<Case> {
    use Class::*;
    use Policy::*;
    let case = |class, name, policy, send, status, view| Case {
        class,
        name,
        policy,
        send,
        status,
        view,
    };
    vec![
        // ---- 1. Paths: the path judged is the path forwarded ----
        case(
            Paths,
            "dot segments borrow a public prefix (no token)",
            Strict,
            http("GET /public/../admin/users HTTP/1.1", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "dot segments borrow a public prefix (user token, admin route)",
            Strict,
            http("GET /public/../admin/users HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Paths,
            "dot segments: the resolved path is what the app gets",
            Strict,
            http("GET /public/../admin/users HTTP/1.1", &[ADMIN]),
            200,
            saw().path("/admin/users"),
        ),
        case(
            Paths,
            "encoded dot segments",
            Strict,
            http("GET /public/%2e%2e/admin HTTP/1.1", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "mixed encoded dot segment, forwarded resolved",
            Strict,
            http("GET /public/.%2E/admin/x HTTP/1.1", &[ADMIN]),
            200,
            saw().path("/admin/x"),
        ),
        case(
            Paths,
            "deep traversal out of a public prefix",
            Strict,
            http("GET /public/a/../../../../etc/passwd HTTP/1.1", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "encoded slash after dots",
            Strict,
            http("GET /public/..%2Fadmin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "encoded slash refused even with a token",
            Strict,
            http("GET /public%2F..%2Fadmin HTTP/1.1", &[ADMIN]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "lower-case encoded slash",
            Strict,
            http("GET /static/..%2fadmin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "encoded backslash",
            Strict,
            http("GET /public/..%5Cadmin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "raw backslash",
            Strict,
            http("GET /public/..\\admin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "servlet ..; segment",
            Strict,
            http("GET /public/..;/admin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "path parameter on a protected segment",
            Strict,
            http("GET /admin;jsessionid=1/users HTTP/1.1", &[USER]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "encoded semicolon",
            Strict,
            http("GET /public/x%3B/../../admin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "NUL byte",
            Strict,
            http("GET /public/a%00.html HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "encoded CR LF",
            Strict,
            http("GET /public/%0d%0aX-Injected:%201 HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "malformed escape",
            Strict,
            http("GET /public/%zz HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "IIS %u escape",
            Strict,
            http("GET /public/%u002e%u002e/admin HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "asterisk form",
            Strict,
            http("OPTIONS * HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "repeated slashes merged before matching and forwarding",
            Strict,
            http("GET //public//x HTTP/1.1", &[]),
            200,
            saw().path("/public/x"),
        ),
        case(
            Paths,
            "double slash cannot dodge a protected prefix",
            Strict,
            http("GET //admin/users HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Paths,
            "encoded unreserved characters decoded",
            Strict,
            http("GET /%70ublic/%7Eme HTTP/1.1", &[]),
            200,
            saw().path("/public/~me"),
        ),
        case(
            Paths,
            "encoded letters cannot dodge a protected prefix",
            Strict,
            http("GET /%61dmin/users HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Paths,
            "encoded slash inside a public segment",
            Strict,
            http("GET /public/a%2fb%20c HTTP/1.1", &[]),
            400,
            nothing(),
        ),
        case(
            Paths,
            "space kept encoded",
            Strict,
            http("GET /public/a%20b HTTP/1.1", &[]),
            200,
            saw().path("/public/a%20b"),
        ),
        case(
            Paths,
            "overlong UTF-8 dots stay data",
            Strict,
            http("GET /public/%c0%ae%c0%ae/admin HTTP/1.1", &[]),
            200,
            saw().path("/public/%C0%AE%C0%AE/admin"),
        ),
        case(
            Paths,
            "absolute form: the path is judged",
            Strict,
            http("GET http://evil.example/public/../admin HTTP/1.1", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "absolute form forwarded in origin form",
            Strict,
            http(
                "GET http://evil.example/public/../admin/x HTTP/1.1",
                &[ADMIN],
            ),
            200,
            saw().path("/admin/x"),
        ),
        case(
            Paths,
            "query is not part of the path",
            Strict,
            http("GET /public/x?next=/../admin HTTP/1.1", &[]),
            200,
            saw().path("/public/x").query(Some("next=/../admin")),
        ),
        case(
            Paths,
            "case-sensitive by default: /ADMIN is judged and forwarded as /ADMIN",
            Strict,
            http("GET /ADMIN/users HTTP/1.1", &[USER]),
            200,
            saw().path("/ADMIN/users"),
        ),
        case(
            Paths,
            "caseSensitive false: /ADMIN meets the /admin rule",
            Lenient,
            http("GET /ADMIN/users HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Paths,
            "Unescape: %2F read as a separator, then judged",
            Lenient,
            http("GET /public/..%2Fadmin HTTP/1.1", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "Unescape: the app gets the unescaped path",
            Lenient,
            http("GET /public/..%2Fadmin/x HTTP/1.1", &[ADMIN]),
            200,
            saw().path("/admin/x"),
        ),
        case(
            Paths,
            "Slash: backslash read as a separator",
            Lenient,
            http("GET /public\\..\\admin HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Paths,
            "Strip: ..; is .. as a servlet reads it",
            Lenient,
            http("GET /public/..;x=1/admin HTTP/1.1", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "Strip: the app gets the path without parameters",
            Lenient,
            http("GET /public/a;jsessionid=1/b HTTP/1.1", &[]),
            200,
            saw().path("/public/a/b"),
        ),
        case(
            Paths,
            "HTTP/2 :path with dot segments",
            Strict,
            h2("GET", "/public/../admin", &[]),
            401,
            nothing(),
        ),
        case(
            Paths,
            "HTTP/2 :path forwarded resolved",
            Strict,
            h2(
                "GET",
                "/public/../admin/x",
                &[("authorization", "Bearer {admin}")],
            ),
            200,
            saw().path("/admin/x"),
        ),
        case(
            Paths,
            "HTTP/2 :path with an encoded slash",
            Strict,
            h2("GET", "/public/..%2Fadmin", &[]),
            400,
            nothing(),
        ),
        // ---- 2. Methods ----
        case(
            Methods,
            "lower-case method skips nothing",
            Strict,
            http("delete /orders/1 HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Methods,
            "mixed-case method skips nothing",
            Strict,
            http("Delete /orders/1 HTTP/1.1", &[USER]),
            403,
            nothing(),
        ),
        case(
            Methods,
            "lower-case method forwarded upper-case",
            Strict,
            http("delete /orders/1 HTTP/1.1", &[ADMIN]),
            200,
            saw().method("DELETE").path("/orders/1"),
        ),
        case(
            Methods,
            "PUT in any case",
            Strict,
            http("pUt /orders/1 HTTP/1.1", &["Content-Length: 2", USER]),
            403,
            nothing(),
        ),
        case(
            Methods,
            "method scopes the rule",
            Strict,
            http("GET /orders/1 HTTP/1.1", &[USER]),
            200,
            saw().method("GET"),
        ),
        case(
            Methods,
            "GET rule covers HEAD",
            Strict,
            http("HEAD /reports/q1 HTTP/1.1", &[]),
            200,
            saw().method("HEAD").path("/reports/q1"),
        ),
        case(
            Methods,
            "lower-case head",
            Strict,
            http("head /reports/q1 HTTP/1.1", &[]),
            200,
            saw().method("HEAD"),
        ),
        case(
            Methods,
            "GET rule does not cover POST",
            Strict,
            http_body("POST /reports/q1 HTTP/1.1", &["Content-Length: 2"], "{}"),
            401,
            nothing(),
        ),
        case(
            Methods,
            "method override header",
            Strict,
            http_body(
                "POST /orders/1 HTTP/1.1",
                &["X-HTTP-Method-Override: DELETE", "Content-Length: 2", USER],
                "{}",
            ),
            400,
            nothing(),
        ),
        case(
            Methods,
            "method override header, underscore spelling",
            Strict,
            http("POST /orders/1 HTTP/1.1", &["X_HTTP_Method: DELETE", USER]),
            400,
            nothing(),
        ),
        case(
            Methods,
            "method override parameter",
            Strict,
            http("POST /orders/1?_method=DELETE HTTP/1.1", &[USER]),
            400,
            nothing(),
        ),
        case(
            Methods,
            "CONNECT",
            Strict,
            http("CONNECT 127.0.0.1:22 HTTP/1.1", &[USER]),
            400,
            nothing(),
        ),
        case(
            Methods,
            "CORS preflight judged by default",
            Strict,
            http(
                "OPTIONS /orders/1 HTTP/1.1",
                &[
                    "Origin: https://app.example",
                    "Access-Control-Request-Method: DELETE",
                ],
            ),
            401,
            nothing(),
        ),
        case(
            Methods,
            "CORS preflight bypass when the policy says so",
            Lenient,
            http(
                "OPTIONS /orders/1 HTTP/1.1",
                &[
                    "Origin: https://app.example",
                    "Access-Control-Request-Method: DELETE",
                    FORGED,
                ],
            ),
            200,
            saw().method("OPTIONS").absent("Authorization"),
        ),
        case(
            Methods,
            "OPTIONS without Access-Control-Request-Method is no preflight",
            Lenient,
            http(
                "OPTIONS /orders/1 HTTP/1.1",
                &["Origin: https://app.example"],
            ),
            401,
            nothing(),
        ),
        case(
            Methods,
            "OPTIONS with a body is no preflight",
            Lenient,
            http_body(
                "OPTIONS /orders/1 HTTP/1.1",
                &[
                    "Origin: https://app.example",
                    "Access-Control-Request-Method: DELETE",
                    "Content-Length: 5",
                ],
                "hello",
            ),
            401,
            nothing(),
        ),
        case(
            Methods,
            "lower-case options preflight",
            Lenient,
            http(
                "options /orders/1 HTTP/1.1",
                &[
                    "Origin: https://app.example",
                    "Access-Control-Request-Method: PUT",
                ],
            ),
            200,
            saw().method("OPTIONS"),
        ),
        // ---- 3. Identity headers ----
        case(
            Headers,
            "claim header forged with underscores",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "X_User_Roles: Admin"]),
            200,
            saw()
                .absent("X-User-Roles")
                .header("X-User-Id", "test-subject"),
        ),
        case(
            Headers,
            "claim header forged in mixed spelling",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "x-user_id: admin"]),
            200,
            saw().header("X-User-Id", "test-subject"),
        ),
        case(
            Headers,
            "claim header forged where authentication is off",
            Strict,
            http(
                "GET /public/x HTTP/1.1",
                &["X-User-Id: admin", "X_USER_ROLES: Admin"],
            ),
            200,
            saw().absent("X-User-Id").absent("X-User-Roles"),
        ),
        case(
            Headers,
            "X-Forwarded-For forged with underscores",
            Strict,
            http("GET /public/x HTTP/1.1", &["X_Forwarded_For: 10.0.0.1"]),
            200,
            saw().header("X-Forwarded-For", "127.0.0.1"),
        ),
        case(
            Headers,
            "underscored headers dropped by default",
            Strict,
            http("GET /public/x HTTP/1.1", &["X_Tenant: other"]),
            200,
            saw().absent("X-Tenant"),
        ),
        case(
            Headers,
            "Keep: other underscored headers pass",
            Lenient,
            http(
                "GET /public/x HTTP/1.1",
                &["X_Tenant: other", "X_User_Id: admin"],
            ),
            200,
            saw().header("X-Tenant", "other").absent("X-User-Id"),
        ),
        case(
            Headers,
            "Keep: the claim wins over a forged spelling",
            Lenient,
            http("GET /x HTTP/1.1", &[USER, "X_User_Id: admin"]),
            200,
            saw().header("X-User-Id", "test-subject"),
        ),
        case(
            Headers,
            "Reject: underscored header refused",
            Refusing,
            http("GET /public/x HTTP/1.1", &["X_Tenant: other"]),
            400,
            nothing(),
        ),
        case(
            Headers,
            "Connection value that is not visible ASCII still names headers",
            Strict,
            http(
                "GET /public/x HTTP/1.1",
                &["Connection: x-secret, \u{ff}\u{fe}", "X-Secret: 1"],
            ),
            200,
            saw().absent("X-Secret"),
        ),
        case(
            Headers,
            "Connection cannot remove the claim the sidecar sets",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "Connection: x-user-id"]),
            200,
            saw().header("X-User-Id", "test-subject"),
        ),
        case(
            Headers,
            "Connection naming the token header: judged without it",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "Connection: authorization"]),
            401,
            nothing(),
        ),
        case(
            Headers,
            "HTTP/2 claim header forged",
            Strict,
            h2(
                "GET",
                "/x",
                &[
                    ("authorization", "Bearer {user}"),
                    ("x_user_id", "admin"),
                    ("x-user-roles", "Admin"),
                ],
            ),
            200,
            saw()
                .header("X-User-Id", "test-subject")
                .absent("X-User-Roles"),
        ),
        // ---- 4. Tokens ----
        case(
            Tokens,
            "forged query token beside a valid header token",
            Strict,
            http("GET /x?access_token={forged} HTTP/1.1", &[USER]),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "forged cookie token beside a valid header token",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "Cookie: session={forged}"]),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "two valid tokens of different subjects",
            Strict,
            http("GET /x?access_token={other} HTTP/1.1", &[USER]),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "the same token in header and cookie is one token",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "Cookie: a=1; session={user}"]),
            200,
            saw().header("Authorization", "Bearer {user}"),
        ),
        case(
            Tokens,
            "PHP-style parameter spelling is a second token",
            Strict,
            http(
                "GET /x?access_token={user}&access.token={forged} HTTP/1.1",
                &[],
            ),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "semicolon-separated second token",
            Strict,
            http(
                "GET /x?access_token={user};access_token={forged} HTTP/1.1",
                &[],
            ),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "array-style second token",
            Strict,
            http(
                "GET /x?access_token={user}&access_token[]={forged} HTTP/1.1",
                &[],
            ),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "two token headers",
            Strict,
            http("GET /x HTTP/1.1", &[USER, FORGED]),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "unverified token not forwarded where authentication is off",
            Strict,
            http("GET /public/x HTTP/1.1", &[FORGED]),
            200,
            saw().absent("Authorization"),
        ),
        case(
            Tokens,
            "another scheme passes where authentication is off",
            Strict,
            http(
                "GET /public/x HTTP/1.1",
                &["Authorization: Basic dXNlcjpwdw=="],
            ),
            200,
            saw().header("Authorization", "Basic dXNlcjpwdw=="),
        ),
        case(
            Tokens,
            "verified token forwarded by default",
            Strict,
            http("GET /x HTTP/1.1", &[USER]),
            200,
            saw().header("Authorization", "Bearer {user}"),
        ),
        case(
            Tokens,
            "forwardToken false: header token removed",
            Private,
            http("GET /x HTTP/1.1", &[USER]),
            200,
            saw()
                .absent("Authorization")
                .header("X-User-Id", "test-subject"),
        ),
        case(
            Tokens,
            "forwardToken false: removed on a route without authentication",
            Private,
            http("GET /public/x HTTP/1.1", &[USER]),
            200,
            saw().absent("Authorization"),
        ),
        case(
            Tokens,
            "forwardToken false: query token removed, other bytes kept",
            Private,
            http(
                "GET /public/x?a=1&access_token={user}&b=%2F+c HTTP/1.1",
                &[],
            ),
            200,
            saw().query(Some("a=1&b=%2F+c")),
        ),
        case(
            Tokens,
            "forwardToken false: a second token in another spelling is refused",
            Private,
            http("GET /maybe?access.token={forged}&q=1 HTTP/1.1", &[USER]),
            401,
            nothing(),
        ),
        case(
            Tokens,
            "forwardToken false: cookie token removed on an optional route",
            Private,
            http("GET /maybe HTTP/1.1", &["Cookie: a=1; session={user}"]),
            200,
            saw().header("Cookie", "a=1"),
        ),
        case(
            Tokens,
            "forwardToken false: anonymous optional route keeps no token",
            Private,
            http("GET /maybe?access_token= HTTP/1.1", &[]),
            200,
            saw().query(None),
        ),
        // ---- 5. Upgrades ----
        case(
            Upgrades,
            "h2c upgrade is not passed on, nor tunnelled",
            Strict,
            then(
                "GET /x HTTP/1.1",
                &[
                    USER,
                    "Connection: Upgrade, HTTP2-Settings",
                    "Upgrade: h2c",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                ],
                H2_AFTER_UPGRADE,
            ),
            200,
            saw()
                .absent("Upgrade")
                .absent("HTTP2-Settings")
                .absent("Connection")
                .not_switched(),
        ),
        case(
            Upgrades,
            "h2c upgrade on a public route",
            Strict,
            then(
                "GET /public/x HTTP/1.1",
                &["Connection: Upgrade", "Upgrade: h2c"],
                H2_AFTER_UPGRADE,
            ),
            200,
            saw().absent("Upgrade").not_switched(),
        ),
        case(
            Upgrades,
            "WebSocket allowed by default, bytes pass",
            Strict,
            then(
                "GET /ws HTTP/1.1",
                &[WS[0], WS[1], WS[2], WS[3], USER],
                b"hello after the switch",
            ),
            101,
            saw()
                .header("Upgrade", "websocket")
                .switched(b"hello after the switch"),
        ),
        case(
            Upgrades,
            "WebSocket without a token",
            Strict,
            then("GET /ws HTTP/1.1", &WS, b"hello"),
            401,
            nothing(),
        ),
        case(
            Upgrades,
            "h2c listed beside websocket: only websocket offered",
            Strict,
            then(
                "GET /ws HTTP/1.1",
                &["Connection: Upgrade", "Upgrade: h2c, websocket", USER],
                b"ws bytes",
            ),
            101,
            saw().header("Upgrade", "websocket").switched(b"ws bytes"),
        ),
        case(
            Upgrades,
            "Upgrade without Connection: upgrade is dropped",
            Strict,
            http("GET /x HTTP/1.1", &[USER, "Upgrade: websocket"]),
            200,
            saw().absent("Upgrade"),
        ),
        case(
            Upgrades,
            "the app switching on its own is not tunnelled",
            Strict,
            then(
                "GET /x HTTP/1.1",
                &[USER, "X-Test-Switch: h2c"],
                H2_AFTER_UPGRADE,
            ),
            502,
            saw().switched(b""),
        ),
        case(
            Upgrades,
            "the app answering another protocol is not tunnelled",
            Strict,
            then(
                "GET /ws HTTP/1.1",
                &[WS[0], WS[1], WS[2], WS[3], USER, "X-Test-Switch: h2c"],
                H2_AFTER_UPGRADE,
            ),
            502,
            saw().switched(b""),
        ),
        case(
            Upgrades,
            "upgrades: [] passes none",
            Refusing,
            http("GET /ws HTTP/1.1", &[WS[0], WS[1], WS[2], WS[3], USER]),
            200,
            saw().absent("Upgrade").not_switched(),
        ),
        // ---- 6. Idle connections ----
        case(
            Idle,
            "a connection that sends nothing is closed",
            Timeouts,
            Send::Silent(b""),
            0,
            nothing(),
        ),
        case(
            Idle,
            "only the HTTP/2 preface",
            Timeouts,
            Send::Silent(H2_PREFACE),
            0,
            nothing(),
        ),
        case(
            Idle,
            "a partial request line",
            Timeouts,
            Send::Silent(b"GET /admin HT"),
            0,
            nothing(),
        ),
        case(
            Idle,
            "a partial header block",
            Timeouts,
            Send::Silent(b"GET /x HTTP/1.1\r\nHost: x\r\n"),
            0,
            nothing(),
        ),
        case(
            Idle,
            "idle after a response",
            Timeouts,
            then("GET /public/x HTTP/1.1", &[], b""),
            200,
            saw().path("/public/x"),
        ),
    ]
}

/// One sidecar of the corpus with its identity provider's tokens.
struct Target {
    bench: Bench,
    upstream: RawUpstream,
    tokens: Vec<(&'static str, String)>,
}

fn policy_spec(policy: Policy, idp: &IdentityProvider) -> String {
    let forwarding = match policy {
        Policy::Private => "    forwardToken: false\n",
        _ => "",
    };
    let requests = match policy {
        Policy::Lenient => {
            "  requests:\n    paths: {escapedSlashes: Unescape, backslashes: Slash, pathParameters: Strip, caseSensitive: false}\n    headersWithUnderscores: Keep\n    bypassCorsPreflight: true\n"
        }
        Policy::Refusing => "  requests:\n    headersWithUnderscores: Reject\n    upgrades: []\n",
        _ => "",
    };
    format!(
        "  token: {{queryParameter: access_token, cookie: session}}\n  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n  forwarding:\n{forwarding}    claimsToHeaders: [{{claim: sub, header: X-User-Id}}, {{claim: roles, header: X-User-Roles}}]\n  rules:\n    - {{paths: [\"/public/*\", \"/healthz\", \"/static/*\"], authentication: Disabled}}\n    - {{paths: [\"/admin/*\"], requiredClaims: [{{name: roles, values: [Admin]}}]}}\n    - {{paths: [\"/orders/*\"], methods: [DELETE, put], requiredClaims: [{{name: roles, values: [Admin]}}]}}\n    - {{paths: [\"/reports/*\"], methods: [GET], authentication: Disabled}}\n    - {{paths: [\"/maybe\"], authentication: Optional}}\n{requests}",
        idp.discovery_url()
    )
}

async fn target(policy: Policy) -> Target {
    let upstream = RawUpstream::start().await;
    let url = upstream.url();
    let bench = Bench::start_with(
        |idp| policy_spec(policy, idp),
        |config| {
            config.upstream.base = url.parse().expect("upstream url");
            // The recording upstream speaks HTTP/1.1 only; HTTP/2 clients are translated.
            config.upstream.protocol = UpstreamProtocol::Http1;
            if policy == Policy::Timeouts {
                config.limits.first_request_timeout = FIRST_REQUEST_TIMEOUT;
                config.limits.idle_timeout = IDLE_TIMEOUT;
            }
        },
    )
    .await;
    let idp = &bench.idp;
    let user = idp.token(Algorithm::RS256);
    let admin = {
        let mut claims = idp.claims();
        claims["roles"] = json!(["Admin"]);
        idp.sign(Algorithm::RS256, &claims)
    };
    let other = {
        let mut claims = idp.claims();
        claims["sub"] = json!("other-subject");
        idp.sign(Algorithm::RS256, &claims)
    };
    // The user's signature under an admin payload.
    let forged = {
        let mut parts = user.split('.');
        let (header, _, signature) = (parts.next(), parts.next(), parts.next());
        let mut claims = idp.claims();
        claims["roles"] = json!(["Admin"]);
        format!(
            "{}.{}.{}",
            header.unwrap_or_default(),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            signature.unwrap_or_default()
        )
    };
    Target {
        bench,
        upstream,
        tokens: vec![
            ("{user}", user),
            ("{admin}", admin),
            ("{other}", other),
            ("{forged}", forged),
        ],
    }
}

impl Target {
    fn fill(&self, template: &str) -> String {
        let mut text = template.to_owned();
        for (placeholder, token) in &self.tokens {
            text = text.replace(placeholder, token);
        }
        text
    }

    fn request_bytes(&self, line: &str, headers: &[String], body: &str) -> Vec<u8> {
        let mut text = format!("{}\r\nHost: app.example\r\n", self.fill(line));
        for header in headers {
            text.push_str(&self.fill(header));
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.push_str(body);
        text.into_bytes()
    }
}

/// Runs one row; `Err` says what differed.
async fn run(case: &Case, target: &Target) -> Result<(), String> {
    let addr = target.bench.sidecar.proxy_addr;
    target.upstream.take();
    let mut errors = Vec::new();
    let status = match &case.send {
        Send::Http(line, headers, body) => {
            let mut client = RawClient::connect(addr).await;
            client
                .send(&target.request_bytes(line, headers, body))
                .await;
            client.response().await.map_or(0, |r| r.status)
        }
        Send::Then(line, headers, after) => {
            let mut client = RawClient::connect(addr).await;
            client.send(&target.request_bytes(line, headers, "")).await;
            let status = client.response().await.map_or(0, |r| r.status);
            if !after.is_empty() {
                client.send(after).await;
                let back = client.read_for(Duration::from_millis(300)).await;
                if status == 101 && back != *after {
                    errors.push(format!(
                        "after the switch the client got back {:?}",
                        String::from_utf8_lossy(&back)
                    ));
                }
            }
            if case.class == Class::Idle {
                match client.closed_within(IDLE_TIMEOUT * 3).await {
                    None => errors.push("the idle connection stayed open".into()),
                    Some(after) if after < IDLE_TIMEOUT / 2 => {
                        errors.push(format!("closed after {after:?}, before the idle timeout"));
                    }
                    Some(_) => {}
                }
            }
            status
        }
        Send::H2(method, path, headers) => {
            let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
            let mut request = Request::builder()
                .method(*method)
                .uri(format!("http://{addr}{path}"));
            for (name, value) in headers {
                request = request.header(*name, target.fill(value));
            }
            let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
            match client.request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.into_body().collect().await;
                    status
                }
                Err(err) => return Err(format!("HTTP/2 request failed: {err}")),
            }
        }
        Send::Silent(bytes) => {
            let mut client = RawClient::connect(addr).await;
            if !bytes.is_empty() {
                client.send(bytes).await;
            }
            match client.closed_within(FIRST_REQUEST_TIMEOUT * 4).await {
                None => errors.push("the connection stayed open".into()),
                Some(after) if after < FIRST_REQUEST_TIMEOUT / 2 => {
                    errors.push(format!("closed after {after:?}, before the timeout"));
                }
                Some(_) => {}
            }
            0
        }
    };
    if status != case.status {
        errors.push(format!("status {status}, expected {}", case.status));
    }
    let seen = target.upstream.settle().await;
    check_view(case, target, &seen, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn check_view(case: &Case, target: &Target, seen: &[Seen], errors: &mut Vec<String>) {
    let view = &case.view;
    if !view.reached {
        if !seen.is_empty() {
            errors.push(format!(
                "the application saw {:?}",
                seen.iter().map(|s| &s.target).collect::<Vec<_>>()
            ));
        }
        return;
    }
    let [request] = seen else {
        errors.push(format!(
            "the application saw {} requests, expected 1",
            seen.len()
        ));
        return;
    };
    if let Some(path) = view.path
        && request.path() != path
    {
        errors.push(format!("app path {:?}, expected {path:?}", request.path()));
    }
    if let Some(method) = view.method
        && request.method != method
    {
        errors.push(format!(
            "app method {:?}, expected {method:?}",
            request.method
        ));
    }
    if let Some(query) = view.query
        && request.query() != query
    {
        errors.push(format!(
            "app query {:?}, expected {query:?}",
            request.query()
        ));
    }
    for (name, value) in &view.headers {
        let value = target.fill(value);
        let values = request.cgi_values(name);
        if values != [value.as_str()] {
            errors.push(format!("app {name} {values:?}, expected [{value:?}]"));
        }
    }
    for name in &view.absent {
        let values = request.cgi_values(name);
        if !values.is_empty() {
            errors.push(format!("app {name} {values:?}, expected none"));
        }
    }
    if let Some(switched) = view.switched
        && request.switched != switched
    {
        errors.push(format!(
            "app switched: {}, expected {switched}",
            request.switched
        ));
    }
    if let Some(after) = view.after_switch
        && request.after_switch != after
    {
        errors.push(format!(
            "app got {:?} after the request, expected {:?}",
            String::from_utf8_lossy(&request.after_switch),
            String::from_utf8_lossy(after)
        ));
    }
    // Whatever reached the application means one thing to every application server.
    let routes: Vec<String> = AppServer::ALL
        .iter()
        .map(|server| server.route(&request.target))
        .collect();
    if routes.iter().any(|r| *r != routes[0]) {
        errors.push(format!(
            "application servers disagree on {:?}: {routes:?}",
            request.target
        ));
    }
    // And no header the sidecar owns arrives in two spellings.
    for owned in [
        "X-User-Id",
        "X-User-Roles",
        "X-Forwarded-For",
        "Authorization",
    ] {
        if request.cgi_values(owned).len() > 1 {
            errors.push(format!("{owned} arrived in several spellings"));
        }
    }
    if case.policy != Policy::Lenient
        && let Some((name, _)) = request.headers.iter().find(|(n, _)| n.contains('_'))
    {
        errors.push(format!("underscored header {name} reached the application"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_corpus() {
    let cases = corpus();
    assert!(cases.len() >= 60, "the corpus has {} rows", cases.len());
    let mut targets = Vec::new();
    for policy in POLICIES {
        targets.push((policy, target(policy).await));
    }
    let mut report = String::new();
    let mut failures = 0;
    let mut last_class = None;
    for case in &cases {
        let Some((_, target)) = targets.iter().find(|(p, _)| *p == case.policy) else {
            panic!("no sidecar for {:?}", case.policy);
        };
        if last_class != Some(case.class) {
            let _ = writeln!(report, "{:?}", case.class);
            last_class = Some(case.class);
        }
        let outcome = run(case, target).await;
        eprintln!(
            "{:?} {:?} {}: {outcome:?}",
            case.class, case.policy, case.name
        );
        let shown = match case.status {
            0 => "closed".to_owned(),
            s => s.to_string(),
        };
        let reached = if case.view.reached {
            "app saw it"
        } else {
            "app saw nothing"
        };
        match &outcome {
            Ok(()) => {
                let _ = writeln!(
                    report,
                    "  ok    {shown:<6} {reached:<15} {:?} {}",
                    case.policy, case.name
                );
            }
            Err(why) => {
                failures += 1;
                let _ = writeln!(
                    report,
                    "  FAIL  {shown:<6} {reached:<15} {:?} {}: {why}",
                    case.policy, case.name
                );
            }
        }
    }
    println!("{report}");
    assert_eq!(
        failures,
        0,
        "{failures} of {} rows failed:\n{report}",
        cases.len()
    );
}
