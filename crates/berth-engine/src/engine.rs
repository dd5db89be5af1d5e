//! The engine: container records in memory and on disk, and their
//! lifecycle (create, start, stop, kill, remove, wait, restart policies),
//! re-adoption after a daemon restart, and the image-side operations that
//! need container knowledge (commit, diff, in-use checks).

use crate::error::EngineError;
use crate::fsutil::{now_unix, process_matches, replace_atomic};
use crate::ipam::Ipam;
use crate::logs::LogLimits;
use crate::paths::{ContainerPaths, DataDir};
use crate::record::ContainerRecord;
use crate::spec::{ExitRecord, ShimReport, ShimSpec};
use crate::{names, ports};
use berth_api::{ChangeEntry, ContainerDetails, ContainerSummary, Info};
use berth_image::{ImageStore, LayerRecord};
use berth_runtime::cgroup::{Cgroup, CgroupLimits};
use berth_runtime::net::{BridgeAttachment, BridgeConfig};
use berth_runtime::spawn::{BindMount, ContainerSpec, NetworkSetup, RootfsSpec};
use berth_types::{
    ContainerConfig, ContainerId, ContainerState, ImageRef, NetworkMode, VolumeMount,
};
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub bridge: BridgeConfig,
    pub log_limits: LogLimits,
    /// The berth binary, re-executed as shim and exec helper.
    pub exe: PathBuf,
}

impl EngineConfig {
    pub fn with_defaults(data_dir: PathBuf, exe: PathBuf) -> Self {
        Self {
            data_dir,
            bridge: BridgeConfig {
                name: "berth0".into(),
                gateway: std::net::Ipv4Addr::new(10, 88, 0, 1),
                prefix_len: 16,
            },
            log_limits: LogLimits::default(),
            exe,
        }
    }
}

/// (state-change counter, last exit status).
type ExitWatch = (u64, Option<(i32, bool)>);

struct Live {
    rec: ContainerRecord,
    proxies: Vec<JoinHandle<()>>,
    /// The container's main process, for race-free signals.
    pidfd: Option<Arc<OwnedFd>>,
    /// Bumped on every state change, carrying the last exit status, so a
    /// waiter still learns it after the container is removed (the sender is
    /// dropped on removal).
    changed: watch::Sender<ExitWatch>,
    /// A start is in progress: a second start or a remove must wait.
    starting: bool,
}

struct State {
    containers: HashMap<String, Live>,
    ipam: Ipam,
}

pub struct Engine {
    cfg: EngineConfig,
    dirs: DataDir,
    images: Arc<ImageStore>,
    state: Mutex<State>,
    cgroup_mode: String,
}

enum ShimWait {
    Child(tokio::process::Child),
    /// A pidfd of a shim we did not spawn (re-adopted after a restart).
    Adopted(OwnedFd),
}

impl ShimWait {
    async fn wait(self) {
        match self {
            ShimWait::Child(mut c) => {
                let _ = c.wait().await;
            }
            ShimWait::Adopted(fd) => {
                // A pidfd becomes readable when its process exits. Polled on
                // a blocking thread: registering it with the reactor would
                // need unsafe code, and this only happens for shims adopted
                // after a daemon restart.
                let _ = tokio::task::spawn_blocking(move || {
                    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                    use std::os::fd::AsFd;
                    loop {
                        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                        match poll(&mut fds, PollTimeout::NONE) {
                            Ok(n) if n > 0 => return,
                            Err(nix::Error::EINTR) | Ok(_) => continue,
                            Err(_) => return,
                        }
                    }
                })
                .await;
            }
        }
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}

impl Engine {
    /// Opens the data directory, sets up the bridge and re-adopts the
    /// containers a previous daemon left running.
    pub async fn open(cfg: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let dirs = DataDir::new(&cfg.data_dir);
        for d in [
            dirs.root().to_path_buf(),
            dirs.containers(),
            dirs.sockets(),
            dirs.build_tmp(),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(|e| EngineError::internal(format!("creating {}", d.display()), e))?;
        }
        set_mode(dirs.root(), 0o711);
        set_mode(&dirs.sockets(), 0o700);
        let images = ImageStore::open(&dirs.images())?;
        let bridge = cfg.bridge.clone();
        tokio::task::spawn_blocking(move || berth_runtime::net::ensure_bridge(&bridge))
            .await
            .map_err(|e| EngineError::internal("setting up the bridge", e))?
            .map_err(|e| {
                EngineError::internal(format!("setting up bridge {}", cfg.bridge.name), e)
            })?;
        let ipam = Ipam::new(cfg.bridge.gateway, cfg.bridge.prefix_len);
        let engine = Arc::new(Self {
            cgroup_mode: berth_runtime::cgroup::detect_cgroup_mode().to_string(),
            images: Arc::new(images),
            dirs,
            state: Mutex::new(State {
                containers: HashMap::new(),
                ipam,
            }),
            cfg,
        });
        engine.recover().await;
        Ok(engine)
    }

    /// Runs build steps in throwaway containers on the bridge network.
    pub fn step_runner(self: &Arc<Self>) -> crate::build_runner::ShimStepRunner {
        let engine = self.clone();
        crate::build_runner::ShimStepRunner {
            exe: self.cfg.exe.clone(),
            dirs: self.dirs.clone(),
            bridge: self.cfg.bridge.clone(),
            address: Box::new(move |release| {
                let mut st = engine.lock();
                match release {
                    Some(ip) => {
                        st.ipam.release(ip);
                        None
                    }
                    None => st.ipam.allocate(),
                }
            }),
        }
    }

