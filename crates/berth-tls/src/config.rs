//! rustls configurations for cluster servers and their clients.
//!
//! Server names are not checked by [`client_config`]: a server's
//! certificate must chain to the cluster CA (the only trust anchor), be
//! valid now and carry the server-auth usage, but may be reached under any
//! address. Checking names would add no authentication here — whoever can
//! obtain a server certificate holds the token and could name it anything —
//! while servers are reached under addresses they cannot all know (a
//! 0.0.0.0 listener, NAT, DNS aliases, a leader address learned from a
//! redirect). Server certificates still carry their addresses as SANs, so
//! standard clients (`curl --cacert`) and [`client_config_strict`] work
//! when the address is listed.

use crate::identity::Identity;
use crate::{ClusterCa, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_err(what: &str) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |source| TlsError::Rustls {
        what: what.into(),
        source,
    }
}

/// The server side: presents `identity` and verifies client certificates
/// against the cluster CA when a client offers one. Clients without a
/// certificate (the CLI, which authenticates by token) are let in too; the
/// handlers see who is who through [`crate::PeerIdentity`].
pub fn server_config(ca: &ClusterCa, identity: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    // Fail here, clearly, rather than on every handshake later.
    ca.check_issued(&identity.cert_pem)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let (certs, key) = identity.to_der()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("configuring TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(rustls_err("loading the server certificate"))?;
    Ok(Arc::new(config))
}

/// The client side (agents, servers calling servers, the CLI): trusts only
/// the cluster CA and presents `identity` when given. Server names are not
/// checked (see the module docs); use [`client_config_strict`] to check
/// them.
pub fn client_config(
    ca: &ClusterCa,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    build_client(ca, identity, false)
}

/// Like [`client_config`], and the address connected to must also be one
/// of the server certificate's SANs.
pub fn client_config_strict(
    ca: &ClusterCa,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    build_client(ca, identity, true)
}

fn build_client(
    ca: &ClusterCa,
    identity: Option<&Identity>,
    check_name: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(ClusterServerVerifier {
        roots: ca.roots(),
        algs: provider.signature_verification_algorithms,
        check_name,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("configuring TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some(id) => {
            ca.check_issued(&id.cert_pem)?;
            let (certs, key) = id.to_der()?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(rustls_err("loading the client certificate"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// rustls's WebPKI server verification (chain to the cluster CA, validity,
/// server-auth usage, handshake signatures), with the name check optional.
#[derive(Debug)]
struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    check_name: bool,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
