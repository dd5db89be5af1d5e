//! Repository names, tags, digests and the routes of the distribution API.
//! Names contain slashes, so the router hands us the whole path and the
//! route is read from its end (`.../manifests/<ref>`, `.../blobs/<digest>`).

use super::error::RegistryError;

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => f.write_str(d),
        }
    }
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        if s.contains(':') {
            check_digest(s)?;
            Ok(Reference::Digest(s.to_string()))
        } else if valid_tag(s) {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(RegistryError::TagInvalid(s.to_string()))
        }
    }
}

/// One request of the API, as read from its path (after `/v2`).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags { name: String },
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    UploadStart { name: String },
    Upload { name: String, id: String },
}

/// Reads the route from a path starting with `/v2`. None: not an API path.
/// The name is checked; references, digests and ids are checked by the
/// handlers, which know the right error code for each.
pub fn parse_route(path: &str) -> Result<Option<Route>, RegistryError> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(None);
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Some(Route::Base));
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Ok(None);
    };
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    let named = |name: &str, route: Route| -> Result<Option<Route>, RegistryError> {
        check_name(name)?;
        Ok(Some(route))
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return named(name, Route::Tags { name: name.into() });
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return named(name, Route::UploadStart { name: name.into() });
    }
    for (marker, kind) in [("/blobs/uploads/", 0), ("/manifests/", 1), ("/blobs/", 2)] {
        if let Some(i) = rest.rfind(marker) {
            let (name, last) = (&rest[..i], &rest[i + marker.len()..]);
            if last.is_empty() || last.contains('/') {
                continue;
            }
            let route = match kind {
                0 => Route::Upload {
                    name: name.into(),
                    id: last.into(),
                },
                1 => Route::Manifest {
                    name: name.into(),
                    reference: last.into(),
                },
                _ => Route::Blob {
                    name: name.into(),
                    digest: last.into(),
                },
            };
            return named(name, route);
        }
    }
    Ok(None)
}

/// The spec's name grammar: lowercase components separated by slashes,
/// each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RegistryError::NameInvalid(name.to_string()))
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// The hex part of a sha256 digest, the only algorithm stored.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

pub fn check_digest(digest: &str) -> Result<&str, RegistryError> {
    digest_hex(digest).ok_or_else(|| {
        RegistryError::DigestInvalid(format!(
            "{digest} is not a sha256 digest (sha256: and 64 lowercase hex digits)"
        ))
    })
}

/// Upload ids are 32 hex digits we made; anything else is unknown.
pub fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in ["busybox", "team/app", "a.b/c_d/e__f/g-h--i", "x1/2y"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", "Busybox", "a//b", "/a", "a/", "-a", "a-", "a..b", "a___b", "a:b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert!(valid_tag("latest") && valid_tag("_x") && valid_tag("1.0-rc_1"));
        assert!(!valid_tag("") && !valid_tag(".x") && !valid_tag(&"a".repeat(129)));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Reference::parse(&d).unwrap(), Reference::Digest(d.clone()));
        assert_eq!(
            Reference::parse("v1").unwrap(),
            Reference::Tag("v1".to_string())
        );
        assert!(matches!(
            Reference::parse("sha256:zz"),
            Err(RegistryError::DigestInvalid(_))
        ));
        assert!(matches!(
            Reference::parse("a b"),
            Err(RegistryError::TagInvalid(_))
        ));
    }

    #[test]
    fn routes_are_read_from_the_end() {
        let d = format!("sha256:{}", "0".repeat(64));
        let table = [
            ("/v2/", Some(Route::Base)),
            ("/v2", Some(Route::Base)),
            ("/v2/_catalog", Some(Route::Catalog)),
            (
                "/v2/a/b/tags/list",
                Some(Route::Tags { name: "a/b".into() }),
            ),
            (
                "/v2/a/b/manifests/v1",
                Some(Route::Manifest {
                    name: "a/b".into(),
                    reference: "v1".into(),
                }),
            ),
            (
                "/v2/a/blobs/uploads/",
                Some(Route::UploadStart { name: "a".into() }),
            ),
            (
                "/v2/a/blobs/uploads/abc",
                Some(Route::Upload {
                    name: "a".into(),
                    id: "abc".into(),
                }),
            ),
            (
                // A repository may itself be called "blobs".
                &format!("/v2/x/blobs/blobs/{d}"),
                Some(Route::Blob {
                    name: "x/blobs".into(),
                    digest: d.clone(),
                }),
            ),
            ("/v1/x", None),
            ("/v2/a/other", None),
        ];
        for (path, want) in table {
            assert_eq!(parse_route(path).unwrap(), want, "{path}");
        }
        assert!(matches!(
            parse_route("/v2/A/tags/list"),
            Err(RegistryError::NameInvalid(_))
        ));
    }
}