    pub fn images(&self) -> Arc<ImageStore> {
        self.images.clone()
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.dirs
    }

    pub fn exe(&self) -> &Path {
        &self.cfg.exe
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn paths(&self, id: &str) -> ContainerPaths {
        ContainerPaths::new(self.dirs.container(id))
    }

    fn persist(&self, rec: &ContainerRecord) {
        let path = self.paths(&rec.id).record();
        match serde_json::to_vec_pretty(rec) {
            Ok(bytes) => {
                if let Err(e) = replace_atomic(&path, &bytes) {
                    tracing::error!(container = %rec.id, error = %e, "persisting container record");
                }
            }
            Err(e) => {
                tracing::error!(container = %rec.id, error = %e, "serializing container record")
            }
        }
    }

    fn cgroup_name(id: &str) -> String {
        format!("berth/{id}")
    }

    /// Resolves a full id, a name, or a unique id prefix to a full id.
    pub fn resolve(&self, reference: &str) -> Result<String, EngineError> {
        let st = self.lock();
        resolve_in(&st.containers, reference)
    }

    pub fn info(&self, version: &str) -> Info {
        let st = self.lock();
        let running = st
            .containers
            .values()
            .filter(|l| l.rec.state == ContainerState::Running)
            .count();
        Info {
            version: version.to_string(),
            api_version: berth_api::API_VERSION.to_string(),
            data_dir: self.dirs.root().display().to_string(),
            cgroup_mode: self.cgroup_mode.clone(),
            storage_driver: "overlay".into(),
            containers: st.containers.len(),
            containers_running: running,
            containers_stopped: st.containers.len() - running,
            images: self.images.list().map(|l| l.len()).unwrap_or(0),
        }
    }

    // ----- create -------------------------------------------------------

    pub async fn create(&self, config: ContainerConfig) -> Result<String, EngineError> {
        if let Some(quota) = config.cpu_quota {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1);
            if quota > cpus * 100_000 {
                return Err(EngineError::BadRequest(format!(
                    "range of cpus is from 0.01 to {cpus}.00, as there are only {cpus} cpus available"
                )));
            }
        }
        if let Some(name) = &config.name {
            berth_types::id::validate_name(name)
                .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        }
        let looks_like_id = config
            .image
            .trim_start_matches("sha256:")
            .chars()
            .all(|c| c.is_ascii_hexdigit());
        if !looks_like_id {
            ImageRef::parse(&config.image).map_err(|e| EngineError::BadRequest(e.to_string()))?;
        }
        let images = self.images.clone();
        let reference = config.image.clone();
        let (image, lowers) = tokio::task::spawn_blocking(move || {
            let image = images.resolve(&reference)?;
            let lowers = images.layer_paths(&image)?;
            Ok::<_, berth_image::ImageError>((image, lowers))
        })
        .await
        .map_err(|e| EngineError::internal("resolving image", e))??;
        let img_cfg = image.config.config().clone().unwrap_or_default();

        // Docker's rule: a user entrypoint drops the image's CMD.
        let entrypoint = match &config.entrypoint {
            Some(ep) => ep.clone(),
            None => img_cfg.entrypoint().clone().unwrap_or_default(),
        };
        let cmd = if !config.cmd.is_empty() {
            config.cmd.clone()
        } else if config.entrypoint.is_some() {
            Vec::new()
        } else {
            img_cfg.cmd().clone().unwrap_or_default()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(EngineError::BadRequest(format!(
                "no command specified: image {} has no CMD or ENTRYPOINT",
                config.image
            )));
        }
        let mut env = merge_env(img_cfg.env().clone().unwrap_or_default(), &config.env);
        if config.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        let workdir = config
            .workdir
            .clone()
            .or_else(|| img_cfg.working_dir().clone().filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        if !workdir.starts_with('/') {
            return Err(EngineError::BadRequest(format!(
                "working directory {workdir:?} is not an absolute path"
            )));
        }
        let user = config
            .user
            .clone()
            .or_else(|| img_cfg.user().clone())
            .unwrap_or_default();
        for v in &config.volumes {
            if !Path::new(&v.host_path).exists() {
                std::fs::create_dir_all(&v.host_path).map_err(|e| {
                    EngineError::BadRequest(format!(
                        "creating volume directory {}: {e}",
                        v.host_path
                    ))
                })?;
            }
        }

        let id = ContainerId::from_bytes(random_bytes()).to_string();
        let paths = self.paths(&id);
        // The image's VOLUMEs not covered by a -v get an anonymous volume:
        // a fresh directory of the container's, mounted there.
        let mut config = config;
        let anonymous: Vec<VolumeMount> = img_cfg
            .volumes()
            .iter()
            .flatten()
            .filter(|dest| !config.volumes.iter().any(|v| &v.container_path == *dest))
            .enumerate()
            .map(|(i, dest)| VolumeMount {
                host_path: paths
                    .dir
                    .join("volumes")
                    .join(i.to_string())
                    .display()
                    .to_string(),
                container_path: dest.clone(),
                read_only: false,
            })
            .collect();
        config.volumes.extend(anonymous.iter().cloned());
        let rec = {
            let mut st = self.lock();
            let name = match &config.name {
                Some(n) => {
                    if let Some(other) = st.containers.values().find(|l| &l.rec.name == n) {
                        return Err(EngineError::Conflict(format!(
                            "the container name {n:?} is already in use by container {}; remove or rename that container",
                            other.rec.id
                        )));
                    }
                    n.clone()
                }
                None => loop {
                    let n = names::generate(random_bytes());
                    if !st.containers.values().any(|l| l.rec.name == n) {
                        break n;
                    }
                },
            };
            let rec = ContainerRecord {
                id: id.clone(),
                name,
                image_id: image.id.clone(),
                image_name: config.image.clone(),
                lowers,
                layers: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
                args,
                env,
                workdir,
                user,
                created: now_unix(),
                state: ContainerState::Created,
                started_at: None,
                finished_at: None,
                exit_code: None,
                oom_killed: false,
                pid: None,
                pid_start_time: None,
                shim_pid: None,
                shim_start_time: None,
                ip: None,
                restart_count: 0,
                stopped_by_user: false,
                config,
            };
            // Reserve the name in memory before touching the disk.
            let (tx, _) = watch::channel((0, None));
            st.containers.insert(
                id.clone(),
                Live {
                    rec: rec.clone(),
                    proxies: vec![],
                    pidfd: None,
                    changed: tx,
                    starting: false,
                },
            );
            rec
        };
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(paths.upper())?;
            std::fs::create_dir_all(paths.work())?;
            std::fs::create_dir_all(paths.rootfs())?;
            for v in &anonymous {
                std::fs::create_dir_all(&v.host_path)?;
            }
            if rec.config.userns {
                // Root in the container is this unprivileged host id: it
                // must own the directories the overlay writes to.
                let id = berth_runtime::spec::USERNS_HOST_BASE;
                let owner = (
                    Some(nix::unistd::Uid::from_raw(id)),
                    Some(nix::unistd::Gid::from_raw(id)),
                );
                for d in [paths.upper(), paths.work(), paths.rootfs()] {
                    nix::unistd::chown(&d, owner.0, owner.1).map_err(std::io::Error::from)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = made {
            self.lock().containers.remove(&id);
            let _ = std::fs::remove_dir_all(&paths.dir);
            return Err(EngineError::internal(
                format!("creating {}", paths.dir.display()),
                e,
            ));
        }
        self.persist(&rec);
        tracing::info!(container = %id, name = %rec.name, image = %rec.image_name, "created");
        Ok(id)
    }

    // ----- start --------------------------------------------------------

    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<(), EngineError> {
        self.start_opts(reference, false).await
    }

    /// `start` behind a boxed future: the restart policy starts containers
    /// from their exit handler, and the box breaks that cycle of future types.
    fn start_boxed(
        self: Arc<Self>,
        id: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>> + Send>> {
        Box::pin(async move { self.start(&id).await })
    }

    /// Starts a container; with `wait_attach` its shim keeps the exit status
    /// for the client that attaches next (`berth run`).
    pub async fn start_opts(
        self: &Arc<Self>,
        reference: &str,
        wait_attach: bool,
    ) -> Result<(), EngineError> {
        let id = self.resolve(reference)?;
        let rec = {
            let mut st = self.lock();
            let live = st
                .containers
                .get_mut(&id)
                .ok_or_else(|| no_such(reference))?;
            if live.starting || live.rec.state == ContainerState::Running {
                return Ok(()); // Docker: starting a running container is not an error
            }
            if live.rec.state == ContainerState::Removing {
                return Err(EngineError::Conflict(format!(
                    "container {reference} is being removed"
                )));
            }
            live.starting = true;
            live.rec.stopped_by_user = false;
            live.rec.clone()
        };
        let result = self.start_inner(rec, wait_attach).await;
        let mut st = self.lock();
        if let Some(live) = st.containers.get_mut(&id) {
            live.starting = false;
        }
        result
    }

    async fn start_inner(
        self: &Arc<Self>,
        mut rec: ContainerRecord,
        wait_attach: bool,
    ) -> Result<(), EngineError> {
        let id = rec.id.clone();
        let paths = self.paths(&id);
        let _ = std::fs::remove_file(paths.exit());

        let ip = if rec.config.network == NetworkMode::Bridge {
            let ip = self.lock().ipam.allocate().ok_or_else(|| {
                EngineError::Internal("no free address on the bridge network".into())
            })?;
            Some(ip)
        } else {
            None
        };
        let release_ip = |engine: &Engine| {
            if let Some(ip) = ip {
                engine.lock().ipam.release(ip);
            }
        };
        // Ports are bound before the container starts so a taken port fails
        // the start with nothing left behind.
        let bound = if ip.is_some() {
            match ports::bind_all(&rec.config.ports).await {
                Ok(b) => b,
                Err(msg) => {
                    release_ip(self);
                    return Err(EngineError::StartFailed {
                        message: msg,
                        code: 125,
                    });
                }
            }
        } else {
            Vec::new()
        };

        let network = match (rec.config.network, ip) {
            (NetworkMode::Host, _) => NetworkSetup::Host,
            (NetworkMode::None, _) | (NetworkMode::Bridge, None) => NetworkSetup::None,
            (NetworkMode::Bridge, Some(ip)) => NetworkSetup::Bridge(BridgeAttachment {
                bridge: self.cfg.bridge.name.clone(),
                address: ip,
                prefix_len: self.cfg.bridge.prefix_len,
                gateway: self.cfg.bridge.gateway,
            }),
        };
        // Docker: with the host network the container keeps the host's name.
        let default_name = if rec.config.network == NetworkMode::Host {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| id[..12].to_string())
        } else {
            id[..12].to_string()
        };
        let hostname = rec.config.hostname.clone().unwrap_or(default_name);
        let extra_hosts = Vec::new();
        let spec = ShimSpec {
            container: ContainerSpec {
                id: id.clone(),
                hostname,
                rootfs: RootfsSpec {
                    // overlayfs wants the top-most layer first.
                    lowerdirs: rec.lowers.iter().rev().cloned().collect(),
                    upperdir: paths.upper(),
                    workdir: paths.work(),
                    mountpoint: paths.rootfs(),
                    volatile: rec.config.auto_remove,
                },
                args: rec.args.clone(),
                env: rec.env.clone(),
                cwd: rec.workdir.clone(),
                user: rec.user.clone(),
                mounts: rec
                    .config
                    .volumes
                    .iter()
                    .map(|v| BindMount {
                        source: v.host_path.clone().into(),
                        destination: v.container_path.clone(),
                        read_only: v.read_only,
                    })
                    .collect(),
                network,
                userns: rec.config.userns,
                tty: rec.config.tty,
                extra_hosts,
            },
            cgroup_name: Self::cgroup_name(&id),
            limits: CgroupLimits {
                memory_bytes: rec.config.memory,
                cpu_quota_us: rec.config.cpu_quota,
                pids_max: rec.config.pids_limit,
            },
            attach_socket: self.dirs.attach_socket(&id),
            log_path: paths.log(),
            log_max_file_bytes: self.cfg.log_limits.max_file_bytes,
            log_max_rotated: self.cfg.log_limits.max_rotated,
            exit_path: paths.exit(),
            stdin: rec.config.stdin,
            wait_attach,
        };
        if rec.config.userns {
            if let Err(e) = prepare_userns_etc(&paths.upper()) {
                release_ip(self);
                return Err(EngineError::internal(
                    "preparing /etc for the user namespace",
                    e,
                ));
            }
        }
        let spawned = self.spawn_shim(&paths, &spec).await;
        let (child, report) = match spawned {
            Ok(x) => x,
            Err(e) => {
                release_ip(self);
                return Err(e);
            }
        };
        let shim_pid = child.id().map(|p| p as i32);
        let pidfd = berth_runtime::pidfd::pidfd_open(report.pid)
            .ok()
            .map(Arc::new);

        rec.state = ContainerState::Running;
        rec.started_at = Some(now_unix());
        rec.finished_at = None;
        rec.exit_code = None;
        rec.oom_killed = false;
        rec.pid = Some(report.pid);
        rec.pid_start_time = Some(report.start_time);
        rec.shim_pid = shim_pid;
        rec.shim_start_time = shim_pid.and_then(crate::fsutil::process_start_time);
        rec.ip = ip;
        let proxies = match ip {
            Some(ip) => ports::serve_all(bound, ip),
            None => vec![],
        };
        {
            let mut st = self.lock();
            match st.containers.get_mut(&id) {
                Some(live) => {
                    live.rec = rec.clone();
                    live.proxies = proxies;
                    live.pidfd = pidfd;
                    live.changed.send_modify(|v| v.0 += 1);
                }
                None => {
                    // Removed while starting (rm -f): take the container down again.
                    drop(st);
                    let _ = berth_runtime::pidfd::kill(report.pid, libc::SIGKILL);
                    return Err(no_such(&id));
                }
            }
        }
        self.persist(&rec);
        tracing::info!(container = %id, pid = report.pid, "started");
        let engine = self.clone();
        tokio::spawn(async move {
            ShimWait::Child(child).wait().await;
            engine.on_exit(&id).await;
        });
        Ok(())
    }

    async fn spawn_shim(
        &self,
        paths: &ContainerPaths,
        spec: &ShimSpec,
    ) -> Result<(tokio::process::Child, ShimReport), EngineError> {
        let bytes = serde_json::to_vec(spec)
            .map_err(|e| EngineError::internal("serializing shim spec", e))?;
        replace_atomic(&paths.spec(), &bytes)
            .map_err(|e| EngineError::internal(format!("writing {}", paths.spec().display()), e))?;
        let shim_log = std::fs::File::create(paths.shim_log()).map_err(|e| {
            EngineError::internal(format!("creating {}", paths.shim_log().display()), e)
        })?;
        let mut child = tokio::process::Command::new(&self.cfg.exe)
            .arg("__shim")
            .arg(&paths.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(shim_log)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                EngineError::internal(format!("starting shim {}", self.cfg.exe.display()), e)
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| EngineError::Internal("shim has no stdout".into()))?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut line)).await;
        let report: Option<ShimReport> = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str(line.trim()).ok(),
            _ => None,
        };
        match report {
            Some(r) if r.ok => Ok((child, r)),
            Some(r) => {
                let _ = child.wait().await;
                Err(EngineError::StartFailed {
                    message: r
                        .error
                        .unwrap_or_else(|| "container failed to start".into()),
                    code: r.code,
                })
            }
            None => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let log = std::fs::read_to_string(paths.shim_log()).unwrap_or_default();
                let _ = Cgroup::open(&spec.cgroup_name).map(|c| {
                    let _ = c.kill_all(libc::SIGKILL);
                    let _ = c.remove();
                });
                Err(EngineError::StartFailed {
                    message: format!(
                        "container shim failed: {}",
                        log.lines().last().unwrap_or("no output")
                    ),
                    code: 125,
                })
            }
        }
    }

