//! The GPUs a job holds (SPEC §12), from trusted sources only: the job's
//! device cgroup as the kernel states it, or the scheduler's own record of
//! the allocation, and what its container gets from them. Pure: the
//! launcher's findings in, a decision out (`sys::devices` reads the
//! kernel). Nothing here looks at the job's environment
//! (`CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`, `SLURM_JOB_GPUS` are
//! the user's to set, and never widen anything).

use crate::core::error::{Denial, Error, Result};
use crate::core::policy::{GpuMode, GpuPolicy};
use serde::Serialize;
use std::path::PathBuf;

/// A character device node on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// The GPU's UUID as the NVIDIA driver states it for this minor
    /// (`/proc/driver/nvidia/gpus/*/information`); `None` without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

impl DeviceNode {
    /// The GPU's index as NVIDIA's tools name it: the `N` of `/dev/nvidiaN`
    /// (the device's minor number), falling back to the minor.
    pub fn index(&self) -> u32 {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_start_matches(|c: char| !c.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .unwrap_or(self.minor)
    }
}

/// A GPU UUID as NVIDIA's driver prints it (`GPU-` and hex with dashes),
/// safe in an argv and a CDI name.
pub fn valid_gpu_uuid(u: &str) -> bool {
    u.strip_prefix("GPU-").is_some_and(|h| {
        (8..=64).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    })
}

/// What the launcher found about a job's GPUs: an input fact of the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gpus {
    /// Every GPU node on this node (`gpus.devices`), in index order.
    pub present: Vec<DeviceNode>,
    /// The control devices on this node (`gpus.control_devices`).
    pub control: Vec<DeviceNode>,
    /// The GPU nodes the job holds (a subset of `present`), in index order.
    pub allocated: Vec<DeviceNode>,
    /// Where the allocation was read from, or why it could not be.
    pub source: String,
}

/// What the container gets (`berth explain` shows it, the audit record
/// carries it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuPlan {
    pub mode: GpuMode,
    /// The GPUs given: the container's GPU `i` is `given[i]`.
    pub given: Vec<DeviceNode>,
    /// Control devices given with them (`devices` mode).
    pub control: Vec<DeviceNode>,
    pub source: String,
}

