//! The fuzz targets' bodies (`fuzz/src/lib.rs`), compiled into the workspace
//! so that `cargo clippy` and `cargo test` on stable fail when an API change
//! breaks one, and run here on random inputs so that none panics. The fuzzer
//! itself (`cargo +nightly fuzz run <target>`) explores far more; this keeps
//! its targets building.

#[path = "../../../fuzz/src/lib.rs"]
mod bodies;

use rand::{Rng, RngCore, SeedableRng};

/// A fuzz target's body.
type Body = fn(&[u8]);

/// Every target, by the name of its file in `fuzz/fuzz_targets/`.
const TARGETS: &[(&str, Body)] = &[
    ("rendezvous", bodies::rendezvous),
    ("stun", bodies::stun),
    ("punch", bodies::punch),
    ("relay", bodies::relay),
    ("ticket", bodies::ticket),
    ("chat", bodies::chat),
    ("files", bodies::files),
    ("mesh", bodies::mesh),
    ("post", bodies::post),
    ("reconcile", bodies::reconcile),
    ("tunnel", bodies::tunnel),
];

fn fuzz_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_fuzz_target_calls_its_body_here_and_is_declared_for_cargo_fuzz() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "fuzz_targets/ and this test's list differ");
    for name in &files {
        let path = fuzz_dir().join(format!("fuzz_targets/{name}.rs"));
        let src = std::fs::read_to_string(path).unwrap();
        assert!(
            src.contains(&format!("burrow_fuzz::{name}(data)")),
            "fuzz_targets/{name}.rs does not call burrow_fuzz::{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
    }
}

#[test]
fn every_fuzz_body_takes_random_bytes_without_panicking() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(24);
    for (name, body) in TARGETS {
        for _ in 0..2_000 {
            let len = rng.gen_range(0..1_200);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            // Half of them are shaped as frames (a length prefix that
            // matches, then version 1), so the frame decoders get as far as
            // the message itself.
            if len > 5 && rng.gen_bool(0.5) {
                data[..4].copy_from_slice(&(len as u32 - 4).to_be_bytes());
                data[4] = 1;
            }
            body(&data);
        }
        eprintln!("{name}: 2000 random inputs");
    }
}
