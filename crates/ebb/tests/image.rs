//! The container image, built here without a daemon or a base image (`scripts/image
//! build`: a static musl ebb in a `FROM scratch`-style OCI layout) and checked from the
//! outside (`scripts/image check`): user, entrypoint, no shell, CA bundle, a static binary,
//! and the image's ebb run with chroot (this machine cannot run containers) through
//! `--version` and a produce/consume round trip on the local broker.
//!
//! The first build takes ~5 minutes (OpenSSL and librdkafka for musl); it is incremental
//! afterwards (its target directory lives in ~/.cache/ebb/image-target).

use std::process::Command;

use ebb_testkit::{kafka, repo_root, unique};

#[test]
fn the_image_runs_ebb_as_a_non_root_user_from_an_empty_base() {
    let bootstrap = kafka();
    let layout = std::env::temp_dir().join(unique("ebb-image"));
    let script = repo_root().join("scripts/image");
    for step in ["build", "check"] {
        let mut command = Command::new(&script);
        command.arg(step).arg("--out").arg(&layout);
        if step == "check" {
            command.args(["--bootstrap", &bootstrap]);
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "scripts/image {step} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        if step == "check" {
            let summary = format!("{stdout}{stderr}");
            assert!(
                summary.contains("image ok: ebb:"),
                "scripts/image check did not end with its summary:\n{summary}"
            );
            for expected in ["65532:65532", "chroot"] {
                assert!(summary.contains(expected), "no {expected:?} in:\n{summary}");
            }
            eprintln!(
                "{}",
                summary
                    .lines()
                    .find(|l| l.contains("image ok"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&layout);
}
