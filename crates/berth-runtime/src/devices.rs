//! Device access control on cgroup v2: an eBPF program of type
//! CGROUP_DEVICE implementing the same allow list as the v1 devices
//! controller rules in [`crate::cgroup::DEVICE_ALLOW`]. cgroup v2 has no
//! devices.allow file; without this, CAP_MKNOD would let a container open
//! any device node it creates.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::sys;

// struct bpf_cgroup_dev_ctx: access_type (access << 16 | type), major, minor.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One allow rule; `None` is a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub block: bool,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Bits of ACC_MKNOD | ACC_READ | ACC_WRITE.
    pub access: i32,
}

const fn rule(block: bool, major: Option<u32>, minor: Option<u32>, access: i32) -> DeviceRule {
    DeviceRule {
        block,
        major,
        minor,
        access,
    }
}

/// Docker's default list; keep in step with `cgroup::DEVICE_ALLOW`.
pub const DEFAULT_RULES: [DeviceRule; 12] = [
    rule(false, None, None, ACC_MKNOD),
    rule(true, None, None, ACC_MKNOD),
    rule(false, Some(1), Some(3), ACC_ALL),
    rule(false, Some(1), Some(5), ACC_ALL),
    rule(false, Some(1), Some(7), ACC_ALL),
    rule(false, Some(1), Some(8), ACC_ALL),
    rule(false, Some(1), Some(9), ACC_ALL),
    rule(false, Some(5), Some(0), ACC_ALL),
    rule(false, Some(5), Some(1), ACC_ALL),
    rule(false, Some(5), Some(2), ACC_ALL),
    rule(false, Some(136), None, ACC_ALL),
    rule(false, Some(10), Some(200), ACC_ALL),
];

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BpfInsn {
    code: u8,
    regs: u8, // dst in the low nibble, src in the high one
    off: i16,
    imm: i32,
}

const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Compiles `rules` into a program returning 1 (allow) if any rule
/// matches and 0 otherwise.
///
/// Registers: r2 = device type, r3 = requested access, r4 = major,
/// r5 = minor; r1 is scratch once the context has been read.
pub(crate) fn compile(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, CTX_ACCESS_TYPE, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, CTX_ACCESS_TYPE, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, CTX_MAJOR, 0),
        insn(LDX_MEM_W, 5, 1, CTX_MINOR, 0),
    ];
    for r in rules {
        // Each check jumps to the first instruction after this block.
        let mut block = vec![insn(
            JMP_JNE_K,
            2,
            0,
            0,
            if r.block { DEV_BLOCK } else { DEV_CHAR },
        )];
        if let Some(major) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        // Allowed if no requested access bit is outside the rule's.
        block.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
        block.push(insn(ALU64_AND_K, 1, 0, 0, !r.access));
        block.push(insn(JMP_JNE_K, 1, 0, 0, 0));
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// Loads the default device program and attaches it to the cgroup2
/// directory `dir` (in addition to any programs of its ancestors).
pub fn attach_default_filter(dir: &Path) -> io::Result<()> {
    let program = compile(&DEFAULT_RULES);
    let prog = sys::bpf_load_cgroup_device(&program).map_err(io::Error::from_raw_os_error)?;
    let cgroup = File::open(dir)?;
    let result = sys::bpf_attach_cgroup_device(cgroup.as_raw_fd(), prog)
        .map_err(io::Error::from_raw_os_error);
    // The attachment holds its own reference to the program.
    sys::close(prog);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interprets the subset of eBPF `compile` emits.
    fn run(prog: &[BpfInsn], block: bool, major: u32, minor: u32, access: i32) -> u64 {
        let ctx = [
            ((access as u32) << 16) | if block { 1 } else { 2 },
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = ctx[(i.off / 4) as usize] as u64;
                }
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JMP_EXIT => return r[0],
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn default_policy() {
        let p = compile(&DEFAULT_RULES);
        let rw = ACC_READ | ACC_WRITE;
        // (block, major, minor, access, allowed)
        let cases = [
            (false, 1, 3, rw, 1),            // /dev/null
            (false, 1, 9, ACC_READ, 1),      // /dev/urandom
            (false, 136, 4, rw, 1),          // /dev/pts/4
            (false, 5, 2, rw, 1),            // /dev/ptmx
            (false, 10, 200, rw, 1),         // tun
            (false, 10, 229, ACC_READ, 0),   // fuse
            (false, 10, 229, ACC_MKNOD, 1),  // mknod of anything
            (true, 254, 0, ACC_MKNOD, 1),    // mknod of a disk
            (true, 254, 0, ACC_READ, 0),     // reading a disk
            (true, 8, 0, rw | ACC_MKNOD, 0), // sda, everything
            (false, 1, 1, ACC_READ, 0),      // /dev/mem
            (false, 1, 11, ACC_WRITE, 0),    // /dev/kmsg
            (true, 1, 3, rw, 0),             // a block device 1:3 is not /dev/null
        ];
        for (block, major, minor, access, want) in cases {
            assert_eq!(
                run(&p, block, major, minor, access),
                want,
                "{block} {major}:{minor} {access}"
            );
        }
    }
}
