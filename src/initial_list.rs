//! How the watches fill their caches when they start: by a streaming list (`sendInitialEvents`,
//! the apiserver sends the objects as watch events one at a time) or by paged lists.
//!
//! Why it matters: a list page is decoded whole, so over 10,000 batches kube's default of 500 per
//! page held the start-up peak above the 64 MiB budget (docs/benchmarks.md, issue 19). A streaming
//! list holds one object at a time; an apiserver without the WatchList feature refuses it, so
//! `auto` asks once, with a watch that selects nothing, and falls back to small pages.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, WatchEvent, WatchParams};
use kube::runtime::watcher;
use tracing::{info, warn};

use crate::decode::Listed;

/// Label selector of the start-up probe: no batch carries it, so the probe's initial events are
/// only the closing bookmark.
pub const PROBE_SELECTOR: &str = "predictions.dev/initial-list-probe=none";
/// The bookmark annotation that closes a streaming list's initial events.
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// How long `auto` waits for the probe's closing bookmark before it takes pages.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects per page of a paged initial list (kube's default is 500: see the module docs).
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// `--initial-list`: what the operator asked for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialList {
    /// Streaming lists when the apiserver serves them (asked once at start), pages otherwise.
    #[default]
    Auto,
    /// Always streaming lists (an apiserver without WatchList never fills the caches).
    Streaming,
    /// Always paged lists of `--list-page-size`.
    Paged,
}

/// What the watches use, once `auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    Streaming,
    Paged { page_size: u32 },
}

impl Default for ListStrategy {
    fn default() -> Self {
        ListStrategy::Paged { page_size: DEFAULT_PAGE_SIZE }
    }
}

impl ListStrategy {
    /// The watcher configuration every cache's watch starts from.
    pub fn config(self) -> watcher::Config {
        match self {
            ListStrategy::Streaming => watcher::Config::default().streaming_lists(),
            ListStrategy::Paged { page_size } => watcher::Config::default().page_size(page_size.max(1)),
        }
    }

    /// How the start-up log names it.
    pub fn describe(self) -> String {
        match self {
            ListStrategy::Streaming => "streaming".into(),
            ListStrategy::Paged { page_size } => format!("paged ({page_size} per page)"),
        }
    }
}

/// Resolves `choice`: `auto` sends one streaming list of no batches and takes streaming lists if
/// its closing bookmark arrives within [`PROBE_TIMEOUT`]. Any failure of the probe (refused,
/// unreachable, no bookmark) means pages: the probe decides how, never whether, the controller runs.
pub async fn resolve(api: Api<Listed>, choice: InitialList, page_size: u32) -> ListStrategy {
    let paged = ListStrategy::Paged { page_size: page_size.max(1) };
    let strategy = match choice {
        InitialList::Streaming => ListStrategy::Streaming,
        InitialList::Paged => paged,
        InitialList::Auto => match tokio::time::timeout(PROBE_TIMEOUT, probe(&api)).await {
            Ok(Ok(())) => ListStrategy::Streaming,
            Ok(Err(why)) => {
                warn!(reason = %why, "the apiserver does not serve streaming lists; using paged lists");
                paged
            }
            Err(_) => {
                warn!(timeout_s = PROBE_TIMEOUT.as_secs(), "no answer to a streaming list; using paged lists");
                paged
            }
        },
    };
    info!(initial_list = %strategy.describe(), asked = ?choice, "initial lists");
    strategy
}

/// One streaming list that selects nothing: `Ok` once its initial-events bookmark arrives.
async fn probe(api: &Api<Listed>) -> Result<(), String> {
    let params = WatchParams::default().labels(PROBE_SELECTOR).timeout(PROBE_TIMEOUT.as_secs() as u32).initial_events();
    let stream = api.watch(&params, "0").await.map_err(|e| e.to_string())?;
    let mut stream = std::pin::pin!(stream.map_err(|e| e.to_string()));
    while let Some(event) = stream.next().await {
        match event? {
            WatchEvent::Bookmark(b) if b.metadata.annotations.contains_key(INITIAL_EVENTS_END) => return Ok(()),
            WatchEvent::Error(e) => return Err(e.to_string()),
            _ => {}
        }
    }
    Err("the streaming list ended without its initial-events bookmark".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::InitialListStrategy;

    #[test]
    fn strategies_configure_the_watcher() {
        let s = ListStrategy::Streaming.config();
        assert_eq!(s.initial_list_strategy, InitialListStrategy::StreamingList);
        let p = ListStrategy::Paged { page_size: 2 }.config();
        assert_eq!(p.initial_list_strategy, InitialListStrategy::ListWatch);
        assert_eq!(p.page_size, Some(2));
        assert_eq!(ListStrategy::Paged { page_size: 0 }.config().page_size, Some(1));
        assert_eq!(ListStrategy::default(), ListStrategy::Paged { page_size: DEFAULT_PAGE_SIZE });
        assert_eq!(ListStrategy::Paged { page_size: 100 }.describe(), "paged (100 per page)");
        assert_eq!(ListStrategy::Streaming.describe(), "streaming");
    }
}
