//! The container a plan describes, in one structure, and its two
//! renderings: the Engine API create body the launcher sends (SPEC §13) and
//! the equivalent `docker run` command `berth explain` prints, so that an
//! admin can reproduce a job by hand. Both are pure functions of the spec:
//! they cannot drift apart.

use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The JSON type of the bodies (for callers that do not depend on
/// serde_json themselves).
pub type Json = Value;

/// A bind mount as the engine sees it: `src` is what dockerd binds (the
/// pinned staging directory when there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publish {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: String,
}

/// Everything the engine is told about the job's container, except the
/// environment's values (they are sent, never printed nor serialized).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    pub name: String,
    /// The image id (or the reference, only when explaining without an
    /// engine).
    pub image: String,
    /// `UID:GID`, numeric.
    pub user: String,
    pub group_add: Vec<u32>,
    pub cap_add: Vec<String>,
    pub pids_limit: u32,
    pub network: String,
    /// `--network=none` without docker's network sandbox: runc still gives
    /// the container a network namespace of its own with only `lo`, and the
    /// ~70 ms libnetwork spends per start is saved.
    pub network_disabled: bool,
    pub ipc: String,
    pub shm_size: Option<u64>,
    /// `None`: docker's default (the container id's prefix).
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub binds: Vec<Bind>,
    /// Destination → tmpfs options (`/tmp` for tmp.kind = tmpfs).
    pub tmpfs: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub extra_hosts: Vec<String>,
    pub publish: Vec<Publish>,
    /// `None`: the image's own entrypoint (raw-args jobs only).
    pub entrypoint: Option<String>,
    pub cmd: Vec<String>,
    /// Absolute cgroup parent inside the job's allocation (SPEC §11).
    pub cgroup_parent: Option<String>,
    pub cpuset_cpus: Option<String>,
    pub memory: Option<u64>,
    /// Names of the variables passed (values travel in the create body).
    pub env_names: Vec<String>,
    /// Host device nodes given at the same path, read-write without mknod
    /// (SPEC §12, `devices` mode).
    pub devices: Vec<PathBuf>,
    /// GPUs given by a device driver of the engine (`nvidia`, `cdi`).
    pub device_requests: Vec<DeviceRequest>,
    /// `container:<holder>`: an MPI task in its step's PID namespace
    /// (SPEC §14); `None`: a namespace of its own.
    pub pid_mode: Option<String>,
    /// docker-init as PID 1. Off for a task in a shared PID namespace,
    /// whose PID 1 is the holder's init (which reaps for it).
    pub init: bool,
    /// `memlock` unlimited (RDMA registration, `mpi.memlock`).
    pub memlock_unlimited: bool,
    /// Attach the job's stdio (every job); off for an MPI step's holder,
    /// which nobody attaches to and whose stdin then never closes.
    pub attach: bool,
}

/// `HostConfig.DeviceRequests[]`: `--gpus device=1,3` (driver `nvidia`,
/// the host indices) or CDI names (driver `cdi`, `nvidia.com/gpu=1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRequest {
    pub driver: String,
    pub ids: Vec<String>,
}

