//! The binary's command line as a user meets it: `--version` names the git revision it was built
//! from, and every flag `--help` shows can also be set by its `PBC_` environment variable.
//! Needs no cluster.

use std::process::{Command, Output};

fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prediction-batch-controller"));
    // Nothing of the caller's environment may set a flag behind the test's back.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PBC_") {
            c.env_remove(k);
        }
    }
    c
}

fn output(c: &mut Command) -> (Output, String) {
    let out = c.output().expect("run prediction-batch-controller");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

/// (flag, env) of every visible option of `run --help`, as printed there.
fn flags_and_envs() -> Vec<(String, Option<String>)> {
    let (out, help) = output(binary().args(["run", "--help"]));
    assert!(out.status.success(), "run --help failed:\n{help}");
    // Each option starts a line with its flag; its description (and [env: …]) may wrap below.
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-')
            && let Some(flag) = trimmed.split_whitespace().find(|w| w.starts_with("--"))
        {
            found.push((flag.trim_end_matches(',').to_string(), None));
        }
        if let (Some(last), Some(env)) = (found.last_mut(), line.split("[env: ").nth(1)) {
            last.1 = env.split(['=', ']']).next().map(str::to_string);
        }
    }
    found.retain(|(flag, _)| flag != "--help" && flag != "--version");
    found
}

#[test]
fn every_flag_in_help_has_its_pbc_environment_variable() {
    let flags = flags_and_envs();
    assert!(flags.len() >= 10, "too few flags parsed from `run --help`: {flags:?}");
    for (flag, env) in &flags {
        let expected = format!("PBC_{}", flag.trim_start_matches("--").replace('-', "_").to_uppercase());
        assert_eq!(env.as_deref(), Some(expected.as_str()), "{flag} should be settable by {expected}");
    }
}

#[test]
fn environment_variables_set_the_flags_they_name() {
    // Values the binary checks before it talks to any cluster: a refusal proves it read them.
    let (out, text) = output(binary().arg("run").env("PBC_LOG_FORMAT", "yaml"));
    assert!(!out.status.success(), "PBC_LOG_FORMAT=yaml accepted:\n{text}");
    assert!(text.contains("yaml") && text.contains("text") && text.contains("json"), "{text}");

    let (out, text) = output(binary().arg("run").env("PBC_LEASE_DURATION", "2"));
    assert!(!out.status.success(), "PBC_LEASE_DURATION=2 accepted:\n{text}");
    assert!(text.contains("--lease-duration must be at least 3 seconds, not 2"), "{text}");

    // A flag given on the command line wins over the environment.
    let (out, text) = output(binary().args(["run", "--lease-duration", "1"]).env("PBC_LEASE_DURATION", "2"));
    assert!(!out.status.success() && text.contains("not 1"), "{text}");

    let (out, text) = output(binary().arg("run").env("PBC_LEADER_ELECT", "sometimes"));
    assert!(!out.status.success(), "PBC_LEADER_ELECT=sometimes accepted:\n{text}");
}

#[test]
fn version_names_the_git_revision_it_was_built_from() {
    let (out, text) = output(binary().arg("--version"));
    assert!(out.status.success(), "{text}");
    let line = text.trim();
    let rest = line
        .strip_prefix(&format!("prediction-batch-controller {} (revision ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| {
            panic!("--version should read `prediction-batch-controller <version> (revision <rev>)`: {line}")
        });
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run git");
    assert!(head.status.success(), "the tests run from a git checkout: {}", String::from_utf8_lossy(&head.stderr));
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let revision = rest.strip_suffix("-dirty").unwrap_or(rest);
    assert_eq!(revision, head, "--version names revision {rest}, the checkout is at {head}");
}
