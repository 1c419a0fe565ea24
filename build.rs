//! Stamps the binary with the git revision it was built from, for `--version`, the start-up log
//! and the `prediction_batch_build_info` metric. A build without `.git` (the container image's
//! build context sends none) takes it from `PBC_GIT_REVISION`, which the Dockerfile sets from its
//! `GIT_REVISION` build argument; otherwise it is "unknown".

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Watch `path` for changes, if it exists (cargo would rerun the script on every build for a
/// missing one, and so recompile the crate every time).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=PBC_GIT_REVISION");
    let revision = match std::env::var("PBC_GIT_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => match git(&["rev-parse", "--short=12", "HEAD"]) {
            Some(rev) => {
                // Watch what moves HEAD (commits, checkouts) and what makes the tree dirty;
                // `--no-optional-locks` below keeps `git status` from rewriting the index it watches.
                if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                    let dir = Path::new(&dir);
                    watch(&dir.join("HEAD"));
                    watch(&dir.join("index"));
                    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                        let common = git(&["rev-parse", "--git-common-dir"])
                            .map(|c| Path::new(env!("CARGO_MANIFEST_DIR")).join(c));
                        let root = common.unwrap_or_else(|| dir.to_path_buf());
                        watch(&root.join(head_ref));
                        watch(&root.join("packed-refs"));
                    }
                }
                println!("cargo:rerun-if-changed=src");
                let dirty = git(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{rev}-dirty") } else { rev }
            }
            None => "unknown".to_string(),
        },
    };
    println!("cargo:rustc-env=PBC_GIT_REVISION={revision}");
    println!("cargo:rustc-env=PBC_LONG_VERSION={} (revision {revision})", env!("CARGO_PKG_VERSION"));
}
