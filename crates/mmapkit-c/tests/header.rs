//! include/mmapkit.h is what cbindgen makes of the crate: CI fails when it is out of date.
//! `MMAPKIT_BLESS=1 cargo test -p mmapkit-c --test header` rewrites it.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut generated);
    let committed_path = crate_dir.join("../../include/mmapkit.h");
    if std::env::var_os("MMAPKIT_BLESS").is_some() {
        std::fs::write(&committed_path, &generated).unwrap();
    }
    let committed = std::fs::read(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/mmapkit.h is out of date: run MMAPKIT_BLESS=1 cargo test -p mmapkit-c --test header"
    );
}
