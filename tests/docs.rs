//! The documentation cannot rot:
//! - every relative link in README.md, docs/*.md, charts/*/README.md, deploy/**/README.md and the
//!   comments of examples/*.yaml leads to an existing file, and every `#anchor` to a heading of
//!   the target (GitHub's slugs);
//! - every reason the README's Troubleshooting names is one the controller really writes, and the
//!   README's tables of batch stall reasons and of schedule condition and event reasons are the
//!   typed lists the controller writes from;
//! - the README's code map names every source file of `src/`, and only files that exist;
//! - the README's "Waiting for a batch" recipes, run as they stand in the README against the
//!   local control plane (kubectl v1.35): the CRD wait on a brand-new CRD, the batch wait on a
//!   batch that succeeds and on one that fails (which must return at once, not at the timeout).
//!
//! docs/api-reference.md has its own drift test (`api::reference`, `cargo test --lib`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::controller::Controller;
use support::kwok_stage::TestStage;
use support::{TestNamespace, cluster, ensure_crd, kubectl, kubectl_output, kubectl_stdin};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ------------------------------------------------------------------------------------- markdown

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation other than `-` and `_` dropped, spaces
/// to `-`; repeats get `-1`, `-2`, ...
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(markdown) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        // Links in a heading count by their text.
        let text = strip_links(line[hashes..].trim().trim_end_matches('#'));
        let base = slug(&text);
        let n = seen.entry(base.clone()).or_default();
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

fn strip_links(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find("](").and_then(|m| after[m..].find(')').map(|e| (m, m + e))) {
            Some((m, e)) => {
                out.push_str(&after[..m]);
                rest = &after[e + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Link targets of a markdown line (inline `[text](target)` and `[label]: target` definitions),
/// outside inline code spans.
fn link_targets(line: &str) -> Vec<String> {
    let mut prose = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            prose.push_str(part);
        }
    }
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or_default();
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end..];
    }
    let t = prose.trim_start();
    if t.starts_with('[')
        && let Some(i) = t.find("]: ")
    {
        out.push(t[i + 3..].split_whitespace().next().unwrap_or_default().to_string());
    }
    out
}

/// What is wrong with `target`, linked from `from`; None when it resolves.
fn check_target(from: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".into());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return None; // not a repository file
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else if let Some(abs) = path.strip_prefix('/') {
        repo().join(abs)
    } else {
        from.parent().unwrap().join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    let anchor = anchor?;
    if file.extension().is_some_and(|e| e == "md") {
        let known = anchors(&read(&file));
        if !known.iter().any(|a| a == anchor) {
            return Some(format!("no heading #{anchor} in {} (headings: {known:?})", file.display()));
        }
    }
    None
}

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "README.md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![repo().join("README.md")];
    let listed = |dir: &str, keep: &dyn Fn(&Path) -> bool| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| keep(p))
            .collect();
        v.sort();
        v
    };
    files.extend(listed("docs", &|p: &Path| p.extension().is_some_and(|e| e == "md")));
    for chart in listed("charts", &|p: &Path| p.is_dir()) {
        files.push(chart.join("README.md"));
    }
    let mut deploy = Vec::new();
    walk(&repo().join("deploy"), &mut deploy);
    deploy.sort();
    files.extend(deploy);
    files
}

