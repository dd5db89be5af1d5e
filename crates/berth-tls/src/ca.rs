//! The cluster CA, derived from the cluster token, and the certificates it
//! issues.
//!
//! Every holder of the token derives the same Ed25519 key
//! (HKDF-SHA256 of the token) and the same self-signed CA certificate, byte
//! for byte (fixed serial, fixed dates, deterministic signature). So no CA
//! material is ever stored or shipped: servers, agents and the CLI each
//! rebuild it from the token they were given, and a party with another
//! token has another CA, whose certificates nobody in the cluster accepts.

use crate::identity::Identity;
use crate::TlsError;
use hkdf::Hkdf;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// Tokens shorter than this are refused (see [`TlsError::TokenTooShort`]).
pub const MIN_TOKEN_LEN: usize = 16;
/// Subject CN of the cluster CA.
pub const CA_COMMON_NAME: &str = "berth cluster CA";
/// CN prefix of certificates issued to agents: `agent:<agent id>`.
pub const AGENT_CN_PREFIX: &str = "agent:";
/// CN prefix of certificates servers issue themselves: `server:<name>`.
pub const SERVER_CN_PREFIX: &str = "server:";
/// How long issued certificates are valid. Long on purpose: there is no
/// renewal protocol yet, every certificate holder holds the token anyway,
/// and changing the token (a new CA) is what revokes every certificate; an
/// expiry in a long-running agent would be an outage with nothing gained.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start this far in the past so small clock skew between nodes does
/// not make a fresh certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(3600);
const HKDF_SALT: &[u8] = b"berth cluster ca v1";
const HKDF_INFO: &[u8] = b"ed25519 seed";
/// PKCS#8 v1 (RFC 8410) header of an Ed25519 private key; the 32-byte seed
/// follows. Pure encoding, so the seed can be loaded by rcgen/ring.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const MAX_ID_LEN: usize = 128;

/// The cluster's certificate authority. Cheap to clone.
#[derive(Clone)]
pub struct ClusterCa {
    inner: Arc<Inner>,
}

struct Inner {
    key: KeyPair,
    params: CertificateParams,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    roots: Arc<RootCertStore>,
    /// Checks certificates this CA issued (chain, validity, client-auth
    /// usage, which every leaf here has).
    checker: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClusterCa {
    // By hand: the key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// What [`ClusterCa::check_issued`] learned from a certificate it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// e.g. `agent:abc` or `server:1`.
    pub common_name: String,
    pub not_after: SystemTime,
}

impl ClusterCa {
    /// Derives the cluster CA from the cluster token.
    pub fn from_token(token: &str) -> Result<Self, TlsError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(TlsError::TokenTooShort {
                len: token.len(),
                min: MIN_TOKEN_LEN,
            });
        }
        let mut pkcs8 = Zeroizing::new([0u8; 48]);
        pkcs8[..16].copy_from_slice(&ED25519_PKCS8_V1_PREFIX);
        Hkdf::<Sha256>::new(Some(HKDF_SALT), token.as_bytes())
            .expand(HKDF_INFO, &mut pkcs8[16..])
            .map_err(|e| TlsError::Pem {
                what: "deriving the cluster CA key".into(),
                detail: e.to_string(),
            })?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(&pkcs8[..]),
            &PKCS_ED25519,
        )
        .map_err(|source| TlsError::Certificate {
            what: "loading the cluster CA key".into(),
            source,
        })?;

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Fixed, so every party produces the identical certificate.
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(9999, 12, 31);
        params.serial_number = Some(SerialNumber::from_slice(&[1]));
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Certificate {
                what: "making the cluster CA certificate".into(),
                source,
            })?;
        let cert_der = cert.der().clone();
        let mut roots = RootCertStore::empty();
        roots
            .add(cert_der.clone())
            .map_err(|source| TlsError::Rustls {
                what: "trusting the cluster CA".into(),
                source,
            })?;
        let roots = Arc::new(roots);
        let checker = WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                params,
                cert_pem: cert.pem(),
                cert_der,
                roots,
                checker,
            }),
        })
    }

    /// The CA certificate, PEM (e.g. for `curl --cacert`).
    pub fn cert_pem(&self) -> String {
        self.inner.cert_pem.clone()
    }

    /// `sha256:<hex>` of the CA certificate: safe to log, and equal on
    /// every node that has the same token.
    pub fn fingerprint(&self) -> String {
        let d = Sha256::digest(self.inner.cert_der.as_ref());
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// The only trust anchor of cluster connections.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.inner.roots.clone()
    }

    /// A new key and a server+client certificate with CN `server:<name>`.
    ///
    /// `sans` are the addresses and names the server listens on or
    /// advertises; `host:port` forms are accepted (the port is dropped),
    /// unspecified addresses (0.0.0.0, ::) are skipped, and 127.0.0.1, ::1
    /// and localhost are always added.
    pub fn issue_server(&self, name: &str, sans: &[String]) -> Result<Identity, TlsError> {
        check_id("server name", name)?;
        let cn = format!("{SERVER_CN_PREFIX}{name}");
        let mut all: Vec<SanType> = Vec::new();
        let defaults = ["127.0.0.1", "::1", "localhost"].map(String::from);
        for s in sans.iter().chain(defaults.iter()) {
            if let Some(san) = parse_san(s)? {
                if !all.contains(&san) {
                    all.push(san);
                }
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Certificate {
                what: format!("generating the key of {cn}"),
                source,
            }
        })?;
        let mut params = leaf_params(&cn);
        params.subject_alt_names = all;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert =
            params
                .signed_by(&key, &self.issuer())
                .map_err(|source| TlsError::Certificate {
                    what: format!("issuing the certificate of {cn}"),
                    source,
                })?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR (from [`agent_key_and_csr`]) as a client-only
    /// certificate with CN `agent:<agent_id>`. Only the CSR's public key is
    /// used: the subject, names and usages are the server's choice.
    pub fn sign_agent_csr(&self, csr_pem: &str, agent_id: &str) -> Result<String, TlsError> {
        check_id("agent id", agent_id)?;
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| TlsError::BadCsr {
                agent_id: agent_id.into(),
                detail: e.to_string(),
            })?;
        let cn = format!("{AGENT_CN_PREFIX}{agent_id}");
        let mut params = leaf_params(&cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&csr.public_key, &self.issuer())
            .map_err(|source| TlsError::Certificate {
                what: format!("issuing the certificate of {cn}"),
                source,
            })?;
        Ok(cert.pem())
    }

    /// Checks that `cert_pem` was issued by this CA and is valid now, e.g.
    /// an agent's saved certificate at start (a changed token means it must
    /// enrol again).
    pub fn check_issued(&self, cert_pem: &str) -> Result<IssuedCert, TlsError> {
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "reading a certificate".into(),
                detail: e.to_string(),
            })?;
        let info = crate::x509::leaf_info(&der).ok_or_else(|| TlsError::Pem {
            what: "reading a certificate".into(),
            detail: "not an X.509 certificate".into(),
        })?;
        self.inner
            .checker
            .verify_client_cert(&der, &[], UnixTime::now())
            .map_err(|source| TlsError::NotIssuedByCluster {
                common_name: info.common_name.clone().unwrap_or_default(),
                source,
            })?;
        Ok(IssuedCert {
            common_name: info.common_name.unwrap_or_default(),
            not_after: info.not_after,
        })
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.inner.params, &self.inner.key)
    }
}

