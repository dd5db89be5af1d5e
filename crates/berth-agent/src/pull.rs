//! Getting a container task's image onto this node: an image the engine
//! lacks is pulled from the cluster's registry (served by every server,
//! each fetching from its peers what it lacks), trying each server in
//! turn, over HTTPS when the cluster has a token. Layers the node already
//! has are not downloaded.

use crate::error::AgentError;
use berth_api::cluster_client::ClusterClient;
use berth_engine::Engine;
use berth_image::distribution::{self, PullReport};
use berth_types::ImageRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Makes `image` available in the engine's store, pulling it from the
/// cluster's registry when the store lacks it.
pub async fn ensure_image(
    client: &ClusterClient,
    engine: &Engine,
    image: &str,
) -> Result<(), AgentError> {
    // The server that answered last first: it is up.
    let mut servers: Vec<String> = client.preferred().into_iter().collect();
    for s in client.servers() {
        if !servers.contains(s) {
            servers.push(s.clone());
        }
    }
    // With the token the registry is reached over HTTPS under the cluster
    // CA (see `distribution::with_servers`).
    pull_image(&servers, client.token(), engine, image)
        .await
        .map(|_| ())
}

/// One pull per image at a time on this node: tasks of one job starting
/// together must not download the same layers once each.
fn pull_lock(image: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Forget locks nobody holds, so the map stays small.
    map.retain(|_, l| Arc::strong_count(l) > 1);
    map.entry(image.to_string()).or_default().clone()
}

/// Pulls `image` (`name[:tag]`) from the first of `servers` that answers
/// and tags it `image` in the engine's store. Returns None when the store
/// had it (possibly pulled meanwhile by another task).
pub async fn pull_image(
    servers: &[String],
    token: Option<&str>,
    engine: &Engine,
    image: &str,
) -> Result<Option<PullReport>, AgentError> {
    let reference = ImageRef::parse(image)
        .map_err(|e| AgentError::Engine(format!("pulling image {image}: {e}")))?;
    let lock = pull_lock(&reference.to_string());
    let _guard = lock.lock().await;
    let store = engine.images();
    let (servers, token, name) = (servers.to_vec(), token.map(String::from), image.to_string());
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        if store.resolve(&name).is_ok() {
            return Ok(None);
        }
        let repo = distribution::repository_of(&reference);
        distribution::with_servers(&servers, token.as_deref(), |registry| {
            distribution::pull(
                &store,
                registry,
                &repo,
                &reference.tag,
                Some(&reference),
                &mut |_| {},
            )
        })
        .map(Some)
    })
    .await
    .map_err(|e| AgentError::Engine(format!("pulling image {image}: worker failed: {e}")))?;
    match result {
        Ok(Some(report)) => {
            tracing::info!(
                image,
                id = %report.image_id,
                registry = %report.registry,
                layers_downloaded = report.layers_downloaded,
                layers_skipped = report.layers_skipped,
                bytes = report.bytes_downloaded,
                ms = started.elapsed().as_millis() as u64,
                "image pulled"
            );
            Ok(Some(report))
        }
        Ok(None) => Ok(None),
        Err(e) if e.is_not_found() => Err(AgentError::ImageNotFound(image.to_string())),
        Err(e) => Err(AgentError::Engine(format!(
            "pulling image {image} from the cluster registry: {e}"
        ))),
    }
}
