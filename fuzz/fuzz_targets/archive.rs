//! Image archive scanning (docker save / OCI layout / rootfs tar detection)
//! must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_image::archive::parse_archive_for_fuzz(data);
});
