//! A node's certificate and private key, and their file on disk.

use crate::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The usual name of the identity file inside a data directory.
pub const IDENTITY_FILE: &str = "cluster-identity.pem";

/// A certificate (PEM) and its private key (PEM, PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    // By hand: the key must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field(
                "common_name",
                &self
                    .cert_der()
                    .ok()
                    .and_then(|c| c.first().and_then(|c| crate::x509::common_name_of(c))),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Writes cert and key to one file, readable by its owner only, replacing
    /// any previous one atomically (a crash leaves the old or the new one).
    pub fn save(&self, path: &Path) -> Result<(), TlsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| IDENTITY_FILE.into());
        let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // `mode` applies only to a new file; a leftover one may be wider.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(&tmp))?;
        let mut text = self.cert_pem.trim_end().to_string();
        text.push('\n');
        text.push_str(self.key_pem.trim_end());
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Best effort: makes the rename itself durable.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads a file written by [`Identity::save`]; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Identity>, TlsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TlsError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let bad = |detail: &str| TlsError::Pem {
            what: format!("reading {}", path.display()),
            detail: detail.into(),
        };
        let key_at = text
            .match_indices("-----BEGIN ")
            .map(|(i, _)| i)
            .find(|&i| {
                text[i..]
                    .lines()
                    .next()
                    .is_some_and(|l| l.contains("PRIVATE KEY"))
            })
            .ok_or_else(|| bad("no private key"))?;
        let id = Identity {
            cert_pem: text[..key_at].to_string(),
            key_pem: text[key_at..].to_string(),
        };
        id.to_der().map_err(|e| bad(&e.to_string()))?;
        Ok(Some(id))
    }

    fn cert_der(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "reading the certificate".into(),
                detail: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                what: "reading the certificate".into(),
                detail: "no certificate in the PEM text".into(),
            });
        }
        Ok(certs)
    }

    /// The certificate chain and key in the form rustls takes.
    pub(crate) fn to_der(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let certs = self.cert_der()?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "reading the private key".into(),
                detail: e.to_string(),
            })?;
        Ok((certs, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterCa;

    #[test]
    fn save_and_load_round_trip_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(Identity::load(&path).unwrap(), None);
        let ca = ClusterCa::from_token("t0123456789abcdef-test").unwrap();
        let id = ca.issue_server("1", &[]).unwrap();
        id.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Identity::load(&path).unwrap().unwrap();
        assert_eq!(back.cert_pem.trim(), id.cert_pem.trim());
        assert_eq!(back.key_pem.trim(), id.key_pem.trim());
        assert_eq!(
            ca.check_issued(&back.cert_pem).unwrap().common_name,
            "server:1"
        );
        // Overwrite in place.
        let id2 = ca.issue_server("2", &[]).unwrap();
        id2.save(&path).unwrap();
        let back = Identity::load(&path).unwrap().unwrap();
        assert_eq!(
            ca.check_issued(&back.cert_pem).unwrap().common_name,
            "server:2"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        assert!(!format!("{back:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::write(&path, "garbage").unwrap();
        let e = Identity::load(&path).unwrap_err();
        assert!(e.to_string().contains(IDENTITY_FILE), "{e}");
    }
}
