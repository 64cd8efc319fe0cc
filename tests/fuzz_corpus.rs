//! The fuzz targets of `fuzz/` on stable Rust, on every `cargo test`: each
//! target replays its committed seeds (`fuzz/seeds/<target>/`, which also
//! hold every input a fuzzer ever crashed) and then a bounded number of
//! deterministic mutations of them. libFuzzer itself (`cargo fuzz run`, see
//! `fuzz/README.md` and `tests/fuzz-smoke.sh`) explores far more; this
//! harness keeps every finding fixed and the targets compiling.
//!
//! `BERTH_FUZZ_ITERS` sets the number of mutated inputs per target
//! (default 3000); `BERTH_FUZZ_SEED` the first seed of the generator.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Tokens that matter to berth's parsers, spliced into inputs.
const DICT: &[&[u8]] = &[
    b"/",
    b"..",
    b":",
    b",",
    b"=",
    b"\n",
    b"\0",
    b"\"",
    b"'",
    b"\\",
    b" ",
    b"\xc3\xa9",
    b"\xde\x98",
    b"\xff",
    b"/storage1/fs1/alice",
    b"/storage1/fs1/alice/link-out",
    b"/scratch1/fs1/up",
    b"/proc/self/fd/3",
    b"/etc",
    b"/tmp",
    b"LSF_DOCKER_VOLUMES=",
    b"LSF_DOCKER_WORKDIR=",
    b"LSF_DOCKER_ENTRYPOINT=",
    b"LSF_DOCKER_NETWORK=",
    b"LSF_DOCKER_PORTS=",
    b"LSB_CONTAINER_IMAGE=",
    b"LD_PRELOAD=",
    b"BASH_FUNC_f%%=() {",
    b"type=volume,src=",
    b"docker(",
    b"bundle:",
    b"sha256:",
    b"{\"process\":{\"args\":[",
    b"[[volumes]]\nroot=",
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            4 | 5 => {
                let tok = DICT[rng.below(DICT.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, tok.iter().copied());
            }
            6 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ if len > 0 => {
                let i = rng.below(len);
                let set = b"/:,=\n\0\"'\\. -_";
                input[i] = set[rng.below(set.len())];
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 16);
}

fn seeds_of(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn shown(input: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(input))
}

/// Run one input; on a panic, name the input and fail.
fn one(target: &str, f: fn(&[u8]), input: &[u8], origin: &str) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        panic!(
            "fuzz target {target} failed on {origin}: {} ({} bytes); \
             save it under fuzz/seeds/{target}/ once fixed",
            shown(input),
            input.len()
        );
    }
}

fn run(target: &str) {
    let f = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .unwrap_or_else(|| panic!("no target {target}"))
        .1;
    let seeds = seeds_of(target);
    for (p, s) in &seeds {
        one(target, f, s, &p.display().to_string());
    }
    let iters: usize = std::env::var("BERTH_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let start: u64 = std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(start
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(7) ^ b as u64)
        | 1);
    let bytes: Vec<Vec<u8>> = seeds.into_iter().map(|(_, s)| s).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ran = 0;
    for i in 0..iters {
        let mut input = bytes[rng.below(bytes.len())].clone();
        mutate(&mut rng, &mut input, &bytes);
        one(target, f, &input, &format!("mutation {i}"));
        ran += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!(
        "fuzz {target}: {} seeds and {ran} mutated inputs",
        bytes.len()
    );
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for (n, _) in targets::TARGETS {
                assert!(tested.contains(n), "target {n} has no test here");
            }
        }
    };
}

fuzz_tests!(
    volume_spec,
    env_file,
    esub_parm,
    image_ref,
    slurm_config,
    bundle_toml,
    tar_inspect,
    request_plan,
    broker_frame,
    job_file,
    policy_toml,
    cgroup_path,
    engine_reply,
    gpu_record,
);
