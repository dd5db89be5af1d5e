//! The few fields read back from certificates.

use std::time::{Duration, SystemTime};

pub(crate) struct LeafInfo {
    pub common_name: Option<String>,
    pub not_after: SystemTime,
}

/// `None` when `der` is not a certificate.
pub(crate) fn leaf_info(der: &[u8]) -> Option<LeafInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let not_after = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    };
    Some(LeafInfo {
        common_name: common_name(&cert),
        not_after,
    })
}

/// The subject CN of a DER certificate, if it has one.
pub(crate) fn common_name_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    common_name(&cert)
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()
        .map(str::to_string)
}
