//! Runs the RUN steps of a build: each in a throwaway container started by
//! a foreground shim, on the bridge network, with output streamed back.

use crate::paths::DataDir;
use crate::spec::ShimSpec;
use berth_image::build::{RunStep, StepRunner};
use berth_runtime::cgroup::CgroupLimits;
use berth_runtime::net::{BridgeAttachment, BridgeConfig};
use berth_runtime::spawn::{ContainerSpec, NetworkSetup, RootfsSpec};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

pub struct ShimStepRunner {
    pub exe: PathBuf,
    pub dirs: DataDir,
    pub bridge: BridgeConfig,
    /// Allocates and releases a bridge address for the step.
    pub address:
        Box<dyn Fn(Option<std::net::Ipv4Addr>) -> Option<std::net::Ipv4Addr> + Send + Sync>,
}

impl StepRunner for ShimStepRunner {
    fn run(&self, step: &RunStep<'_>, output: &mut dyn FnMut(&[u8])) -> Result<i32, String> {
        let bundle = tempfile::Builder::new()
            .prefix("step-")
            .tempdir_in(self.dirs.build_tmp())
            .map_err(|e| {
                format!(
                    "creating step directory in {}: {e}",
                    self.dirs.build_tmp().display()
                )
            })?;
        let mountpoint = bundle.path().join("rootfs");
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| format!("creating {}: {e}", mountpoint.display()))?;
        let mut id_bytes = [0u8; 32];
        rand::fill(&mut id_bytes);
        let id = berth_types::ContainerId::from_bytes(id_bytes).to_string();
        let ip = (self.address)(None);
        let network = match ip {
            Some(ip) => NetworkSetup::Bridge(BridgeAttachment {
                bridge: self.bridge.name.clone(),
                address: ip,
                prefix_len: self.bridge.prefix_len,
                gateway: self.bridge.gateway,
            }),
            None => NetworkSetup::None,
        };
        let spec = ShimSpec {
            container: ContainerSpec {
                id: id.clone(),
                hostname: id[..12].to_string(),
                rootfs: RootfsSpec {
                    // Steps list layers bottom first; overlayfs wants the top first.
                    lowerdirs: step.lowers.iter().rev().cloned().collect(),
                    upperdir: step.upper.to_path_buf(),
                    workdir: step.work.to_path_buf(),
                    mountpoint,
                    // The upper directory becomes a layer through a fresh
                    // tar with its own fsync; the mount itself needs none.
                    volatile: true,
                },
                args: step.args.clone(),
                env: step.env.clone(),
                cwd: step.workdir.clone(),
                user: step.user.clone(),
                mounts: vec![],
                network,
                userns: false,
                tty: false,
                extra_hosts: vec![],
            },
            cgroup_name: format!("berth/build-{}", &id[..12]),
            limits: CgroupLimits::default(),
            attach_socket: bundle.path().join("unused.sock"),
            log_path: bundle.path().join("unused.log"),
            log_max_file_bytes: 0,
            log_max_rotated: 0,
            exit_path: bundle.path().join("exit.json"),
            stdin: false,
            wait_attach: false,
        };
        let result = run_shim(&self.exe, bundle.path(), &spec, output);
        (self.address)(ip);
        result
    }
}

fn run_shim(
    exe: &std::path::Path,
    bundle: &std::path::Path,
    spec: &ShimSpec,
    output: &mut dyn FnMut(&[u8]),
) -> Result<i32, String> {
    let bytes = serde_json::to_vec(spec).map_err(|e| format!("serializing step spec: {e}"))?;
    std::fs::write(bundle.join("spec.json"), bytes)
        .map_err(|e| format!("writing step spec: {e}"))?;
    let mut child = Command::new(exe)
        .arg("__shim")
        .arg("--foreground")
        .arg(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting build step shim: {e}"))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut pumps = Vec::new();
    let sources: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut src in sources {
        let tx = tx.clone();
        pumps.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = src.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    for chunk in rx {
        output(&chunk);
    }
    for p in pumps {
        let _ = p.join();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for build step: {e}"))?;
    Ok(status.code().unwrap_or(128 + 9))
}
