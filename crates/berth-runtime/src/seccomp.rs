//! The default seccomp filter, hand-built as classic BPF.
//!
//! In the spirit of Docker's default profile but written as a denylist:
//! syscalls that manage the kernel, the clock, namespaces, mounts, keys,
//! tracing and other processes' memory fail with EPERM; `clone` fails
//! only when asked for new namespaces; `clone3` fails with ENOSYS so libc
//! falls back to `clone`, whose flags we can inspect; `personality` only
//! accepts the values Docker allows. Everything else is allowed.
//!
//! The numbers are looked up with a small binary search tree instead of a
//! linear chain, so a common syscall costs about seven BPF instructions.

use crate::sys::{self, SysResult};

/// What the filter does with a matched syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rule {
    Deny,
    NoSys,
    /// clone: deny when the flags (arg 0) ask for a new namespace.
    CloneFlags,
    /// personality: allow only Docker's list of personas (arg 0).
    Personality,
}

const NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and the query value.
const ALLOWED_PERSONAS: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

// Syscall numbers that are the same on every architecture (>= 403).
const NR_IO_URING_SETUP: u32 = 425;
const NR_IO_URING_ENTER: u32 = 426;
const NR_IO_URING_REGISTER: u32 = 427;
const NR_OPEN_TREE: u32 = 428;
const NR_MOVE_MOUNT: u32 = 429;
const NR_FSOPEN: u32 = 430;
const NR_FSCONFIG: u32 = 431;
const NR_FSMOUNT: u32 = 432;
const NR_FSPICK: u32 = 433;
const NR_CLONE3: u32 = 435;
const NR_MOUNT_SETATTR: u32 = 442;
const NR_QUOTACTL_FD: u32 = 443;

const COMMON: [(u32, Rule); 12] = [
    (NR_IO_URING_SETUP, Rule::Deny),
    (NR_IO_URING_ENTER, Rule::Deny),
    (NR_IO_URING_REGISTER, Rule::Deny),
    (NR_OPEN_TREE, Rule::Deny),
    (NR_MOVE_MOUNT, Rule::Deny),
    (NR_FSOPEN, Rule::Deny),
    (NR_FSCONFIG, Rule::Deny),
    (NR_FSMOUNT, Rule::Deny),
    (NR_FSPICK, Rule::Deny),
    (NR_CLONE3, Rule::NoSys),
    (NR_MOUNT_SETATTR, Rule::Deny),
    (NR_QUOTACTL_FD, Rule::Deny),
];

#[cfg(target_arch = "x86_64")]
mod arch {
    use super::Rule;
    pub const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    pub const AUDIT_ARCH_COMPAT: Option<u32> = Some(0x4000_0003); // AUDIT_ARCH_I386
    /// x32 syscalls carry this bit; nobody ships x32 containers, so they
    /// get ENOSYS rather than a second table.
    pub const X32_BIT: Option<u32> = Some(0x4000_0000);

    pub const NATIVE: &[(u32, Rule)] = &[
        (56, Rule::CloneFlags), // clone
        (101, Rule::Deny),      // ptrace
        (103, Rule::Deny),      // syslog
        (134, Rule::Deny),      // uselib
        (135, Rule::Personality),
        (136, Rule::Deny), // ustat
        (139, Rule::Deny), // sysfs
        (155, Rule::Deny), // pivot_root
        (156, Rule::Deny), // _sysctl
        (163, Rule::Deny), // acct
        (164, Rule::Deny), // settimeofday
        (165, Rule::Deny), // mount
        (166, Rule::Deny), // umount2
        (167, Rule::Deny), // swapon
        (168, Rule::Deny), // swapoff
        (169, Rule::Deny), // reboot
        (172, Rule::Deny), // iopl
        (173, Rule::Deny), // ioperm
        (174, Rule::Deny), // create_module
        (175, Rule::Deny), // init_module
        (176, Rule::Deny), // delete_module
        (177, Rule::Deny), // get_kernel_syms
        (178, Rule::Deny), // query_module
        (179, Rule::Deny), // quotactl
        (180, Rule::Deny), // nfsservctl
        (212, Rule::Deny), // lookup_dcookie
        (227, Rule::Deny), // clock_settime
        (246, Rule::Deny), // kexec_load
        (248, Rule::Deny), // add_key
        (249, Rule::Deny), // request_key
        (250, Rule::Deny), // keyctl
        (272, Rule::Deny), // unshare
        (298, Rule::Deny), // perf_event_open
        (300, Rule::Deny), // fanotify_init
        (304, Rule::Deny), // open_by_handle_at
        (305, Rule::Deny), // clock_adjtime
        (308, Rule::Deny), // setns
        (310, Rule::Deny), // process_vm_readv
        (311, Rule::Deny), // process_vm_writev
        (312, Rule::Deny), // kcmp
        (313, Rule::Deny), // finit_module
        (320, Rule::Deny), // kexec_file_load
        (321, Rule::Deny), // bpf
        (323, Rule::Deny), // userfaultfd
    ];

