//! Containerfile builds with Docker's layer semantics: RUN, COPY, ADD (and
//! a WORKDIR that has to create its directory) each add a layer; every
//! other instruction changes only the image config and adds an
//! `empty_layer` history entry. Multi-stage builds (`FROM x AS name`,
//! `COPY --from=name`) are supported; every stage is built, and the last
//! one becomes the image.
//!
//! Each step has a cache key (see `cache`); an unchanged step reuses its
//! earlier result, so rebuilding an unchanged context creates no layer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_types::ImageRef;
use oci_spec::image::{Config, History, ImageConfiguration};
use sha2::{Digest, Sha256};

use crate::containerfile::{self, Command, CopyArgs, Instruction, Kind, ParseError, Word};
use crate::dockerignore::{Ignore, IgnoreError};
use crate::error::ImageError;
use crate::store::{Image, ImageStore, LayerRecord};

mod cache;
mod copy;
mod source;
mod tree;
mod users;

#[cfg(test)]
mod tests;

use copy::{Attrs, Writer};
use source::{Matched, Source};
use tree::Tree;

/// One RUN to execute: in a container whose root is overlay(lowers, upper).
pub struct RunStep<'a> {
    /// Extracted layer directories, bottom first (may be empty for a
    /// `FROM scratch` image).
    pub lowers: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    pub args: Vec<String>,
    /// `KEY=value`: the image env plus the build args in scope.
    pub env: Vec<String>,
    /// Absolute; "/" when the image sets none.
    pub workdir: String,
    /// As the USER instruction says (`name`, `uid`, `uid:gid`); empty means root.
    pub user: String,
}

/// Runs RUN steps; the engine implements it with the container runtime,
/// tests with fakes.
pub trait StepRunner {
    /// Runs `step.args` in a container whose root is overlay(lowers,
    /// upper), passing output chunks to `output`; returns the exit code.
    fn run(&self, step: &RunStep<'_>, output: &mut dyn FnMut(&[u8])) -> Result<i32, String>;
}

pub struct BuildOptions {
    pub context: PathBuf,
    /// Relative to `context` unless absolute.
    pub containerfile: PathBuf,
    pub tag: Option<ImageRef>,
    pub build_args: Vec<(String, String)>,
    pub no_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// `index` counts from 1 over all instructions.
    Step {
        index: usize,
        total: usize,
        text: String,
    },
    /// The step just announced was taken from the cache.
    CacheHit,
    /// Output of a RUN, and builder warnings.
    Output(Vec<u8>),
    Done {
        image_id: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    #[error("reading {}: {source}", path.display())]
    Containerfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A step failed; `message` says why and names the path or value.
    #[error("{file}:{line}: {instruction}: {message}")]
    Step {
        file: String,
        line: usize,
        instruction: String,
        message: String,
    },
    #[error("{file}:{line}: RUN: command exited with code {code}")]
    RunFailed {
        file: String,
        line: usize,
        code: i32,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Builds the image described by `opts` and tags it with `opts.tag`.
pub fn build(
    store: &ImageStore,
    runner: &dyn StepRunner,
    opts: &BuildOptions,
    events: &mut dyn FnMut(BuildEvent),
) -> Result<Image, BuildError> {
    let path = if opts.containerfile.is_absolute() {
        opts.containerfile.clone()
    } else {
        opts.context.join(&opts.containerfile)
    };
    let text = std::fs::read(&path).map_err(|source| BuildError::Containerfile {
        path: path.clone(),
        source,
    })?;
    let file = opts.containerfile.display().to_string();
    let instructions = containerfile::parse(&file, &String::from_utf8_lossy(&text))?;
    let ignore = Ignore::from_file(&opts.context)?;
    let mut b = Builder {
        store,
        runner,
        opts,
        file,
        ignore,
        cache: cache::Cache::new(store.root()),
        build_args: opts.build_args.iter().cloned().collect(),
        used_args: BTreeSet::new(),
        meta_args: Vec::new(),
        stages: Vec::new(),
    };
    let total = instructions.len();
    for (i, ins) in instructions.iter().enumerate() {
        events(BuildEvent::Step {
            index: i + 1,
            total,
            text: ins.text.clone(),
        });
        b.step(ins, events)?;
    }
    let unused: Vec<&String> = b
        .build_args
        .keys()
        .filter(|k| !b.used_args.contains(*k))
        .collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        events(BuildEvent::Output(
            format!(
                "warning: build args were not consumed: {}\n",
                names.join(", ")
            )
            .into_bytes(),
        ));
    }
    let Some(last) = b.stages.pop() else {
        // parse() guarantees a FROM.
        return Err(BuildError::Step {
            file: b.file.clone(),
            line: 1,
            instruction: "FROM".into(),
            message: "no build stage".into(),
        });
    };
    let mut config = last.config;
    let diff_ids: Vec<String> = last.layers.iter().map(|l| l.diff_id.clone()).collect();
    config.rootfs_mut().set_diff_ids(diff_ids);
    // The image time is that of its last step, so a fully cached rebuild
    // yields the same config and so the same image id.
    let last_time = config
        .history()
        .as_ref()
        .and_then(|h| h.last())
        .and_then(|h| h.created().clone());
    if last_time.is_some() {
        config.set_created(last_time);
    }
    let image = store.create_image(config, last.layers, opts.tag.as_ref())?;
    events(BuildEvent::Done {
        image_id: image.id.clone(),
    });
    Ok(image)
}

/// The state of one build stage.
#[derive(Clone)]
struct Stage {
    name: Option<String>,
    layers: Vec<LayerRecord>,
    config: ImageConfiguration,
    shell: Vec<String>,
    /// Whether this stage set CMD (ENTRYPOINT then keeps it).
    cmd_set: bool,
    /// ARGs declared in this stage, with their values.
    args: Vec<(String, Option<String>)>,
}

struct Builder<'a> {
    store: &'a ImageStore,
    runner: &'a dyn StepRunner,
    opts: &'a BuildOptions,
    file: String,
    ignore: Ignore,
    cache: cache::Cache,
    build_args: BTreeMap<String, String>,
    used_args: BTreeSet<String>,
    meta_args: Vec<(String, Option<String>)>,
    stages: Vec<Stage>,
}

/// What executing a step produced.
struct Outcome {
    layer: Option<LayerRecord>,
    config: ImageConfiguration,
}

impl Builder<'_> {
    fn err(&self, ins: &Instruction, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            file: self.file.clone(),
            line: ins.line,
            instruction: ins.keyword.clone(),
            message: message.into(),
        }
    }