/// A fresh key for an agent and a CSR for it (CN `agent:<agent_id>`), as
/// `(key_pem, csr_pem)`. The key never leaves the agent; the CSR goes to a
/// server's enrolment endpoint, which answers with
/// [`ClusterCa::sign_agent_csr`].
pub fn agent_key_and_csr(agent_id: &str) -> Result<(String, String), TlsError> {
    check_id("agent id", agent_id)?;
    let cn = format!("{AGENT_CN_PREFIX}{agent_id}");
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Certificate {
            what: format!("generating the key of {cn}"),
            source,
        })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&cn);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| TlsError::Certificate {
            what: format!("making the certificate request of {cn}"),
            source,
        })?;
    Ok((key.serialize_pem(), csr))
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_params(cn: &str) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - BACKDATE;
    params.not_after = now + LEAF_VALIDITY;
    params.use_authority_key_identifier_extension = true;
    // Random so two certificates of one name never share a serial.
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

/// Ids go into a CN and into log lines: printable ASCII, bounded.
fn check_id(what: &'static str, id: &str) -> Result<(), TlsError> {
    let bad = |detail: &str| TlsError::BadName {
        what,
        value: id.chars().take(MAX_ID_LEN).collect(),
        detail: detail.into(),
    };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad(&format!("longer than {MAX_ID_LEN} bytes")));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("only printable ASCII without spaces is allowed"));
    }
    Ok(())
}

/// One SAN from an address or name; `None` for unspecified addresses.
fn parse_san(raw: &str) -> Result<Option<SanType>, TlsError> {
    let s = raw.trim();
    let host = if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok(ip_san(sa.ip()));
    } else if let Some((h, p)) = s.rsplit_once(':') {
        // `name:port`; a bare IPv6 address has several colons and is not
        // split because its tail is not a port of a name.
        if !h.contains(':') && p.parse::<u16>().is_ok() {
            h
        } else {
            s
        }
    } else {
        s
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip_san(ip));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let dns = rcgen::string::Ia5String::try_from(name.clone())
        .ok()
        .filter(|_| valid_dns_name(&name))
        .ok_or_else(|| TlsError::BadName {
            what: "server address",
            value: raw.into(),
            detail: "neither an IP address nor a DNS name".into(),
        })?;
    Ok(Some(SanType::DnsName(dns)))
}

