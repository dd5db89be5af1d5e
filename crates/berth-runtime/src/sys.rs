//! Thin syscall wrappers. They neither allocate nor panic, so they can be
//! used in a freshly cloned child before exec; errors are raw errno values
//! so a failure can be reported without building an `io::Error`.
//!
//! Every `unsafe` block of the crate that talks to the kernel lives here.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, CStr};
use std::io;
use std::os::fd::RawFd;
use std::ptr;

pub(crate) type Errno = i32;
pub(crate) type SysResult<T = ()> = Result<T, Errno>;

// New mount API constants (linux/mount.h); libc does not export them all.
pub(crate) const OPEN_TREE_CLONE: c_uint = 1;
pub(crate) const OPEN_TREE_CLOEXEC: c_uint = libc::O_CLOEXEC as c_uint;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: c_uint = 0x4;
pub(crate) const FSOPEN_CLOEXEC: c_uint = 1;
pub(crate) const FSMOUNT_CLOEXEC: c_uint = 1;
pub(crate) const FSCONFIG_SET_FLAG: c_uint = 0;
pub(crate) const FSCONFIG_SET_STRING: c_uint = 1;
pub(crate) const FSCONFIG_CMD_CREATE: c_uint = 6;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// clone3 flag (linux/sched.h); libc's constant is an overflowing c_int.
pub(crate) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct clone_args` up to and including `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C, align(8))]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

pub(crate) fn errno() -> Errno {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(rc: c_int) -> SysResult<c_int> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc)
    }
}

fn check_long(rc: c_long) -> SysResult<c_long> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc)
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