#[test]
fn every_relative_link_resolves() {
    let mut dead = Vec::new();
    let mut checked = 0;
    let files = markdown_files();
    assert!(files.len() >= 5, "found only {files:?}");
    for file in &files {
        let text = read(file);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                checked += 1;
                if let Some(why) = check_target(file, &target) {
                    dead.push(format!("{}:{n}: ({target}): {why}", file.strip_prefix(repo()).unwrap().display()));
                }
            }
        }
    }
    // Example comments name repository files by their path from the repository root.
    for entry in std::fs::read_dir(repo().join("examples")).unwrap().flatten() {
        let file = entry.path();
        for (n, line) in read(&file).lines().enumerate().filter(|(_, l)| l.trim_start().starts_with('#')) {
            for word in line.split(|c: char| c.is_whitespace() || "(),;:'\"`".contains(c)) {
                let word = word.trim_end_matches('.');
                // A URL was split at its ':' above: `gs://b/x.json` leaves `//b/x.json`.
                let looks_like_file = word.contains('/')
                    && !word.contains("://")
                    && !word.starts_with("//")
                    && [".md", ".yaml", ".rs", ".json", ".lua"].iter().any(|e| word.ends_with(e));
                if looks_like_file {
                    checked += 1;
                    if let Some(why) = check_target(&repo().join("README.md"), word) {
                        dead.push(format!("{}:{}: ({word}): {why}", file.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
    assert!(checked >= 15, "checked only {checked} links: is the link parser broken?");
}

#[test]
fn the_link_checker_finds_dead_links_and_anchors() {
    assert_eq!(slug("Waiting for a batch"), "waiting-for-a-batch");
    assert_eq!(slug("`kubectl wait` & the CRD: v1.35!"), "kubectl-wait--the-crd-v135");
    assert_eq!(anchors("# A\n```\n# not a heading\n```\n## A\n### [Link](x.md) here"), ["a", "a-1", "link-here"]);
    assert_eq!(link_targets("see [x](a.md#b) and `[y](not-a-link)`, [z](<c d.md>)"), ["a.md#b", "c"]);
    let readme = repo().join("README.md");
    assert!(check_target(&readme, "docs/nope.md").is_some());
    assert!(check_target(&readme, "#no-such-heading").is_some());
    assert!(check_target(&readme, "#troubleshooting").is_none());
    assert!(
        check_target(&readme, "docs/firestore.md#3-let-the-controllers-kubernetes-serviceaccount-act-as-it").is_none()
    );
    assert!(check_target(&readme, "https://example.com/x").is_none());
}

/// A section of README.md: from its `## ` heading to the next heading of that level.
fn readme_section(heading: &str) -> String {
    let text = read(&repo().join("README.md"));
    let start = text.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("README.md has no `## {heading}`"));
    let body = &text[start + 1..];
    let end = body[3..].find("\n## ").map_or(body.len(), |e| e + 3);
    body[..end].to_string()
}

/// The fenced ```sh blocks of a markdown text.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim() == "```sh" => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn troubleshooting_names_only_reasons_the_controller_writes() {
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push_str(&read(&p));
            }
        }
    }
    let mut src = String::new();
    sources(&repo().join("src"), &mut src);
    let section = readme_section("Troubleshooting");
    let mut names = Vec::new();
    for (i, part) in section.split('`').enumerate() {
        let camel = part.len() > 2
            && part.starts_with(|c: char| c.is_ascii_uppercase())
            && part.chars().all(|c| c.is_ascii_alphanumeric())
            && part.chars().any(|c| c.is_ascii_lowercase());
        if i % 2 == 1 && camel {
            names.push(part.to_string());
        }
    }
    assert!(names.len() > 10, "found only {names:?}");
    // The mirror's Firestore reasons are `Firestore` + the gRPC status code.
    let grpc_codes = ["PermissionDenied", "Unauthenticated", "Unavailable", "NotFound"];
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| {
            let from_grpc = n.strip_prefix("Firestore").is_some_and(|c| grpc_codes.contains(&c))
                && src.contains(r#"format!("Firestore{:?}", s.code())"#);
            let literal = src.contains(&format!("\"{n}\""));
            // Phases and stage states are enum variants (serde writes their names).
            let variant = src.contains(&format!("    {n},\n"));
            !(from_grpc || literal || variant)
        })
        .collect();
    assert!(unknown.is_empty(), "README.md Troubleshooting names {unknown:?}, which nothing in src/ writes");
    for must in ["JobRejected", "JobNameConflict", "JobDeleted", "InvalidObject", "MirrorSynced", "Stopping"] {
        assert!(names.iter().any(|n| n == must), "Troubleshooting does not cover {must}");
    }
}

/// The README's table of `Stalled=True` reasons is exactly the typed list the controller writes
/// from, with the recoverable ones marked so.
#[test]
fn the_readme_reason_table_is_the_typed_stall_reasons() {
    use prediction_batch_controller::api::StallReason;
    let readme = read(&repo().join("README.md"));
    let start = readme.find("Reasons of `Stalled=True`").expect("README lists the reasons of Stalled=True");
    let table: Vec<(String, bool)> = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| Reason |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|row| {
            let cell = row.split('|').nth(1).unwrap_or_default().to_string();
            let recoverable = cell.contains("(recoverable)");
            // A row may name several reasons: `ConsolidationFailed` / `ExportFailed`.
            cell.split('`').skip(1).step_by(2).map(|n| (n.to_string(), recoverable)).collect::<Vec<_>>()
        })
        .collect();
    let typed: Vec<(String, bool)> =
        StallReason::ALL.iter().map(|r| (r.as_str().to_string(), r.recoverable())).collect();
    let mut in_readme = table.clone();
    in_readme.sort();
    let mut in_code = typed.clone();
    in_code.sort();
    assert_eq!(in_readme, in_code, "README.md's Stalled reasons (name, recoverable) vs StallReason::ALL");
}

