//! The container's file system view.
//!
//! The parent prepares *detached* mounts with the new mount API before
//! cloning: the overlay root (fsopen/fsconfig/fsmount) and a clone of each
//! bind-mount source (open_tree), made read-only with mount_setattr when
//! asked. Detached mounts belong to no namespace, so nothing ever appears
//! on the host. The child, in its new mount namespace, makes `/` rslave,
//! attaches the overlay at the mountpoint, pivots into it, drops the old
//! root, and then builds /proc, /dev, /sys, the bind mounts, Docker's
//! masked and read-only paths, all with paths that resolve inside the new
//! root (so symlinks in the image cannot point a mount at the host).
//! Everything vanishes with the mount namespace.
//!
//! Requires Linux 6.8 (`lowerdir+` for the overlay via fsconfig).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::child::{Failure, Step};
use crate::spec::{BindMount, RootfsSpec};
use crate::sys::{self, SysResult};
use crate::RuntimeError;

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// Docker's masked paths: files get /dev/null bound over them,
/// directories an empty read-only tmpfs.
pub const MASKED_FILES: [&CStr; 7] = [
    c"/proc/interrupts",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
];
pub const MASKED_DIRS: [&CStr; 5] = [
    c"/proc/acpi",
    c"/proc/asound",
    c"/proc/scsi",
    c"/sys/firmware",
    c"/sys/devices/virtual/powercap",
];
/// Docker's read-only paths.
pub const READONLY_PATHS: [&CStr; 5] = [
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

/// Device nodes in /dev: (path, major, minor).
const DEVICES: [(&CStr, u32, u32); 6] = [
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
    (c"/dev/tty", 5, 0),
];

const DEV_SYMLINKS: [(&CStr, &CStr); 6] = [
    (c"/proc/self/fd", c"/dev/fd"),
    (c"/proc/self/fd/0", c"/dev/stdin"),
    (c"/proc/self/fd/1", c"/dev/stdout"),
    (c"/proc/self/fd/2", c"/dev/stderr"),
    (c"pts/ptmx", c"/dev/ptmx"),
    (c"/proc/kcore", c"/dev/core"),
];

/// One bind mount, ready to attach.
struct PreparedBind {
    tree: OwnedFd,
    target: CString,
    /// The source is a directory (else a file: the target is a file).
    is_dir: bool,
}

/// Everything the child needs to build its mounts, prepared by the parent.
pub(crate) struct MountPlan {
    rootfs: OwnedFd,
    mountpoint: CString,
    binds: Vec<PreparedBind>,
    /// userns: no mknod there, so the host's device nodes are bound instead.
    devices: Vec<(OwnedFd, &'static CStr)>,
    /// A clone of the pty slave for /dev/console (tty only).
    console: Option<OwnedFd>,
    /// userns with the host network: sysfs cannot be mounted, bind it.
    sysfs: Option<OwnedFd>,
    userns: bool,
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn path_cstring(what: &'static str, p: &Path) -> Result<CString, RuntimeError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| RuntimeError::InvalidSpec {
        what,
        value: p.display().to_string(),
    })
}

/// Normalizes an absolute container path lexically ("/a/./b/../c" ->
/// "/a/c"); ".." cannot climb above "/". Rejects relative paths and "/".
pub fn clean_container_path(dest: &str) -> Result<String, RuntimeError> {
    let invalid = || RuntimeError::InvalidSpec {
        what: "mount destination",
        value: dest.to_string(),
    };
    if !dest.starts_with('/') || dest.contains('\0') {
        return Err(invalid());
    }
    let mut parts: Vec<&str> = Vec::new();
    for comp in dest.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(invalid());
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Reads the error messages a failed fsconfig left in the fs context.
fn fs_context_log(fd: RawFd) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = sys::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        // Lines look like "e overlay: failed to resolve 'x': -2".
        let line = line.trim_end().trim_start_matches("e ");
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(line);
    }
    out
}

