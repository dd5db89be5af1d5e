//! Plain words for the TLS failures a wrong token causes.

use rustls::{AlertDescription, CertificateError};

/// What the server's certificate failing verification means here.
pub const SERVER_NOT_IN_CLUSTER: &str = "the server's certificate was not issued by this cluster's CA: the token given here differs from the servers' token (wrong --token?)";
/// What the server refusing our certificate means here.
pub const CLIENT_CERT_REFUSED: &str = "the server refused this node's certificate: it was issued under another token (delete the saved identity and enrol again with the servers' token)";

/// Walks an error chain (e.g. a `reqwest::Error`) for a rustls error a
/// wrong or changed token causes, and says what it means in cluster
/// terms; `None` for other errors.
pub fn explain_tls_error(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(text) = e.downcast_ref::<rustls::Error>().and_then(explain) {
            return Some(text);
        }
        // io::Error's `source()` skips the error it wraps (tokio-rustls and
        // hyper wrap rustls errors in one or more io::Errors), so step
        // into it by hand.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn explain(e: &rustls::Error) -> Option<&'static str> {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => Some(SERVER_NOT_IN_CLUSTER),
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::DecryptError
            | AlertDescription::BadCertificate,
        ) => Some(CLIENT_CERT_REFUSED),
        _ => None,
    }
}
