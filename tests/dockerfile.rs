//! The Dockerfile, without a Docker engine: BuildKit's own checks (the ones behind
//! `docker build --check`, from the github.com/moby/buildkit Go module, through
//! tests/tools/dockerfile-lint) report nothing, the builder stage's cargo command builds the
//! binary from exactly the build context `.dockerignore` lets through, with the same release flags
//! as the local build, and the image runs it as the non-root user the chart expects.
//! (That the binary runs as that UID with nothing writable is proven by tests/chart.rs.)
//!
//! Needs Go to build tests/tools/dockerfile-lint once; fails, never skips, without it. The
//! builder-stage build runs offline on the local registry cache (CARGO_HOME) into its own target
//! directory, target/docker-builder/target, like the stage's cache mount: cold, it compiles every
//! dependency once (minutes); afterwards it is incremental.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::install::{self, tool};
use support::repo;

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

/// The script the builder stage runs (hack/build-image-binary).
fn build_script() -> String {
    std::fs::read_to_string(repo().join("hack/build-image-binary")).expect("hack/build-image-binary")
}

#[test]
fn image_builds_with_the_local_release_flags() {
    let all = instructions();
    let runs: Vec<&String> = all.iter().filter(|i| i.starts_with("RUN ")).collect();
    let build: Vec<&&String> = runs.iter().filter(|r| r.contains("hack/build-image-binary")).collect();
    assert_eq!(build.len(), 1, "exactly one build, by hack/build-image-binary: {runs:?}");
    // The script's two builds: the local release build, and the same for another target.
    let script = build_script();
    let cargo: Vec<&str> = script.lines().map(str::trim).filter(|l| l.starts_with("cargo ")).collect();
    assert_eq!(
        cargo,
        ["cargo build --release --locked", "cargo build --release --locked --target \"$triple\""],
        "hack/build-image-binary builds natively with exactly the local release command"
    );
    // Nothing that would make the image's binary differ from `cargo build --release` here.
    for flag in [
        "RUSTFLAGS",
        "CARGO_PROFILE_",
        "CARGO_BUILD_",
        "CARGO_ENCODED_RUSTFLAGS",
        "--profile",
        "--features",
        "--no-default-features",
    ] {
        assert!(
            !all.iter().any(|i| !i.starts_with("LABEL") && i.contains(flag)) && !script.contains(flag),
            "the image build sets {flag}: it must build with exactly Cargo.toml's [profile.release]"
        );
    }
    assert!(!all.iter().any(|i| i.contains("--target")), "--target belongs to the script's cross build only");
    // A Cargo config would change the local build's flags without reaching the image (the build
    // context sends only the workspace's manifests, Cargo.lock and sources).
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
        assert!(
            [
                "!Cargo.toml",
                "!Cargo.lock",
                "!build.rs",
                "!hack/build-image-binary",
                "!src",
                "!bench/Cargo.toml",
                "!bench/src",
                "!plugin/Cargo.toml",
                "!plugin/src"
            ]
            .contains(allowed),
            "unexpected .dockerignore rule {allowed}"
        );
    }
}