    /// Called when a container's shim has exited: record the exit status,
    /// release resources, then apply --rm and the restart policy.
    async fn on_exit(self: &Arc<Self>, id: &str) {
        let paths = self.paths(id);
        let exit: Option<ExitRecord> = std::fs::read(paths.exit())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (rec, proxies) = {
            let mut st = self.lock();
            let Some(live) = st.containers.get_mut(id) else {
                return;
            };
            if live.rec.state != ContainerState::Running {
                return;
            }
            let exit = exit.unwrap_or_else(|| {
                // The shim died without recording an exit (killed): make sure
                // nothing of the container survives it.
                if let Some(fd) = &live.pidfd {
                    let _ = berth_runtime::pidfd::pidfd_send_signal(fd, libc::SIGKILL);
                }
                if let Ok(cg) = Cgroup::open(&Self::cgroup_name(id)) {
                    let _ = cg.kill_all(libc::SIGKILL);
                    let _ = cg.remove();
                }
                ExitRecord {
                    code: 137,
                    signal: Some(9),
                    oom_killed: false,
                    finished_at: now_unix(),
                }
            });
            live.rec.state = ContainerState::Exited;
            live.rec.exit_code = Some(exit.code);
            live.rec.oom_killed = exit.oom_killed;
            live.rec.finished_at = Some(exit.finished_at);
            live.rec.pid = None;
            live.rec.pid_start_time = None;
            live.rec.shim_pid = None;
            live.rec.shim_start_time = None;
            live.pidfd = None;
            let ip = live.rec.ip.take();
            let rec = live.rec.clone();
            let proxies = std::mem::take(&mut live.proxies);
            live.changed.send_modify(|v| {
                v.0 += 1;
                v.1 = Some((exit.code, exit.oom_killed));
            });
            if let Some(ip) = ip {
                st.ipam.release(ip);
            }
            (rec, proxies)
        };
        for p in proxies {
            p.abort();
        }
        if !rec.config.auto_remove {
            self.persist(&rec);
        }
        tracing::info!(container = %id, code = rec.exit_code.unwrap_or(-1), oom = rec.oom_killed, "exited");
        if rec.config.auto_remove {
            if let Err(e) = self.remove_inner(id).await {
                tracing::warn!(container = %id, error = %e, "auto-remove failed");
            }
            return;
        }
        let code = rec.exit_code.unwrap_or(0);
        if rec
            .config
            .restart
            .should_restart(code, rec.restart_count, rec.stopped_by_user)
        {
            let engine = self.clone();
            let id = id.to_string();
            // Docker's back-off: 100ms doubling, capped at a minute.
            let delay = Duration::from_millis(
                100u64
                    .saturating_mul(1 << rec.restart_count.min(9))
                    .min(60_000),
            );
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let go = {
                    let mut st = engine.lock();
                    match st.containers.get_mut(&id) {
                        Some(l)
                            if l.rec.state == ContainerState::Exited && !l.rec.stopped_by_user =>
                        {
                            l.rec.restart_count += 1;
                            true
                        }
                        _ => false,
                    }
                };
                if go {
                    if let Err(e) = engine.clone().start_boxed(id.clone()).await {
                        tracing::warn!(container = %id, error = %e, "restart failed");
                    }
                }
            });
        }
    }

    // ----- stop, kill, remove, wait -----------------------------------

    pub async fn stop(&self, reference: &str, timeout: Duration) -> Result<(), EngineError> {
        self.stop_with(reference, libc::SIGTERM, timeout).await
    }

    /// Sends `signal`, waits up to `timeout`, then SIGKILLs.
    pub async fn stop_with(
        &self,
        reference: &str,
        signal: i32,
        timeout: Duration,
    ) -> Result<(), EngineError> {
        let id = self.resolve(reference)?;
        let (pidfd, mut rx) = {
            let mut st = self.lock();
            let live = st
                .containers
                .get_mut(&id)
                .ok_or_else(|| no_such(reference))?;
            live.rec.stopped_by_user = true;
            if live.rec.state != ContainerState::Running {
                let rec = live.rec.clone();
                drop(st);
                self.persist(&rec);
                return Ok(());
            }
            (live.pidfd.clone(), live.changed.subscribe())
        };
        if let Some(fd) = &pidfd {
            let _ = berth_runtime::pidfd::pidfd_send_signal(fd, signal);
        }
        if !self.wait_not_running(&id, &mut rx, timeout).await {
            if let Some(fd) = &pidfd {
                let _ = berth_runtime::pidfd::pidfd_send_signal(fd, libc::SIGKILL);
            }
            if !self
                .wait_not_running(&id, &mut rx, Duration::from_secs(10))
                .await
            {
                return Err(EngineError::Internal(format!(
                    "container {reference} did not stop after SIGKILL"
                )));
            }
        }
        Ok(())
    }

    async fn wait_not_running(
        &self,
        id: &str,
        rx: &mut watch::Receiver<ExitWatch>,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let st = self.lock();
                match st.containers.get(id) {
                    Some(l) if l.rec.state == ContainerState::Running => {}
                    _ => return true,
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return true, // removed
                Err(_) => return false,
            }
        }
    }

    pub async fn kill(&self, reference: &str, signal: i32) -> Result<(), EngineError> {
        let id = self.resolve(reference)?;
        let pidfd = {
            let mut st = self.lock();
            let live = st
                .containers
                .get_mut(&id)
                .ok_or_else(|| no_such(reference))?;
            if live.rec.state != ContainerState::Running {
                return Err(EngineError::Conflict(format!(
                    "container {reference} is not running"
                )));
            }
            if signal == libc::SIGKILL || signal == libc::SIGTERM {
                live.rec.stopped_by_user = true;
            }
            live.pidfd.clone()
        };
        let fd = pidfd.ok_or_else(|| {
            EngineError::Conflict(format!("container {reference} is not running"))
        })?;
        berth_runtime::pidfd::pidfd_send_signal(&fd, signal).map_err(|e| {
            EngineError::internal(format!("sending signal {signal} to {reference}"), e)
        })
    }

    pub async fn remove(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        let id = self.resolve(reference)?;
        let running = {
            let mut st = self.lock();
            let live = st
                .containers
                .get_mut(&id)
                .ok_or_else(|| no_such(reference))?;
            let running = live.rec.state == ContainerState::Running || live.starting;
            if running && !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container {reference}: it is running; stop it first or use rm -f"
                )));
            }
            live.rec.stopped_by_user = true;
            running
        };
        if running {
            self.stop_with(&id, libc::SIGKILL, Duration::from_secs(10))
                .await?;
        }
        self.remove_inner(&id).await
    }

    /// Removes a stopped container. The record stays (as Removing) until
    /// its directory and cgroup are gone, so that whoever waits for the
    /// removal (`run --rm`) sees nothing left when it is told.
    async fn remove_inner(&self, id: &str) -> Result<(), EngineError> {
        let proxies = {
            let mut st = self.lock();
            let Some(live) = st.containers.get_mut(id) else {
                return Ok(());
            };
            if live.rec.state == ContainerState::Removing {
                return Ok(()); // another remove is under way
            }
            live.rec.state = ContainerState::Removing;
            live.changed.send_modify(|v| v.0 += 1);
            let ip = live.rec.ip.take();
            let proxies = std::mem::take(&mut live.proxies);
            if let Some(ip) = ip {
                st.ipam.release(ip);
            }
            proxies
        };
        for p in &proxies {
            p.abort();
        }
        let dir = self.paths(id).dir;
        let sock = self.dirs.attach_socket(id);
        let removed = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(sock);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| EngineError::internal("removing container", e))
        .and_then(|r| {
            r.map_err(|e| {
                EngineError::internal(format!("removing {}", self.paths(id).dir.display()), e)
            })
        });
        if let Ok(cg) = Cgroup::open(&Self::cgroup_name(id)) {
            let _ = cg.remove();
        }
        // Dropping the record drops its watch sender: waiters for removal
        // wake. Even a failed directory removal forgets the container, as
        // Docker does; the error says what is left.
        self.lock().containers.remove(id);
        tracing::info!(container = %id, "removed");
        removed
    }

    /// Waits until the container is not running (or, with `removed`, gone)
    /// and returns its exit code.
    pub async fn wait(&self, reference: &str, removed: bool) -> Result<(i32, bool), EngineError> {
        let id = self.resolve(reference)?;
        let mut rx = {
            let st = self.lock();
            st.containers
                .get(&id)
                .ok_or_else(|| no_such(reference))?
                .changed
                .subscribe()
        };
        let mut last = (0, false);
        loop {
            {
                let st = self.lock();
                match st.containers.get(&id) {
                    None => return Ok(rx.borrow().1.unwrap_or(last)),
                    Some(l) => {
                        last = (l.rec.exit_code.unwrap_or(0), l.rec.oom_killed);
                        let done = matches!(
                            l.rec.state,
                            ContainerState::Exited | ContainerState::Removing
                        ) && !l.starting;
                        if done && !removed {
                            return Ok(last);
                        }
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Ok(rx.borrow().1.unwrap_or(last));
            }
        }
    }

    // ----- queries ------------------------------------------------------

    pub fn list(&self, all: bool) -> Vec<ContainerSummary> {
        let st = self.lock();
        let mut out: Vec<ContainerSummary> = st
            .containers
            .values()
            .filter(|l| all || l.rec.state == ContainerState::Running)
            .map(|l| summary(&l.rec))
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        out
    }

    pub fn inspect(&self, reference: &str) -> Result<ContainerDetails, EngineError> {
        let id = self.resolve(reference)?;
        let st = self.lock();
        let rec = &st
            .containers
            .get(&id)
            .ok_or_else(|| no_such(reference))?
            .rec;
        let paths = self.paths(&id);
        Ok(ContainerDetails {
            summary: summary(rec),
            image_id: rec.image_id.clone(),
            config: rec.config.clone(),
            pid: rec.pid,
            ip_address: rec.ip.map(|i| i.to_string()),
            args: rec.args.clone(),
            env: rec.env.clone(),
            working_dir: rec.workdir.clone(),
            upper_dir: paths.upper().display().to_string(),
            log_path: paths.log().display().to_string(),
        })
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.lock()
            .containers
            .get(id)
            .is_some_and(|l| l.rec.state == ContainerState::Running)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.paths(id).log()
    }

    pub fn attach_socket(&self, id: &str) -> PathBuf {
        self.dirs.attach_socket(id)
    }

    pub fn auto_remove(&self, id: &str) -> bool {
        self.lock()
            .containers
            .get(id)
            .is_some_and(|l| l.rec.config.auto_remove)
    }

    /// The container's pid and cgroup name, for `exec`.
    pub fn exec_target(
        &self,
        reference: &str,
    ) -> Result<(i32, String, ContainerRecord), EngineError> {
        let id = self.resolve(reference)?;
        let st = self.lock();
        let live = st.containers.get(&id).ok_or_else(|| no_such(reference))?;
        match (live.rec.state, live.rec.pid) {
            (ContainerState::Running, Some(pid)) => {
                Ok((pid, Self::cgroup_name(&id), live.rec.clone()))
            }
            _ => Err(EngineError::Conflict(format!(
                "container {reference} is not running"
            ))),
        }
    }

    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.lock()
            .containers
            .values()
            .any(|l| l.rec.image_id == image_id)
    }

    pub fn layers_in_use(&self) -> HashSet<String> {
        self.lock()
            .containers
            .values()
            .flat_map(|l| l.rec.layers.iter().cloned())
            .collect()
    }

    pub async fn changes(&self, reference: &str) -> Result<Vec<ChangeEntry>, EngineError> {
        let id = self.resolve(reference)?;
        let lowers = self
            .lock()
            .containers
            .get(&id)
            .map(|l| l.rec.lowers.clone())
            .unwrap_or_default();
        let upper = self.paths(&id).upper();
        let changes = tokio::task::spawn_blocking(move || berth_image::changes(&upper, &lowers))
            .await
            .map_err(|e| EngineError::internal("computing changes", e))??;
        Ok(hide_generated_etc(changes))
    }

    /// `commit`: the container's upper directory becomes a new layer on top
    /// of its image's, with the container's command, env and workdir.
    pub async fn commit(&self, reference: &str, repo: Option<&str>) -> Result<String, EngineError> {
        let id = self.resolve(reference)?;
        let rec = self
            .lock()
            .containers
            .get(&id)
            .map(|l| l.rec.clone())
            .ok_or_else(|| no_such(reference))?;
        let tag = repo
            .map(ImageRef::parse)
            .transpose()
            .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        let images = self.images.clone();
        let upper = self.paths(&id).upper();
        let image = tokio::task::spawn_blocking(move || {
            let base = images.resolve(&rec.image_id)?;
            let mut config = base.config.clone();
            let mut cc = config.config().clone().unwrap_or_default();
            cc.set_env(Some(rec.env.clone()));
            cc.set_working_dir(Some(rec.workdir.clone()));
            if let Some(ep) = &rec.config.entrypoint {
                cc.set_entrypoint(Some(ep.clone()));
            }
            if !rec.config.cmd.is_empty() {
                cc.set_cmd(Some(rec.config.cmd.clone()));
            }
            config.set_config(Some(cc));
            // A commit is a new image: its own creation time and a history
            // entry for its layer, as Docker records them.
            let now = berth_image::build::now_rfc3339();
            config.set_created(Some(now.clone()));
            let mut history = config.history().clone().unwrap_or_default();
            let mut entry = oci_spec::image::History::default();
            entry.set_created(Some(now));
            entry.set_created_by(Some(format!("berth commit {}", rec.name)));
            history.push(entry);
            config.set_history(Some(history));
            let generated: Vec<&Path> = GENERATED_ETC
                .iter()
                .map(|p| Path::new(p.trim_start_matches('/')))
                .collect();
            let layer = images.add_layer_from_dir_excluding(&upper, &generated)?;
            let mut layers: Vec<LayerRecord> = base.layers.clone();
            layers.push(layer);
            images.create_image(config, layers, tag.as_ref())
        })
        .await
        .map_err(|e| EngineError::internal("committing", e))??;
        Ok(image.id)
    }

    // ----- recovery -----------------------------------------------------

    /// Loads every container record; running containers whose shim is
    /// alive are re-adopted, the others get the exit status their shim
    /// recorded (or are killed if their shim is gone and they are not).
    async fn recover(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(self.dirs.containers()) else {
            return;
        };
        let mut adopted = Vec::new();
        let mut restart = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let paths = ContainerPaths::new(dir.clone());
            let rec: Option<ContainerRecord> = std::fs::read(paths.record())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(mut rec) = rec else {
                if paths.record().exists() {
                    // Unreadable (torn by a power loss): keep the directory,
                    // which may hold the user's data, and say so.
                    tracing::error!(dir = %dir.display(), "container record unreadable; left in place");
                } else {
                    // A create that crashed before writing its record: no
                    // user ever saw this container, so it is removed.
                    tracing::warn!(dir = %dir.display(), "removing half-created container directory");
                    let _ = std::fs::remove_dir_all(&dir);
                }
                continue;
            };
            let mut shim_fd = None;
            if rec.state == ContainerState::Running {
                let shim_alive = matches!((rec.shim_pid, rec.shim_start_time), (Some(p), Some(t)) if process_matches(p, t));
                if shim_alive {
                    shim_fd = rec
                        .shim_pid
                        .and_then(|p| berth_runtime::pidfd::pidfd_open(p).ok());
                }
                if shim_fd.is_none() {
                    let exit: Option<ExitRecord> = std::fs::read(paths.exit())
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    let exit = exit.unwrap_or_else(|| {
                        if let (Some(p), Some(t)) = (rec.pid, rec.pid_start_time) {
                            if process_matches(p, t) {
                                let _ = berth_runtime::pidfd::kill(p, libc::SIGKILL);
                            }
                        }
                        ExitRecord {
                            code: 137,
                            signal: Some(9),
                            oom_killed: false,
                            finished_at: now_unix(),
                        }
                    });
                    if let Ok(cg) = Cgroup::open(&Self::cgroup_name(&rec.id)) {
                        let _ = cg.kill_all(libc::SIGKILL);
                        let _ = cg.remove();
                    }
                    rec.state = ContainerState::Exited;
                    rec.exit_code = Some(exit.code);
                    rec.oom_killed = exit.oom_killed;
                    rec.finished_at = Some(exit.finished_at);
                    rec.pid = None;
                    rec.shim_pid = None;
                    rec.ip = None;
                    self.persist(&rec);
                    if rec.config.restart.should_restart(
                        exit.code,
                        rec.restart_count,
                        rec.stopped_by_user,
                    ) {
                        restart.push(rec.id.clone());
                    }
                }
            } else if rec.state == ContainerState::Exited
                && rec.config.restart == berth_types::RestartPolicy::Always
            {
                // Docker: `always` containers come back at daemon start even
                // when they had been stopped by hand.
                restart.push(rec.id.clone());
            }
            let id = rec.id.clone();
            let pidfd = match (rec.pid, shim_fd.is_some()) {
                (Some(p), true) => berth_runtime::pidfd::pidfd_open(p).ok().map(Arc::new),
                _ => None,
            };
            let mut st = self.lock();
            if let Some(ip) = rec.ip {
                st.ipam.reserve(ip);
            }
            let (tx, _) = watch::channel((0, None));
            st.containers.insert(
                id.clone(),
                Live {
                    rec,
                    proxies: vec![],
                    pidfd,
                    changed: tx,
                    starting: false,
                },
            );
            drop(st);
            if let Some(fd) = shim_fd {
                adopted.push((id, fd));
            }
        }
        for (id, fd) in adopted {
            let (ports, ip) = {
                let st = self.lock();
                let l = &st.containers[&id];
                (l.rec.config.ports.clone(), l.rec.ip)
            };
            if let Some(ip) = ip {
                match ports::bind_all(&ports).await {
                    Ok(bound) => {
                        let handles = ports::serve_all(bound, ip);
                        if let Some(l) = self.lock().containers.get_mut(&id) {
                            l.proxies = handles;
                        }
                    }
                    Err(e) => tracing::warn!(container = %id, error = %e, "re-publishing ports"),
                }
            }
            tracing::info!(container = %id, "re-adopted running container");
            let engine = self.clone();
            tokio::spawn(async move {
                ShimWait::Adopted(fd).wait().await;
                engine.on_exit(&id).await;
            });
        }
        for id in restart {
            if let Err(e) = self.start(&id).await {
                tracing::warn!(container = %id, error = %e, "restarting at daemon start");
            }
        }
    }
}

