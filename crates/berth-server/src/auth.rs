//! The cluster token: when one is configured, every request must carry
//! `Authorization: Bearer TOKEN`. The comparison is constant-time (on
//! SHA-256 digests, so the token's length does not leak either), and the
//! token never reaches a log line.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::cluster::ClusterError;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// The answer to a request without the right token.
pub const UNAUTHORIZED: &str = "unauthorized: missing or wrong token";

#[derive(Clone)]
pub struct TokenCheck {
    digest: Option<[u8; 32]>,
}

impl fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCheck")
            .field("token", &self.digest.map(|_| "<redacted>"))
            .finish()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl TokenCheck {
    /// `None` (or an empty token) lets every request through.
    pub fn new(token: Option<&str>) -> Self {
        Self {
            digest: token
                .filter(|t| !t.is_empty())
                .map(|t| digest(t.as_bytes())),
        }
    }

    pub fn enabled(&self) -> bool {
        self.digest.is_some()
    }

    /// Whether an `Authorization` header value carries the token.
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(want) = &self.digest else {
            return true;
        };
        let Some(value) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        let Some(given) = value
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
        else {
            return false;
        };
        bool::from(digest(given.trim_ascii()).ct_eq(want))
    }
}

/// Middleware: 401 with a JSON [`ClusterError`] unless the token matches.
pub async fn require_token(State(check): State<TokenCheck>, req: Request, next: Next) -> Response {
    if check.allows(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    tracing::debug!(path = %req.uri().path(), "request without the cluster token refused");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(ClusterError {
            message: UNAUTHORIZED.into(),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check() {
        let c = TokenCheck::new(Some("s3cret"));
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(c.allows(Some(&h("Bearer s3cret"))));
        assert!(c.allows(Some(&h("bearer s3cret"))));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cretx",
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "",
        ] {
            assert!(!c.allows(Some(&h(bad))), "{bad}");
        }
        assert!(!c.allows(None));
        let open = TokenCheck::new(None);
        assert!(open.allows(None) && !open.enabled());
        assert!(TokenCheck::new(Some("")).allows(None));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
