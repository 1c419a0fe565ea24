//! The Dockerfile, without a Docker engine: BuildKit's own checks (the ones behind
//! `docker build --check`, from the github.com/moby/buildkit Go module, through
//! tests/tools/dockerfile-lint) report nothing, and the image builds the binary with the same
//! release flags as the local build and runs it as the non-root user the chart expects.
//! (That the binary runs as that UID with nothing writable is proven by tests/chart.rs.)
//!
//! Needs Go to build tests/tools/dockerfile-lint once; fails, never skips, without it.

mod install;
mod support;

use std::path::Path;
use std::process::Command;

use install::{repo, tool};

fn dockerfile() -> String {
    std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile at the repository root")
}

/// The instructions of the Dockerfile with continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile().lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    out
}

fn lint(dockerfile: &Path, context: &Path) -> std::process::Output {
    Command::new(tool("dockerfile-lint"))
        .arg("-context")
        .arg(context)
        .arg(dockerfile)
        .output()
        .expect("run dockerfile-lint")
}

#[test]
fn dockerfile_passes_buildkit_checks_with_no_warning() {
    let out = lint(&repo().join("Dockerfile"), repo());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "BuildKit's Dockerfile checks report:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The linter is not a no-op: a Dockerfile that breaks several rules fails with each of them.
#[test]
fn dockerfile_linter_reports_rule_violations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "*\n!Cargo.toml\n").unwrap();
    std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
    std::fs::write(dir.path().join("secret.env"), "").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "from debian:12 as build\nENV MODE release\nCOPY secret.env Cargo.toml /src/\nCOPY missing.txt /src/\nCMD echo hi\n",
    )
    .unwrap();
    let out = lint(&dir.path().join("Dockerfile"), dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a bad Dockerfile passed:\n{stdout}");
    for rule in ["ConsistentInstructionCasing", "LegacyKeyValueFormat", "JSONArgsRecommended", "CopyIgnoredFile"] {
        assert!(stdout.contains(rule), "{rule} not reported:\n{stdout}");
    }
    assert!(stdout.contains("\"secret.env\" is excluded by .dockerignore"), "{stdout}");
    assert!(stdout.contains("\"missing.txt\" does not exist"), "{stdout}");
}

#[test]
fn image_builds_with_the_local_release_flags() {
    let all = instructions();
    let runs: Vec<&String> = all.iter().filter(|i| i.starts_with("RUN ")).collect();
    let build: Vec<&&String> = runs.iter().filter(|r| r.contains("cargo build")).collect();
    assert_eq!(build.len(), 1, "exactly one cargo build: {runs:?}");
    assert!(build[0].contains("cargo build --release --locked"), "{}", build[0]);
    // Nothing that would make the image's binary differ from `cargo build --release` here.
    for flag in [
        "RUSTFLAGS",
        "CARGO_PROFILE_",
        "CARGO_BUILD_",
        "CARGO_ENCODED_RUSTFLAGS",
        "--target",
        "--profile",
        "--features",
        "--no-default-features",
    ] {
        assert!(
            !all.iter().any(|i| !i.starts_with("LABEL") && i.contains(flag)),
            "the Dockerfile sets {flag}: the image must build with exactly Cargo.toml's [profile.release]"
        );
    }
    // A Cargo config would change the local build's flags without reaching the image (the build
    // context sends only Cargo.toml, Cargo.lock and src/).
    for config in [".cargo/config.toml", ".cargo/config"] {
        assert!(
            !repo().join(config).exists(),
            "{config} changes local builds; send it to the image too (.dockerignore and COPY) and update this test"
        );
    }
    // The image's Rust is at least the crate's rust-version.
    let cargo_toml = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap();
    let rust_image =
        all.iter().find_map(|i| i.strip_prefix("ARG RUST_IMAGE=")).expect("ARG RUST_IMAGE=rust:<version>-<debian>");
    let version = rust_image.strip_prefix("rust:").unwrap().split('-').next().unwrap();
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert_eq!(parse(version).len(), 3, "the builder is pinned to an exact Rust release: {rust_image}");
    assert!(parse(version) >= parse(&msrv), "builder Rust {version} older than rust-version {msrv}");
}

#[test]
fn final_image_is_pinned_distroless_and_runs_as_the_charts_non_root_user() {
    let all = instructions();
    let froms: Vec<&String> = all.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let runtime_image = all.iter().find_map(|i| i.strip_prefix("ARG RUNTIME_IMAGE=")).expect("ARG RUNTIME_IMAGE=");
    assert!(runtime_image.starts_with("gcr.io/distroless/"), "{runtime_image}");
    let (_, digest) = runtime_image.split_once("@sha256:").expect("the runtime image is pinned by digest");
    assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{runtime_image}");
    assert!(
        froms.last().unwrap().starts_with("FROM ${RUNTIME_IMAGE}"),
        "the last stage is the runtime image: {froms:?}"
    );

    // After the last FROM: only the binary is copied, a numeric non-root USER, exec-form ENTRYPOINT.
    let last = all.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let tail = &all[last..];
    let user = tail.iter().find_map(|i| i.strip_prefix("USER ")).expect("USER in the final stage");
    let uid: u32 = user.split(':').next().unwrap().parse().expect("numeric USER (runAsNonRoot checks it)");
    assert!(uid > 0);
    assert!(
        tail.iter().any(|i| i.starts_with("ENTRYPOINT [\"/usr/local/bin/prediction-batch-controller\"]")),
        "{tail:?}"
    );
    assert!(!tail.iter().any(|i| i.starts_with("RUN ")), "no RUN in the distroless stage (no shell there)");

    // The chart runs the image as that user.
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(Path::new(install::CHART_DIR).join("values.yaml")).unwrap())
            .unwrap();
    assert_eq!(values["securityContext"]["runAsUser"].as_u64(), Some(uid as u64), "chart runAsUser vs Dockerfile USER");
    assert_eq!(values["podSecurityContext"]["runAsUser"].as_u64(), Some(uid as u64));

    // The build context is an allow-list: manifests and sources only.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let rules: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), "the .dockerignore excludes everything first: {rules:?}");
    for allowed in &rules[1..] {
        assert!(["!Cargo.toml", "!Cargo.lock", "!src"].contains(allowed), "unexpected .dockerignore rule {allowed}");
    }
}