/// The files `.dockerignore` lets into the build context of the repository, as BuildKit's
/// pattern matcher decides (tests/tools/dockerfile-lint -list-context).
fn context_files() -> Vec<String> {
    let out =
        Command::new(tool("dockerfile-lint")).arg("-list-context").arg(repo()).output().expect("run dockerfile-lint");
    assert!(out.status.success(), "dockerfile-lint -list-context failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// The builder stage as this test replays it.
#[derive(Debug, Default)]
struct BuilderStage {
    workdir: String,
    /// (sources in the build context, destination)
    copies: Vec<(Vec<String>, String)>,
    /// Targets of the RUN's cache mounts.
    cache_mounts: Vec<String>,
    /// The RUN's shell command.
    command: String,
    /// Build arguments the stage declares (name, default).
    args: Vec<(String, Option<String>)>,
}

fn builder_stage() -> BuilderStage {
    let all = instructions();
    let start =
        all.iter().position(|i| i.starts_with("FROM ") && i.ends_with(" AS builder")).expect("a stage named builder");
    let end = all[start + 1..].iter().position(|i| i.starts_with("FROM ")).map_or(all.len(), |e| start + 1 + e);
    let mut stage = BuilderStage::default();
    for i in &all[start + 1..end] {
        let (word, rest) = i.split_once(' ').unwrap_or((i, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        match word {
            "WORKDIR" => stage.workdir = rest.trim().to_string(),
            "ARG" => {
                let (name, default) = match rest.trim().split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (rest.trim().to_string(), None),
                };
                stage.args.push((name, default));
            }
            "COPY" => {
                assert!(!words.iter().any(|w| w.starts_with("--")), "COPY flags are not replayed by this test: {i}");
                let (dest, srcs) = words.split_last().expect("COPY <src>... <dest>");
                stage.copies.push((srcs.iter().map(|s| s.to_string()).collect(), dest.to_string()));
            }
            "RUN" => {
                assert!(stage.command.is_empty(), "one RUN in the builder stage: {i}");
                let (mounts, command): (Vec<&str>, Vec<&str>) = words.iter().partition(|w| w.starts_with("--mount="));
                for m in mounts {
                    let opts: Vec<&str> = m.trim_start_matches("--mount=").split(',').collect();
                    assert!(opts.contains(&"type=cache"), "only cache mounts are replayed: {m}");
                    let target = opts.iter().find_map(|o| o.strip_prefix("target=")).expect("mount target");
                    stage.cache_mounts.push(target.to_string());
                }
                stage.command = command.join(" ");
            }
            _ => panic!("the builder stage has an instruction this test does not replay: {i}"),
        }
    }
    assert!(stage.workdir.starts_with('/'), "WORKDIR is absolute: {stage:?}");
    assert!(stage.command.contains("hack/build-image-binary"), "{stage:?}");
    stage
}

/// Copies `from` to `to` keeping its modification time, so cargo's fingerprints see unchanged
/// sources as unchanged and a rerun is incremental.
fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    let modified = std::fs::metadata(from).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(to).unwrap().set_modified(modified).unwrap();
}

/// Docker's COPY of `src` (a file or a directory of the context) to `dest` inside `root`.
fn docker_copy(context: &Path, files: &[String], src: &str, dest: &Path, dest_is_dir: bool) {
    let src = src.trim_start_matches("./").trim_end_matches('/');
    let mut found = false;
    for f in files {
        if f == src {
            let to = if dest_is_dir { dest.join(Path::new(f).file_name().unwrap()) } else { dest.to_path_buf() };
            copy_file(&context.join(f), &to);
            found = true;
        } else if let Some(inner) = f.strip_prefix(&format!("{src}/")) {
            // A directory: its contents go into dest.
            copy_file(&context.join(f), &dest.join(inner));
            found = true;
        }
    }
    assert!(found, "COPY source {src:?} is not in the build context (.dockerignore lets through {files:?})");
}

/// A cold builder cache compiles every dependency again (over half an hour on a busy 2-core
/// machine). The suite's own release build has compiled them already, from the same registry
/// sources with the same profile, so a cold cache starts as a copy of it (a real copy: hard links
/// would let the builder overwrite the suite's files); cargo rebuilds whatever differs (the crate
/// itself, dependencies whose features differ without dev-dependencies).
fn seed_builder_cache(cache: &Path) {
    let ours = repo().join("target/release");
    if cache.join("release").exists() || !ours.join("deps").exists() {
        return;
    }
    let started = Instant::now();
    std::fs::create_dir_all(cache.join("release")).unwrap();
    for dir in [".fingerprint", "build", "deps"] {
        let status =
            Command::new("cp").arg("-a").arg(ours.join(dir)).arg(cache.join("release")).status().expect("run cp");
        assert!(status.success(), "seeding the builder cache from {} failed: {status}", ours.display());
    }
    println!("seeded the builder cache from {} in {:?}", ours.display(), started.elapsed());
}

/// Assembles the build context exactly as `.dockerignore` selects it, replays the builder stage
/// (WORKDIR, COPY) in target/docker-builder/root, and runs its RUN command there with `sh`: the
/// stage's cache mounts become the shared registry cache (CARGO_HOME) and a target directory kept
/// between runs; `/out` becomes root/out. Offline, so it proves the context alone is enough.
#[test]
fn the_builder_stage_builds_the_binary_from_the_dockerignore_context() {
    let files = context_files();
    let stage = builder_stage();
    let base = repo().join("target/docker-builder");
    let (context, root, cache) = (base.join("context"), base.join("root"), base.join("target"));
    for dir in [&context, &root] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(&cache).unwrap();
    seed_builder_cache(&cache);
    for f in &files {
        copy_file(&repo().join(f), &context.join(f));
    }
    let in_root = |path: &str| root.join(path.trim_start_matches('/'));
    let workdir = in_root(&stage.workdir);
    std::fs::create_dir_all(&workdir).unwrap();
    for (srcs, dest) in &stage.copies {
        let dest_is_dir = dest.ends_with('/') || srcs.len() > 1 || dest == "." || dest == "./";
        let dest_path = if dest.starts_with('/') { in_root(dest) } else { workdir.join(dest) };
        for src in srcs {
            docker_copy(&context, &files, src, &dest_path, dest_is_dir);
        }
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    for target in &stage.cache_mounts {
        if target.ends_with("/cargo/registry") {
            continue; // CARGO_HOME/registry of this machine, shared like the cache mount.
        }
        assert_eq!(target, &format!("{}/target", stage.workdir), "unknown cache mount {target}");
        std::os::unix::fs::symlink(&cache, in_root(target)).unwrap();
    }
    // Absolute paths of the command live under root (the image's filesystem).
    let command: Vec<String> = stage
        .command
        .split_whitespace()
        .map(|w| if w.starts_with('/') { in_root(w).display().to_string() } else { w.to_string() })
        .collect();
    let command = command.join(" ");

    let log_path = base.join("build.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&command).current_dir(&workdir).env_clear();
    for var in ["PATH", "HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    // The build arguments BuildKit gives the stage when it builds for this machine's platform.
    let revision = head_revision();
    for (name, default) in &stage.args {
        let value = match name.as_str() {
            "TARGETARCH" | "BUILDARCH" => docker_arch().to_string(),
            "GIT_REVISION" => revision.clone(),
            _ => default.clone().unwrap_or_default(),
        };
        cmd.env(name, value);
    }
    let started = Instant::now();
    let status = cmd
        .env("CARGO_HOME", &cargo_home)
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("run sh");
    let took = started.elapsed();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(
        status.success(),
        "the builder stage's `{}` failed ({status}) in the build context .dockerignore selects ({} files: {files:?}):\n{}",
        stage.command,
        files.len(),
        tail.join("\n")
    );
    println!(
        "builder stage: {} context files, `{}` took {took:?} (target dir {})",
        files.len(),
        stage.command,
        cache.display()
    );

    let binary = in_root("/out/prediction-batch-controller");
    let out =
        Command::new(&binary).arg("--version").output().unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && version.starts_with("prediction-batch-controller "), "{version}");
    assert!(version.contains(&format!("(revision {revision})")), "GIT_REVISION does not reach --version: {version}");

    // The image's binary has no fault layer (the test-faults feature is for `cargo test` only):
    // the test-only flags are refused before anything connects, never ignored.
    let out = Command::new(&binary)
        .args(["run", "--inject-api-faults", "0.5"])
        .env("KUBECONFIG", base.join("no-kubeconfig"))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("built without the `test-faults` cargo feature"),
        "the image's binary accepted --inject-api-faults ({}):\n{stderr}",
        out.status
    );
}

/// This machine's architecture as Docker names platforms (TARGETARCH).
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no Docker platform for {other}"),
    }
}

fn head_revision() -> String {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(repo()).output().unwrap();
    assert!(out.status.success(), "the tests run from a git checkout");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs hack/build-image-binary for `target` on `build` with stand-ins for apt-get, rustup and
/// cargo that record their arguments (and cargo the toolchain variables) and make the binary
/// where cargo would. Returns (exit success, the record, stderr, the output path).
fn cross_build_with_stand_ins(target: &str, build: &str) -> (bool, String, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("pbc-cross-{target}-{build}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = dir.join("record");
    let stand_in = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho \"{name} $*\" >> {}\n{body}\n", record.display())).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&path, mode).unwrap();
    };
    stand_in("apt-get", "");
    stand_in("rustup", "");
    stand_in(
        "cargo",
        &format!(
            "env | grep -E '^(CARGO_TARGET_|CC_|AR_)' | sort >> {rec}\n\
             out=target/release; [ \"$4\" = --target ] && out=target/$5/release\n\
             mkdir -p $out && echo binary > $out/prediction-batch-controller",
            rec = record.display()
        ),
    );
    let out_path = dir.join("out/prediction-batch-controller");
    let out = Command::new("sh")
        .arg(repo().join("hack/build-image-binary"))
        .arg(&out_path)
        .current_dir(&dir)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("TARGETARCH", target)
        .env("BUILDARCH", build)
        .output()
        .unwrap();
    let record = std::fs::read_to_string(&record).unwrap_or_default();
    (out.status.success(), record, String::from_utf8_lossy(&out.stderr).into_owned(), out_path)
}