    /// The same policy for 32-bit x86 processes (numbers from unistd_32.h).
    pub const COMPAT: &[(u32, Rule)] = &[
        (21, Rule::Deny),  // mount
        (22, Rule::Deny),  // umount
        (25, Rule::Deny),  // stime
        (26, Rule::Deny),  // ptrace
        (51, Rule::Deny),  // acct
        (52, Rule::Deny),  // umount2
        (62, Rule::Deny),  // ustat
        (79, Rule::Deny),  // settimeofday
        (86, Rule::Deny),  // uselib
        (87, Rule::Deny),  // swapon
        (88, Rule::Deny),  // reboot
        (101, Rule::Deny), // ioperm
        (103, Rule::Deny), // syslog
        (110, Rule::Deny), // iopl
        (113, Rule::Deny), // vm86old
        (115, Rule::Deny), // swapoff
        (120, Rule::CloneFlags),
        (127, Rule::Deny), // create_module
        (128, Rule::Deny), // init_module
        (129, Rule::Deny), // delete_module
        (130, Rule::Deny), // get_kernel_syms
        (131, Rule::Deny), // quotactl
        (135, Rule::Deny), // sysfs
        (136, Rule::Personality),
        (149, Rule::Deny), // _sysctl
        (166, Rule::Deny), // vm86
        (167, Rule::Deny), // query_module
        (169, Rule::Deny), // nfsservctl
        (217, Rule::Deny), // pivot_root
        (253, Rule::Deny), // lookup_dcookie
        (264, Rule::Deny), // clock_settime
        (283, Rule::Deny), // kexec_load
        (286, Rule::Deny), // add_key
        (287, Rule::Deny), // request_key
        (288, Rule::Deny), // keyctl
        (310, Rule::Deny), // unshare
        (336, Rule::Deny), // perf_event_open
        (338, Rule::Deny), // fanotify_init
        (342, Rule::Deny), // open_by_handle_at
        (343, Rule::Deny), // clock_adjtime
        (346, Rule::Deny), // setns
        (347, Rule::Deny), // process_vm_readv
        (348, Rule::Deny), // process_vm_writev
        (349, Rule::Deny), // kcmp
        (350, Rule::Deny), // finit_module
        (357, Rule::Deny), // bpf
        (374, Rule::Deny), // userfaultfd
        (404, Rule::Deny), // clock_settime64
        (405, Rule::Deny), // clock_adjtime64
    ];
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use super::Rule;
    pub const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    pub const AUDIT_ARCH_COMPAT: Option<u32> = None;
    pub const X32_BIT: Option<u32> = None;