    fn step(
        &mut self,
        ins: &Instruction,
        events: &mut dyn FnMut(BuildEvent),
    ) -> Result<(), BuildError> {
        match &ins.kind {
            Kind::From {
                image,
                platform: _,
                alias,
            } => self.from(ins, image, alias.clone()),
            Kind::Arg(args) => {
                self.arg(ins, args)?;
                Ok(())
            }
            _ => self.cached_step(ins, events),
        }
    }

    /// Meta args (before the first FROM) are visible to FROM lines only.
    fn meta_lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |name: &str| {
            self.meta_args
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.clone())
        }
    }

    fn expand(&self, ins: &Instruction, w: &Word) -> Result<String, BuildError> {
        let stage = self.stages.last();
        let lookup = |name: &str| -> Option<String> {
            let stage = stage?;
            env_get(&stage.config, name).or_else(|| {
                stage
                    .args
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| v.clone())
            })
        };
        w.expand(&lookup).map_err(|m| self.err(ins, m))
    }

    fn arg(
        &mut self,
        ins: &Instruction,
        args: &[(String, Option<Word>)],
    ) -> Result<(), BuildError> {
        for (name, default) in args {
            self.used_args.insert(name.clone());
            let value = match self.build_args.get(name) {
                Some(v) => Some(v.clone()),
                None => match default {
                    Some(w) => Some(if self.stages.is_empty() {
                        w.expand(&self.meta_lookup())
                            .map_err(|m| self.err(ins, m))?
                    } else {
                        self.expand(ins, w)?
                    }),
                    // `ARG X` in a stage takes the value of a meta arg X.
                    None if !self.stages.is_empty() => self.meta_lookup()(name),
                    None => None,
                },
            };
            match self.stages.last_mut() {
                Some(stage) => stage.args.push((name.clone(), value)),
                None => self.meta_args.push((name.clone(), value)),
            }
        }
        Ok(())
    }

    fn from(
        &mut self,
        ins: &Instruction,
        image: &Word,
        alias: Option<String>,
    ) -> Result<(), BuildError> {
        let reference = image
            .expand(&self.meta_lookup())
            .map_err(|m| self.err(ins, m))?;
        if reference.is_empty() {
            return Err(self.err(
                ins,
                format!("image name {:?} expands to nothing", image.raw()),
            ));
        }
        let base = if let Some(stage) = self.find_stage(&reference, self.stages.len()) {
            Stage {
                name: None,
                args: Vec::new(),
                cmd_set: false,
                ..stage.clone()
            }
        } else if reference == "scratch" {
            Stage {
                name: None,
                layers: Vec::new(),
                config: ImageConfiguration::default(),
                shell: containerfile::default_shell(),
                cmd_set: false,
                args: Vec::new(),
            }
        } else {
            let img = self
                .store
                .resolve(&reference)
                .map_err(|e| self.err(ins, e.to_string()))?;
            Stage {
                name: None,
                layers: img.layers.clone(),
                config: img.config.clone(),
                shell: containerfile::default_shell(),
                cmd_set: false,
                args: Vec::new(),
            }
        };
        self.stages.push(Stage {
            name: alias,
            ..base
        });
        Ok(())
    }

    /// A finished stage by name, or by index for a number: one of the
    /// first `before` stages (a stage cannot read itself or later ones).
    fn find_stage(&self, name: &str, before: usize) -> Option<&Stage> {
        let done = &self.stages[..before.min(self.stages.len())];
        let lower = name.to_ascii_lowercase();
        done.iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().and_then(|i| done.get(i)))
    }

    fn stage(&self) -> &Stage {
        // parse() rejects every instruction but ARG before the first FROM.
        self.stages
            .last()
            .unwrap_or_else(|| unreachable!("instruction before FROM"))
    }

    fn stage_mut(&mut self) -> &mut Stage {
        self.stages
            .last_mut()
            .unwrap_or_else(|| unreachable!("instruction before FROM"))
    }

    /// Extracted layer directories, bottom first. Build states have no
    /// Image yet, so wrap the layers in a transient one for layer_paths.
    fn layer_dirs(&self, layers: &[LayerRecord]) -> Result<Vec<PathBuf>, ImageError> {
        let transient = Image {
            id: String::new(),
            tags: Vec::new(),
            config: ImageConfiguration::default(),
            layers: layers.to_vec(),
            created: None,
            size: 0,
        };
        self.store.layer_paths(&transient)
    }

    fn layer_exists(&self, layer: &LayerRecord) -> bool {
        self.layer_dirs(std::slice::from_ref(layer))
            .is_ok_and(|p| p.iter().all(|p| p.exists()))
    }

    /// Every step but FROM and ARG: compute its key, reuse a cached result
    /// or execute it, then apply the result to the stage.
    fn cached_step(
        &mut self,
        ins: &Instruction,
        events: &mut dyn FnMut(BuildEvent),
    ) -> Result<(), BuildError> {
        let Plan {
            text,
            extra,
            action,
        } = self.plan(ins)?;
        let stage = self.stage();
        let state = cache::state_digest(&stage.layers, &stage.config);
        let key = cache::step_key(&state, &text, &extra);
        let hit = if self.opts.no_cache {
            None
        } else {
            self.cache
                .get(&key)
                .filter(|e| e.layer.as_ref().is_none_or(|l| self.layer_exists(l)))
        };
        let outcome = match hit {
            Some(e) => {
                events(BuildEvent::CacheHit);
                Outcome {
                    layer: e.layer,
                    config: e.config,
                }
            }
            None => {
                let out = self.execute(ins, &text, action, events)?;
                let entry = cache::Entry {
                    layer: out.layer.clone(),
                    config: out.config.clone(),
                };
                // A cache that cannot be written only costs a later rebuild.
                if let Err(e) = self.cache.put(&key, &entry) {
                    tracing::warn!(key = %key, error = %e, "writing build cache entry failed");
                }
                out
            }
        };
        let cmd_set = matches!(ins.kind, Kind::Cmd(_));
        let stage = self.stage_mut();
        if let Some(l) = outcome.layer {
            stage.layers.push(l);
        }
        stage.config = outcome.config;
        if cmd_set {
            stage.cmd_set = true;
        }
        if let Kind::Shell(sh) = &ins.kind {
            stage.shell = sh.clone();
        }
        Ok(())
    }
}