/// The rows of the first markdown table after `marker` in `text`: each row's cells, trimmed.
fn table_after(text: &str, marker: &str) -> Vec<Vec<String>> {
    let start = text.find(marker).unwrap_or_else(|| panic!("README.md has no {marker:?}"));
    text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| row.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// The `code` spans of a markdown text.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(String::from).collect()
}

/// README.md's Schedules section lists exactly the reasons of the schedule's conditions (with
/// whether each stalls it) and exactly the events a schedule gets (with their type).
#[test]
fn the_readme_schedule_tables_are_the_typed_reasons() {
    use prediction_batch_controller::api::{ScheduleEventReason, ScheduleReason};
    let section = readme_section("Schedules");

    let mut in_readme: Vec<(String, bool)> = table_after(&section, "Reasons of the schedule's conditions")
        .iter()
        .flat_map(|row| {
            let stalls = row.get(2).is_some_and(|c| c.contains("True"));
            code_spans(&row[0]).into_iter().map(move |n| (n, stalls))
        })
        .collect();
    in_readme.sort();
    let mut in_code: Vec<(String, bool)> =
        ScheduleReason::ALL.iter().map(|r| (r.as_str().to_string(), r.stalls())).collect();
    in_code.sort();
    assert_eq!(in_readme, in_code, "README.md's schedule condition reasons (name, stalls) vs ScheduleReason::ALL");

    let mut in_readme: Vec<(String, bool)> = table_after(&section, "Events on the schedule")
        .iter()
        .flat_map(|row| {
            let warning = match row.get(1).map(String::as_str) {
                Some("Warning") => true,
                Some("Normal") => false,
                other => panic!("event type {other:?} in row {row:?}"),
            };
            code_spans(&row[0]).into_iter().map(move |n| (n, warning))
        })
        .collect();
    in_readme.sort();
    let mut in_code: Vec<(String, bool)> =
        all_schedule_events().iter().map(|e| (e.as_str().to_string(), e.is_warning())).collect();
    in_code.sort();
    assert_eq!(in_readme, in_code, "README.md's schedule events (name, Warning) vs ScheduleEventReason");

    /// Every event a schedule can get: the match below stops compiling when a variant is added.
    fn all_schedule_events() -> Vec<ScheduleEventReason> {
        use ScheduleEventReason::*;
        let mut all = vec![BatchCreated, RunsMissed, RunMissed, BatchReplaced, BatchDeleted];
        all.extend(ScheduleReason::ALL.into_iter().filter(|r| r.stalls()).map(Stalled));
        for e in &all {
            match e {
                BatchCreated | RunsMissed | RunMissed | BatchReplaced | BatchDeleted | Stalled(_) => {}
            }
        }
        all
    }
}

