//! `berth lsf monitor`: the CPU and memory usage of the job's container,
//! in LSF's units (seconds, kilobytes), one `KEY=value` line each, or JSON.
//! Containers are children of containerd, not of the job, so LSF's own
//! process tracking does not see them; this is how a monitor can.

use crate::cli::MonitorArgs;
use crate::core::error::{Error, Result};
use crate::core::policy::Policy;
use crate::core::request::JobId;
use crate::engine::Engine;
use crate::sys::nss::Nss;
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// The container's name, empty when the job has none.
    pub container: String,
    /// running, paused, exited …, or `none`.
    pub state: String,
    /// CPU time used, user + system, in seconds.
    pub cpu_time: f64,
    /// Percent of one CPU over the last sampling interval.
    pub cpu_percent: f64,
    /// Resident memory (anonymous pages), KB.
    pub mem: u64,
    /// Memory charged to the container minus inactive page cache, KB.
    pub mem_used: u64,
    /// The container's memory limit, KB.
    pub mem_limit: u64,
    /// Swap used, KB (0 when swap is not accounted).
    pub swap: u64,
    /// Processes and threads in the container.
    pub nprocs: u64,
    /// Host pid of the container's init (0 when not running).
    pub pid: u64,
}

fn num(v: &Value, ptr: &str) -> Option<u64> {
    v.pointer(ptr).and_then(Value::as_u64)
}

