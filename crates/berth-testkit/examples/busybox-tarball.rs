//! Writes a busybox rootfs tarball (for `berth image import`).

fn main() {
    let Some(out) = std::env::args().nth(1) else {
        eprintln!("usage: busybox-tarball OUT.tar");
        std::process::exit(2);
    };
    if let Err(e) = berth_testkit::busybox_tarball(std::path::Path::new(&out)) {
        eprintln!("busybox-tarball: {out}: {e}");
        std::process::exit(1);
    }
}