/// Both image platforms build on either kind of machine: the other platform's binary is
/// cross-compiled with its own linker and C compiler (aws-lc-sys has C), never emulated.
#[test]
fn the_builder_cross_compiles_the_other_platform_and_refuses_unknown_ones() {
    let froms: Vec<String> = instructions().into_iter().filter(|i| i.starts_with("FROM ")).collect();
    assert!(
        froms[0].starts_with("FROM --platform=$BUILDPLATFORM ") && froms[0].ends_with(" AS builder"),
        "the builder runs on the build machine's platform: {froms:?}"
    );
    let stage = builder_stage();
    for arg in ["TARGETARCH", "BUILDARCH", "GIT_REVISION"] {
        assert!(stage.args.iter().any(|(n, _)| n == arg), "the builder stage declares ARG {arg}: {stage:?}");
    }
    for (target, build, triple, gnu) in [
        ("arm64", "amd64", "aarch64-unknown-linux-gnu", "aarch64-linux-gnu"),
        ("amd64", "arm64", "x86_64-unknown-linux-gnu", "x86_64-linux-gnu"),
    ] {
        let (ok, record, stderr, out) = cross_build_with_stand_ins(target, build);
        assert!(ok, "{target} on {build}: {stderr}\n{record}");
        assert!(record.contains(&format!("gcc-{gnu}")), "{target}: the cross C toolchain is installed:\n{record}");
        assert!(record.contains(&format!("rustup target add {triple}")), "{record}");
        assert!(record.contains(&format!("cargo build --release --locked --target {triple}")), "{record}");
        let env = triple.to_uppercase().replace('-', "_");
        assert!(record.contains(&format!("CARGO_TARGET_{env}_LINKER={gnu}-gcc")), "{record}");
        assert!(record.contains(&format!("CC_{}={gnu}-gcc", triple.replace('-', "_"))), "{record}");
        assert_eq!(std::fs::read_to_string(&out).unwrap_or_default(), "binary\n", "the {triple} binary is installed");
    }
    // Native: the plain local release build, nothing installed.
    let (ok, record, stderr, out) = cross_build_with_stand_ins("amd64", "amd64");
    assert!(ok, "{stderr}");
    assert_eq!(record.trim(), "cargo build --release --locked", "{record}");
    assert!(out.exists());
    let (ok, _, stderr, _) = cross_build_with_stand_ins("s390x", "amd64");
    assert!(!ok && stderr.contains("unsupported TARGETARCH=s390x"), "{stderr}");
}