/// Usage from one `stats?stream=false` reply, cgroup v1 or v2.
pub fn from_stats(s: &Value) -> Usage {
    let total = num(s, "/cpu_stats/cpu_usage/total_usage").unwrap_or(0);
    let pre_total = num(s, "/precpu_stats/cpu_usage/total_usage").unwrap_or(0);
    let sys = num(s, "/cpu_stats/system_cpu_usage").unwrap_or(0);
    let pre_sys = num(s, "/precpu_stats/system_cpu_usage").unwrap_or(0);
    let cpus = num(s, "/cpu_stats/online_cpus")
        .or_else(|| {
            s.pointer("/cpu_stats/cpu_usage/percpu_usage")
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
        })
        .unwrap_or(1)
        .max(1);
    // Docker's own formula: the container's share of all CPUs' time over
    // the interval, times the number of CPUs (100% = one full CPU).
    let cpu_percent = if sys > pre_sys && total >= pre_total && pre_sys > 0 {
        (total - pre_total) as f64 / (sys - pre_sys) as f64 * cpus as f64 * 100.0
    } else {
        0.0
    };
    let stat = |k: &str| num(s, &format!("/memory_stats/stats/{k}"));
    let usage = num(s, "/memory_stats/usage").unwrap_or(0);
    // v1 reports total_inactive_file, v2 inactive_file.
    let inactive = stat("total_inactive_file")
        .or_else(|| stat("inactive_file"))
        .unwrap_or(0);
    let rss = stat("total_rss")
        .or_else(|| stat("rss"))
        .or_else(|| stat("anon"));
    let swap = stat("total_swap").or_else(|| stat("swap")).unwrap_or(0);
    let limit = num(s, "/memory_stats/limit").unwrap_or(0);
    Usage {
        cpu_time: round3(total as f64 / 1e9),
        cpu_percent: round3(cpu_percent),
        mem: rss.unwrap_or(usage.saturating_sub(inactive)) / 1024,
        mem_used: usage.saturating_sub(inactive) / 1024,
        mem_limit: limit / 1024,
        swap: swap / 1024,
        nprocs: num(s, "/pids_stats/current").unwrap_or(0),
        ..Usage::default()
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Usage {
    /// `KEY=value` lines.
    pub fn lines(&self) -> String {
        format!(
            "CONTAINER={}\nSTATE={}\nCPU_TIME={:.3}\nCPU_PERCENT={:.1}\nMEM={}\nMEM_USED={}\nMEM_LIMIT={}\nSWAP={}\nNPROCS={}\nPID={}\n",
            self.container,
            self.state,
            self.cpu_time,
            self.cpu_percent,
            self.mem,
            self.mem_used,
            self.mem_limit,
            self.swap,
            self.nprocs,
            self.pid
        )
    }
}

pub fn run(policy_path: &Path, args: &MonitorArgs) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    let env = crate::sys::environment()?;
    let job = super::job_from(&args.job, &env)?;
    if !crate::sys::is_root() {
        let how = if args.json { "json" } else { "lines" };
        return super::via_broker(&policy, "monitor", &job, vec![how.into()]);
    }
    let mut out = std::io::stdout();
    monitor(&policy, crate::sys::real_uid(), &job, args.json, &mut out)
}

/// Measure the job's container for `caller` (checked: root, a relay, or
/// the owner) and print the usage to `out`.
pub fn monitor(
    policy: &Policy,
    caller: u32,
    job: &JobId,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32> {
    let engine = Engine::new(&policy.docker.socket);
    let containers = super::find(&engine, job)?;
    super::authorize(&Nss, policy, caller, "monitor", job, &containers)?;
    // The newest container that is not finished, else the newest.
    let chosen = containers
        .iter()
        .rev()
        .find(|c| matches!(c.state.as_str(), "running" | "paused"))
        .or_else(|| containers.last());
    let usage = match chosen {
        None => Usage {
            state: "none".into(),
            ..Usage::default()
        },
        Some(c) => {
            let mut u = match engine.stats(&c.id)? {
                Some(s) => from_stats(&s),
                None => Usage::default(),
            };
            u.container = c.name.clone();
            let inspect = engine.inspect_container(&c.id)?;
            u.state = inspect
                .as_ref()
                .and_then(|v| v.pointer("/State/Status"))
                .and_then(Value::as_str)
                .unwrap_or("gone")
                .to_string();
            u.pid = inspect
                .as_ref()
                .and_then(|v| v.pointer("/State/Pid"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            u
        }
    };
    let text = if json {
        format!(
            "{}\n",
            serde_json::to_string(&usage).unwrap_or_else(|_| "{}".into())
        )
    } else {
        usage.lines()
    };
    out.write_all(text.as_bytes())
        .map_err(|e| Error::internal("writing the usage", e))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v1_sample() {
        let s = serde_json::json!({
            "pids_stats": {"current": 3},
            "cpu_stats": {"cpu_usage": {"total_usage": 1_419_957_066u64, "percpu_usage": [1, 2]},
                          "system_cpu_usage": 3_478_090_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 769_406_938u64},
                             "system_cpu_usage": 3_476_090_000_000u64, "online_cpus": 2},
            "memory_stats": {"usage": 335_872, "limit": 25_276_510_208u64,
                             "stats": {"total_rss": 57_344, "rss": 1, "total_inactive_file": 4096, "total_swap": 8192}},
        });
        let u = from_stats(&s);
        assert_eq!(u.cpu_time, 1.42);
        // 650 ms of CPU over 2 s of both CPUs' time (1 s wall): 65% of one CPU.
        assert!((u.cpu_percent - 65.055).abs() < 0.01, "{}", u.cpu_percent);
        assert_eq!(
            (u.mem, u.mem_used, u.mem_limit, u.swap, u.nprocs),
            (56, 324, 24_684_092, 8, 3)
        );
    }

    #[test]
    fn cgroup_v2_sample_and_first_sample() {
        let s = serde_json::json!({
            "pids_stats": {"current": 1},
            "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000u64}, "system_cpu_usage": 10u64},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0},
            "memory_stats": {"usage": 2_097_152, "limit": 1_048_576_000,
                             "stats": {"anon": 1_048_576, "inactive_file": 1_048_576}},
        });
        let u = from_stats(&s);
        assert_eq!(u.cpu_time, 2.0);
        // No previous sample: no percentage rather than a made-up one.
        assert_eq!(u.cpu_percent, 0.0);
        assert_eq!((u.mem, u.mem_used, u.mem_limit), (1024, 1024, 1_024_000));
        assert_eq!(from_stats(&serde_json::json!({})), Usage::default());
    }

    #[test]
    fn line_format() {
        let u = Usage {
            container: "berth-1-0-aa".into(),
            state: "running".into(),
            cpu_time: 1.5,
            cpu_percent: 99.94,
            mem: 10,
            mem_used: 11,
            mem_limit: 12,
            swap: 0,
            nprocs: 2,
            pid: 77,
        };
        assert_eq!(
            u.lines(),
            "CONTAINER=berth-1-0-aa\nSTATE=running\nCPU_TIME=1.500\nCPU_PERCENT=99.9\nMEM=10\nMEM_USED=11\nMEM_LIMIT=12\nSWAP=0\nNPROCS=2\nPID=77\n"
        );
    }
}
