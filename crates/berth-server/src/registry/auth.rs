//! Token auth for the registry, in the form registry clients speak. The
//! cluster token is accepted as `Authorization: Bearer TOKEN` (berth's
//! clients, `skopeo --registry-token`) and as the password of HTTP Basic
//! auth with any user name (`skopeo --creds berth:TOKEN`, `docker login`).
//! A request without valid credentials gets the spec's 401 with a Basic
//! challenge, which makes those clients send their credentials.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use std::sync::Arc;

/// Whether the request carries `token` as a Bearer token or as a Basic
/// password.
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(rest.as_bytes(), token.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|b| *b == b':') else {
            return false;
        };
        return same(&decoded[colon + 1..], token.as_bytes());
    }
    false
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 401 answer: the spec's error body and a Basic challenge.
pub fn challenge() -> Response {
    let body = serde_json::json!({
        "errors": [{"code": "UNAUTHORIZED", "message": "authentication required: a valid cluster token is needed", "detail": null}]
    });
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"berth\""),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn check(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    if authorized(req.headers(), &token) {
        next.run(req).await
    } else {
        challenge()
    }
}

/// Puts token auth in front of the registry's routes; no token, no auth.
pub fn require_token(router: Router, token: Option<String>) -> Router {
    match token {
        Some(t) => router.layer(axum::middleware::from_fn_with_state(
            Arc::<str>::from(t.as_str()),
            check,
        )),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_with_the_token_as_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(authorized(&with("Bearer s3cret"), "s3cret"));
        assert!(authorized(&with("bearer s3cret"), "s3cret"));
        assert!(authorized(
            &with(&format!("Basic {}", b64("any:s3cret"))),
            "s3cret"
        ));
        assert!(!authorized(
            &with(&format!("Basic {}", b64("s3cret:x"))),
            "s3cret"
        ));
        assert!(!authorized(&with("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with("Basic !!"), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