impl GpuPlan {
    /// `CUDA_VISIBLE_DEVICES` inside: numbered from 0, as Slurm does under
    /// ConstrainDevices (the container sees only the nodes it was given).
    pub fn cuda_visible(&self) -> Option<String> {
        (!self.given.is_empty()).then(|| {
            (0..self.given.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// How the host names the GPUs given, for `--gpus device=…` and CDI
    /// names: the UUID the driver gives for the device's minor, which
    /// cannot name another GPU (NVML's index follows PCI order, which need
    /// not be the minor's), else the index.
    pub fn host_ids(&self) -> Vec<String> {
        self.given
            .iter()
            .map(|g| g.uuid.clone().unwrap_or_else(|| g.index().to_string()))
            .collect()
    }

    /// `NVIDIA_VISIBLE_DEVICES` inside. An NVIDIA runtime on the host reads
    /// it (an image's `ENV NVIDIA_VISIBLE_DEVICES=all` would otherwise give
    /// every GPU of the node when the NVIDIA runtime is docker's default):
    /// `void` unless the toolkit is the way GPUs are given, and then the
    /// host indices docker itself passes to the toolkit's hook.
    pub fn nvidia_visible(&self) -> String {
        if self.mode == GpuMode::Nvidia && !self.given.is_empty() {
            self.host_ids().join(",")
        } else {
            "void".into()
        }
    }

    /// One line for `berth explain`.
    pub fn describe(&self) -> String {
        if self.given.is_empty() {
            return format!("none ({})", self.source);
        }
        let gpus: Vec<String> = self
            .given
            .iter()
            .enumerate()
            .map(|(i, g)| format!("{} as {i}", g.path.display()))
            .collect();
        let how = match self.mode {
            GpuMode::Nvidia => ", through the NVIDIA container toolkit",
            GpuMode::Cdi => ", as CDI devices",
            _ => "",
        };
        format!("{} ({}{how})", gpus.join(", "), self.source)
    }
}

/// Decide what the container gets from the job's GPUs. A job that holds
/// GPUs on a node whose policy gives none is denied (`gpus.mode`) rather
/// than run without them.
pub fn plan_gpus(policy: &GpuPolicy, found: Option<&Gpus>) -> Result<GpuPlan> {
    let none = |source: String| GpuPlan {
        mode: policy.mode,
        given: Vec::new(),
        control: Vec::new(),
        source,
    };
    let Some(found) = found else {
        return Ok(none("no GPU device nodes on this node".into()));
    };
    if found.allocated.is_empty() {
        return Ok(none(match found.source.strip_prefix("from ") {
            // "none (the job holds none, by the job's device cgroup)"
            Some(src) => format!("the job holds none, by {src}"),
            None => found.source.clone(),
        }));
    }
    if policy.mode == GpuMode::None {
        let held: Vec<String> = found
            .allocated
            .iter()
            .map(|g| g.path.display().to_string())
            .collect();
        return Err(Error::Denied(Denial::new(
            "gpus.mode",
            held.join(","),
            format!(
                "the job holds GPUs ({}, {}) but this node's policy gives containers none (gpus.mode = \"none\")",
                held.join(", "),
                found.source
            ),
            "submit the job without GPUs, or ask the site to set [gpus] mode in the berth policy of this node",
        )));
    }
    // Only the allocated nodes that are GPUs by the policy, never more.
    let given: Vec<DeviceNode> = found
        .allocated
        .iter()
        .filter(|a| found.present.contains(a))
        .cloned()
        .collect();
    Ok(GpuPlan {
        mode: policy.mode,
        control: if policy.mode == GpuMode::Devices {
            found.control.clone()
        } else {
            Vec::new()
        },
        given,
        source: found.source.clone(),
    })
}

/// The nodes of `present` whose GRES index is in `indices`: Slurm numbers
/// a node's GPUs in gres.conf order, which for `File=/dev/nvidia[0-N]` (and
/// for AutoDetect=nvml) is the device's own number.
pub fn by_indices(present: &[DeviceNode], indices: &[u32]) -> Vec<DeviceNode> {
    present
        .iter()
        .filter(|d| indices.contains(&d.index()))
        .cloned()
        .collect()
}

/// One side of a v1 `devices.list` line: a number or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    Any,
    N(u32),
}

/// A line of a v1 `devices.list`: `c 195:0 rwm`, `a *:* rwm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `a` (all), `c` (char) or `b` (block).
    pub kind: char,
    pub major: Num,
    pub minor: Num,
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

/// What a job's v1 device cgroup says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceList {
    /// `a *:* rwm`: the cgroup allows everything not explicitly denied, and
    /// the kernel does not list the denials (Slurm's ConstrainDevices on v1
    /// writes only denials, so a constrained job reads like this too). The
    /// list alone allocates nothing: `sys::devices` probes the kernel.
    DefaultAllow,
    /// Default deny: exactly these are allowed.
    Allow(Vec<Rule>),
}

fn num(s: &str) -> Option<Num> {
    if s == "*" {
        return Some(Num::Any);
    }
    (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok().map(Num::N))
        .flatten()
}

/// Parse one `devices.list` line.
pub fn parse_rule(line: &str) -> Option<Rule> {
    let mut it = line.split_whitespace();
    let kind = it.next()?;
    let (maj, min) = it.next()?.split_once(':')?;
    let access = it.next()?;
    if it.next().is_some() || !matches!(kind, "a" | "b" | "c") || access.is_empty() {
        return None;
    }
    if !access.bytes().all(|b| b"rwm".contains(&b)) {
        return None;
    }
    Some(Rule {
        kind: kind.chars().next()?,
        major: num(maj)?,
        minor: num(min)?,
        read: access.contains('r'),
        write: access.contains('w'),
        mknod: access.contains('m'),
    })
}

/// Parse a whole v1 `devices.list`. `None`: not the kernel's format.
pub fn parse_devices_list(text: &str) -> Option<DeviceList> {
    let mut rules = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        rules.push(parse_rule(l)?);
    }
    // The kernel prints `a *:* rwm` alone for a default-allow cgroup.
    if rules.iter().any(|r| r.kind == 'a') {
        return Some(DeviceList::DefaultAllow);
    }
    Some(DeviceList::Allow(rules))
}

/// Whether a default-deny list lets the job read and write char device
/// `major:minor` (what a GPU needs).
pub fn allows(rules: &[Rule], major: u32, minor: u32) -> bool {
    let hit = |n: Num, v: u32| n == Num::Any || n == Num::N(v);
    rules
        .iter()
        .any(|r| r.kind == 'c' && hit(r.major, major) && hit(r.minor, minor) && r.read && r.write)
}

/// GPU indices in a `scontrol show job -d` GRES value, the scheduler's
/// record of a node's allocation: `gpu:a100:2(IDX:0-1)`, `gpu(IDX:0,2)`,
/// `gpu:1(IDX:1)`, several comma-separated at top level
/// (`gpu:a100:1(IDX:0),gpu:v100:1(IDX:3)`). Other GRES are ignored.
/// `None`: a gpu entry whose indices cannot be read (say nothing rather
/// than guess). Indices are the node's GRES indices (gres.conf order).
pub fn parse_gres_indices(gres: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    // Split at top-level commas (IDX lists hold commas too).
    let mut depth = 0i32;
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, ch) in gres.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&gres[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    parts.push(&gres[start..]);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (name, rest) = p.split_once('(').unwrap_or((p, ""));
        if name.split(':').next() != Some("gpu") {
            continue;
        }
        let idx = rest.strip_suffix(')')?.strip_prefix("IDX:")?;
        if idx == "N/A" {
            continue;
        }
        for r in idx.split(',') {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            let (Some(Num::N(lo)), Some(Num::N(hi))) = (num(lo), num(hi)) else {
                return None;
            };
            if hi < lo || hi - lo > 1024 {
                return None;
            }
            out.extend(lo..=hi);
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The GRES of `node` in job `job`'s record, from `scontrol show job -d
/// <job>` (its multi-line form). Fields the user controls (JobName,
/// Comment, WorkDir, Command, …) share that text, and may hold newlines,
/// so the record is read strictly: exactly one record whose first line is
/// `JobId=<job> …` (an array's or a het job's siblings are others'),
/// exactly one `JOB_GRES=` line in it, and the node groups are the
/// `Nodes=` lines right after that one, which Slurm writes between lines
/// no user controls. The group naming `node` is used, or the job's only
/// group (all of a job's nodes in one group hold the same indices).
/// Anything else is an error: GPUs are then not given.
pub fn gres_for(scontrol: &str, job: &str, node: &str) -> std::result::Result<String, String> {
    let lines: Vec<&str> = scontrol.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("JobId="))
        .collect();
    let ours: Vec<usize> = starts
        .iter()
        .copied()
        .filter(|&i| lines[i].split_whitespace().next() == Some(&format!("JobId={job}")))
        .collect();
    let [start] = ours.as_slice() else {
        return Err(format!("{} records of job {job}, not one", ours.len()));
    };
    let end = starts
        .iter()
        .copied()
        .find(|&i| i > *start)
        .unwrap_or(lines.len());
    let record = &lines[*start..end];
    let gres_lines: Vec<usize> = (0..record.len())
        .filter(|&i| record[i].trim_start().starts_with("JOB_GRES="))
        .collect();
    let [at] = gres_lines.as_slice() else {
        return Err(format!(
            "{} JOB_GRES lines in job {job}'s record, not one",
            gres_lines.len()
        ));
    };
    let groups: Vec<&str> = record[at + 1..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with("Nodes="))
        .collect();
    let gres_of = |l: &str| -> std::result::Result<String, String> {
        let g: Vec<&str> = l
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("GRES="))
            .collect();
        match g.as_slice() {
            [one] => Ok(one.to_string()),
            _ => Err(format!("node group {l:?} has {} GRES fields", g.len())),
        }
    };
    for l in &groups {
        let nodes = l
            .trim_start_matches("Nodes=")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if node_in(nodes, node) {
            return gres_of(l);
        }
    }
    match groups.as_slice() {
        [one] => gres_of(one),
        [] => Err(format!("job {job}'s record has no node groups")),
        _ => Err(format!("no node group of job {job} names node {node}")),
    }
}

/// Whether Slurm's hostlist `list` (`vm`, `n[1-3,7]`) names `node`.
fn node_in(list: &str, node: &str) -> bool {
    let Some((prefix, rest)) = list.split_once('[') else {
        return list.split(',').any(|n| n == node);
    };
    let Some(ranges) = rest.strip_suffix(']') else {
        return false;
    };
    let Some(suffix) = node.strip_prefix(prefix) else {
        return false;
    };
    ranges.split(',').any(|r| {
        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
        match (lo.parse::<u64>(), hi.parse::<u64>(), suffix.parse::<u64>()) {
            (Ok(l), Ok(h), Ok(n)) => {
                (l..=h).contains(&n) && (suffix.len() == lo.len() || !lo.starts_with('0'))
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_list_forms() {
        assert_eq!(
            parse_devices_list("a *:* rwm\n"),
            Some(DeviceList::DefaultAllow)
        );
        let Some(DeviceList::Allow(r)) =
            parse_devices_list("c 1:3 rwm\nc 195:1 rw\nc 195:255 rwm\nb *:* m\nc 136:* rwm\n")
        else {
            panic!("not parsed")
        };
        assert!(allows(&r, 195, 1));
        assert!(allows(&r, 195, 255));
        assert!(!allows(&r, 195, 0));
        // Block devices and mknod-only rules give no access.
        assert!(!allows(&r, 8, 0));
        assert!(allows(&r, 136, 4));
        let Some(DeviceList::Allow(m)) = parse_devices_list("c 195:0 m\nc 195:1 r\n") else {
            panic!()
        };
        assert!(!allows(&m, 195, 0) && !allows(&m, 195, 1));
        // An empty list is default deny with nothing allowed.
        assert_eq!(parse_devices_list(""), Some(DeviceList::Allow(vec![])));
        for bad in [
            "x 1:1 rwm",
            "c 1:1",
            "c 1-1 rwm",
            "c 1:1 rwx",
            "c a:1 rwm",
            "c 1:1 rwm extra",
            "c 99999999999:1 rwm",
            "c -1:1 rwm",
        ] {
            assert!(parse_devices_list(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn gres_forms() {
        assert_eq!(parse_gres_indices("gpu:a100:2(IDX:0-1)"), Some(vec![0, 1]));
        assert_eq!(parse_gres_indices("gpu(IDX:0,2)"), Some(vec![0, 2]));
        assert_eq!(parse_gres_indices("gpu:1(IDX:1)"), Some(vec![1]));
        assert_eq!(
            parse_gres_indices("gpu:a100:1(IDX:0),gpu:v100:2(IDX:3,5-6)"),
            Some(vec![0, 3, 5, 6])
        );
        assert_eq!(
            parse_gres_indices("mps:100(0/100,0/100),gpu:1(IDX:2)"),
            Some(vec![2])
        );
        assert_eq!(parse_gres_indices(""), Some(vec![]));
        assert_eq!(parse_gres_indices("gpu:0(IDX:N/A)"), Some(vec![]));
        for bad in [
            "gpu:1",
            "gpu(IDX:1-0)",
            "gpu(IDX:a)",
            "gpu(IDX:0-99999)",
            "gpu(0)",
            "gpu(IDX:1))",
        ] {
            assert!(parse_gres_indices(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn scontrol_records_are_read_strictly() {
        let rec = |name: &str, groups: &str| {
            format!(
                "JobId=5 JobName={name}\n   UserId=a(1) GroupId=a(1)\n   NodeList=vm\n   JOB_GRES=gpu:1\n{groups}   MinCPUsNode=1 MinMemoryCPU=100M\n   Command=/bin/x\n   WorkDir=/w\n"
            )
        };
        let one = rec("x", "     Nodes=vm CPU_IDs=0 Mem=50 GRES=gpu:1(IDX:0)\n");
        assert_eq!(gres_for(&one, "5", "vm").as_deref(), Ok("gpu:1(IDX:0)"));
        // One group: its GRES, whatever the node calls itself.
        assert_eq!(
            gres_for(&one, "5", "vm.cluster").as_deref(),
            Ok("gpu:1(IDX:0)")
        );
        assert!(gres_for(&one, "6", "vm").is_err());
        let multi = rec(
            "x",
            "     Nodes=n[1-2] CPU_IDs=0 Mem=50 GRES=gpu:2(IDX:0-1)\n     Nodes=n3 CPU_IDs=0 Mem=50 GRES=gpu(IDX:3)\n",
        );
        assert_eq!(gres_for(&multi, "5", "n2").as_deref(), Ok("gpu:2(IDX:0-1)"));
        assert_eq!(gres_for(&multi, "5", "n3").as_deref(), Ok("gpu(IDX:3)"));
        assert!(gres_for(&multi, "5", "n4").is_err());
        // Forgeries through user fields: on the first line, or with newlines.
        let forged = rec(
            "x Nodes=vm GRES=gpu:2(IDX:0-1)",
            "     Nodes=vm CPU_IDs=0 Mem=50 GRES=\n",
        );
        assert_eq!(gres_for(&forged, "5", "vm").as_deref(), Ok(""));
        let forged = rec(
            "x\n   JOB_GRES=gpu:2\n     Nodes=vm CPU_IDs=0 Mem=50 GRES=gpu:2(IDX:0-1)",
            "     Nodes=vm CPU_IDs=0 Mem=50 GRES=\n",
        );
        assert!(gres_for(&forged, "5", "vm").is_err());
        let forged = rec(
            "x\nJobId=5 JobName=y",
            "     Nodes=vm CPU_IDs=0 Mem=50 GRES=\n",
        );
        assert!(gres_for(&forged, "5", "vm").is_err());
        let two = rec(
            "x",
            "     Nodes=vm CPU_IDs=0 Mem=50 GRES=gpu(IDX:0) GRES=gpu(IDX:1)\n",
        );
        assert!(gres_for(&two, "5", "vm").is_err());
        // An array's siblings are other records.
        let array = format!("{one}JobId=6 ArrayJobId=5\n   JOB_GRES=gpu:1\n     Nodes=vm CPU_IDs=1 Mem=50 GRES=gpu:1(IDX:1)\n");
        assert_eq!(gres_for(&array, "5", "vm").as_deref(), Ok("gpu:1(IDX:0)"));
        assert_eq!(gres_for(&array, "6", "vm").as_deref(), Ok("gpu:1(IDX:1)"));
    }

    #[test]
    fn the_toolkit_and_cdi_get_the_gpus_uuid_when_the_driver_gives_it() {
        let g = DeviceNode {
            path: "/dev/nvidia1".into(),
            major: 195,
            minor: 1,
            uuid: Some("GPU-5b3f1c2a-0000-1111-2222-333344445555".into()),
        };
        let found = Gpus {
            present: vec![g.clone()],
            control: vec![],
            allocated: vec![g],
            source: "from the job's device cgroup".into(),
        };
        let mut p = GpuPolicy {
            mode: GpuMode::Nvidia,
            ..Default::default()
        };
        let plan = plan_gpus(&p, Some(&found)).unwrap();
        assert_eq!(
            plan.host_ids(),
            ["GPU-5b3f1c2a-0000-1111-2222-333344445555"]
        );
        assert_eq!(
            plan.nvidia_visible(),
            "GPU-5b3f1c2a-0000-1111-2222-333344445555"
        );
        assert_eq!(plan.cuda_visible().as_deref(), Some("0"));
        p.mode = GpuMode::Devices;
        assert_eq!(
            plan_gpus(&p, Some(&found)).unwrap().nvidia_visible(),
            "void"
        );
        assert!(valid_gpu_uuid("GPU-5b3f1c2a-0000-1111-2222-333344445555"));
        for bad in ["GPU-", "5b3f1c2a", "GPU-x;rm", "GPU-12345678 --privileged"] {
            assert!(!valid_gpu_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn index_of_a_node() {
        let n = |p: &str, m| DeviceNode {
            path: p.into(),
            major: 195,
            minor: m,
            uuid: None,
        };
        assert_eq!(n("/dev/nvidia3", 3).index(), 3);
        assert_eq!(n("/dev/gpu", 7).index(), 7);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,200}") {
            let _ = parse_devices_list(&s);
            let _ = parse_gres_indices(&s);
            let _ = gres_for(&s, "5", "vm");
        }
    }
}