/// With --userns, container root is an unprivileged host id that cannot
/// create files in the image's root-owned /etc: the files the runtime
/// writes there are made beforehand in the upper directory, owned by it.
fn prepare_userns_etc(upper: &Path) -> std::io::Result<()> {
    let id = berth_runtime::spec::USERNS_HOST_BASE;
    let (uid, gid) = (
        Some(nix::unistd::Uid::from_raw(id)),
        Some(nix::unistd::Gid::from_raw(id)),
    );
    let etc = upper.join("etc");
    std::fs::create_dir_all(&etc)?;
    nix::unistd::chown(&etc, uid, gid)?;
    for name in ["hosts", "resolv.conf", "hostname"] {
        let f = etc.join(name);
        if !f.exists() {
            std::fs::write(&f, b"")?;
        }
        nix::unistd::chown(&f, uid, gid)?;
    }
    Ok(())
}

/// Files the runtime writes into every container; like Docker (which
/// bind-mounts them), `diff` does not list them, nor /etc when they are its
/// only change.
const GENERATED_ETC: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

fn hide_generated_etc(changes: Vec<berth_image::Change>) -> Vec<ChangeEntry> {
    let etc_touched = changes
        .iter()
        .any(|c| c.path.starts_with("/etc/") && !GENERATED_ETC.contains(&c.path.as_str()));
    changes
        .into_iter()
        .filter(|c| !GENERATED_ETC.contains(&c.path.as_str()))
        .filter(|c| c.path != "/etc" || etc_touched || c.kind != berth_image::ChangeKind::Changed)
        .map(|c| ChangeEntry {
            kind: c.kind.to_string(),
            path: c.path,
        })
        .collect()
}

