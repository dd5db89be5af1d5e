//! `berth broker`: runs the AMQP broker in the foreground, or (with a
//! subcommand) lists and changes a running broker's objects through its
//! management API, as `rabbitmqctl`/`rabbitmqadmin` do for RabbitMQ.

use crate::output::table;
use anyhow::Context;
use bytes::Bytes;
use clap::{ArgAction, Args, Subcommand};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BrokerArgs {
    #[command(subcommand)]
    pub command: Option<BrokerCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Flags of the broker itself (no subcommand).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// AMQP listener address ("none" disables it)
    #[arg(long, default_value = "127.0.0.1:5672", value_parser = parse_optional_addr)]
    pub listen: OptionalAddr,
    /// AMQPS (TLS) listener address; needs --cert and --key
    #[arg(long, requires_all = ["cert", "key"])]
    pub tls_listen: Option<SocketAddr>,
    /// Certificate chain for AMQPS (PEM)
    #[arg(long, requires = "tls_listen")]
    pub cert: Option<PathBuf>,
    /// Private key for AMQPS (PEM)
    #[arg(long, requires = "tls_listen")]
    pub key: Option<PathBuf>,
    /// Where persistent messages and durable definitions live
    #[arg(long, default_value = "/var/lib/berth/broker")]
    pub data_dir: PathBuf,
    /// Management API and /metrics address ("none" disables it)
    #[arg(long, default_value = "127.0.0.1:15672", value_parser = parse_optional_addr)]
    pub management: OptionalAddr,
    /// Block publishers above this memory use: a fraction of RAM (0.4) or a size (512MiB)
    #[arg(long, default_value = "0.4", value_parser = parse_watermark)]
    pub memory_high_watermark: Watermark,
    /// Block publishers when free disk falls below this size (e.g. 50MB)
    #[arg(long, default_value = "50MB", value_parser = parse_size)]
    pub disk_free_limit: u64,
    /// Log format: text or json
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

/// An address, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(OptionalAddr(None));
    }
    s.parse()
        .map(|a| OptionalAddr(Some(a)))
        .map_err(|_| format!("invalid address {s:?}: expected IP:PORT or none"))
}

/// The memory high watermark: relative to RAM or absolute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    Fraction(f64),
    Bytes(u64),
}

impl Watermark {
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Watermark::Fraction(f) => (total as f64 * f) as u64,
            Watermark::Bytes(b) => b,
        }
    }
}

fn parse_watermark(s: &str) -> Result<Watermark, String> {
    let t = s.trim();
    if t.contains('.') && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return match t.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(Watermark::Fraction(f)),
            _ => Err(format!(
                "invalid watermark {s:?}: a fraction must be above 0 and at most 1"
            )),
        };
    }
    parse_size(t).map(Watermark::Bytes)
}

/// Sizes as `1000`, `50MB`, `512MiB`, `2g` (decimal units, binary with `i`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes such as 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// How admin subcommands reach the management API.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// Management API URL of the broker
    #[arg(
        long,
        env = "BERTH_BROKER_MANAGEMENT",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management: String,
    /// User for the management API
    #[arg(long = "user", env = "BERTH_BROKER_USER", default_value = "guest")]
    pub login_user: String,
    /// Password for the management API
    #[arg(
        long = "password",
        env = "BERTH_BROKER_PASSWORD",
        default_value = "guest",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub login_password: String,
}

