//! `--user` resolution against the container's /etc/passwd and /etc/group,
//! with runc's semantics. The parsing works on byte slices and writes into
//! a fixed-size [`ExecUser`], so the container child can resolve the user
//! after pivot_root without allocating.

use crate::RuntimeError;

/// Most supplementary groups we pass to setgroups(2).
pub const MAX_GROUPS: usize = 64;
const MAX_HOME: usize = 512;

/// One half of a `user[:group]` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl IdOrName {
    fn parse(s: &str) -> Self {
        match s.parse::<u32>() {
            Ok(id) => IdOrName::Id(id),
            Err(_) => IdOrName::Name(s.to_string()),
        }
    }
}

/// A parsed `--user` value: "", "name", "uid", "uid:gid", "name:group".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserSpec {
    pub user: Option<IdOrName>,
    pub group: Option<IdOrName>,
}

impl UserSpec {
    pub fn parse(spec: &str) -> Self {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        UserSpec {
            user: (!u.is_empty()).then(|| IdOrName::parse(u)),
            group: g.filter(|g| !g.is_empty()).map(IdOrName::parse),
        }
    }
}

/// The resolved identity, fixed-size so it can live on the child's stack.
#[derive(Clone)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    groups: [u32; MAX_GROUPS],
    ngroups: usize,
    home: [u8; MAX_HOME],
    home_len: usize,
}

impl std::fmt::Debug for ExecUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecUser")
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("groups", &self.groups())
            .field("home", &String::from_utf8_lossy(self.home()))
            .finish()
    }
}

impl Default for ExecUser {
    fn default() -> Self {
        let mut home = [0u8; MAX_HOME];
        home[0] = b'/';
        ExecUser {
            uid: 0,
            gid: 0,
            groups: [0; MAX_GROUPS],
            ngroups: 0,
            home,
            home_len: 1,
        }
    }
}

impl ExecUser {
    /// Supplementary group ids.
    pub fn groups(&self) -> &[u32] {
        &self.groups[..self.ngroups]
    }
    /// Home directory from the passwd entry ("/" when there is none).
    pub fn home(&self) -> &[u8] {
        &self.home[..self.home_len]
    }
    fn set_home(&mut self, home: &[u8]) {
        if !home.is_empty() && home.len() <= MAX_HOME {
            self.home[..home.len()].copy_from_slice(home);
            self.home_len = home.len();
        }
    }
}

/// Why resolution failed, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserError {
    NoSuchUser,
    NoSuchGroup,
}

struct PasswdEntry<'a> {
    name: &'a [u8],
    uid: u32,
    gid: u32,
    home: &'a [u8],
}

struct GroupEntry<'a> {
    name: &'a [u8],
    gid: u32,
    members: &'a [u8],
}

fn parse_u32(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Splits a line into at most N colon-separated fields.
fn fields<const N: usize>(line: &[u8]) -> [&[u8]; N] {
    let mut out: [&[u8]; N] = [&[]; N];
    for (slot, field) in out.iter_mut().zip(line.splitn(N, |&b| b == b':')) {
        *slot = field;
    }
    out
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && l[0] != b'#')
}

fn passwd_entries(data: &[u8]) -> impl Iterator<Item = PasswdEntry<'_>> {
    lines(data).filter_map(|line| {
        let [name, _pw, uid, gid, _gecos, home, _shell] = fields::<7>(line);
        Some(PasswdEntry {
            name,
            uid: parse_u32(uid)?,
            gid: parse_u32(gid)?,
            home,
        })
    })
}

fn group_entries(data: &[u8]) -> impl Iterator<Item = GroupEntry<'_>> {
    lines(data).filter_map(|line| {
        let [name, _pw, gid, members] = fields::<4>(line);
        Some(GroupEntry {
            name,
            gid: parse_u32(gid)?,
            members,
        })
    })
}

