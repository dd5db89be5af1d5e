//! Containerfile parsing and word expansion must never panic or hang,
//! whatever the text.
#![no_main]

use berth_image::containerfile::{self, Kind, Word};
use libfuzzer_sys::fuzz_target;

fn expand_all(words: &[&Word]) {
    // A lookup that defines some names, so both branches of the
    // `${V:-x}` / `${V:+x}` forms run.
    let lookup = |name: &str| match name.len() % 3 {
        0 => None,
        1 => Some(String::new()),
        _ => Some(name.repeat(2)),
    };
    for w in words {
        let _ = w.expand(&lookup);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(instructions) = containerfile::parse("Containerfile", text) else {
        return;
    };
    for ins in &instructions {
        let words: Vec<&Word> = match &ins.kind {
            Kind::From { image, platform, .. } => {
                std::iter::once(image).chain(platform.iter()).collect()
            }
            Kind::Copy(c) | Kind::Add(c) => c
                .sources
                .iter()
                .chain(std::iter::once(&c.dest))
                .chain(c.chown.iter())
                .chain(c.chmod.iter())
                .chain(c.from.iter())
                .collect(),
            Kind::Env(p) | Kind::Label(p) => p.iter().flat_map(|(k, v)| [k, v]).collect(),
            Kind::Arg(a) => a.iter().filter_map(|(_, d)| d.as_ref()).collect(),
            Kind::Workdir(w) | Kind::User(w) | Kind::StopSignal(w) => vec![w],
            Kind::Expose(ws) | Kind::Volume(ws) => ws.iter().collect(),
            Kind::Run(_)
            | Kind::Cmd(_)
            | Kind::Entrypoint(_)
            | Kind::Shell(_)
            | Kind::Maintainer(_) => Vec::new(),
        };
        expand_all(&words);
    }
});