    pub const NATIVE: &[(u32, Rule)] = &[
        (39, Rule::Deny), // umount2
        (40, Rule::Deny), // mount
        (41, Rule::Deny), // pivot_root
        (42, Rule::Deny), // nfsservctl
        (60, Rule::Deny), // quotactl
        (89, Rule::Deny), // acct
        (92, Rule::Personality),
        (97, Rule::Deny),  // unshare
        (104, Rule::Deny), // kexec_load
        (105, Rule::Deny), // init_module
        (106, Rule::Deny), // delete_module
        (112, Rule::Deny), // clock_settime
        (116, Rule::Deny), // syslog
        (117, Rule::Deny), // ptrace
        (142, Rule::Deny), // reboot
        (170, Rule::Deny), // settimeofday
        (171, Rule::Deny), // adjtimex
        (217, Rule::Deny), // add_key
        (218, Rule::Deny), // request_key
        (219, Rule::Deny), // keyctl
        (220, Rule::CloneFlags),
        (224, Rule::Deny), // swapon
        (225, Rule::Deny), // swapoff
        (241, Rule::Deny), // perf_event_open
        (262, Rule::Deny), // fanotify_init
        (265, Rule::Deny), // open_by_handle_at
        (266, Rule::Deny), // clock_adjtime
        (268, Rule::Deny), // setns
        (270, Rule::Deny), // process_vm_readv
        (271, Rule::Deny), // process_vm_writev
        (272, Rule::Deny), // kcmp
        (273, Rule::Deny), // finit_module
        (280, Rule::Deny), // bpf
        (282, Rule::Deny), // userfaultfd
        (294, Rule::Deny), // kexec_file_load
    ];
    pub const COMPAT: &[(u32, Rule)] = &[];
}

// Classic BPF opcodes and seccomp return values (linux/filter.h, seccomp.h).
const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

// Offsets into struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;

/// A jump target before layout: the next instruction or a label.
#[derive(Clone, Copy)]
enum Tgt {
    Next,
    L(usize),
}

struct Insn {
    code: u16,
    k: u32,
    jt: Tgt,
    jf: Tgt,
}

/// Emits instructions with symbolic labels, then lays them out.
struct Asm {
    code: Vec<Insn>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Self {
        Asm {
            code: Vec::new(),
            labels: Vec::new(),
        }
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push(Insn {
            code,
            k,
            jt: Tgt::Next,
            jf: Tgt::Next,
        });
    }
    fn jump(&mut self, code: u16, k: u32, jt: Tgt, jf: Tgt) {
        self.code.push(Insn { code, k, jt, jf });
    }
    fn finish(self) -> Result<Vec<libc::sock_filter>, &'static str> {
        let mut out = Vec::with_capacity(self.code.len());
        for (pc, insn) in self.code.iter().enumerate() {
            let off = |t: Tgt| -> Result<u8, &'static str> {
                let dest = match t {
                    Tgt::Next => pc + 1,
                    Tgt::L(l) => self.labels[l].ok_or("unbound label")?,
                };
                let delta = dest.checked_sub(pc + 1).ok_or("backward jump")?;
                u8::try_from(delta).map_err(|_| "jump too far")
            };
            out.push(libc::sock_filter {
                code: insn.code,
                jt: off(insn.jt)?,
                jf: off(insn.jf)?,
                k: insn.k,
            });
        }
        Ok(out)
    }
}

/// Labels of the shared tail blocks.
struct Exits {
    allow: usize,
    deny: usize,
    nosys: usize,
    clone: usize,
    personality: usize,
}

impl Exits {
    fn for_rule(&self, rule: Rule) -> usize {
        match rule {
            Rule::Deny => self.deny,
            Rule::NoSys => self.nosys,
            Rule::CloneFlags => self.clone,
            Rule::Personality => self.personality,
        }
    }
}

/// Emits a search over `table` (sorted by number) for the value in A.
fn emit_tree(asm: &mut Asm, table: &[(u32, Rule)], exits: &Exits) {
    const LEAF: usize = 4;
    if table.len() <= LEAF {
        for &(nr, rule) in table {
            asm.jump(BPF_JEQ_K, nr, Tgt::L(exits.for_rule(rule)), Tgt::Next);
        }
        asm.jump(BPF_JEQ_K, 0, Tgt::L(exits.allow), Tgt::L(exits.allow));
        return;
    }
    let mid = table.len() / 2;
    let right = asm.label();
    asm.jump(BPF_JGE_K, table[mid].0, Tgt::L(right), Tgt::Next);
    emit_tree(asm, &table[..mid], exits);
    asm.bind(right);
    emit_tree(asm, &table[mid..], exits);
}

