//! Job files (`berth job run FILE.toml`) must parse or fail with a message,
//! never panic; a parsed spec must survive the JSON round trip the CLI does
//! on its way to the servers.
#![no_main]

use berth_types::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = JobSpec::from_toml("job.toml", text) {
        let json = serde_json::to_string(&spec).expect("a parsed spec serializes");
        let back: JobSpec = serde_json::from_str(&json).expect("and parses back");
        assert!(back.validate().is_ok());
        let _ = back.resources();
        let _ = back.kind();
    }
});