/// Builds the overlay as a detached mount.
fn prepare_overlay(rootfs: &RootfsSpec) -> Result<OwnedFd, RuntimeError> {
    let ctx =
        owned(sys::fsopen(c"overlay").map_err(|e| {
            RuntimeError::sys("fsopen overlay", std::io::Error::from_raw_os_error(e))
        })?);
    let fd = ctx.as_raw_fd();
    let set = |key: &CStr, path: &Path| -> Result<(), RuntimeError> {
        let value = path_cstring("overlay path", path)?;
        sys::fsconfig_string(fd, key, &value).map_err(|e| {
            let log = fs_context_log(fd);
            let mut source = std::io::Error::from_raw_os_error(e);
            if !log.is_empty() {
                source = std::io::Error::new(source.kind(), format!("{source} ({log})"));
            }
            RuntimeError::io(
                "overlay option",
                format!("{}={}", key.to_string_lossy(), path.display()),
                source,
            )
        })
    };
    if rootfs.lowerdirs.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            what: "rootfs",
            value: "no lower directories".to_string(),
        });
    }
    for lower in &rootfs.lowerdirs {
        set(c"lowerdir+", lower)?;
    }
    set(c"upperdir", &rootfs.upperdir)?;
    set(c"workdir", &rootfs.workdir)?;
    // Layers are made from upper directories by reading them as plain
    // trees: no redirect or metacopy xattrs may appear there.
    for key in [c"redirect_dir", c"metacopy"] {
        sys::fsconfig_string(fd, key, c"off").map_err(|e| {
            RuntimeError::io(
                "overlay option",
                format!("{}=off", key.to_string_lossy()),
                std::io::Error::from_raw_os_error(e),
            )
        })?;
    }
    if rootfs.volatile {
        // No sync of the whole host filesystem at unmount: for containers
        // whose upper directory is thrown away anyway (run --rm, builds).
        sys::fsconfig_flag(fd, c"volatile").map_err(|e| {
            RuntimeError::io(
                "overlay option",
                "volatile",
                std::io::Error::from_raw_os_error(e),
            )
        })?;
    }
    sys::fsconfig_create(fd).map_err(|e| {
        let log = fs_context_log(fd);
        let source = std::io::Error::from_raw_os_error(e);
        let source = if log.is_empty() {
            source
        } else {
            std::io::Error::new(source.kind(), format!("{source} ({log})"))
        };
        RuntimeError::io("mount overlay", &rootfs.mountpoint, source)
    })?;
    let mnt = sys::fsmount(fd, 0).map_err(|e| {
        RuntimeError::io(
            "fsmount overlay",
            &rootfs.mountpoint,
            std::io::Error::from_raw_os_error(e),
        )
    })?;
    Ok(owned(mnt))
}

/// A detached recursive clone of `source`, read-only if asked.
fn clone_tree(source: &CStr, read_only: bool, display: &Path) -> Result<OwnedFd, RuntimeError> {
    let fd = sys::open_tree(
        libc::AT_FDCWD,
        source,
        sys::OPEN_TREE_CLONE | sys::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint,
    )
    .map_err(|e| {
        RuntimeError::io(
            "bind mount source",
            display,
            std::io::Error::from_raw_os_error(e),
        )
    })?;
    let fd = owned(fd);
    if read_only {
        sys::mount_setattr_fd(fd.as_raw_fd(), sys::MOUNT_ATTR_RDONLY).map_err(|e| {
            RuntimeError::io(
                "make read-only",
                display,
                std::io::Error::from_raw_os_error(e),
            )
        })?;
    }
    Ok(fd)
}