fn ip_san(ip: IpAddr) -> Option<SanType> {
    (!ip.is_unspecified()).then_some(SanType::IpAddress(ip))
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "t0123456789abcdef-test";

    #[test]
    fn same_token_same_ca_byte_for_byte() {
        let a = ClusterCa::from_token(TOKEN).unwrap();
        let b = ClusterCa::from_token(TOKEN).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = ClusterCa::from_token("another-token-0123456789").unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        // Same subject, different key: exactly the case that must fail.
        assert!(c.cert_pem() != a.cert_pem());
    }

    #[test]
    fn short_token_is_refused() {
        let e = ClusterCa::from_token("short").unwrap_err();
        assert!(e.to_string().contains("token is too short"), "{e}");
    }

    #[test]
    fn certificates_of_one_derivation_verify_under_another() {
        let a = ClusterCa::from_token(TOKEN).unwrap();
        let b = ClusterCa::from_token(TOKEN).unwrap();
        let server = a.issue_server("7", &["10.1.2.3:5050".into()]).unwrap();
        let got = b.check_issued(&server.cert_pem).unwrap();
        assert_eq!(got.common_name, "server:7");
        assert!(got.not_after > SystemTime::now() + Duration::from_secs(365 * 24 * 3600));

        let (key, csr) = agent_key_and_csr("abc").unwrap();
        let cert = b.sign_agent_csr(&csr, "abc").unwrap();
        assert_eq!(a.check_issued(&cert).unwrap().common_name, "agent:abc");
        assert!(key.contains("PRIVATE KEY"));
    }

    #[test]
    fn another_tokens_ca_rejects_the_certificates() {
        let a = ClusterCa::from_token(TOKEN).unwrap();
        let other = ClusterCa::from_token("another-token-0123456789").unwrap();
        let server = a.issue_server("1", &[]).unwrap();
        let e = other.check_issued(&server.cert_pem).unwrap_err();
        assert!(matches!(e, TlsError::NotIssuedByCluster { .. }), "{e}");
        assert!(e.to_string().contains("server:1"), "{e}");
        let (_, csr) = agent_key_and_csr("x").unwrap();
        let cert = other.sign_agent_csr(&csr, "x").unwrap();
        assert!(a.check_issued(&cert).is_err());
    }

    #[test]
    fn the_agent_cn_is_the_servers_choice() {
        let ca = ClusterCa::from_token(TOKEN).unwrap();
        let (_, csr) = agent_key_and_csr("mallory").unwrap();
        let cert = ca.sign_agent_csr(&csr, "abc").unwrap();
        assert_eq!(ca.check_issued(&cert).unwrap().common_name, "agent:abc");
    }

    #[test]
    fn bad_csr_and_ids_are_refused() {
        let ca = ClusterCa::from_token(TOKEN).unwrap();
        let e = ca.sign_agent_csr("not a csr", "abc").unwrap_err();
        assert!(e.to_string().contains("agent abc"), "{e}");
        let (_, csr) = agent_key_and_csr("abc").unwrap();
        // A tampered CSR fails its self-signature check.
        let body: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut raw: Vec<u8> = body.into_bytes();
        let mid = raw.len() / 2;
        raw[mid] = if raw[mid] == b'A' { b'B' } else { b'A' };
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            String::from_utf8(raw).unwrap()
        );
        assert!(ca.sign_agent_csr(&tampered, "abc").is_err());
        for id in ["", "a b", "x\n", &"a".repeat(200)] {
            assert!(ca.sign_agent_csr(&csr, id).is_err(), "{id:?} accepted");
            assert!(agent_key_and_csr(id).is_err(), "{id:?} accepted");
        }
        assert!(ca.issue_server("s 1", &[]).is_err());
    }

    #[test]
    fn sans_from_addresses() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.1.2.3:5050", Some("10.1.2.3")),
            ("10.1.2.3", Some("10.1.2.3")),
            ("[::1]:80", Some("::1")),
            ("fe80::1", Some("fe80::1")),
            ("0.0.0.0:5050", None),
            ("[::]:5050", None),
            ("Node-1.example.org:5050", Some("node-1.example.org")),
            ("s1", Some("s1")),
        ];
        for (raw, want) in cases {
            let got = parse_san(raw).unwrap();
            let got = got.map(|s| match s {
                SanType::IpAddress(ip) => ip.to_string(),
                SanType::DnsName(n) => n.as_str().to_string(),
                other => format!("{other:?}"),
            });
            assert_eq!(got.as_deref(), *want, "{raw}");
        }
        for bad in ["a b", "x/y", "-a.example", ""] {
            assert!(parse_san(bad).is_err(), "{bad:?} accepted");
        }
    }
}