/// Resolves `spec` the way runc does:
/// - the user part matches the first passwd entry by uid (numeric) or
///   name; a numeric uid without an entry is fine (gid 0, home "/"), an
///   unknown name is an error; no user part means uid 0;
/// - an explicit group part sets the primary gid (an unknown name is an
///   error); without one, the supplementary groups are the groups that
///   list the user's name as a member.
///
/// `passwd`/`group` are the files' contents, `None` when absent.
pub fn resolve_into(
    spec: &UserSpec,
    passwd: Option<&[u8]>,
    group: Option<&[u8]>,
    out: &mut ExecUser,
) -> Result<(), UserError> {
    *out = ExecUser::default();
    let mut matched_name: &[u8] = &[];
    let entry = passwd.and_then(|data| {
        passwd_entries(data).find(|e| match &spec.user {
            None => e.uid == 0,
            Some(IdOrName::Id(uid)) => e.uid == *uid,
            Some(IdOrName::Name(name)) => e.name == name.as_bytes(),
        })
    });
    match (&spec.user, entry) {
        (_, Some(e)) => {
            out.uid = e.uid;
            out.gid = e.gid;
            out.set_home(e.home);
            matched_name = e.name;
        }
        (Some(IdOrName::Name(_)), None) => return Err(UserError::NoSuchUser),
        (Some(IdOrName::Id(uid)), None) => out.uid = *uid,
        (None, None) => {}
    }

    match &spec.group {
        Some(g) => {
            let found = group.and_then(|data| {
                group_entries(data).find(|e| match g {
                    IdOrName::Id(gid) => e.gid == *gid,
                    IdOrName::Name(name) => e.name == name.as_bytes(),
                })
            });
            out.gid = match (g, found) {
                (_, Some(e)) => e.gid,
                (IdOrName::Id(gid), None) => *gid,
                (IdOrName::Name(_), None) => return Err(UserError::NoSuchGroup),
            };
        }
        None if !matched_name.is_empty() => {
            if let Some(data) = group {
                for e in group_entries(data) {
                    let member = e.members.split(|&b| b == b',').any(|m| m == matched_name);
                    if member && out.ngroups < MAX_GROUPS {
                        out.groups[out.ngroups] = e.gid;
                        out.ngroups += 1;
                    }
                }
            }
        }
        None => {}
    }
    Ok(())
}

/// Allocating convenience wrapper for callers outside the child (image
/// builds, `docker exec` previews): resolves `user` against file contents.
pub fn resolve(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, RuntimeError> {
    let spec = UserSpec::parse(user);
    let mut out = ExecUser::default();
    resolve_into(
        &spec,
        passwd.map(str::as_bytes),
        group.map(str::as_bytes),
        &mut out,
    )
    .map_err(|e| user_error(&spec, e))?;
    Ok(out)
}

pub(crate) fn user_error(spec: &UserSpec, e: UserError) -> RuntimeError {
    let name = |p: &Option<IdOrName>| match p {
        Some(IdOrName::Name(n)) => n.clone(),
        Some(IdOrName::Id(id)) => id.to_string(),
        None => String::new(),
    };
    match e {
        UserError::NoSuchUser => RuntimeError::UserNotFound {
            kind: "user",
            name: name(&spec.user),
            file: "passwd",
        },
        UserError::NoSuchGroup => RuntimeError::UserNotFound {
            kind: "group",
            name: name(&spec.group),
            file: "group",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # comment\n\
        broken line\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        www-data:x:33:app\n\
        staff:x:50:app,www-data\n\
        app:x:1000:\n\
        audio:x:29:root\n";

    fn r(user: &str) -> Result<ExecUser, RuntimeError> {
        resolve(user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn table() {
        // (spec, uid, gid, groups, home)
        let cases: &[(&str, u32, u32, &[u32], &str)] = &[
            ("", 0, 0, &[29], "/root"),
            ("root", 0, 0, &[29], "/root"),
            ("app", 1000, 1000, &[33, 50], "/home/app"),
            ("1000", 1000, 1000, &[33, 50], "/home/app"),
            ("4242", 4242, 0, &[], "/"),
            ("4242:4243", 4242, 4243, &[], "/"),
            ("app:staff", 1000, 50, &[], "/home/app"),
            ("app:0", 1000, 0, &[], "/home/app"),
            ("www-data", 33, 33, &[50], "/var/www"),
            ("33:", 33, 33, &[50], "/var/www"),
        ];
        for &(spec, uid, gid, groups, home) in cases {
            let u = r(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(
                (u.uid, u.gid, u.groups(), u.home()),
                (uid, gid, groups, home.as_bytes()),
                "{spec}"
            );
        }
    }

    #[test]
    fn errors_name_the_entry() {
        assert_eq!(
            r("nope").unwrap_err().to_string(),
            "unable to find user nope: no matching entries in passwd file"
        );
        assert_eq!(
            r("app:nogroup").unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn missing_files() {
        let u = resolve("", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home()), (0, 0, &b"/"[..]));
        let u = resolve("7:8", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (7, 8));
        assert!(resolve("app", None, None).is_err());
    }
}