/// A step with its variables expanded: what its key covers and what
/// executing it needs.
struct Plan {
    /// Canonical text of the expanded step, for the key and history.
    text: String,
    /// Extra key input (hash of copied files).
    extra: Vec<u8>,
    action: Action,
}

/// A config-only step's change to the runtime config and the image config.
type ConfigChange = Box<dyn FnOnce(&mut Config, &mut ImageConfiguration)>;

enum Action {
    Config(ConfigChange),
    Run { args: Vec<String>, env: Vec<String> },
    Copy(CopyPlan),
    Workdir(String),
}

struct CopyPlan {
    add: bool,
    sources: Vec<String>,
    dest: String,
    chown: Option<String>,
    chmod: Option<u32>,
    from: Option<FromSource>,
}

/// Where a COPY --from reads.
#[derive(Clone)]
struct FromSource {
    layers: Vec<LayerRecord>,
}

impl Builder<'_> {
    fn plan(&self, ins: &Instruction) -> Result<Plan, BuildError> {
        let stage = self.stage();
        let config_only = |text: String, f: ConfigChange| Plan {
            text,
            extra: Vec::new(),
            action: Action::Config(f),
        };
        Ok(match &ins.kind {
            Kind::Run(cmd) => {
                let args = cmd.argv(&stage.shell);
                // Build args reach RUN as env vars; ENV wins over ARG.
                let mut env: Vec<String> = env_list(&stage.config);
                let mut seen = BTreeSet::new();
                for (name, value) in stage.args.iter().rev() {
                    if let Some(v) = value {
                        if env_get(&stage.config, name).is_none() && seen.insert(name.clone()) {
                            env.push(format!("{name}={v}"));
                        }
                    }
                }
                let text = format!(
                    "RUN {}\nenv={}",
                    serde_json::to_string(&args).unwrap_or_default(),
                    serde_json::to_string(&env).unwrap_or_default()
                );
                Plan {
                    text,
                    extra: Vec::new(),
                    action: Action::Run { args, env },
                }
            }
            Kind::Copy(c) | Kind::Add(c) => self.plan_copy(ins, c)?,
            Kind::Workdir(w) => {
                let dir = self.expand(ins, w)?;
                let base = workdir(&stage.config);
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", base.trim_end_matches('/'))
                };
                let dir = clean_abs(&joined);
                Plan {
                    text: format!("WORKDIR {dir}"),
                    extra: Vec::new(),
                    action: Action::Workdir(dir),
                }
            }
            Kind::Env(pairs) => {
                let mut kvs = Vec::new();
                for (k, v) in pairs {
                    let k = self.expand(ins, k)?;
                    if k.is_empty() || k.contains('=') {
                        return Err(self.err(ins, format!("invalid variable name {k:?}")));
                    }
                    kvs.push((k, self.expand(ins, v)?));
                }
                let text = format!("ENV {}", join_pairs(&kvs));
                config_only(
                    text,
                    Box::new(move |c: &mut Config, _| {
                        let mut env = c.env().clone().unwrap_or_default();
                        for (k, v) in kvs {
                            let entry = format!("{k}={v}");
                            match env
                                .iter_mut()
                                .find(|e| e.split_once('=').map_or(e.as_str(), |p| p.0) == k)
                            {
                                Some(slot) => *slot = entry,
                                None => env.push(entry),
                            }
                        }
                        c.set_env(Some(env));
                    }),
                )
            }
            Kind::Label(pairs) => {
                let mut kvs = Vec::new();
                for (k, v) in pairs {
                    kvs.push((self.expand(ins, k)?, self.expand(ins, v)?));
                }
                let text = format!("LABEL {}", join_pairs(&kvs));
                config_only(
                    text,
                    Box::new(move |c: &mut Config, _| {
                        let mut labels = c.labels().clone().unwrap_or_default();
                        labels.extend(kvs);
                        c.set_labels(Some(labels));
                    }),
                )
            }
            Kind::User(w) => {
                let user = self.expand(ins, w)?;
                if user.is_empty() {
                    return Err(self.err(ins, "user expands to nothing"));
                }
                config_only(
                    format!("USER {user}"),
                    Box::new(move |c: &mut Config, _| {
                        c.set_user(Some(user));
                    }),
                )
            }
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    for p in self.expand(ins, w)?.split_whitespace() {
                        ports.extend(parse_ports(p).map_err(|m| self.err(ins, m))?);
                    }
                }
                config_only(
                    format!("EXPOSE {}", ports.join(" ")),
                    Box::new(move |c: &mut Config, _| {
                        let mut set: BTreeSet<String> = c
                            .exposed_ports()
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .collect();
                        set.extend(ports);
                        c.set_exposed_ports(Some(set.into_iter().collect()));
                    }),
                )
            }
            Kind::Volume(words) => {
                let mut vols = Vec::new();
                for w in words {
                    let v = self.expand(ins, w)?;
                    if v.trim().is_empty() {
                        return Err(
                            self.err(ins, format!("volume {:?} expands to nothing", w.raw()))
                        );
                    }
                    vols.push(v);
                }
                config_only(
                    format!(
                        "VOLUME {}",
                        serde_json::to_string(&vols).unwrap_or_default()
                    ),
                    Box::new(move |c: &mut Config, _| {
                        let mut set: BTreeSet<String> = c
                            .volumes()
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .collect();
                        set.extend(vols);
                        c.set_volumes(Some(set.into_iter().collect()));
                    }),
                )
            }
            Kind::Cmd(cmd) => {
                let argv = cmd.argv(&stage.shell);
                config_only(
                    format!("CMD {}", serde_json::to_string(&argv).unwrap_or_default()),
                    Box::new(move |c: &mut Config, _| {
                        c.set_cmd(Some(argv));
                    }),
                )
            }
            Kind::Entrypoint(cmd) => {
                let argv = cmd.argv(&stage.shell);
                // Docker: a new ENTRYPOINT drops a CMD inherited from the
                // base image, but keeps one set earlier in this stage.
                let keep_cmd = stage.cmd_set;
                config_only(
                    format!(
                        "ENTRYPOINT {} keep_cmd={keep_cmd}",
                        serde_json::to_string(&argv).unwrap_or_default()
                    ),
                    Box::new(move |c: &mut Config, _| {
                        c.set_entrypoint(Some(argv));
                        if !keep_cmd {
                            c.set_cmd(None);
                        }
                    }),
                )
            }
            Kind::Shell(sh) => config_only(
                format!("SHELL {}", serde_json::to_string(sh).unwrap_or_default()),
                Box::new(|_, _| {}),
            ),
            Kind::StopSignal(w) => {
                let sig = self.expand(ins, w)?;
                validate_signal(&sig).map_err(|m| self.err(ins, m))?;
                config_only(
                    format!("STOPSIGNAL {sig}"),
                    Box::new(move |c: &mut Config, _| {
                        c.set_stop_signal(Some(sig));
                    }),
                )
            }
            Kind::Maintainer(m) => {
                let m = m.clone();
                config_only(
                    format!("MAINTAINER {m}"),
                    Box::new(move |_, img: &mut ImageConfiguration| {
                        img.set_author(Some(m));
                    }),
                )
            }
            Kind::From { .. } | Kind::Arg(_) => {
                return Err(self.err(ins, "internal: not a cached step"))
            }
        })
    }

    fn plan_copy(&self, ins: &Instruction, c: &CopyArgs) -> Result<Plan, BuildError> {
        let add = matches!(ins.kind, Kind::Add(_));
        let stage = self.stage();
        let mut sources = Vec::new();
        for w in &c.sources {
            let s = self.expand(ins, w)?;
            if add && containerfile::is_url(&s) {
                return Err(self.err(
                    ins,
                    format!("remote source {s:?} is not supported; download it in a RUN step"),
                ));
            }
            if s.is_empty() {
                return Err(self.err(ins, format!("source {:?} expands to nothing", w.raw())));
            }
            sources.push(s);
        }
        let dest_raw = self.expand(ins, &c.dest)?;
        if dest_raw.is_empty() {
            return Err(self.err(ins, "destination expands to nothing"));
        }
        if sources.len() > 1 && !is_dir_syntax(&dest_raw) {
            return Err(self.err(
                ins,
                format!(
                    "with more than one source the destination must be a directory ending in /, got {dest_raw:?}"
                ),
            ));
        }
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!(
                "{}/{dest_raw}",
                workdir(&stage.config).trim_end_matches('/')
            )
        };
        // Keep a trailing "/" or "/." (directory syntax) through cleaning.
        let dest = if is_dir_syntax(&dest_raw) {
            format!("{}/", clean_abs(&dest).trim_end_matches('/'))
        } else {
            clean_abs(&dest)
        };
        let chown = match &c.chown {
            Some(w) => Some(self.expand(ins, w)?),
            None => None,
        };
        let chmod = match &c.chmod {
            Some(w) => {
                let s = self.expand(ins, w)?;
                Some(
                    u32::from_str_radix(&s, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            self.err(
                                ins,
                                format!("invalid --chmod value {s:?}: expected octal mode"),
                            )
                        })?,
                )
            }
            None => None,
        };
        let mut extra = Sha256::new();
        let from = match &c.from {
            Some(w) => {
                let name = self.expand(ins, w)?;
                let current = self.stages.len().saturating_sub(1);
                if self.stages.last().and_then(|s| s.name.as_deref())
                    == Some(name.to_ascii_lowercase().as_str())
                {
                    return Err(self.err(
                        ins,
                        format!("--from={name}: a stage cannot copy from itself"),
                    ));
                }
                let layers = match self.find_stage(&name, current) {
                    Some(s) => s.layers.clone(),
                    None => {
                        let img = self
                            .store
                            .resolve(&name)
                            .map_err(|e| self.err(ins, format!("--from={name}: {e}")))?;
                        img.layers
                    }
                };
                // The source's layers determine what is read; no need to
                // hash its files.
                for l in &layers {
                    extra.update(l.diff_id.as_bytes());
                    extra.update([0]);
                }
                Some(FromSource { layers })
            }
            None => {
                let src = Source {
                    tree: Tree::plain(&self.opts.context),
                    ignore: Some(&self.ignore),
                    preserve_owner: false,
                };
                for s in &sources {
                    for m in src.matches(s).map_err(|e| self.err(ins, e))? {
                        extra.update(m.given.as_os_str().as_encoded_bytes());
                        extra.update([0]);
                        let entries = src.entries(&m).map_err(|e| self.err(ins, e))?;
                        source::hash_entries(&mut extra, &entries, false)
                            .map_err(|e| self.err(ins, format!("reading {s:?}: {e}")))?;
                    }
                }
                None
            }
        };
        let text = format!(
            "{} chown={:?} chmod={:?} from={:?} {} -> {}",
            ins.keyword,
            chown,
            chmod,
            c.from.as_ref().map(|w| w.raw().to_string()),
            serde_json::to_string(&sources).unwrap_or_default(),
            dest
        );
        Ok(Plan {
            text,
            extra: extra.finalize().to_vec(),
            action: Action::Copy(CopyPlan {
                add,
                sources,
                dest,
                chown,
                chmod,
                from,
            }),
        })
    }

    fn execute(
        &self,
        ins: &Instruction,
        text: &str,
        action: Action,
        events: &mut dyn FnMut(BuildEvent),
    ) -> Result<Outcome, BuildError> {
        let stage = self.stage();
        let mut config = stage.config.clone();
        let mut layer = None;
        match action {
            Action::Config(f) => {
                let mut c = config.config().clone().unwrap_or_default();
                f(&mut c, &mut config);
                config.set_config(Some(c));
            }
            Action::Run { args, env } => layer = Some(self.run(ins, &args, &env, events)?),
            Action::Copy(cp) => layer = Some(self.copy(ins, &cp)?),
            Action::Workdir(dir) => {
                layer = self.workdir(ins, &dir)?;
                let mut c = config.config().clone().unwrap_or_default();
                c.set_working_dir(Some(dir));
                config.set_config(Some(c));
            }
        }
        let mut h = History::default();
        h.set_created(Some(now_rfc3339()));
        h.set_created_by(Some(history_text(ins, text)));
        h.set_comment(Some("berth build".to_string()));
        if layer.is_none() {
            h.set_empty_layer(Some(true));
        }
        let mut history = config.history().clone().unwrap_or_default();
        history.push(h);
        config.set_history(Some(history));
        Ok(Outcome { layer, config })
    }

    fn run(
        &self,
        ins: &Instruction,
        args: &[String],
        env: &[String],
        events: &mut dyn FnMut(BuildEvent),
    ) -> Result<LayerRecord, BuildError> {
        let stage = self.stage();
        let lowers = self.layer_dirs(&stage.layers)?;
        let tmp = self.store.tmp_dir()?;
        let upper = tmp.path().join("upper");
        let work = tmp.path().join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d)
                .map_err(|e| self.err(ins, format!("creating {}: {e}", d.display())))?;
        }
        let step = RunStep {
            lowers: &lowers,
            upper: &upper,
            work: &work,
            args: args.to_vec(),
            env: env.to_vec(),
            workdir: workdir(&stage.config),
            user: stage
                .config
                .config()
                .as_ref()
                .and_then(|c| c.user().clone())
                .unwrap_or_default(),
        };
        let code = self
            .runner
            .run(&step, &mut |chunk: &[u8]| {
                events(BuildEvent::Output(chunk.to_vec()))
            })
            .map_err(|m| self.err(ins, m))?;
        if code != 0 {
            return Err(BuildError::RunFailed {
                file: self.file.clone(),
                line: ins.line,
                code,
            });
        }
        Ok(self.store.add_layer_from_dir(&upper)?)
    }

    fn workdir(&self, ins: &Instruction, dir: &str) -> Result<Option<LayerRecord>, BuildError> {
        let stage = self.stage();
        let lowers = self.layer_dirs(&stage.layers)?;
        let lower = Tree::from_layers_bottom_first(&lowers);
        let io = |e: std::io::Error| self.err(ins, format!("{dir}: {e}"));
        let resolved = lower.resolve(Path::new(dir), true).map_err(io)?;
        if resolved.as_os_str().is_empty()
            || lower
                .lookup(&resolved)
                .map_err(io)?
                .is_some_and(|f| f.meta.is_dir())
        {
            return Ok(None);
        }
        let tmp = self.store.tmp_dir()?;
        let upper = tmp.path().join("upper");
        std::fs::create_dir(&upper).map_err(io)?;
        let w = Writer {
            upper: &upper,
            lower: &lower,
        };
        w.ensure_dir(&resolved, Some((0o755, 0, 0))).map_err(io)?;
        Ok(Some(self.store.add_layer_from_dir(&upper)?))
    }

    fn copy(&self, ins: &Instruction, cp: &CopyPlan) -> Result<LayerRecord, BuildError> {
        let stage = self.stage();
        let lowers = self.layer_dirs(&stage.layers)?;
        let lower = Tree::from_layers_bottom_first(&lowers);
        let owner = match &cp.chown {
            Some(spec) => Some(users::resolve_chown(spec, &lower).map_err(|m| self.err(ins, m))?),
            None => None,
        };
        let src = match &cp.from {
            Some(f) => Source {
                tree: Tree::from_layers_bottom_first(&self.layer_dirs(&f.layers)?),
                ignore: None,
                preserve_owner: true,
            },
            None => Source {
                tree: Tree::plain(&self.opts.context),
                ignore: Some(&self.ignore),
                preserve_owner: false,
            },
        };
        let attrs = Attrs {
            owner,
            mode: cp.chmod,
            preserve_owner: src.preserve_owner,
        };
        let tmp = self.store.tmp_dir()?;
        let upper = tmp.path().join("upper");
        let io = |what: &str, e: std::io::Error| self.err(ins, format!("{what}: {e}"));
        std::fs::create_dir(&upper).map_err(|e| io("creating upper dir", e))?;
        let w = Writer {
            upper: &upper,
            lower: &lower,
        };
        let mut matched: Vec<Matched> = Vec::new();
        for s in &cp.sources {
            matched.extend(src.matches(s).map_err(|m| self.err(ins, m))?);
        }
        let dir_syntax = cp.dest.ends_with('/');
        let dest_follow = w.resolve(&cp.dest, true).map_err(|e| io(&cp.dest, e))?;
        let dest_nofollow = w.resolve(&cp.dest, false).map_err(|e| io(&cp.dest, e))?;
        let dest_is_dir = w.is_dir(&dest_follow).map_err(|e| io(&cp.dest, e))?;
        let into_dir = dir_syntax || dest_is_dir || matched.len() > 1;
        for (n, m) in matched.iter().enumerate() {
            let archive = if cp.add && m.found.meta.is_file() {
                copy::detect_archive(&m.found.real).map_err(|e| self.err(ins, e))?
            } else {
                None
            };
            if let Some(kind) = archive {
                // Extract to a staging dir, then copy that in like a
                // directory so destination handling is shared.
                let staging = tmp.path().join(format!("archive-{n}"));
                std::fs::create_dir(&staging).map_err(|e| io("creating staging dir", e))?;
                copy::extract_archive(kind, &m.found.real, &staging)
                    .map_err(|e| self.err(ins, e))?;
                let st = Source {
                    tree: Tree::plain(&staging),
                    ignore: None,
                    preserve_owner: true,
                };
                let top = st.matches(".").map_err(|e| self.err(ins, e))?;
                let a = Attrs {
                    preserve_owner: true,
                    ..attrs
                };
                self.copy_dir(ins, &w, &st, &top[0], &dest_follow, a)?;
                continue;
            }
            if m.found.meta.is_dir() {
                self.copy_dir(ins, &w, &src, m, &dest_follow, attrs)?;
            } else {
                let target = if into_dir {
                    let name = m.given.file_name().unwrap_or(m.resolved.as_os_str());
                    w.ensure_dir(&dest_follow, None)
                        .map_err(|e| io(&cp.dest, e))?;
                    dest_follow.join(name)
                } else {
                    dest_nofollow.clone()
                };
                if target.as_os_str().is_empty() {
                    return Err(self.err(ins, format!("cannot copy {} onto /", m.given.display())));
                }
                for e in src.entries(m).map_err(|e| self.err(ins, e))? {
                    w.put(&target, &e, attrs).map_err(|err| {
                        io(
                            &format!("copying {} to {}", m.given.display(), target.display()),
                            err,
                        )
                    })?;
                }
            }
        }
        Ok(self.store.add_layer_from_dir(&upper)?)
    }

    /// Copies a directory's contents into `dest`.
    fn copy_dir(
        &self,
        ins: &Instruction,
        w: &Writer<'_>,
        src: &Source<'_>,
        m: &Matched,
        dest: &Path,
        attrs: Attrs,
    ) -> Result<(), BuildError> {
        let io = |e: std::io::Error| {
            self.err(
                ins,
                format!("copying {} to /{}: {e}", m.given.display(), dest.display()),
            )
        };
        let meta = &m.found.meta;
        use std::os::unix::fs::MetadataExt;
        let owner = attrs.owner.unwrap_or(if attrs.preserve_owner {
            (meta.uid(), meta.gid())
        } else {
            (0, 0)
        });
        let mode = attrs.mode.unwrap_or(meta.mode() & 0o7777);
        w.ensure_dir(dest, Some((mode, owner.0, owner.1)))
            .map_err(io)?;
        let view = w.view();
        for e in src.entries(m).map_err(|e| self.err(ins, e))? {
            let target = dest.join(&e.rel);
            let Some(name) = target.file_name() else {
                continue;
            };
            // Resolve symlinks the image has in the target's parents; a
            // parent this copy already made is a real directory.
            let parent = target.parent().unwrap_or(Path::new(""));
            let parent = if w.upper.join(parent).is_dir() && !w.upper.join(parent).is_symlink() {
                parent.to_path_buf()
            } else {
                view.resolve(parent, true).map_err(io)?
            };
            let mut target = parent.join(name);
            // A directory lands inside an existing symlink to a directory
            // (rootfs/bin/ onto bin -> usr/bin) instead of replacing it.
            if e.meta.is_dir()
                && view
                    .lookup(&target)
                    .map_err(io)?
                    .is_some_and(|f| f.meta.file_type().is_symlink())
            {
                let followed = view.resolve(&target, true).map_err(io)?;
                if view
                    .lookup(&followed)
                    .map_err(io)?
                    .is_some_and(|f| f.meta.is_dir())
                {
                    target = followed;
                }
            }
            w.put(&target, &e, attrs).map_err(io)?;
        }
        Ok(())
    }
}

