//! The cluster's image registry: the OCI distribution API, so that agents
//! fetch the images they lack from the servers and standard clients
//! (skopeo, crane, docker) push and pull.
//!
//! Blobs are content-addressed and shared by all repositories (a layer is
//! stored once, however many images use it); see [`store`] for the files.
//! Neither blobs nor tags are in the Raft log: a server that lacks what a
//! client asks for fetches it from its peers first (module `peers`), and
//! manifest pushes are forwarded to the peers. Until tags are replicated
//! through Raft, a peer that was down during a push may serve an older
//! digest for a moved tag.
//!
//! [`routes`] answers `/v2/...`; the server merges it and puts token auth
//! in front ([`auth::require_token`] accepts the token as Bearer or as a
//! Basic password, as registry clients send it).

pub mod auth;
mod error;
mod handlers;
pub mod manifest;
pub mod names;
mod peers;
pub mod store;
mod uploads;

pub use error::RegistryError;
pub use peers::{MANIFEST_ACCEPT, PEER_HEADER};
pub use store::{RegistryConfig, RegistryStore, StoredManifest};

use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use std::sync::Arc;

/// The distribution API over `store`. Must be called inside a tokio
/// runtime: it starts the task that deletes abandoned uploads (it ends
/// when the store is dropped).
pub fn routes(store: Arc<RegistryStore>) -> Router {
    spawn_reaper(&store);
    Router::new()
        .route("/v2", any(handlers::dispatch))
        .route("/v2/", any(handlers::dispatch))
        .route("/v2/{*rest}", any(handlers::dispatch))
        .layer(axum::middleware::map_response(api_version))
        .with_state(store)
}

async fn api_version(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn spawn_reaper(store: &Arc<RegistryStore>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("registry routes built outside a runtime: abandoned uploads are only deleted when sessions run out");
        return;
    };
    let weak = Arc::downgrade(store);
    let every = (store.config().session_ttl / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(60),
    );
    rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(store) = weak.upgrade() else { return };
            store.reap_uploads();
        }
    });
}

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod tests;
