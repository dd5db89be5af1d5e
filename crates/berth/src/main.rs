//! berth: a self-hosted cloud in one binary. This crate is the command
//! tree; it starts roles (the node daemon) and talks to them as a client.

mod cli;
mod daemon;
mod output;

use clap::Parser;

fn main() {
    // The shim and exec helpers must stay single-threaded until they have
    // spawned their container process, so they are dispatched before any
    // runtime or argument parser starts threads.
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__shim") => {
            let foreground = args.get(2).map(String::as_str) == Some("--foreground");
            let bundle = args
                .get(if foreground { 3 } else { 2 })
                .cloned()
                .unwrap_or_default();
            std::process::exit(berth_engine::shim::shim_main(
                &berth_runtime::Direct,
                std::path::Path::new(&bundle),
                foreground,
            ));
        }
        Some("__task-shim") => {
            // A cluster agent's command task: `berth __task-shim [--enter] DIR`.
            std::process::exit(berth_agent::task_shim_main(&args[2..]));
        }
        Some("__exec") => {
            let json = args.get(2).cloned().unwrap_or_default();
            std::process::exit(berth_engine::exec_helper::exec_main(
                &berth_runtime::Direct,
                &json,
            ));
        }
        Some("__bridge-down") => {
            // Test and cleanup helper: removes a bridge and its NAT rules.
            std::process::exit(bridge_down(args.get(2), args.get(3)));
        }
        _ => {}
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    },
                );
            }
            // One line, as every other error: clap's first line without its
            // "error: " prefix.
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("berth: {first} (see 'berth --help')");
            std::process::exit(2);
        }
    };
    // Long-running roles keep SIGPIPE ignored: a closed log pipe must not kill them.
    let serving = matches!(
        &cli.command,
        cli::Command::Up(_) | cli::Command::Server(_) | cli::Command::Agent(_)
    ) || matches!(&cli.command, cli::Command::Broker(b) if b.command.is_none());
    if !serving {
        berth_runtime::tty::default_sigpipe();
    }
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {}", one_line(&e));
            e.downcast_ref::<cli::ExitCode>().map(|c| c.0).unwrap_or(1)
        }
    };
    std::process::exit(code);
}

/// Errors print as one line: the context chain joined with ": ".
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        if cause.is::<cli::ExitCode>() {
            continue;
        }
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn bridge_down(name: Option<&String>, cidr: Option<&String>) -> i32 {
    let parsed = cidr
        .and_then(|c| c.split_once('/'))
        .and_then(|(ip, p)| Some((ip.parse().ok()?, p.parse().ok()?)));
    let (Some(name), Some((gateway, prefix_len))) = (name, parsed) else {
        eprintln!("usage: berth __bridge-down NAME GATEWAY/PREFIX");
        return 2;
    };
    let cfg = berth_runtime::net::BridgeConfig {
        name: name.clone(),
        gateway,
        prefix_len,
    };
    match berth_runtime::net::remove_bridge(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth: removing bridge {name}: {e}");
            1
        }
    }
}
