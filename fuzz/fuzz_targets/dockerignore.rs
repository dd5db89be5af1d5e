//! .dockerignore compilation and matching must never panic.
#![no_main]

use berth_image::dockerignore::Ignore;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line doubles as a path to match.
    let path = text.lines().next().unwrap_or("");
    if let Ok(ignore) = Ignore::parse(".dockerignore", text) {
        let _ = ignore.is_ignored(Path::new(path), false);
        let _ = ignore.has_exceptions();
    }
});