/// README.md's code map names every source file of `src/` (but `lib.rs`, `mod.rs` and test
/// modules), and every file it names exists. In the first column a path is relative to `src/`
/// and a bare name to the directory of the path before it in the cell (`reconcile/shards.rs`,
/// `ranges.rs`); in the second, a name is relative to the row's directory (`api/`: `spec.rs`),
/// and a directory's row may name its files without `.rs` (`reconcile/plan/`: `rerun`). Naming a
/// directory does not name its files.
#[test]
fn the_code_map_names_every_source_file() {
    let src = repo().join("src");
    let rows = table_after(&readme_section("Code map"), "| module |");
    assert!(rows.len() > 10, "found only {rows:?}");
    let mut named: Vec<String> = Vec::new();
    let mut dead = Vec::new();
    for row in &rows {
        let mut dir = String::new();
        let mut row_dir: Option<String> = None;
        for token in code_spans(&row[0]) {
            let path = if token.contains('/') { token.clone() } else { format!("{dir}{token}") };
            dir = path.rfind('/').map_or(String::new(), |i| path[..=i].to_string());
            row_dir.get_or_insert_with(|| dir.clone());
            if !src.join(&path).exists() {
                dead.push(format!("{path} (module column)"));
            }
            named.push(path);
        }
        let row_dir = row_dir.unwrap_or_default();
        let is_dir_row = code_spans(&row[0]).len() == 1 && code_spans(&row[0])[0].ends_with('/');
        for token in code_spans(row.get(1).map(String::as_str).unwrap_or_default()) {
            if token.ends_with(".rs") {
                let path = format!("{row_dir}{token}");
                if !src.join(&path).exists() {
                    dead.push(format!("{path} (in the row of {})", row[0]));
                }
                named.push(path);
            } else if is_dir_row && token.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                let path = format!("{row_dir}{token}.rs");
                if src.join(&path).exists() {
                    named.push(path);
                }
            }
        }
    }
    assert!(dead.is_empty(), "README.md's code map names files that do not exist under src/: {dead:?}");

    fn sources(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "tests" {
                    sources(&p, &format!("{rel}{name}/"), out);
                }
            } else if name.ends_with(".rs")
                && !["lib.rs", "mod.rs", "tests.rs"].contains(&name.as_str())
                && !name.ends_with("_tests.rs")
            {
                out.push(format!("{rel}{name}"));
            }
        }
    }
    let mut files = Vec::new();
    sources(&src, "", &mut files);
    files.sort();
    let missing: Vec<&String> = files.iter().filter(|f| !named.contains(f)).collect();
    assert!(files.len() > 40, "found only {files:?}");
    assert!(missing.is_empty(), "README.md's code map does not name {missing:?}: add them (## Code map)");
}

// --------------------------------------------------------------------------- the wait recipes

/// Runs `script` with bash in `dir`, the cluster's kubectl first on PATH and `kubeconfig`,
/// stopping it after `limit`. Returns its output and how long it took.
fn run_recipe(script: &str, dir: &Path, kubeconfig: &Path, limit: Duration) -> (Output, Duration) {
    let file = dir.join("recipe.sh");
    std::fs::write(&file, script).unwrap();
    let bin = cluster().kubectl.parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let start = Instant::now();
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .arg("bash")
        .arg(&file)
        .current_dir(dir)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run bash (and coreutils timeout)");
    (out, start.elapsed())
}