/// `--vhost` and `--json` of the list commands.
#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    /// Only this vhost's objects
    #[arg(long)]
    pub vhost: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// List queues with message counts and rates
    Queues(ListArgs),
    /// List exchanges
    Exchanges(ListArgs),
    /// List bindings
    Bindings(ListArgs),
    /// List client connections
    Connections(ListArgs),
    /// List channels
    Channels(ListArgs),
    /// List users
    Users {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List vhosts
    Vhosts {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List permissions
    Permissions(ListArgs),
    /// List policies
    Policies(ListArgs),
    /// Add a user (or replace its password and tags)
    AddUser {
        name: String,
        password: String,
        /// Comma-separated tags, e.g. administrator
        #[arg(long, default_value = "")]
        tags: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a user
    DeleteUser {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change a user's password
    ChangePassword {
        name: String,
        password: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a user's tags (none: clear them)
    SetUserTags {
        name: String,
        tags: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Add a vhost
    AddVhost {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a vhost and everything in it
    DeleteVhost {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a user's permissions in a vhost (regexes for configure, write, read)
    SetPermissions {
        #[arg(long, default_value = "/")]
        vhost: String,
        user: String,
        configure: String,
        write: String,
        read: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a user's permissions in a vhost
    ClearPermissions {
        #[arg(long, default_value = "/")]
        vhost: String,
        user: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set a policy: queues/exchanges matching PATTERN get DEFINITION (JSON)
    SetPolicy {
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// queues, exchanges or all
        #[arg(long, default_value = "all")]
        apply_to: String,
        name: String,
        pattern: String,
        definition: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a policy
    ClearPolicy {
        #[arg(long, default_value = "/")]
        vhost: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Declare a queue
    DeclareQueue {
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Survives a broker restart
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// Queue arguments as JSON, e.g. '{"x-max-length": 10}'
        #[arg(long)]
        arguments: Option<String>,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a queue
    DeleteQueue {
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Only if it has no consumers
        #[arg(long)]
        if_unused: bool,
        /// Only if it has no messages
        #[arg(long)]
        if_empty: bool,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a queue's ready messages
    PurgeQueue {
        #[arg(long, default_value = "/")]
        vhost: String,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Declare an exchange
    DeclareExchange {
        #[arg(long, default_value = "/")]
        vhost: String,
        /// direct, fanout, topic or headers
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        #[arg(long, default_value_t = true, action = ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete an exchange
    DeleteExchange {
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long)]
        if_unused: bool,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Bind a queue (or an exchange) to an exchange
    Bind {
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long, default_value = "")]
        routing_key: String,
        /// queue or exchange
        #[arg(long, default_value = "queue")]
        destination_type: String,
        source: String,
        destination: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Publish a message (for testing and scripts)
    Publish {
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Exchange (default: the default exchange, which routes to the queue named by the key)
        #[arg(long, default_value = "")]
        exchange: String,
        /// delivery-mode 2: kept on disk in durable queues
        #[arg(long)]
        persistent: bool,
        routing_key: String,
        /// The body; read from stdin when left out
        payload: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Fetch messages from a queue; they are put back unless --ack is given
    Get {
        #[arg(long, default_value = "/")]
        vhost: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Take the messages off the queue
        #[arg(long)]
        ack: bool,
        #[arg(long)]
        json: bool,
        queue: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Close a client connection (names as `berth broker connections` prints them)
    CloseConnection {
        name: String,
        #[arg(default_value = "Closed via berth broker close-connection")]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write the broker's definitions (users, vhosts, queues...) to FILE (- for stdout)
    Export {
        file: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Apply a definitions file (RabbitMQ's format; - for stdin)
    Import {
        file: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `berth broker ...`: serving runs its own multi-threaded runtime; the admin
/// commands are short HTTP exchanges.
pub fn run(args: BrokerArgs) -> anyhow::Result<i32> {
    match args.command {
        None => serve(args.serve),
        Some(cmd) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(admin(cmd))
        }
    }
}

pub fn config(a: &ServeArgs) -> berth_broker::BrokerConfig {
    berth_broker::BrokerConfig {
        listen: a.listen.0,
        tls_listen: a.tls_listen,
        cert: a.cert.clone(),
        key: a.key.clone(),
        data_dir: Some(a.data_dir.clone()),
        management: a.management.0,
        memory_high_watermark: a
            .memory_high_watermark
            .bytes(berth_broker::config::total_memory()),
        disk_free_limit: a.disk_free_limit,
        ..berth_broker::BrokerConfig::default()
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    crate::daemon::init_tracing(&a.log_format);
    let config = config(&a);
    if config.listen.is_none() && config.tls_listen.is_none() {
        anyhow::bail!("no AMQP listener: give --listen or --tls-listen");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(berth_broker::broker::run(
        config,
        super::cluster::shutdown_signal(),
    ))?;
    Ok(0)
}

// ---------------------------------------------------------------- HTTP client

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The management API of one broker.
struct Api {
    base: String,
    user: String,
    auth: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Api {
    fn new(a: &ApiArgs) -> anyhow::Result<Self> {
        let mut base = a.management.trim().trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            anyhow::bail!("invalid --management {base:?}: https is not supported, use http://");
        }
        if !base.starts_with("http://") {
            base = format!("http://{base}");
        }
        base.parse::<http::Uri>()
            .ok()
            .filter(|u| u.authority().is_some())
            .with_context(|| {
                format!(
                    "invalid --management {:?}: expected http://HOST:PORT",
                    a.management
                )
            })?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(Self {
            base,
            user: a.login_user.clone(),
            auth: format!(
                "Basic {}",
                base64(format!("{}:{}", a.login_user, a.login_password).as_bytes())
            ),
            client,
        })
    }

    /// Sends a request; a non-2xx answer becomes an error naming `what`
    /// (e.g. "queue 'q' in vhost '/'").
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> anyhow::Result<Bytes> {
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::AUTHORIZATION, &self.auth)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.client.request(req).await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow::anyhow!(
                "management API at {}: {cause} (is `berth broker` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("management API at {}: reading the answer", self.base))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let reason = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        match status {
            StatusCode::NOT_FOUND => anyhow::bail!("{what} not found"),
            StatusCode::UNAUTHORIZED => anyhow::bail!(
                "management API at {}: user '{}': {}",
                self.base,
                self.user,
                if reason.is_empty() {
                    "login failed"
                } else {
                    &reason
                }
            ),
            _ if reason.is_empty() => anyhow::bail!("{what}: {status}"),
            _ => anyhow::bail!("{what}: {reason}"),
        }
    }

    async fn get(&self, path: &str, what: &str) -> anyhow::Result<Value> {
        let bytes = self.call(Method::GET, path, None, what).await?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("management API at {}: {path}: invalid JSON", self.base))
    }
}

/// Standard base64 with padding (Basic auth).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------- commands

fn print_json(v: &Value) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(0)
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn rate(v: &Value, stat: &str) -> String {
    let r = v
        .get("message_stats")
        .and_then(|m| m.get(stat))
        .and_then(|d| d.get("rate"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    format!("{r:.1}")
}

fn yes_no(v: &Value, key: &str) -> String {
    if v.get(key).and_then(Value::as_bool).unwrap_or(false) {
        "yes".into()
    } else {
        "no".into()
    }
}

/// Lists at `/api/{kind}` or `/api/{kind}/{vhost}`.
async fn list(api: &Api, kind: &str, vhost: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let (path, what) = match vhost {
        Some(v) => (format!("/api/{kind}/{}", enc(v)), format!("vhost '{v}'")),
        None => (format!("/api/{kind}"), kind.to_string()),
    };
    match api.get(&path, &what).await? {
        Value::Array(items) => Ok(items),
        _ => anyhow::bail!(
            "management API at {}: {path}: expected a JSON array",
            api.base
        ),
    }
}

fn print_list(
    items: Vec<Value>,
    json: bool,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> anyhow::Result<i32> {
    if json {
        return print_json(&Value::Array(items));
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    print!("{}", table(header, &rows));
    Ok(0)
}

fn exchange_display(name: &str) -> String {
    if name.is_empty() {
        "(AMQP default)".into()
    } else {
        name.to_string()
    }
}

fn url_exchange(name: &str) -> String {
    enc(if name.is_empty() { "amq.default" } else { name })
}

fn read_input(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))
    }
}

fn parse_json_arg(what: &str, text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => anyhow::bail!("invalid {what}: expected a JSON object"),
        Err(e) => anyhow::bail!("invalid {what}: {e}"),
    }
}

fn split_tags<S: AsRef<str>>(tags: &[S]) -> Vec<String> {
    tags.iter()
        .flat_map(|t| {
            t.as_ref()
                .split(',')
                .map(|x| x.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

async fn admin(cmd: BrokerCommand) -> anyhow::Result<i32> {
    use BrokerCommand as C;
    match cmd {
        C::Queues(a) => {
            let api = Api::new(&a.api)?;
            let items = list(&api, "queues", a.vhost.as_deref()).await?;
            print_list(
                items,
                a.json,
                &[
                    "VHOST",
                    "NAME",
                    "MESSAGES",
                    "READY",
                    "UNACKED",
                    "CONSUMERS",
                    "IN/S",
                    "OUT/S",
                    "DURABLE",
                ],
                |q| {
                    vec![
                        s(q, "vhost"),
                        s(q, "name"),
                        s(q, "messages"),
                        s(q, "messages_ready"),
                        s(q, "messages_unacknowledged"),
                        s(q, "consumers"),
                        rate(q, "publish_details"),
                        rate(q, "deliver_get_details"),
                        yes_no(q, "durable"),
                    ]
                },
            )
        }
        C::Exchanges(a) => {
            let api = Api::new(&a.api)?;
            let items = list(&api, "exchanges", a.vhost.as_deref()).await?;
            print_list(
                items,
                a.json,
                &[
                    "VHOST",
                    "NAME",
                    "TYPE",
                    "DURABLE",
                    "AUTO-DELETE",
                    "INTERNAL",
                ],
                |e| {
                    vec![
                        s(e, "vhost"),
                        exchange_display(&s(e, "name")),
                        s(e, "type"),
                        yes_no(e, "durable"),
                        yes_no(e, "auto_delete"),
                        yes_no(e, "internal"),
                    ]
                },
            )
        }
        C::Bindings(a) => {
            let api = Api::new(&a.api)?;
            let items = list(&api, "bindings", a.vhost.as_deref()).await?;
            print_list(
                items,
                a.json,
                &["VHOST", "SOURCE", "DESTINATION", "TYPE", "ROUTING KEY"],
                |b| {
                    vec![
                        s(b, "vhost"),
                        exchange_display(&s(b, "source")),
                        s(b, "destination"),
                        s(b, "destination_type"),
                        s(b, "routing_key"),
                    ]
                },
            )
        }
        C::Connections(a) => {
            let api = Api::new(&a.api)?;
            let mut items = list(&api, "connections", None).await?;
            if let Some(v) = &a.vhost {
                items.retain(|c| c.get("vhost").and_then(Value::as_str) == Some(v));
            }
            print_list(
                items,
                a.json,
                &["NAME", "USER", "VHOST", "CHANNELS", "STATE", "TLS"],
                |c| {
                    vec![
                        s(c, "name"),
                        s(c, "user"),
                        s(c, "vhost"),
                        s(c, "channels"),
                        s(c, "state"),
                        yes_no(c, "ssl"),
                    ]
                },
            )
        }
        C::Channels(a) => {
            let api = Api::new(&a.api)?;
            let mut items = list(&api, "channels", None).await?;
            if let Some(v) = &a.vhost {
                items.retain(|c| c.get("vhost").and_then(Value::as_str) == Some(v));
            }
            print_list(
                items,
                a.json,
                &[
                    "NAME",
                    "USER",
                    "VHOST",
                    "CONSUMERS",
                    "UNACKED",
                    "PREFETCH",
                    "MODE",
                ],
                |c| {
                    let mode = match (
                        c.get("confirm").and_then(Value::as_bool).unwrap_or(false),
                        c.get("transactional")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    ) {
                        (_, true) => "tx",
                        (true, false) => "confirm",
                        _ => "",
                    };
                    vec![
                        s(c, "name"),
                        s(c, "user"),
                        s(c, "vhost"),
                        s(c, "consumer_count"),
                        s(c, "messages_unacknowledged"),
                        s(c, "prefetch_count"),
                        mode.to_string(),
                    ]
                },
            )
        }
        C::Users { json, api } => {
            let api = Api::new(&api)?;
            let items = list(&api, "users", None).await?;
            print_list(items, json, &["NAME", "TAGS"], |u| {
                let tags = match u.get("tags") {
                    Some(Value::Array(t)) => t
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => s(u, "tags"),
                };
                vec![s(u, "name"), tags]
            })
        }
        C::Vhosts { json, api } => {
            let api = Api::new(&api)?;
            let items = list(&api, "vhosts", None).await?;
            print_list(items, json, &["NAME", "QUEUES", "MESSAGES"], |v| {
                vec![s(v, "name"), s(v, "queues"), s(v, "messages")]
            })
        }
        C::Permissions(a) => {
            let api = Api::new(&a.api)?;
            let mut items = list(&api, "permissions", None).await?;
            if let Some(v) = &a.vhost {
                items.retain(|c| c.get("vhost").and_then(Value::as_str) == Some(v));
            }
            print_list(
                items,
                a.json,
                &["VHOST", "USER", "CONFIGURE", "WRITE", "READ"],
                |p| {
                    vec![
                        s(p, "vhost"),
                        s(p, "user"),
                        s(p, "configure"),
                        s(p, "write"),
                        s(p, "read"),
                    ]
                },
            )
        }
        C::Policies(a) => {
            let api = Api::new(&a.api)?;
            let items = list(&api, "policies", a.vhost.as_deref()).await?;
            print_list(
                items,
                a.json,
                &[
                    "VHOST",
                    "NAME",
                    "PATTERN",
                    "APPLY-TO",
                    "PRIORITY",
                    "DEFINITION",
                ],
                |p| {
                    vec![
                        s(p, "vhost"),
                        s(p, "name"),
                        s(p, "pattern"),
                        s(p, "apply-to"),
                        s(p, "priority"),
                        p.get("definition")
                            .map(Value::to_string)
                            .unwrap_or_default(),
                    ]
                },
            )
        }
        C::AddUser {
            name,
            password,
            tags,
            api,
        } => {
            let api = Api::new(&api)?;
            let body = json!({"password": password, "tags": split_tags(&[tags])});
            let path = format!("/api/users/{}", enc(&name));
            api.call(Method::PUT, &path, Some(&body), &format!("user '{name}'"))
                .await?;
            println!("user '{name}' added");
            Ok(0)
        }
        C::DeleteUser { name, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/users/{}", enc(&name));
            api.call(Method::DELETE, &path, None, &format!("user '{name}'"))
                .await?;
            println!("user '{name}' deleted");
            Ok(0)
        }
        C::ChangePassword {
            name,
            password,
            api,
        } => {
            let api = Api::new(&api)?;
            let what = format!("user '{name}'");
            let path = format!("/api/users/{}", enc(&name));
            // PUT creates users: make sure this one exists first.
            api.get(&path, &what).await?;
            api.call(
                Method::PUT,
                &path,
                Some(&json!({"password": password})),
                &what,
            )
            .await?;
            println!("password of user '{name}' changed");
            Ok(0)
        }
        C::SetUserTags { name, tags, api } => {
            let api = Api::new(&api)?;
            let what = format!("user '{name}'");
            let path = format!("/api/users/{}", enc(&name));
            api.get(&path, &what).await?;
            let tags = split_tags(&tags);
            api.call(Method::PUT, &path, Some(&json!({"tags": tags})), &what)
                .await?;
            println!("tags of user '{name}' set to [{}]", tags.join(","));
            Ok(0)
        }
        C::AddVhost { name, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/vhosts/{}", enc(&name));
            api.call(Method::PUT, &path, None, &format!("vhost '{name}'"))
                .await?;
            println!("vhost '{name}' added");
            Ok(0)
        }
        C::DeleteVhost { name, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/vhosts/{}", enc(&name));
            api.call(Method::DELETE, &path, None, &format!("vhost '{name}'"))
                .await?;
            println!("vhost '{name}' deleted");
            Ok(0)
        }
        C::SetPermissions {
            vhost,
            user,
            configure,
            write,
            read,
            api,
        } => {
            let api = Api::new(&api)?;
            let path = format!("/api/permissions/{}/{}", enc(&vhost), enc(&user));
            let body = json!({"configure": configure, "write": write, "read": read});
            let what = format!("permissions of user '{user}' in vhost '{vhost}'");
            api.call(Method::PUT, &path, Some(&body), &what).await?;
            println!("permissions of user '{user}' in vhost '{vhost}' set");
            Ok(0)
        }
        C::ClearPermissions { vhost, user, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/permissions/{}/{}", enc(&vhost), enc(&user));
            let what = format!("permissions of user '{user}' in vhost '{vhost}'");
            api.call(Method::DELETE, &path, None, &what).await?;
            println!("permissions of user '{user}' in vhost '{vhost}' cleared");
            Ok(0)
        }
        C::SetPolicy {
            vhost,
            priority,
            apply_to,
            name,
            pattern,
            definition,
            api,
        } => {
            let definition = parse_json_arg("policy definition", &definition)?;
            let api = Api::new(&api)?;
            let path = format!("/api/policies/{}/{}", enc(&vhost), enc(&name));
            let body = json!({
                "pattern": pattern,
                "definition": definition,
                "priority": priority,
                "apply-to": apply_to,
            });
            let what = format!("policy '{name}' in vhost '{vhost}'");
            api.call(Method::PUT, &path, Some(&body), &what).await?;
            println!("policy '{name}' in vhost '{vhost}' set");
            Ok(0)
        }
        C::ClearPolicy { vhost, name, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/policies/{}/{}", enc(&vhost), enc(&name));
            let what = format!("policy '{name}' in vhost '{vhost}'");
            api.call(Method::DELETE, &path, None, &what).await?;
            println!("policy '{name}' in vhost '{vhost}' cleared");
            Ok(0)
        }
        C::DeclareQueue {
            vhost,
            durable,
            auto_delete,
            arguments,
            name,
            api,
        } => {
            let arguments = match arguments {
                Some(a) => parse_json_arg("--arguments", &a)?,
                None => json!({}),
            };
            let api = Api::new(&api)?;
            let path = format!("/api/queues/{}/{}", enc(&vhost), enc(&name));
            let body =
                json!({"durable": durable, "auto_delete": auto_delete, "arguments": arguments});
            let what = format!("queue '{name}' in vhost '{vhost}'");
            api.call(Method::PUT, &path, Some(&body), &what).await?;
            println!("queue '{name}' in vhost '{vhost}' declared");
            Ok(0)
        }
        C::DeleteQueue {
            vhost,
            if_unused,
            if_empty,
            name,
            api,
        } => {
            let api = Api::new(&api)?;
            let mut path = format!("/api/queues/{}/{}", enc(&vhost), enc(&name));
            let mut query = Vec::new();
            if if_unused {
                query.push("if-unused=true");
            }
            if if_empty {
                query.push("if-empty=true");
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let what = format!("queue '{name}' in vhost '{vhost}'");
            api.call(Method::DELETE, &path, None, &what).await?;
            println!("queue '{name}' in vhost '{vhost}' deleted");
            Ok(0)
        }
        C::PurgeQueue { vhost, name, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/queues/{}/{}/contents", enc(&vhost), enc(&name));
            let what = format!("queue '{name}' in vhost '{vhost}'");
            api.call(Method::DELETE, &path, None, &what).await?;
            println!("queue '{name}' in vhost '{vhost}' purged");
            Ok(0)
        }
        C::DeclareExchange {
            vhost,
            kind,
            durable,
            auto_delete,
            internal,
            name,
            api,
        } => {
            let api = Api::new(&api)?;
            let path = format!("/api/exchanges/{}/{}", enc(&vhost), enc(&name));
            let body = json!({
                "type": kind,
                "durable": durable,
                "auto_delete": auto_delete,
                "internal": internal,
                "arguments": {},
            });
            let what = format!("exchange '{name}' in vhost '{vhost}'");
            api.call(Method::PUT, &path, Some(&body), &what).await?;
            println!("exchange '{name}' in vhost '{vhost}' declared");
            Ok(0)
        }
        C::DeleteExchange {
            vhost,
            if_unused,
            name,
            api,
        } => {
            let api = Api::new(&api)?;
            let mut path = format!("/api/exchanges/{}/{}", enc(&vhost), url_exchange(&name));
            if if_unused {
                path.push_str("?if-unused=true");
            }
            let what = format!("exchange '{name}' in vhost '{vhost}'");
            api.call(Method::DELETE, &path, None, &what).await?;
            println!("exchange '{name}' in vhost '{vhost}' deleted");
            Ok(0)
        }
        C::Bind {
            vhost,
            routing_key,
            destination_type,
            source,
            destination,
            api,
        } => {
            let kind = match destination_type.as_str() {
                "queue" | "q" => "q",
                "exchange" | "e" => "e",
                other => anyhow::bail!(
                    "invalid --destination-type {other:?}: expected queue or exchange"
                ),
            };
            let api = Api::new(&api)?;
            let path = format!(
                "/api/bindings/{}/e/{}/{kind}/{}",
                enc(&vhost),
                url_exchange(&source),
                enc(&destination)
            );
            let body = json!({"routing_key": routing_key, "arguments": {}});
            let what = format!(
                "binding of {destination_type} '{destination}' to exchange '{source}' in vhost '{vhost}'"
            );
            api.call(Method::POST, &path, Some(&body), &what).await?;
            println!("{destination_type} '{destination}' bound to exchange '{source}' in vhost '{vhost}'");
            Ok(0)
        }
        C::Publish {
            vhost,
            exchange,
            persistent,
            routing_key,
            payload,
            api,
        } => {
            let payload = match payload {
                Some(p) => p.into_bytes(),
                None => read_input("-")?,
            };
            let body = match String::from_utf8(payload) {
                Ok(text) => json!({"payload": text, "payload_encoding": "string"}),
                Err(e) => json!({"payload": base64(e.as_bytes()), "payload_encoding": "base64"}),
            };
            let mut body = body;
            body["routing_key"] = json!(routing_key);
            body["properties"] = if persistent {
                json!({"delivery_mode": 2})
            } else {
                json!({})
            };
            let api = Api::new(&api)?;
            let path = format!(
                "/api/exchanges/{}/{}/publish",
                enc(&vhost),
                url_exchange(&exchange)
            );
            let what = format!("exchange '{exchange}' in vhost '{vhost}'");
            let answer = api.call(Method::POST, &path, Some(&body), &what).await?;
            let routed = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| v.get("routed").and_then(Value::as_bool))
                .unwrap_or(false);
            if routed {
                println!("message published");
            } else {
                println!("message published but not routed to any queue");
            }
            Ok(0)
        }
        C::Get {
            vhost,
            count,
            ack,
            json,
            queue,
            api,
        } => {
            let api = Api::new(&api)?;
            let path = format!("/api/queues/{}/{}/get", enc(&vhost), enc(&queue));
            let ackmode = if ack {
                "ack_requeue_false"
            } else {
                "ack_requeue_true"
            };
            let body = json!({"count": count, "ackmode": ackmode, "encoding": "auto"});
            let what = format!("queue '{queue}' in vhost '{vhost}'");
            let answer = api.call(Method::POST, &path, Some(&body), &what).await?;
            let items: Vec<Value> = serde_json::from_slice(&answer)
                .with_context(|| format!("management API at {}: {path}: invalid JSON", api.base))?;
            print_list(
                items,
                json,
                &["EXCHANGE", "ROUTING KEY", "REDELIVERED", "BYTES", "PAYLOAD"],
                |m| {
                    vec![
                        exchange_display(&s(m, "exchange")),
                        s(m, "routing_key"),
                        yes_no(m, "redelivered"),
                        s(m, "payload_bytes"),
                        s(m, "payload").replace('\n', "\\n"),
                    ]
                },
            )
        }
        C::CloseConnection { name, reason, api } => {
            let api = Api::new(&api)?;
            let path = format!("/api/connections/{}", enc(&name));
            let req = http::Request::builder()
                .method(Method::DELETE)
                .uri(format!("{}{path}", api.base))
                .header(http::header::AUTHORIZATION, &api.auth)
                .header("x-reason", &reason)
                .body(Full::new(Bytes::new()))
                .with_context(|| format!("invalid reason {reason:?}"))?;
            let resp = api.client.request(req).await.map_err(|e| {
                anyhow::anyhow!(
                    "management API at {}: {e} (is `berth broker` running?)",
                    api.base
                )
            })?;
            match resp.status() {
                st if st.is_success() => {
                    println!("connection '{name}' closed");
                    Ok(0)
                }
                StatusCode::NOT_FOUND => anyhow::bail!("connection '{name}' not found"),
                st => anyhow::bail!("connection '{name}': {st}"),
            }
        }
        C::Export { file, api } => {
            let api = Api::new(&api)?;
            let defs = api.get("/api/definitions", "definitions").await?;
            let text = serde_json::to_string_pretty(&defs)? + "\n";
            if file == "-" {
                print!("{text}");
            } else {
                std::fs::write(&file, text).with_context(|| format!("writing {file}"))?;
                eprintln!("definitions written to {file}");
            }
            Ok(0)
        }
        C::Import { file, api } => {
            let bytes = read_input(&file)?;
            let defs: Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{file}: invalid JSON"))?;
            let api = Api::new(&api)?;
            api.call(
                Method::POST,
                "/api/definitions",
                Some(&defs),
                &format!("importing {file}"),
            )
            .await?;
            println!("definitions imported from {file}");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    #[test]
    fn sizes_and_watermarks() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2_000_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_watermark("0.4"), Ok(Watermark::Fraction(0.4)));
        assert_eq!(parse_watermark("1GiB"), Ok(Watermark::Bytes(1 << 30)));
        assert!(parse_watermark("1.5").is_err());
        assert_eq!(Watermark::Fraction(0.5).bytes(1000), 500);
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
    }

    #[test]
    fn serve_flags_parse() {
        let t = T::try_parse_from([
            "broker",
            "--listen",
            "0.0.0.0:5673",
            "--management",
            "none",
            "--memory-high-watermark",
            "256MiB",
            "--data-dir",
            "/tmp/b",
        ])
        .unwrap();
        assert!(t.broker.command.is_none());
        let c = config(&t.broker.serve);
        assert_eq!(c.listen, Some("0.0.0.0:5673".parse().unwrap()));
        assert_eq!(c.management, None);
        assert_eq!(c.memory_high_watermark, 256 << 20);
        assert_eq!(c.disk_free_limit, 50_000_000);
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/b")));
        // TLS needs a certificate and a key.
        assert!(T::try_parse_from(["broker", "--tls-listen", "127.0.0.1:5671"]).is_err());
    }

    #[test]
    fn admin_subcommands_parse() {
        let t = T::try_parse_from([
            "broker",
            "set-permissions",
            "--vhost",
            "v",
            "bob",
            ".*",
            "",
            "^q",
        ])
        .unwrap();
        let Some(BrokerCommand::SetPermissions {
            vhost,
            user,
            configure,
            write,
            read,
            ..
        }) = t.broker.command
        else {
            panic!("not set-permissions")
        };
        assert_eq!(
            (
                vhost.as_str(),
                user.as_str(),
                configure.as_str(),
                write.as_str(),
                read.as_str()
            ),
            ("v", "bob", ".*", "", "^q")
        );
        let t = T::try_parse_from(["broker", "queues", "--json", "--management", "h:1"]).unwrap();
        let Some(BrokerCommand::Queues(a)) = t.broker.command else {
            panic!("not queues")
        };
        assert!(a.json);
        assert_eq!(a.api.management, "h:1");
        // Serving flags do not mix with subcommands.
        assert!(T::try_parse_from(["broker", "--listen", "127.0.0.1:1", "queues"]).is_err());
        let t = T::try_parse_from(["broker", "declare-queue", "--durable", "false", "q"]).unwrap();
        assert!(matches!(
            t.broker.command,
            Some(BrokerCommand::DeclareQueue { durable: false, .. })
        ));
    }
}