impl MountPlan {
    /// Parent side, before cloning.
    pub fn prepare(
        rootfs: &RootfsSpec,
        binds: &[BindMount],
        userns: bool,
        host_network: bool,
        tty_fd: Option<RawFd>,
    ) -> Result<Self, RuntimeError> {
        let root = prepare_overlay(rootfs)?;
        let mut prepared = Vec::with_capacity(binds.len());
        for b in binds {
            let target = clean_container_path(&b.destination)?;
            let source = path_cstring("mount source", &b.source)?;
            let meta =
                std::fs::metadata(&b.source).map_err(|e| RuntimeError::io("stat", &b.source, e))?;
            prepared.push(PreparedBind {
                tree: clone_tree(&source, b.read_only, &b.source)?,
                target: CString::new(target).map_err(|_| RuntimeError::InvalidSpec {
                    what: "mount destination",
                    value: b.destination.clone(),
                })?,
                is_dir: meta.is_dir(),
            });
        }
        let mut devices = Vec::new();
        if userns {
            for (path, _, _) in DEVICES {
                devices.push((
                    clone_tree(path, false, Path::new(path.to_str().unwrap_or("/dev")))?,
                    path,
                ));
            }
        }
        let console = match tty_fd {
            Some(fd) => {
                let tree = sys::open_tree(
                    fd,
                    c"",
                    sys::OPEN_TREE_CLONE
                        | sys::OPEN_TREE_CLOEXEC
                        | libc::AT_EMPTY_PATH as libc::c_uint,
                )
                .map_err(|e| {
                    RuntimeError::io(
                        "clone tty for /dev/console",
                        format!("fd {fd}"),
                        std::io::Error::from_raw_os_error(e),
                    )
                })?;
                Some(owned(tree))
            }
            None => None,
        };
        let sysfs = if userns && host_network {
            Some(clone_tree(c"/sys", true, Path::new("/sys"))?)
        } else {
            None
        };
        Ok(MountPlan {
            rootfs: root,
            mountpoint: path_cstring("rootfs mountpoint", &rootfs.mountpoint)?,
            binds: prepared,
            devices,
            console,
            sysfs,
            userns,
        })
    }

