//! Linux capabilities: Docker's default set and the allocation-free code
//! that drops a process down to it right before exec.

use crate::sys::{self, SysResult};

/// Capability numbers (linux/capability.h) for the ones we name.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_RAW: u32 = 13;
    pub const SYS_CHROOT: u32 = 18;
    pub const SYS_ADMIN: u32 = 21;
    pub const MKNOD: u32 = 27;
    pub const AUDIT_WRITE: u32 = 29;
    pub const SETFCAP: u32 = 31;
}

/// Docker's default capability set.
pub const DEFAULT_CAPS: [u32; 14] = [
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FSETID,
    cap::FOWNER,
    cap::MKNOD,
    cap::NET_RAW,
    cap::SETGID,
    cap::SETUID,
    cap::SETFCAP,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::SYS_CHROOT,
    cap::KILL,
    cap::AUDIT_WRITE,
];

/// Bit mask (bit n = capability n) of a capability list.
pub const fn mask_of(caps: &[u32]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < caps.len() {
        mask |= 1 << caps[i];
        i += 1;
    }
    mask
}

/// Mask of Docker's default set, as shown in `CapBnd:` of /proc/PID/status.
pub const DEFAULT_MASK: u64 = mask_of(&DEFAULT_CAPS);

/// Highest capability number the running kernel knows, from
/// /proc/sys/kernel/cap_last_cap (read in the parent, before cloning).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Removes every capability not in `keep` from the bounding set. Needs
/// CAP_SETPCAP, so it runs before the uid change.
pub(crate) fn drop_bounding(keep: u64, last_cap: u32) -> SysResult {
    for c in 0..=last_cap.min(63) {
        if keep & (1 << c) == 0 {
            match sys::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0) {
                Ok(_) => {}
                // A capability newer than this kernel: nothing to drop.
                Err(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Sets permitted, effective and inheritable to `keep` and empties the
/// ambient set. Called after setresuid (with PR_SET_KEEPCAPS when the
/// target uid is not 0, so the permitted set survived the uid change).
pub(crate) fn set_process_caps(keep: u64) -> SysResult {
    sys::capset(keep, keep, keep)?;
    match sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    ) {
        // Kernels before 4.3 have no ambient set: nothing to clear.
        Ok(_) | Err(libc::EINVAL) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_matches_docker() {
        // `docker run --rm busybox grep CapBnd /proc/self/status`
        assert_eq!(DEFAULT_MASK, 0x0000_0000_a804_25fb);
        assert_eq!(DEFAULT_MASK & (1 << cap::SYS_ADMIN), 0);
    }
}