impl ContainerSpec {
    /// The body of `POST /containers/create` (API 1.41), with `env` the
    /// job's variables. No field is left to a docker CLI default: what is
    /// not here is the engine's default.
    pub fn create_body(&self, env: &[(String, String)]) -> Value {
        let mut host = Map::new();
        host.insert("AutoRemove".into(), true.into());
        host.insert("Init".into(), self.init.into());
        host.insert("CapDrop".into(), json!(["ALL"]));
        if !self.cap_add.is_empty() {
            host.insert("CapAdd".into(), json!(self.cap_add));
        }
        host.insert("SecurityOpt".into(), json!(["no-new-privileges"]));
        host.insert("PidsLimit".into(), self.pids_limit.into());
        host.insert("NetworkMode".into(), self.network.clone().into());
        host.insert("IpcMode".into(), self.ipc.clone().into());
        if let Some(p) = &self.pid_mode {
            host.insert("PidMode".into(), p.clone().into());
        }
        if let Some(s) = self.shm_size {
            host.insert("ShmSize".into(), s.into());
        }
        if self.memlock_unlimited {
            host.insert(
                "Ulimits".into(),
                json!([{"Name": "memlock", "Soft": -1, "Hard": -1}]),
            );
        }
        if !self.group_add.is_empty() {
            host.insert(
                "GroupAdd".into(),
                json!(self
                    .group_add
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()),
            );
        }
        host.insert("LogConfig".into(), json!({"Type": "none", "Config": {}}));
        host.insert(
            "Mounts".into(),
            Value::Array(
                self.binds
                    .iter()
                    .map(|b| {
                        json!({
                            "Type": "bind",
                            "Source": b.src,
                            "Target": b.dst,
                            "ReadOnly": b.readonly,
                        })
                    })
                    .collect(),
            ),
        );
        if !self.tmpfs.is_empty() {
            host.insert("Tmpfs".into(), json!(self.tmpfs));
        }
        if !self.extra_hosts.is_empty() {
            host.insert("ExtraHosts".into(), json!(self.extra_hosts));
        }
        let mut exposed = Map::new();
        if !self.publish.is_empty() {
            let mut ports: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for p in &self.publish {
                let key = format!("{}/{}", p.container_port, p.proto);
                exposed.insert(key.clone(), json!({}));
                ports.entry(key).or_default().push(json!({
                    "HostIp": p.host_ip.clone().unwrap_or_default(),
                    "HostPort": p.host_port.to_string(),
                }));
            }
            host.insert("PortBindings".into(), json!(ports));
        }
        if let Some(c) = &self.cgroup_parent {
            host.insert("CgroupParent".into(), c.clone().into());
        }
        if !self.devices.is_empty() {
            host.insert(
                "Devices".into(),
                Value::Array(
                    self.devices
                        .iter()
                        .map(|d| {
                            json!({
                                "PathOnHost": d,
                                "PathInContainer": d,
                                "CgroupPermissions": "rw",
                            })
                        })
                        .collect(),
                ),
            );
        }
        if !self.device_requests.is_empty() {
            host.insert(
                "DeviceRequests".into(),
                Value::Array(
                    self.device_requests
                        .iter()
                        .map(|r| {
                            let caps = if r.driver == "nvidia" {
                                json!([["gpu"]])
                            } else {
                                json!([])
                            };
                            json!({
                                "Driver": r.driver,
                                "Count": 0,
                                "DeviceIDs": r.ids,
                                "Capabilities": caps,
                                "Options": {},
                            })
                        })
                        .collect(),
                ),
            );
        }
        if let Some(c) = &self.cpuset_cpus {
            host.insert("CpusetCpus".into(), c.clone().into());
        }
        if let Some(m) = self.memory {
            host.insert("Memory".into(), m.into());
            // No swap beyond the job's memory.
            host.insert("MemorySwap".into(), m.into());
        }
        let mut body = Map::new();
        body.insert("Image".into(), self.image.clone().into());
        body.insert("User".into(), self.user.clone().into());
        body.insert(
            "Env".into(),
            json!(env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()),
        );
        body.insert("Cmd".into(), json!(self.cmd));
        if let Some(ep) = &self.entrypoint {
            body.insert("Entrypoint".into(), json!([ep]));
        }
        body.insert(
            "WorkingDir".into(),
            self.workdir.display().to_string().into(),
        );
        body.insert("Labels".into(), json!(self.labels));
        if let Some(h) = &self.hostname {
            body.insert("Hostname".into(), h.clone().into());
        }
        body.insert("NetworkDisabled".into(), self.network_disabled.into());
        if !exposed.is_empty() {
            body.insert("ExposedPorts".into(), Value::Object(exposed));
        }
        // Batch jobs: no TTY; stdin is open once and closed at its EOF.
        body.insert("Tty".into(), false.into());
        body.insert("OpenStdin".into(), true.into());
        body.insert("StdinOnce".into(), self.attach.into());
        body.insert("AttachStdin".into(), self.attach.into());
        body.insert("AttachStdout".into(), self.attach.into());
        body.insert("AttachStderr".into(), self.attach.into());
        body.insert("HostConfig".into(), Value::Object(host));
        Value::Object(body)
    }

    /// The create body as `berth explain --json` shows it: variables by
    /// name only (their values may be secrets).
    pub fn shown_body(&self) -> Value {
        let env: Vec<(String, String)> = self
            .env_names
            .iter()
            .map(|n| (n.clone(), "…".to_string()))
            .collect();
        self.create_body(&env)
    }