pub(crate) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> SysResult {
    // SAFETY: all pointers are NUL-terminated strings or null, valid for the call.
    let rc = unsafe {
        libc::mount(
            opt_ptr(source),
            target.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    };
    check(rc).map(drop)
}

pub(crate) fn umount2(target: &CStr, flags: c_int) -> SysResult {
    // SAFETY: target is a valid C string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

pub(crate) fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult {
    // SAFETY: both arguments are valid C strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check_long(rc).map(drop)
}

pub(crate) fn chdir(path: &CStr) -> SysResult {
    // SAFETY: path is a valid C string.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

pub(crate) fn mkdir(path: &CStr, mode: libc::mode_t) -> SysResult {
    // SAFETY: path is a valid C string.
    check(unsafe { libc::mkdir(path.as_ptr(), mode) }).map(drop)
}

pub(crate) fn mknod(path: &CStr, mode: libc::mode_t, major: u32, minor: u32) -> SysResult {
    let dev = libc::makedev(major, minor);
    // SAFETY: path is a valid C string.
    check(unsafe { libc::mknod(path.as_ptr(), mode, dev) }).map(drop)
}

pub(crate) fn symlink(target: &CStr, link: &CStr) -> SysResult {
    // SAFETY: both are valid C strings.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
}

pub(crate) fn unlink(path: &CStr) -> SysResult {
    // SAFETY: path is a valid C string.
    check(unsafe { libc::unlink(path.as_ptr()) }).map(drop)
}

pub(crate) fn open(path: &CStr, flags: c_int, mode: libc::mode_t) -> SysResult<RawFd> {
    // SAFETY: path is a valid C string; mode is passed as the variadic arg.
    check(unsafe { libc::open(path.as_ptr(), flags, mode as c_uint) })
}

pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
pub(crate) fn read_full(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = read(fd, &mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

pub(crate) fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult {
    while !buf.is_empty() {
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

pub(crate) fn close(fd: RawFd) {
    // SAFETY: closing an fd we own; errors are irrelevant here.
    unsafe { libc::close(fd) };
}

pub(crate) fn dup2(old: RawFd, new: RawFd) -> SysResult {
    // SAFETY: plain fd manipulation.
    check(unsafe { libc::dup2(old, new) }).map(drop)
}

pub(crate) fn dup_cloexec_above(fd: RawFd, min: RawFd) -> SysResult<RawFd> {
    // SAFETY: plain fd manipulation.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

pub(crate) fn clear_cloexec(fd: RawFd) -> SysResult {
    // SAFETY: plain fd manipulation.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// Marks every fd >= `first` close-on-exec in one syscall.
pub(crate) fn cloexec_from(first: c_uint) -> SysResult {
    // SAFETY: close_range only manipulates our fd table.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    check_long(rc).map(drop)
}

pub(crate) fn setsid() -> SysResult {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

pub(crate) fn set_controlling_tty(fd: RawFd) -> SysResult {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

pub(crate) fn sethostname(name: &[u8]) -> SysResult {
    // SAFETY: name is valid for name.len() bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub(crate) fn umask(mask: libc::mode_t) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

pub(crate) fn setgroups(groups: &[libc::gid_t]) -> SysResult {
    // SAFETY: groups is valid for groups.len() elements. The raw syscall
    // is used so only this thread is affected (no glibc setxid broadcast,
    // which we do not need in a single-threaded child).
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    check_long(rc).map(drop)
}

pub(crate) fn setresgid(gid: libc::gid_t) -> SysResult {
    // SAFETY: plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    check_long(rc).map(drop)
}

pub(crate) fn setresuid(uid: libc::uid_t) -> SysResult {
    // SAFETY: plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    check_long(rc).map(drop)
}

pub(crate) fn prctl(op: c_int, a2: c_ulong, a3: c_ulong) -> SysResult<c_int> {
    // SAFETY: the prctl options used by this crate take integer arguments only.
    check(unsafe { libc::prctl(op, a2, a3, 0 as c_ulong, 0 as c_ulong) })
}

/// capset(2) with version 3 (64-bit) sets.
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> SysResult {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and data have the kernel's layout and live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check_long(rc).map(drop)
}

pub(crate) fn seccomp_filter(program: &[libc::sock_filter]) -> SysResult {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    check_long(rc).map(drop)
}

/// execve(2); only returns on failure.
pub(crate) fn execve(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
    debug_assert!(argv.last().is_some_and(|p| p.is_null()));
    debug_assert!(envp.last().is_some_and(|p| p.is_null()));
    // SAFETY: argv/envp are null-terminated arrays of pointers to C strings
    // that stay alive (the caller owns them) until exec replaces the image.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

pub(crate) fn exit(code: c_int) -> ! {
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to
    // the parent's copy of the process image.
    unsafe { libc::_exit(code) }
}

/// clone3 without CLONE_VM: fork semantics, returns 0 in the child.
pub(crate) fn clone3(args: &mut CloneArgs) -> SysResult<libc::pid_t> {
    // SAFETY: args has the kernel's clone_args layout; without CLONE_VM and
    // with a null stack the child continues on a copy of our stack, exactly
    // like fork(). Callers guarantee the process is single-threaded.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    check_long(rc).map(|pid| pid as libc::pid_t)
}

pub(crate) fn setns(fd: RawFd, nstype: c_int) -> SysResult {
    // SAFETY: plain integers.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

pub(crate) fn open_tree(dirfd: RawFd, path: &CStr, flags: c_uint) -> SysResult<RawFd> {
    // SAFETY: path is a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    check_long(rc).map(|fd| fd as RawFd)
}

/// Attaches the detached mount `fd` at `target`.
pub(crate) fn move_mount_fd(fd: RawFd, target: &CStr) -> SysResult {
    // SAFETY: both paths are valid C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check_long(rc).map(drop)
}

/// Sets `attr_set` on the whole (detached) mount tree behind `fd`.
pub(crate) fn mount_setattr_fd(fd: RawFd, attr_set: u64) -> SysResult {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr has the kernel's mount_attr layout (VER0, 32 bytes).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check_long(rc).map(drop)
}

pub(crate) fn fsopen(fstype: &CStr) -> SysResult<RawFd> {
    // SAFETY: fstype is a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    check_long(rc).map(|fd| fd as RawFd)
}

pub(crate) fn fsconfig_string(fd: RawFd, key: &CStr, value: &CStr) -> SysResult {
    // SAFETY: key and value are valid C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0 as c_int,
        )
    };
    check_long(rc).map(drop)
}

pub(crate) fn fsconfig_flag(fd: RawFd, key: &CStr) -> SysResult {
    // SAFETY: key is a valid C string; flags take no value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_SET_FLAG,
            key.as_ptr(),
            ptr::null::<c_char>(),
            0 as c_int,
        )
    };
    check_long(rc).map(drop)
}

pub(crate) fn fsconfig_create(fd: RawFd) -> SysResult {
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd,
            FSCONFIG_CMD_CREATE,
            ptr::null::<c_char>(),
            ptr::null::<c_char>(),
            0 as c_int,
        )
    };
    check_long(rc).map(drop)
}

pub(crate) fn fsmount(fd: RawFd, attr_flags: u64) -> SysResult<RawFd> {
    // SAFETY: plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_fsmount, fd, FSMOUNT_CLOEXEC, attr_flags as c_uint) };
    check_long(rc).map(|fd| fd as RawFd)
}

pub(crate) fn pipe_cloexec() -> SysResult<[RawFd; 2]> {
    let mut fds = [-1; 2];
    // SAFETY: fds has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(fds)
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> SysResult {
    // SAFETY: plain integers.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = b'l' as c_char;
    req.ifr_name[1] = b'o' as c_char;
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req as *const libc::ifreq) };
    let result = check(rc).map(drop);
    close(sock);
    result
}

pub(crate) fn kill(pid: libc::pid_t, signal: c_int) -> SysResult {
    // SAFETY: plain integers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// waitpid(2) retrying on EINTR; returns the raw wait status.
pub(crate) fn waitpid(pid: libc::pid_t) -> SysResult<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 {
            return Ok(status);
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Whether the calling process has exactly one thread (reads
/// /proc/self/stat; cheap and allocation-free on the stack).
pub(crate) fn thread_count() -> Option<u64> {
    let fd = open(c"/proc/self/stat", libc::O_RDONLY | libc::O_CLOEXEC, 0).ok()?;
    let mut buf = [0u8; 1024];
    let n = read_full(fd, &mut buf);
    close(fd);
    let text = &buf[..n.ok()?];
    // Field 20 (num_threads); the comm field (2) may contain spaces, so
    // count from the last ')'.
    let close_paren = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close_paren + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(17)?.parse().ok()
}

/// The calling thread's CPU affinity, saved so it can be restored after
/// pinning to the current CPU for a clone (see `spawn`).
pub(crate) struct CpuPin {
    saved: libc::cpu_set_t,
}

impl CpuPin {
    /// Pins the calling thread to the CPU it is running on. None if the
    /// kernel does not tell us (then nothing changed).
    pub fn here() -> Option<CpuPin> {
        // SAFETY: sched_getcpu has no arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 || cpu as usize >= libc::CPU_SETSIZE as usize {
            return None;
        }
        // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
        let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: saved is a valid out buffer of `size` bytes.
        if unsafe { libc::sched_getaffinity(0, size, &mut saved) } != 0 {
            return None;
        }
        // SAFETY: as above.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: cpu was bounds-checked against CPU_SETSIZE above.
        unsafe { libc::CPU_SET(cpu as usize, &mut one) };
        // SAFETY: one is a valid cpu set of `size` bytes.
        if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
            return None;
        }
        Some(CpuPin { saved })
    }

    /// Restores the saved affinity (in the parent, and in the child).
    pub fn restore(&self) {
        // SAFETY: saved is a valid cpu set; failure leaves the pin, which
        // only costs parallelism.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.saved) };
    }
}

const BPF_PROG_LOAD: c_int = 5;
const BPF_PROG_ATTACH: c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the rest of
/// the 128 bytes we pass stays zero, which the kernel requires.
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    pad: [u8; 88],
}

#[repr(C)]
struct BpfProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    pad: [u8; 112],
}

/// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program; returns its fd.
pub(crate) fn bpf_load_cgroup_device(insns: &[crate::devices::BpfInsn]) -> SysResult<RawFd> {
    let license = c"Apache-2.0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        pad: [0; 88],
    };
    // SAFETY: attr is a zero-padded bpf_attr whose pointers (insns,
    // license) stay valid for the call; the kernel copies what it needs.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>() as c_uint,
        )
    };
    // The program fd must not leak into containers.
    let fd = check_long(rc)? as RawFd;
    // SAFETY: fd is the program fd we just got.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// Attaches a device program to a cgroup2 directory (BPF_F_ALLOW_MULTI:
/// ancestors' programs keep running too).
pub(crate) fn bpf_attach_cgroup_device(cgroup_fd: RawFd, prog_fd: RawFd) -> SysResult {
    let attr = BpfProgAttach {
        target_fd: cgroup_fd as u32,
        attach_bpf_fd: prog_fd as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        pad: [0; 112],
    };
    // SAFETY: attr is a zero-padded bpf_attr with plain integer fields.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const BpfProgAttach,
            std::mem::size_of::<BpfProgAttach>() as c_uint,
        )
    };
    check_long(rc).map(drop)
}
