//! Upload sessions: a file under uploads/ that chunks are appended to, the
//! running sha256 of what it holds, and the bytes all sessions hold
//! together (bounded, so clients cannot fill the disk with uploads they
//! never finish). Sessions live in memory; a restart abandons them.

use super::error::RegistryError;
use super::names::check_digest;
use super::store::RegistryStore;
use axum::body::Body;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) repo: String,
    path: PathBuf,
    file: tokio::fs::File,
    pub(crate) offset: u64,
    hasher: Sha256,
    touched: Instant,
    /// Finished, cancelled or reaped: a request that waited for the lock
    /// finds the session gone.
    done: bool,
}

pub(crate) type SessionRef = Arc<tokio::sync::Mutex<Session>>;

pub(crate) struct Uploads {
    dir: PathBuf,
    sessions: Mutex<HashMap<String, SessionRef>>,
    /// Bytes held by all open sessions.
    in_flight: AtomicU64,
}

impl Uploads {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            sessions: Mutex::new(HashMap::new()),
            in_flight: AtomicU64::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionRef>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Opens a session for repository `repo`.
    pub(crate) async fn start(
        &self,
        repo: &str,
        max_sessions: usize,
        ttl: Duration,
    ) -> Result<SessionRef, RegistryError> {
        if self.map().len() >= max_sessions {
            self.reap(ttl);
            if self.map().len() >= max_sessions {
                return Err(RegistryError::TooManyRequests(format!(
                    "{max_sessions} uploads are in progress; finish or cancel some"
                )));
            }
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let path = self.dir.join(&id);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| RegistryError::io(&path, e))?;
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            id: id.clone(),
            repo: repo.to_string(),
            path,
            file,
            offset: 0,
            hasher: Sha256::new(),
            touched: Instant::now(),
            done: false,
        }));
        self.map().insert(id, session.clone());
        Ok(session)
    }

    /// The session `id` of repository `repo`.
    pub(crate) fn get(&self, id: &str, repo: &str) -> Result<SessionRef, RegistryError> {
        let unknown = || RegistryError::BlobUploadUnknown(id.to_string());
        let s = self.map().get(id).cloned().ok_or_else(unknown)?;
        // The repository is fixed at creation; another one's id is unknown
        // here (checked again under the lock when the session is busy).
        let other_repo = s.try_lock().is_ok_and(|g| g.repo != repo);
        if other_repo {
            return Err(unknown());
        }
        Ok(s)
    }

    /// Locks a session, failing if it ended while we waited.
    pub(crate) async fn lock(
        s: &SessionRef,
        repo: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<Session>, RegistryError> {
        let g = s.clone().lock_owned().await;
        if g.done || g.repo != repo {
            return Err(RegistryError::BlobUploadUnknown(g.id.clone()));
        }
        Ok(g)
    }

    /// Appends a request body. A body that breaks off keeps what arrived
    /// (the client resumes from the Range we report); a failed write
    /// leaves the file in an unknown state, so the session is dropped.
    pub(crate) async fn append(
        &self,
        s: &mut Session,
        body: Body,
        max_total: u64,
    ) -> Result<(), RegistryError> {
        let mut stream = body.into_data_stream();
        s.touched = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                RegistryError::BlobUploadInvalid(format!("reading the request body: {e}"))
            })?;
            let len = chunk.len() as u64;
            let before = self.in_flight.fetch_add(len, Ordering::Relaxed);
            if before + len > max_total {
                self.in_flight.fetch_sub(len, Ordering::Relaxed);
                return Err(RegistryError::TooLarge(format!(
                    "uploads in progress would hold more than {max_total} bytes"
                )));
            }
            if let Err(e) = s.file.write_all(&chunk).await {
                self.in_flight.fetch_sub(len, Ordering::Relaxed);
                let err = RegistryError::io(&s.path, e);
                self.end(s);
                return Err(err);
            }
            s.hasher.update(&chunk);
            s.offset += len;
            s.touched = Instant::now();
        }
        Ok(())
    }

    /// Checks the content against `digest` and moves it into the blob
    /// store. On a mismatch the session is deleted (as the distribution
    /// registry does): the client starts over.
    pub(crate) async fn finish(
        &self,
        store: &Arc<RegistryStore>,
        s: &mut Session,
        digest: &str,
    ) -> Result<(), RegistryError> {
        check_digest(digest)?;
        let got = format!("sha256:{}", hex::encode(s.hasher.clone().finalize()));
        if got != digest {
            self.end(s);
            return Err(RegistryError::DigestInvalid(format!(
                "upload {} has digest {got}, the client says {digest}",
                s.id
            )));
        }
        let synced = async {
            s.file.flush().await?;
            s.file.sync_all().await
        }
        .await;
        if let Err(e) = synced {
            let err = RegistryError::io(&s.path, e);
            self.end(s);
            return Err(err);
        }
        let (st, path, d) = (store.clone(), s.path.clone(), digest.to_string());
        let res = tokio::task::spawn_blocking(move || st.commit_blob(&path, &d))
            .await
            .unwrap_or_else(|e| Err(RegistryError::io(&s.path, std::io::Error::other(e))));
        self.end(s);
        res
    }

    /// Ends a session: forgets it, gives back its bytes, deletes its file
    /// (already gone when it became a blob).
    pub(crate) fn end(&self, s: &mut Session) {
        if s.done {
            return;
        }
        s.done = true;
        self.map().remove(&s.id);
        self.in_flight.fetch_sub(s.offset, Ordering::Relaxed);
        if let Err(e) = std::fs::remove_file(&s.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %s.path.display(), error = %e, "removing upload data");
            }
        }
    }

    /// Ends sessions untouched for `ttl` (busy ones are in use, not abandoned).
    pub(crate) fn reap(&self, ttl: Duration) -> usize {
        let sessions: Vec<SessionRef> = self.map().values().cloned().collect();
        let mut n = 0;
        for s in sessions {
            if let Ok(mut g) = s.try_lock() {
                if !g.done && g.touched.elapsed() >= ttl {
                    tracing::info!(upload = %g.id, repository = %g.repo, bytes = g.offset, "abandoned upload deleted");
                    self.end(&mut g);
                    n += 1;
                }
            }
        }
        n
    }
}