    /// The equivalent `docker run` command (argv[0] the docker binary).
    /// Variables are named with `--env NAME`, taking their values from the
    /// environment of whoever runs it.
    pub fn argv(&self, docker: &str) -> Vec<String> {
        let mut a: Vec<String> = vec![
            docker.into(),
            "run".into(),
            "--rm".into(),
            "--interactive".into(),
        ];
        if !self.attach {
            a.push("--detach".into());
        }
        if self.init {
            a.push("--init".into());
        }
        a.extend([
            "--sig-proxy=false".into(),
            "--log-driver=none".into(),
            format!("--name={}", self.name),
            format!("--user={}", self.user),
        ]);
        a.extend(self.group_add.iter().map(|g| format!("--group-add={g}")));
        a.push("--cap-drop=ALL".into());
        a.extend(self.cap_add.iter().map(|c| format!("--cap-add={c}")));
        a.push("--security-opt=no-new-privileges".into());
        a.push(format!("--pids-limit={}", self.pids_limit));
        a.push(format!("--network={}", self.network));
        a.push(format!("--ipc={}", self.ipc));
        if let Some(p) = &self.pid_mode {
            a.push(format!("--pid={p}"));
        }
        if let Some(s) = self.shm_size {
            a.push(format!("--shm-size={s}"));
        }
        if self.memlock_unlimited {
            a.push("--ulimit=memlock=-1:-1".into());
        }
        if let Some(h) = &self.hostname {
            a.push(format!("--hostname={h}"));
        }
        for (k, v) in &self.labels {
            a.push(format!("--label={k}={v}"));
        }
        if let Some(c) = &self.cgroup_parent {
            a.push(format!("--cgroup-parent={c}"));
        }
        if let Some(c) = &self.cpuset_cpus {
            a.push(format!("--cpuset-cpus={c}"));
        }
        if let Some(m) = self.memory {
            a.push(format!("--memory={m}"));
            a.push(format!("--memory-swap={m}"));
        }
        for d in &self.devices {
            a.push(format!("--device={0}:{0}:rw", d.display()));
        }
        for r in &self.device_requests {
            if r.driver == "nvidia" {
                // docker reads --gpus as CSV: several ids need the quotes.
                a.push(format!("--gpus=\"device={}\"", r.ids.join(",")));
            } else {
                a.extend(r.ids.iter().map(|i| format!("--device={i}")));
            }
        }
        for b in &self.binds {
            let mut s = format!(
                "--mount=type=bind,src={},dst={}",
                b.src.display(),
                b.dst.display()
            );
            if b.readonly {
                s.push_str(",readonly");
            }
            a.push(s);
        }
        for (dst, opts) in &self.tmpfs {
            a.push(format!("--tmpfs={dst}:{opts}"));
        }
        a.push(format!("--workdir={}", self.workdir.display()));
        a.extend(self.env_names.iter().map(|n| format!("--env={n}")));
        a.extend(self.extra_hosts.iter().map(|h| format!("--add-host={h}")));
        for p in &self.publish {
            let ip = p
                .host_ip
                .as_ref()
                .map(|i| format!("{i}:"))
                .unwrap_or_default();
            a.push(format!(
                "--publish={ip}{}:{}/{}",
                p.host_port, p.container_port, p.proto
            ));
        }
        if let Some(ep) = &self.entrypoint {
            a.push(format!("--entrypoint={ep}"));
        }
        a.push(self.image.clone());
        a.extend(self.cmd.iter().cloned());
        a
    }
}