fn sorted_table(arch_table: &[(u32, Rule)]) -> Vec<(u32, Rule)> {
    let mut table: Vec<(u32, Rule)> = arch_table.iter().chain(COMMON.iter()).copied().collect();
    table.sort_unstable();
    table.dedup_by_key(|e| e.0);
    table
}

/// Builds the default filter program.
pub fn default_filter() -> Vec<libc::sock_filter> {
    // The tables are static, so layout cannot fail; a failure here is a
    // bug caught by the unit tests, and we fall back to an allow-all
    // program rather than panicking in a library.
    build().unwrap_or_else(|_| {
        vec![libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        }]
    })
}

fn build() -> Result<Vec<libc::sock_filter>, &'static str> {
    let mut asm = Asm::new();
    let exits = Exits {
        allow: asm.label(),
        deny: asm.label(),
        nosys: asm.label(),
        clone: asm.label(),
        personality: asm.label(),
    };
    let kill = asm.label();
    let native = asm.label();

    asm.stmt(BPF_LD_W_ABS, OFF_ARCH);
    let compat = arch::AUDIT_ARCH_COMPAT.map(|a| (a, asm.label()));
    let not_native = compat.map_or(kill, |(_, l)| l);
    asm.jump(
        BPF_JEQ_K,
        arch::AUDIT_ARCH_NATIVE,
        Tgt::L(native),
        Tgt::L(not_native),
    );

    // Native table. Tail blocks come after all trees so every jump is forward.
    asm.bind(native);
    asm.stmt(BPF_LD_W_ABS, OFF_NR);
    if let Some(bit) = arch::X32_BIT {
        asm.jump(BPF_JSET_K, bit, Tgt::L(exits.nosys), Tgt::Next);
    }
    emit_tree(&mut asm, &sorted_table(arch::NATIVE), &exits);

    if let Some((audit_arch, label)) = compat {
        asm.bind(label);
        asm.jump(BPF_JEQ_K, audit_arch, Tgt::Next, Tgt::L(kill));
        asm.stmt(BPF_LD_W_ABS, OFF_NR);
        emit_tree(&mut asm, &sorted_table(arch::COMPAT), &exits);
    }

    asm.bind(exits.clone);
    asm.stmt(BPF_LD_W_ABS, OFF_ARG0_LO);
    asm.jump(
        BPF_JSET_K,
        NS_FLAGS,
        Tgt::L(exits.deny),
        Tgt::L(exits.allow),
    );

    asm.bind(exits.personality);
    asm.stmt(BPF_LD_W_ABS, OFF_ARG0_LO);
    for persona in ALLOWED_PERSONAS {
        asm.jump(BPF_JEQ_K, persona, Tgt::L(exits.allow), Tgt::Next);
    }
    // Fall through to deny.
    asm.bind(exits.deny);
    asm.stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32);
    asm.bind(exits.nosys);
    asm.stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32);
    asm.bind(kill);
    asm.stmt(BPF_RET_K, RET_KILL_PROCESS);
    asm.bind(exits.allow);
    asm.stmt(BPF_RET_K, RET_ALLOW);
    asm.finish()
}

