//! Planning cost in-process: policy parse excluded, identity and request
//! given, a real filesystem view. `cargo bench --bench plan`.

use berth::core::facts::ImageFacts;
use berth::core::identity::{GroupEntry, Identity};
use berth::core::plan::{plan, Context, HostFs};
use berth::core::policy::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Fs;
impl HostFs for Fs {
    fn canonicalize(&self, p: &Path) -> std::io::Result<PathBuf> {
        Ok(p.to_path_buf())
    }
    fn is_dir(&self, _: &Path) -> std::io::Result<bool> {
        Ok(true)
    }
    fn user_can_access(
        &self,
        _: &Identity,
        p: &[PathBuf],
    ) -> berth::core::error::Result<Vec<bool>> {
        Ok(vec![true; p.len()])
    }
}

fn main() {
    let policy = Policy::parse(
        "[cgroup]\nrequire_job=false\n[images]\nallow=['docker.io/library/*']\n[[volumes]]\nroot='/storage1/fs1'\nmode='rw'\n",
        "bench",
    )
    .unwrap();
    let id = Identity {
        name: "alice".into(),
        uid: 2001,
        gid: 2001,
        groups: (0..8)
            .map(|i| GroupEntry {
                gid: 3000 + i,
                name: format!("g{i}"),
            })
            .collect(),
        primary_group_name: "alice".into(),
        home: "/home/alice".into(),
        shell: "/bin/bash".into(),
    };
    let mut env: BTreeMap<String, String> = (0..60)
        .map(|i| (format!("VAR{i}"), "x".repeat(40)))
        .collect();
    env.insert("LSB_CONTAINER_IMAGE".into(), "alpine".into());
    env.insert("LSB_JOBID".into(), "1".into());
    env.insert("LS_SUBCWD".into(), "/storage1/fs1/alice".into());
    env.insert(
        "LSF_DOCKER_VOLUMES".into(),
        "/storage1/fs1/a:/a /storage1/fs1/b:/b:ro".into(),
    );
    let facts = ImageFacts {
        id: format!("sha256:{}", "a".repeat(64)),
        entrypoint: vec![],
        cmd: vec![],
        workdir: String::new(),
        user: String::new(),
        has_shell: true,
        volumes: vec![],
        owner: None,
    };
    let ctx = Context {
        nonce: "abcd".into(),
        env_file_vars: vec![],
        ..Default::default()
    };
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let req =
            berth::core::request::from_env(&env, None, vec!["python train.py".into()]).unwrap();
        let p = plan(&policy, &id, &req, Some(&facts), &Fs, &ctx).unwrap();
        let _ = std::hint::black_box(p);
    }
    let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!("request parse + plan: {per:.1} us per job ({n} iterations, 64 env vars, 2 volumes, 8 groups)");
}