    /// Child side: everything from rslave to the read-only paths.
    pub fn apply(&self) -> Result<(), Failure<'_>> {
        // Nothing we mount may propagate back to the host.
        sys::mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None)
            .at("make / rslave", c"/")?;
        sys::move_mount_fd(self.rootfs.as_raw_fd(), &self.mountpoint)
            .at("attach rootfs", &self.mountpoint)?;
        // In a user namespace the kernel only allows a new proc or sysfs
        // while an unobstructed one is visible in the mount namespace
        // (mount_too_revealing): create them detached before the old root
        // goes away, attach them after.
        let mut early_proc = None;
        let mut early_sys = None;
        if self.userns {
            early_proc =
                Some(fresh_mount(c"proc", ATTR_NOSUID_NODEV_NOEXEC).at("mount", c"/proc")?);
            if self.sysfs.is_none() {
                early_sys = Some(
                    fresh_mount(c"sysfs", sys::MOUNT_ATTR_RDONLY | ATTR_NOSUID_NODEV_NOEXEC)
                        .at("mount", c"/sys")?,
                );
            }
        }
        self.pivot()?;
        match early_proc {
            Some(fd) => attach(fd, c"/proc")?,
            None => mount_proc()?,
        }
        self.mount_dev()?;
        match early_sys {
            Some(fd) => attach(fd, c"/sys")?,
            None => self.mount_sys()?,
        }
        for b in &self.binds {
            make_target(&b.target, b.is_dir)?;
            sys::move_mount_fd(b.tree.as_raw_fd(), &b.target).at("bind mount", &b.target)?;
        }
        mask_paths()?;
        readonly_paths()?;
        Ok(())
    }

    /// pivot_root(".", ".") then lazily unmount the old root stacked on
    /// top (runc's trick: no put_old directory needed in the image).
    fn pivot(&self) -> Result<(), Failure<'_>> {
        sys::chdir(&self.mountpoint).at("chdir", &self.mountpoint)?;
        sys::pivot_root(c".", c".").at("pivot_root", &self.mountpoint)?;
        sys::umount2(c".", libc::MNT_DETACH).at("unmount old root", c"/")?;
        sys::chdir(c"/").at("chdir", c"/")?;
        Ok(())
    }

    fn mount_dev(&self) -> Result<(), Failure<'_>> {
        mount_at(
            Some(c"tmpfs"),
            c"/dev",
            Some(c"tmpfs"),
            NOSUID | libc::MS_STRICTATIME,
            Some(c"mode=755,size=65536k"),
        )
        .at("mount", c"/dev")?;
        if self.devices.is_empty() {
            for (path, major, minor) in DEVICES {
                sys::mknod(path, libc::S_IFCHR | 0o666, major, minor).at("mknod", path)?;
            }
        } else {
            for (tree, path) in &self.devices {
                touch(path).at("create", path)?;
                sys::move_mount_fd(tree.as_raw_fd(), path).at("bind mount", path)?;
            }
        }
        sys::mkdir(c"/dev/pts", 0o755).at("mkdir", c"/dev/pts")?;
        sys::mount(
            Some(c"devpts"),
            c"/dev/pts",
            Some(c"devpts"),
            NOSUID | NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
        .at("mount", c"/dev/pts")?;
        sys::mkdir(c"/dev/shm", 0o1777).at("mkdir", c"/dev/shm")?;
        sys::mount(
            Some(c"shm"),
            c"/dev/shm",
            Some(c"tmpfs"),
            NOSUID | NODEV | NOEXEC,
            Some(c"mode=1777,size=65536k"),
        )
        .at("mount", c"/dev/shm")?;
        sys::mkdir(c"/dev/mqueue", 0o755).at("mkdir", c"/dev/mqueue")?;
        sys::mount(
            Some(c"mqueue"),
            c"/dev/mqueue",
            Some(c"mqueue"),
            NOSUID | NODEV | NOEXEC,
            None,
        )
        .at("mount", c"/dev/mqueue")?;
        for (target, link) in DEV_SYMLINKS {
            sys::symlink(target, link).at("symlink", link)?;
        }
        if let Some(console) = &self.console {
            touch(c"/dev/console").at("create", c"/dev/console")?;
            sys::move_mount_fd(console.as_raw_fd(), c"/dev/console")
                .at("bind mount", c"/dev/console")?;
        }
        Ok(())
    }

    fn mount_sys(&self) -> Result<(), Failure<'_>> {
        if let Some(tree) = &self.sysfs {
            ensure_dir(c"/sys")?;
            return sys::move_mount_fd(tree.as_raw_fd(), c"/sys").at("bind mount", c"/sys");
        }
        mount_at(
            Some(c"sysfs"),
            c"/sys",
            Some(c"sysfs"),
            libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
            None,
        )
        .at("mount", c"/sys")
    }
}

const ATTR_NOSUID_NODEV_NOEXEC: u64 =
    sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;

/// A new, detached instance of a kernel file system (no options).
fn fresh_mount(fstype: &CStr, attrs: u64) -> SysResult<RawFd> {
    let ctx = sys::fsopen(fstype)?;
    let result = sys::fsconfig_create(ctx).and_then(|()| sys::fsmount(ctx, attrs));
    sys::close(ctx);
    result
}

/// Attaches a detached mount at `target` (creating the directory if the
/// image lacks it) and closes the fd.
fn attach(fd: RawFd, target: &'static CStr) -> Result<(), Failure<'static>> {
    let result = match sys::move_mount_fd(fd, target) {
        Err(libc::ENOENT) => mkdir_all(target, 0o755).and_then(|()| sys::move_mount_fd(fd, target)),
        r => r,
    };
    sys::close(fd);
    result.at("attach", target)
}

fn mount_proc() -> Result<(), Failure<'static>> {
    mount_at(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        NOSUID | NODEV | NOEXEC,
        None,
    )
    .at("mount", c"/proc")
}

