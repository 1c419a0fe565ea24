//! One plain HTTP GET (no client dependency) for the controller's /metrics, /healthz and
//! /readyz and the OCI registry's API, and a reader of Prometheus samples.

use std::io::{Read, Write};
use std::time::Duration;

/// GET `path` from `addr` (host:port): (status code, body). HTTP/1.0, so the server closes the
/// connection after the response and never sends it chunked.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The value of one sample (`name` including its labels, e.g. `x_total{stage="workers"}`) in a
/// Prometheus text exposition, if present.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')?.trim().parse().ok()))
}