/// The `/etc/hosts` of a container without docker's network sandbox
/// (docker writes none then): loopback and the container's own name.
pub fn hosts_file(hostname: Option<&str>) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(h) = hostname {
        let short = h.split('.').next().unwrap_or(h);
        if short != h {
            s += &format!("127.0.1.1\t{h} {short}\n");
        } else {
            s += &format!("127.0.1.1\t{h}\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "berth-1-0-ab".into(),
            image: "sha256:x".into(),
            user: "2001:2001".into(),
            group_add: vec![2001, 3000],
            cap_add: vec![],
            pids_limit: 4096,
            network: "none".into(),
            network_disabled: true,
            ipc: "private".into(),
            shm_size: None,
            hostname: Some("node1".into()),
            labels: [("berth.job".to_string(), "1".to_string())].into(),
            binds: vec![Bind {
                src: "/a".into(),
                dst: "/b".into(),
                readonly: true,
            }],
            tmpfs: BTreeMap::new(),
            workdir: "/b".into(),
            extra_hosts: vec![],
            publish: vec![],
            entrypoint: Some("/bin/sh".into()),
            cmd: vec!["-c".into(), "id".into()],
            cgroup_parent: None,
            cpuset_cpus: None,
            memory: None,
            env_names: vec!["A".into()],
            devices: vec![],
            device_requests: vec![],
            pid_mode: None,
            init: true,
            memlock_unlimited: false,
            attach: true,
        }
    }

    #[test]
    fn body_and_argv_describe_the_same_container() {
        let s = spec();
        let b = s.create_body(&[("A".into(), "x\u{0}y".into())]);
        assert_eq!(b["User"], "2001:2001");
        assert_eq!(b["Env"], json!(["A=x\u{0}y"]));
        assert_eq!(b["HostConfig"]["CapDrop"], json!(["ALL"]));
        assert_eq!(b["HostConfig"]["GroupAdd"], json!(["2001", "3000"]));
        // What docker run leaves out when empty, the body leaves out too.
        assert!(b["HostConfig"].get("CapAdd").is_none());
        assert_eq!(b["HostConfig"]["Mounts"][0]["ReadOnly"], true);
        assert_eq!(b["NetworkDisabled"], true);
        assert_eq!(b["Entrypoint"], json!(["/bin/sh"]));
        let a = s.argv("/usr/bin/docker");
        for want in [
            "--user=2001:2001",
            "--group-add=3000",
            "--cap-drop=ALL",
            "--network=none",
            "--hostname=node1",
            "--env=A",
            "--mount=type=bind,src=/a,dst=/b,readonly",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing: {a:?}");
        }
        assert_eq!(&a[a.len() - 3..], &["sha256:x", "-c", "id"]);
        // Shown bodies never carry values.
        assert_eq!(s.shown_body()["Env"], json!(["A=…"]));
    }

    #[test]
    fn devices_and_gpu_requests_render_alike() {
        let mut s = spec();
        s.devices = vec!["/dev/nvidia1".into(), "/dev/nvidiactl".into()];
        let b = s.create_body(&[]);
        assert_eq!(
            b["HostConfig"]["Devices"][0],
            json!({"PathOnHost": "/dev/nvidia1", "PathInContainer": "/dev/nvidia1", "CgroupPermissions": "rw"})
        );
        assert!(b["HostConfig"].get("DeviceRequests").is_none());
        let a = s.argv("docker");
        assert!(
            a.contains(&"--device=/dev/nvidia1:/dev/nvidia1:rw".to_string()),
            "{a:?}"
        );
        s.devices.clear();
        s.device_requests = vec![DeviceRequest {
            driver: "nvidia".into(),
            ids: vec!["1".into(), "3".into()],
        }];
        let b = s.create_body(&[]);
        assert_eq!(
            b["HostConfig"]["DeviceRequests"][0]["DeviceIDs"],
            json!(["1", "3"])
        );
        assert_eq!(
            b["HostConfig"]["DeviceRequests"][0]["Capabilities"],
            json!([["gpu"]])
        );
        assert!(b["HostConfig"].get("Devices").is_none());
        assert!(s
            .argv("docker")
            .contains(&"--gpus=\"device=1,3\"".to_string()));
        s.device_requests[0] = DeviceRequest {
            driver: "cdi".into(),
            ids: vec!["nvidia.com/gpu=1".into()],
        };
        assert_eq!(
            s.create_body(&[])["HostConfig"]["DeviceRequests"][0]["Driver"],
            "cdi"
        );
        assert!(s
            .argv("docker")
            .contains(&"--device=nvidia.com/gpu=1".to_string()));
    }

    #[test]
    fn hosts_names_the_node() {
        assert!(hosts_file(Some("n1.cluster")).contains("127.0.1.1\tn1.cluster n1\n"));
        assert!(!hosts_file(None).contains("127.0.1.1"));
    }
}