/// Installs `program` for the calling thread. PR_SET_NO_NEW_PRIVS must
/// already be set (we have dropped CAP_SYS_ADMIN by then).
pub(crate) fn install(program: &[libc::sock_filter]) -> SysResult {
    sys::seccomp_filter(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter, enough for our opcodes, so the
    /// program's decisions can be checked without loading it.
    fn run(prog: &[libc::sock_filter], arch_: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch_.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
        let mut a: u32 = 0;
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_RET_K => return i.k,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let taken = match i.code {
                        BPF_JEQ_K => a == i.k,
                        BPF_JGE_K => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("program did not terminate");
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn layout_fits_and_is_small() {
        let prog = build().expect("layout");
        assert!(prog.len() < 256, "{} instructions", prog.len());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn decisions_x86_64() {
        let prog = build().unwrap();
        let native = arch::AUDIT_ARCH_NATIVE;
        let allow = |nr: i64| assert_eq!(run(&prog, native, nr as u32, 0), RET_ALLOW, "nr {nr}");
        let deny = |nr: i64| assert_eq!(run(&prog, native, nr as u32, 0), EPERM, "nr {nr}");
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_exit_group,
            libc::SYS_mmap,
            libc::SYS_chroot,
            libc::SYS_setuid,
            libc::SYS_futex,
            libc::SYS_pidfd_open,
        ] {
            allow(nr);
        }
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_kexec_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_ptrace,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_open_by_handle_at,
            libc::SYS_userfaultfd,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_clock_settime,
            libc::SYS_acct,
            libc::SYS_quotactl,
            libc::SYS_lookup_dcookie,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_fsopen,
            libc::SYS_io_uring_setup,
        ] {
            deny(nr);
        }
        assert_eq!(run(&prog, native, libc::SYS_clone3 as u32, 0), ENOSYS);
        // clone: plain fork/thread flags pass, namespace flags do not.
        let clone = libc::SYS_clone as u32;
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(run(&prog, native, clone, thread_flags), RET_ALLOW);
        assert_eq!(run(&prog, native, clone, libc::SIGCHLD as u64), RET_ALLOW);
        assert_eq!(run(&prog, native, clone, libc::CLONE_NEWUSER as u64), EPERM);
        assert_eq!(
            run(
                &prog,
                native,
                clone,
                (libc::CLONE_NEWNET | libc::SIGCHLD) as u64
            ),
            EPERM
        );
        // personality
        let pers = libc::SYS_personality as u32;
        assert_eq!(run(&prog, native, pers, 0xffff_ffff), RET_ALLOW);
        assert_eq!(run(&prog, native, pers, 0x8), RET_ALLOW);
        assert_eq!(run(&prog, native, pers, 0x0040_0000), EPERM); // ADDR_NO_RANDOMIZE
                                                                  // x32 and foreign architectures.
        assert_eq!(run(&prog, native, 0x4000_0000 | 1, 0), ENOSYS);
        assert_eq!(run(&prog, 0xdead_beef, 0, 0), RET_KILL_PROCESS);
        // i386: mount (21) denied, write (4) allowed, clone (120) inspected.
        let i386 = 0x4000_0003;
        assert_eq!(run(&prog, i386, 21, 0), EPERM);
        assert_eq!(run(&prog, i386, 4, 0), RET_ALLOW);
        assert_eq!(run(&prog, i386, 120, libc::CLONE_NEWNS as u64), EPERM);
        assert_eq!(run(&prog, i386, 120, libc::SIGCHLD as u64), RET_ALLOW);
    }

    #[test]
    fn every_listed_syscall_is_matched() {
        let prog = build().unwrap();
        for &(nr, rule) in &sorted_table(arch::NATIVE) {
            let got = run(&prog, arch::AUDIT_ARCH_NATIVE, nr, 0);
            match rule {
                Rule::Deny => assert_eq!(got, EPERM, "nr {nr}"),
                Rule::NoSys => assert_eq!(got, ENOSYS, "nr {nr}"),
                Rule::CloneFlags | Rule::Personality => assert_eq!(got, RET_ALLOW, "nr {nr}"),
            }
        }
        // Neighbours of listed numbers are allowed (the tree has no off-by-one).
        let table = sorted_table(arch::NATIVE);
        for &(nr, _) in &table {
            for n in [nr.wrapping_sub(1), nr + 1] {
                if table.iter().all(|e| e.0 != n) {
                    assert_eq!(
                        run(&prog, arch::AUDIT_ARCH_NATIVE, n, 0),
                        RET_ALLOW,
                        "nr {n}"
                    );
                }
            }
        }
    }
}
