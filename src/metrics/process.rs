//! The standard `process_*` metrics (the names every Prometheus client library exports, so the
//! usual dashboards and alerts work), read from `/proc/self` at scrape time. Off Linux, or when
//! `/proc` cannot be read, they are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub open_fds: i64,
    pub max_fds: Option<i64>,
    pub start_time_seconds: f64,
    pub threads: i64,
}

impl ProcessSample {
    pub fn read() -> Option<ProcessSample> {
        let me = procfs::process::Process::myself().ok()?;
        let stat = me.stat().ok()?;
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let boot = procfs::boot_time_secs().ok()? as f64;
        let max_fds = me.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => i64::try_from(v).ok(),
            procfs::process::LimitValue::Unlimited => None,
        });
        Some(ProcessSample {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: i64::try_from(stat.rss.saturating_mul(procfs::page_size())).unwrap_or(i64::MAX),
            virtual_bytes: i64::try_from(stat.vsize).unwrap_or(i64::MAX),
            open_fds: me.fd_count().ok().and_then(|n| i64::try_from(n).ok()).unwrap_or(0),
            max_fds,
            start_time_seconds: boot + stat.starttime as f64 / ticks,
            threads: stat.num_threads,
        })
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessSample::read() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size in bytes", s.resident_bytes)?;
        gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size in bytes", s.virtual_bytes)?;
        gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", s.open_fds)?;
        if let Some(max) = s.max_fds {
            gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors", max)?;
        }
        let start = ConstGauge::new(s.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        gauge(&mut encoder, "process_threads", "Number of OS threads in the process", s.threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = ProcessSample::read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0, "{s:?}");
    }
}