fn resolve_in(containers: &HashMap<String, Live>, reference: &str) -> Result<String, EngineError> {
    if containers.contains_key(reference) {
        return Ok(reference.to_string());
    }
    let by_name = reference.strip_prefix('/').unwrap_or(reference);
    if let Some(l) = containers.values().find(|l| l.rec.name == by_name) {
        return Ok(l.rec.id.clone());
    }
    let matches: Vec<&String> = containers
        .keys()
        .filter(|id| !reference.is_empty() && id.starts_with(reference))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(no_such(reference)),
        _ => Err(EngineError::BadRequest(format!(
            "container id prefix {reference} is ambiguous"
        ))),
    }
}

fn no_such(reference: &str) -> EngineError {
    EngineError::NotFound(format!("no such container: {reference}"))
}

fn summary(rec: &ContainerRecord) -> ContainerSummary {
    ContainerSummary {
        id: rec.id.clone(),
        name: rec.name.clone(),
        image: rec.image_name.clone(),
        command: rec.command_line(),
        created: rec.created,
        state: rec.state,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        oom_killed: rec.oom_killed,
        ports: if rec.state == ContainerState::Running {
            rec.config.ports.clone()
        } else {
            vec![]
        },
        restart_count: rec.restart_count,
    }
}

/// The image's environment overridden by the user's `-e K=V` entries.
pub fn merge_env(image_env: Vec<String>, user: &[String]) -> Vec<String> {
    let mut out = image_env;
    for kv in user {
        let key = kv.split('=').next().unwrap_or(kv);
        out.retain(|e| e.split('=').next() != Some(key));
        out.push(kv.clone());
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    out
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merge_overrides_and_keeps_path() {
        let got = merge_env(
            vec!["PATH=/bin".into(), "A=1".into()],
            &["A=2".into(), "B=3".into()],
        );
        assert_eq!(got, vec!["PATH=/bin", "A=2", "B=3"]);
        let got = merge_env(vec![], &[]);
        assert!(got[0].starts_with("PATH="));
    }
}