/// mount(2), creating the mountpoint directory if the image lacks it.
fn mount_at(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult {
    match sys::mount(source, target, fstype, flags, data) {
        Err(libc::ENOENT) => {
            mkdir_all(target, 0o755)?;
            sys::mount(source, target, fstype, flags, data)
        }
        r => r,
    }
}

fn ensure_dir(path: &CStr) -> Result<(), Failure<'_>> {
    mkdir_all(path, 0o755).at("mkdir", path)
}

/// Creates an empty file (for a file bind mount) if nothing is there.
fn touch(path: &CStr) -> SysResult {
    let fd = sys::open(
        path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOCTTY,
        0o644,
    )?;
    sys::close(fd);
    Ok(())
}

/// Creates the mount target: a directory, or a file and its parents.
fn make_target(target: &CStr, is_dir: bool) -> Result<(), Failure<'_>> {
    if is_dir {
        return ensure_dir(target);
    }
    match touch(target) {
        Ok(()) => Ok(()),
        Err(libc::ENOENT) => {
            mkdir_parent(target).at("mkdir", target)?;
            touch(target).at("create", target)
        }
        // A directory there: the bind will fail with a clear ENOTDIR.
        Err(libc::EISDIR) => Ok(()),
        Err(e) => Err(Failure::setup("create", target, e)),
    }
}

/// mkdir -p without allocation: walks `path` in a stack buffer.
pub(crate) fn mkdir_all(path: &CStr, mode: libc::mode_t) -> SysResult {
    match sys::mkdir(path, mode) {
        Ok(()) | Err(libc::EEXIST) => return Ok(()),
        Err(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    mkdir_parent(path)?;
    match sys::mkdir(path, mode) {
        Ok(()) | Err(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates every ancestor directory of `path` (mode 0755).
fn mkdir_parent(path: &CStr) -> SysResult {
    let bytes = path.to_bytes();
    let mut buf = [0u8; libc::PATH_MAX as usize + 1];
    if bytes.len() >= buf.len() {
        return Err(libc::ENAMETOOLONG);
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    for i in 1..bytes.len() {
        if bytes[i] != b'/' {
            continue;
        }
        buf[i] = 0;
        let prefix = CStr::from_bytes_until_nul(&buf).map_err(|_| libc::EINVAL)?;
        match sys::mkdir(prefix, 0o755) {
            Ok(()) | Err(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        buf[i] = b'/';
    }
    Ok(())
}

fn mask_paths() -> Result<(), Failure<'static>> {
    for path in MASKED_FILES {
        match sys::mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None) {
            Ok(()) | Err(libc::ENOENT) => {}
            Err(e) => return Err(Failure::setup("mask", path, e)),
        }
    }
    for path in MASKED_DIRS {
        match sys::mount(Some(c"tmpfs"), path, Some(c"tmpfs"), libc::MS_RDONLY, None) {
            Ok(()) | Err(libc::ENOENT) => {}
            Err(e) => return Err(Failure::setup("mask", path, e)),
        }
    }
    Ok(())
}

fn readonly_paths() -> Result<(), Failure<'static>> {
    for path in READONLY_PATHS {
        match sys::mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None) {
            Ok(()) => {}
            Err(libc::ENOENT) => continue,
            Err(e) => return Err(Failure::setup("bind", path, e)),
        }
        // The flags /proc was mounted with are repeated: in a user
        // namespace they are locked and a remount must keep them.
        sys::mount(
            None,
            path,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
            None,
        )
        .at("remount read-only", path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_container_path("/data").unwrap(), "/data");
        assert_eq!(clean_container_path("/a/./b//c/").unwrap(), "/a/b/c");
        assert_eq!(clean_container_path("/a/../../etc").unwrap(), "/etc");
        for bad in ["", "rel/path", "/", "/..", "/a/..", "/x\0y"] {
            assert!(clean_container_path(bad).is_err(), "{bad:?}");
        }
    }
}
