//! The agent's cluster certificate. With a token, the servers speak mutual
//! TLS and the agent endpoints want a certificate naming the agent: it is
//! kept in `DATA/cluster-identity.pem` and obtained, when missing or no
//! longer valid (the token changed), by enrolling: a CSR sent with the token
//! to `POST /v1/agents/enrol`, which answers with the agent id (assigned by
//! the servers for a new agent) and the signed certificate.

use crate::agent::backoff;
use crate::config::AgentConfig;
use crate::error::AgentError;
use berth_api::cluster_client::{ClusterClient, EnrolRequest, EnrolResponse, ENROL_PATH};
use berth_tls::{ClusterCa, Identity, AGENT_CN_PREFIX};
use std::path::Path;

/// What an agent with a token uses for every call.
#[derive(Debug, Clone)]
pub(crate) struct AgentCert {
    pub identity: Identity,
    /// The agent id the certificate names.
    pub agent_id: String,
}

fn config_err(e: berth_tls::TlsError) -> AgentError {
    AgentError::Config(e.to_string())
}

/// The agent id `cert_pem` names, if this cluster's CA issued it and it is
/// valid now.
fn issued_id(ca: &ClusterCa, cert_pem: &str) -> Result<String, berth_tls::TlsError> {
    let issued = ca.check_issued(cert_pem)?;
    issued
        .common_name
        .strip_prefix(AGENT_CN_PREFIX)
        .map(String::from)
        .ok_or_else(|| berth_tls::TlsError::Pem {
            what: "reading the agent certificate".into(),
            detail: format!("{} is not an agent certificate", issued.common_name),
        })
}

/// The certificate for agent `agent_id` (`None`: a new agent, the servers
/// choose), from `path` when it holds a valid one for that id, else by
/// enrolling (and saving it to `path` when given). Retries while no server
/// answers; gives up at once when the servers refuse (wrong token).
pub(crate) async fn ensure_cert(
    cfg: &AgentConfig,
    token: &str,
    path: Option<&Path>,
    agent_id: Option<&str>,
) -> Result<AgentCert, AgentError> {
    let ca = ClusterCa::from_token(token).map_err(config_err)?;
    if let Some(path) = path {
        match Identity::load(path) {
            Ok(Some(identity)) => match issued_id(&ca, &identity.cert_pem) {
                Ok(id) if agent_id.is_none_or(|want| want == id) => {
                    return Ok(AgentCert {
                        identity,
                        agent_id: id,
                    });
                }
                Ok(id) => tracing::warn!(
                    file = %path.display(), cert = %id, agent_id = ?agent_id,
                    "the saved certificate names another agent; enrolling again"
                ),
                Err(e) => tracing::warn!(
                    file = %path.display(), error = %e,
                    "the saved certificate is not valid for this token; enrolling again"
                ),
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the saved certificate; enrolling again")
            }
        }
    }
    let cert = enrol(cfg, token, &ca, agent_id).await?;
    if let Some(path) = path {
        cert.identity.save(path).map_err(config_err)?;
    }
    tracing::info!(agent_id = %cert.agent_id, "enrolled with the cluster");
    Ok(cert)
}

async fn enrol(
    cfg: &AgentConfig,
    token: &str,
    ca: &ClusterCa,
    agent_id: Option<&str>,
) -> Result<AgentCert, AgentError> {
    // The CSR's subject is not used (the server names the certificate).
    let (key_pem, csr_pem) =
        berth_tls::agent_key_and_csr(agent_id.unwrap_or("new")).map_err(config_err)?;
    let client = ClusterClient::for_cluster(cfg.servers.clone(), Some(token.to_string()), None)?;
    let req = EnrolRequest {
        agent_id: agent_id.map(String::from),
        csr_pem,
    };
    let mut failures = 0u32;
    let resp = loop {
        match client.post_json::<_, EnrolResponse>(ENROL_PATH, &req).await {
            Ok(r) => break r,
            Err(e) if e.is_auth_failure() || e.status() == Some(400) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "enrolment failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    };
    let bad = |detail: String| AgentError::Config(format!("enrolment answer: {detail}"));
    let named = issued_id(ca, &resp.cert_pem).map_err(|e| bad(e.to_string()))?;
    if named != resp.agent_id || agent_id.is_some_and(|want| want != named) {
        return Err(bad(format!(
            "asked for agent {}, got a certificate for {named} and id {}",
            agent_id.unwrap_or("(any)"),
            resp.agent_id
        )));
    }
    Ok(AgentCert {
        identity: Identity {
            cert_pem: resp.cert_pem,
            key_pem,
        },
        agent_id: named,
    })
}
