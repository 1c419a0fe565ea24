//! `list`: recent batches, newest first.

use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use serde::Serialize;
use serde_json::Value;

use crate::client::Ctx;
use crate::{ListArgs, format, status};

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub game_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// `status.duration` once ended, else the running time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    pub age: String,
    #[serde(skip)]
    created: Option<Timestamp>,
}

pub async fn run(ctx: &Ctx, args: ListArgs) -> anyhow::Result<u8> {
    let api = if args.all_namespaces { ctx.all_batches() } else { ctx.batches() };
    let mut params = ListParams::default();
    if let Some(selector) = &args.selector {
        params = params.labels(selector);
    }
    let list = api.list(&params).await?;
    let now = Timestamp::now();
    let items: Vec<Value> = list.items.iter().filter_map(|o| serde_json::to_value(o).ok()).collect();
    let rows = rows(&items, args.limit, now);
    if let Some(output) = args.output {
        status::print_machine(&rows, output)?;
        return Ok(crate::EXIT_OK);
    }
    if rows.is_empty() {
        if args.all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", ctx.namespace);
        }
        return Ok(crate::EXIT_OK);
    }
    print!("{}", table(&rows, args.all_namespaces, &status::Colors::for_stdout()));
    Ok(crate::EXIT_OK)
}

/// The rows of `items` (stored batches as JSON), newest first, at most `limit` (0: all).
pub fn rows(items: &[Value], limit: usize, now: Timestamp) -> Vec<Row> {
    let text = |v: &Value| v.as_str().map(String::from);
    let time = |v: &Value| v.as_str().and_then(|t| t.parse::<Timestamp>().ok());
    let mut rows: Vec<Row> = items
        .iter()
        .map(|b| {
            let st = &b["status"];
            let created = time(&b["metadata"]["creationTimestamp"]);
            let started = ["loader", "workers", "consolidation", "export"]
                .iter()
                .filter_map(|stage| time(&st[*stage]["startTime"]))
                .chain(time(&st["startTime"]))
                .min();
            let duration = text(&st["duration"]).or_else(|| {
                let ended = matches!(st["phase"].as_str(), Some("Succeeded" | "Failed"));
                started.filter(|_| !ended).map(|s| format::duration(format::seconds_between(s, now)))
            });
            Row {
                namespace: text(&b["metadata"]["namespace"]).unwrap_or_default(),
                name: text(&b["metadata"]["name"]).unwrap_or_default(),
                game_date: text(&b["spec"]["gameDate"]),
                phase: text(&st["phase"]),
                progress: text(&st["progress"]),
                duration,
                creation_timestamp: created.map(format::time),
                age: created.map_or_else(|| "-".into(), |c| format::age(format::seconds_between(c, now))),
                created,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.created.cmp(&a.created).then_with(|| a.namespace.cmp(&b.namespace)).then_with(|| a.name.cmp(&b.name))
    });
    if limit > 0 {
        rows.truncate(limit);
    }
    rows
}

pub fn table(rows: &[Row], namespaces: bool, c: &status::Colors) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut header = vec!["NAME", "DATE", "PHASE", "PROGRESS", "DURATION", "AGE"];
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.name.clone(),
                dash(&r.game_date),
                r.phase.as_deref().map_or_else(|| "-".into(), |p| c.phase(p)),
                dash(&r.progress),
                dash(&r.duration),
                r.age.clone(),
            ];
            if namespaces {
                row.insert(0, r.namespace.clone());
            }
            row
        })
        .collect();
    format::table(&header, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn newest_first_with_running_time_until_the_batch_ends() {
        let now: Timestamp = "2026-01-02T12:10:00Z".parse().unwrap();
        let items = [
            json!({"metadata": {"name": "old", "namespace": "a", "creationTimestamp": "2026-01-01T12:00:00Z"},
                   "spec": {"gameDate": "2026-01-01"},
                   "status": {"phase": "Succeeded", "progress": "120/120", "duration": "4m12s"}}),
            json!({"metadata": {"name": "new", "namespace": "b", "creationTimestamp": "2026-01-02T12:07:00Z"},
                   "spec": {"gameDate": "2026-01-02"},
                   "status": {"phase": "Running", "progress": "40/120", "startTime": "2026-01-02T12:07:30Z"}}),
            json!({"metadata": {"name": "fresh", "namespace": "b", "creationTimestamp": "2026-01-02T12:09:58Z"},
                   "spec": {"gameDate": "2026-01-03"}}),
        ];
        let rows = rows(&items, 0, now);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["fresh", "new", "old"]);
        assert_eq!(rows[1].duration.as_deref(), Some("2m30s"));
        assert_eq!(rows[2].duration.as_deref(), Some("4m12s"));
        assert_eq!(rows[2].age, "24h");
        let text = table(&rows, true, &status::Colors::plain());
        assert_eq!(
            text,
            "NAMESPACE   NAME    DATE         PHASE       PROGRESS   DURATION   AGE\n\
             b           fresh   2026-01-03   -           -          -          2s\n\
             b           new     2026-01-02   Running     40/120     2m30s      3m\n\
             a           old     2026-01-01   Succeeded   120/120    4m12s      24h\n"
        );
        assert_eq!(super::rows(&items, 1, now).len(), 1);
    }
}