fn history_text(ins: &Instruction, text: &str) -> String {
    match &ins.kind {
        // Keep RUN history readable (not the key's argv+env dump).
        Kind::Run(Command::Shell(s)) => format!("RUN {s}"),
        Kind::Run(Command::Exec(v)) => {
            format!("RUN {}", serde_json::to_string(v).unwrap_or_default())
        }
        Kind::Copy(_) | Kind::Add(_) => ins.text.clone(),
        _ => text.to_string(),
    }
}

fn env_list(config: &ImageConfiguration) -> Vec<String> {
    config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
}

fn env_get(config: &ImageConfiguration, name: &str) -> Option<String> {
    env_list(config).iter().rev().find_map(|e| {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        (k == name).then(|| v.to_string())
    })
}

fn workdir(config: &ImageConfiguration) -> String {
    config
        .config()
        .as_ref()
        .and_then(|c| c.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

fn join_pairs(kvs: &[(String, String)]) -> String {
    kvs.iter()
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A destination written as a directory: ends in `/` or is `.`/`..`-ish.
fn is_dir_syntax(dest: &str) -> bool {
    dest.ends_with('/')
        || dest == "."
        || dest.ends_with("/.")
        || dest == ".."
        || dest.ends_with("/..")
}

/// Lexically cleans an absolute path (`..` stops at `/`).
fn clean_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

/// EXPOSE values: `80`, `80/tcp`, `53/udp`, `8000-8002/tcp`.
fn parse_ports(s: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid protocol in port {s:?}: expected tcp, udp or sctp"
        ));
    }
    let num = |p: &str| -> Result<u16, String> {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port {s:?}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(ports)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(format!("invalid port range {s:?}"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

fn validate_signal(sig: &str) -> Result<(), String> {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
    ];
    let upper = sig.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let ok = NAMES.contains(&name)
        || sig.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
        || name
            .strip_prefix("RTMIN+")
            .or_else(|| name.strip_prefix("RTMAX-"))
            .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 30));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid signal {sig:?}"))
    }
}

/// Now, as RFC 3339 UTC with second precision.
/// Now as an RFC 3339 UTC timestamp, as image configs record times.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