fn show(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn waiting_blocks() -> (String, String) {
    let blocks = sh_blocks(&readme_section("Waiting for a batch"));
    let crd = blocks.iter().find(|b| b.contains("crds/")).expect("a ```sh block waiting for the CRD").clone();
    let batch = blocks.iter().find(|b| b.contains("pb/")).expect("a ```sh block waiting for a batch").clone();
    (crd, batch)
}

/// The CRD recipe, on a CRD nobody has created before: a copy of ours under a group, kind and
/// names of this run (so the parallel tests' `pb` is untouched). Right after the recipe, an object
/// of the new kind can be created.
#[test]
fn readme_crd_wait_recipe_works_on_a_brand_new_crd() {
    let (recipe, _) = waiting_blocks();
    let ns = TestNamespace::new("docs-crd");
    let tmp = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let suffix = format!("{:x}{:x}", std::process::id(), nanos & 0xffff);
    let group = format!("docs{suffix}.example.com");
    let plural = "waitbatches";
    let crd_name = format!("{plural}.{group}");
    let mut crd: Value =
        serde_yaml::from_str(&read(&repo().join("crds/predictions.dev_predictionbatches.yaml"))).unwrap();
    crd["metadata"]["name"] = json!(crd_name);
    crd["spec"]["group"] = json!(group);
    crd["spec"]["names"] =
        json!({ "kind": "WaitBatch", "listKind": "WaitBatchList", "plural": plural, "singular": "waitbatch" });
    std::fs::create_dir(tmp.path().join("crds")).unwrap();
    std::fs::write(tmp.path().join("crds/crd.yaml"), serde_yaml::to_string(&crd).unwrap()).unwrap();
    let recipe =
        recipe.replace("predictionbatches.predictions.dev", &crd_name).replace("=PredictionBatch", "=WaitBatch");
    assert!(recipe.contains(&crd_name), "the recipe does not name the CRD:\n{recipe}");

    /// Deletes the test's CRD however the test ends.
    struct DeleteCrd(String);
    impl Drop for DeleteCrd {
        fn drop(&mut self) {
            let _ = kubectl_output(&["delete", "crd", &self.0, "--wait=false"]);
        }
    }
    let _delete = DeleteCrd(crd_name.clone());
    let (out, took) = run_recipe(&recipe, tmp.path(), &cluster().kubeconfig, Duration::from_secs(90));
    assert!(out.status.success(), "the README's CRD wait recipe failed after {took:?}:\n{recipe}\n{}", show(&out));
    let object = json!({
        "apiVersion": format!("{group}/v1alpha1"),
        "kind": "WaitBatch",
        "metadata": { "name": "right-after" },
        "spec": { "gameDate": "2026-01-02", "targetCount": 1,
                  "worker": { "template": { "spec": { "containers": [{ "name": "w", "image": "w" }] } } } }
    });
    // Right after the recipe the new kind is served: creating an object of it works.
    kubectl_stdin(&["create", "-n", ns.name(), "-f", "-"], &object.to_string());
    println!("CRD recipe returned after {took:?}");
}

/// The batch recipe, run in a namespace of its own (the kubeconfig's context namespace, as a user
/// would have it) on `examples/batch.yaml`, applied just before so it has no status yet.
fn run_batch_recipe(ns: &TestNamespace, limit: Duration) -> (Output, Duration) {
    let (_, recipe) = waiting_blocks();
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::copy(&cluster().kubeconfig, &kubeconfig).unwrap();
    let out = kubectl_output(&[
        "config",
        "set-context",
        "--current",
        &format!("--namespace={}", ns.name()),
        &format!("--kubeconfig={}", kubeconfig.display()),
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let manifest = read(&repo().join("examples/batch.yaml"));
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &manifest);
    run_recipe(&recipe, tmp.path(), &kubeconfig, limit)
}

#[test]
fn readme_batch_wait_recipe_returns_zero_on_success() {
    ensure_crd();
    let ns = TestNamespace::new("docs-wait-ok");
    let ctl = Controller::start("docs-wait-ok", ns.name(), &[]);
    let (out, took) = run_batch_recipe(&ns, Duration::from_secs(150));
    assert!(out.status.success(), "the wait recipe failed after {took:?}:\n{}\n{}", show(&out), ctl.log_tail());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nba-2026-01-02 succeeded: 120/120"), "{}", show(&out));
    let phase = kubectl(&["get", "pb", "nba-2026-01-02", "-n", ns.name(), "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Succeeded");
    println!("batch wait recipe (success) returned after {took:?}");
}

#[test]
fn readme_batch_wait_recipe_fails_fast_on_failure() {
    ensure_crd();
    let ns = TestNamespace::new("docs-wait-fail");
    // Shard 3 fails on every attempt: with minSucceededPercent 100 the batch fails once its retries are spent.
    let _fail = TestStage::fail(ns.name(), &["3"]);
    let ctl = Controller::start("docs-wait-fail", ns.name(), &[]);
    let (out, took) = run_batch_recipe(&ns, Duration::from_secs(240));
    let phase = kubectl(&["get", "pb", "nba-2026-01-02", "-n", ns.name(), "-o", "jsonpath={.status.phase}"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the recipe must exit 1 on a failed batch:\n{}\n{}",
        show(&out),
        ctl.log_tail()
    );
    assert_eq!(phase, "Failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // QuorumUnreachable, or QuorumNotMet when every other shard had finished first.
    assert!(stderr.contains("Failed: Quorum"), "the recipe must say why:\n{}", show(&out));
    // Fail fast: the recipe returns within seconds of the failure, not at its 3 h timeout (the
    // failure itself takes a while: the Job controller backs off 10 s, 20 s, 40 s between retries).
    let failed_at =
        kubectl(&["get", "pb", "nba-2026-01-02", "-n", ns.name(), "-o", "jsonpath={.status.completionTime}"]);
    let failed_at: k8s_openapi::jiff::Timestamp = failed_at.parse().expect("status.completionTime");
    let late = k8s_openapi::jiff::Timestamp::now().duration_since(failed_at);
    assert!(late.as_secs() < 15, "the recipe returned {late:?} after the batch failed");
    println!("batch wait recipe (failure) returned after {took:?}");
}
