//! The Firestore emulator of the mirror tests: the npm `@firestore-emulator/server` (pinned in
//! tests/firestore-emulator/package-lock.json; `npm ci` there first), started on 127.0.0.1 with a
//! free port, and a reader/writer of its documents.
//!
//! Fails, never skips, when node or the installed emulator package is missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use prediction_batch_controller::mirror::firestore::{FirestoreOptions, FirestoreStore, StoredDocument};

pub const PROJECT: &str = "test-project";
pub const COLLECTION: &str = "prediction_batches";

pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// One `@firestore-emulator/server` process (in-memory: a restart starts empty).
pub struct Emulator {
    child: Child,
    pub port: u16,
}

impl Emulator {
    /// Starts on `port` (0: a free one) and waits until it listens.
    pub fn start(port: u16) -> Emulator {
        let dir = super::repo().join("tests/firestore-emulator");
        let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(
            node_ok,
            "node is required for the Firestore emulator (apt-get install nodejs npm), then `npm ci` in {}",
            dir.display()
        );
        let package = dir.join("node_modules/@firestore-emulator/server/package.json");
        assert!(
            package.exists(),
            "the Firestore emulator is not installed: run `npm ci` in {} (missing {})",
            dir.display(),
            package.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("start.js"))
            .arg(port.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped()) // closed when we drop the child: the emulator exits then
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node tests/firestore-emulator/start.js");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the Firestore emulator did not start within 60s");
            }
        };
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected emulator output {line:?}"));
        Emulator { child, port }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reader/writer of the emulator's documents (the mirror's own store, pointed at it).
pub struct Docs {
    pub rt: tokio::runtime::Runtime,
    pub store: FirestoreStore,
}

impl Docs {
    pub fn new(host: &str) -> Docs {
        install_crypto_provider();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let store = FirestoreStore::new(FirestoreOptions {
            project: PROJECT.into(),
            database: None,
            collection: COLLECTION.into(),
            emulator_host: Some(host.into()),
        });
        Docs { rt, store }
    }

    /// The document, `None` when missing or unreachable.
    pub fn get(&self, id: &str) -> Option<StoredDocument> {
        self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), self.store.read(id)).await.ok()?.ok()? })
    }
}
