//! Who may use the HTTP listener: the cluster token as a bearer header, or
//! a browser session opened by logging in with it.
//!
//! A session lives in an HttpOnly, SameSite=Strict cookie and holds a CSRF
//! token of its own: a state-changing request carried by the cookie must
//! also send that token in `X-CSRF-Token` (a bearer header is not ambient,
//! so it needs none). Sessions live in the listener's memory and end when
//! the process does, or after [`SESSION_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use super::PROBES;
use crate::auth::Token;

/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept; the oldest goes first past it.
const MAX_SESSIONS: usize = 1024;
const COOKIE: &str = "cloudai_session";
/// The header a cookie-carried state change must repeat the CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

const LOGIN_PAGE: &str = include_str!("assets/login.html");
/// What the login form needs before there is a session.
const OPEN: [&str; 2] = ["/login", "/assets/style.css"];

/// What a request carried by a session knows of it (handlers read it from
/// the request's extensions).
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub(crate) csrf: String,
}

#[derive(Debug)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// Who may in: the token, whether the probes skip it, and the sessions.
pub(crate) struct Gate {
    token: Option<Token>,
    open_probes: bool,
    secure: bool,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Gate {
    pub(crate) fn new(token: Option<Token>, open_probes: bool, secure: bool) -> Arc<Gate> {
        Arc::new(Gate {
            token,
            open_probes,
            secure,
            sessions: Mutex::default(),
        })
    }

    fn session(&self, headers: &HeaderMap) -> Option<SessionInfo> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => Some(SessionInfo {
                csrf: s.csrf.clone(),
            }),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    fn open(&self) -> Result<(String, String), String> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Ok((id, csrf))
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.remove(id);
        }
    }

    fn cookie(&self, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let c = format!(
            "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            max_age.as_secs()
        );
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("the OS random source failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The routes that open and close a session; they need no token.
pub(crate) fn routes(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .with_state(gate)
}

async fn login_page() -> Response {
    page(StatusCode::OK, "")
}

fn page(status: StatusCode, error: &str) -> Response {
    let html = LOGIN_PAGE.replace("{{error}}", error);
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, super::dashboard::CSP),
    ];
    (status, headers, html).into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(gate): State<Arc<Gate>>, Form(form): Form<Login>) -> Response {
    let presented = format!("Bearer {}", form.token.trim());
    if !gate.token.as_ref().is_none_or(|t| t.matches(&presented)) {
        return page(
            StatusCode::UNAUTHORIZED,
            r#"<p class="error">That is not the cluster token.</p>"#,
        );
    }
    match gate.open() {
        Ok((id, _)) => {
            let mut res = Redirect::to("/").into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, gate.cookie(&id, SESSION_TTL));
            res
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

async fn logout(State(gate): State<Arc<Gate>>, req: Request) -> Response {
    gate.close(req.headers());
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, gate.cookie("", Duration::ZERO));
    res
}

/// Lets a request through with the token, or with a session (and, for a
/// state change, its CSRF token); probes too with `open_probes`, and the
/// login routes always. A page asked for without either is sent to the
/// login form; anything else is refused with 401.
pub(crate) async fn check(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = OPEN.contains(&path) || (gate.open_probes && PROBES.contains(&path));
    let Some(token) = &gate.token else {
        return next.run(req).await;
    };
    if open {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(presented) = bearer {
        if token.matches(presented) {
            return next.run(req).await;
        }
        return refuse("wrong token\n");
    }
    if let Some(session) = gate.session(req.headers()) {
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        let repeated = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !reads && repeated != Some(session.csrf.as_str()) {
            return (StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token\n").into_response();
        }
        req.extensions_mut().insert(session);
        return next.run(req).await;
    }
    let wants_page =
        req.method() == Method::GET && !path.starts_with("/api/") && !PROBES.contains(&path);
    if wants_page {
        return Redirect::to("/login").into_response();
    }
    refuse("missing token (Authorization: Bearer <token>, or log in at /login)\n")
}

fn refuse(why: &'static str) -> Response {
    let mut res = (StatusCode::UNAUTHORIZED, why).into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use tower::ServiceExt;

    /// A listener's routes behind the gate: `/` (a page), `/api/x` (read
    /// and write), `/metrics` (a probe).
    fn app(gate: &Arc<Gate>) -> Router {
        let ok = || async { "ok" };
        Router::new()
            .route("/", get(ok))
            .route("/api/x", get(ok).post(ok))
            .route("/metrics", get(ok))
            .merge(routes(gate.clone()))
            .layer(axum::middleware::from_fn_with_state(gate.clone(), check))
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let location = res
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        (res.status().as_u16(), location)
    }

    #[tokio::test]
    async fn the_gate_admits_the_token_or_a_session_with_its_csrf_token() {
        let gate = Gate::new(Some(Token::new("t").unwrap()), false, false);
        let app = app(&gate);
        let (id, csrf) = gate.open().unwrap();
        let cookie = format!("{COOKIE}={id}");
        let session = [("cookie", cookie.as_str())];

        assert_eq!(call(&app, "GET", "/api/x", &[]).await.0, 401);
        assert_eq!(
            call(&app, "GET", "/", &[]).await,
            (303, Some("/login".into()))
        );
        assert_eq!(
            call(&app, "GET", "/metrics", &[]).await.0,
            401,
            "probes are not open"
        );
        assert_eq!(call(&app, "GET", "/login", &[]).await.0, 200);
        assert_eq!(
            call(&app, "GET", "/api/x", &[("authorization", "Bearer t")])
                .await
                .0,
            200
        );
        assert_eq!(
            call(&app, "POST", "/api/x", &[("authorization", "Bearer t")])
                .await
                .0,
            200,
            "a bearer needs no CSRF token"
        );
        let wrong = [
            ("authorization", "Bearer nope"),
            ("cookie", cookie.as_str()),
        ];
        assert_eq!(
            call(&app, "GET", "/api/x", &wrong).await.0,
            401,
            "a wrong bearer does not fall back to the cookie"
        );
        assert_eq!(call(&app, "GET", "/api/x", &session).await.0, 200);
        assert_eq!(
            call(&app, "POST", "/api/x", &session).await.0,
            403,
            "a cookie alone cannot change state"
        );
        let with_csrf = [("cookie", cookie.as_str()), (CSRF_HEADER, csrf.as_str())];
        assert_eq!(call(&app, "POST", "/api/x", &with_csrf).await.0, 200);
        let stale = [("cookie", "cloudai_session=forged")];
        assert_eq!(call(&app, "GET", "/api/x", &stale).await.0, 401);
    }

    #[tokio::test]
    async fn open_probes_let_only_the_probes_through() {
        let gate = Gate::new(Some(Token::new("t").unwrap()), true, false);
        let app = app(&gate);
        assert_eq!(call(&app, "GET", "/metrics", &[]).await.0, 200);
        assert_eq!(call(&app, "GET", "/api/x", &[]).await.0, 401);
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cloudai_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
    }

    #[test]
    fn a_session_opens_holds_its_csrf_token_and_closes() {
        let gate = Gate::new(Some(Token::new("t").unwrap()), false, true);
        let (id, csrf) = gate.open().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        assert_eq!(gate.session(&h).map(|s| s.csrf), Some(csrf));
        let set = gate.cookie(&id, SESSION_TTL);
        let set = set.to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"),
            "{set}"
        );
        gate.close(&h);
        assert!(gate.session(&h).is_none());
    }
}
