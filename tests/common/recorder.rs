//! An engine recorder: a unix-socket proxy in front of dockerd that keeps
//! each Engine API request berth sends (method, path, JSON body) and
//! passes every byte through unchanged in both directions (hijacked attach
//! streams included). Tests assert on what the engine actually got, and
//! on what the job saw from inside, instead of on a docker command line.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the engine received it.
#[derive(Debug, Clone)]
pub struct EngineCall {
    pub method: String,
    /// The path without the API version prefix (`/containers/create?…`).
    pub path: String,
    /// The JSON body (`Null` when there was none or it was not JSON).
    pub body: serde_json::Value,
}

impl EngineCall {
    pub fn is_create(&self) -> bool {
        self.method == "POST" && self.path.starts_with("/containers/create")
    }
    /// The /bin/sh probe of an image (a never-started container).
    pub fn is_probe(&self) -> bool {
        self.body["Labels"]["berth.probe"] == "1"
    }
    pub fn is_job(&self, job: &str) -> bool {
        self.body["Labels"]["berth.job"] == job
    }
    pub fn host(&self) -> &serde_json::Value {
        &self.body["HostConfig"]
    }
    /// The container's environment as `NAME=value` entries.
    pub fn env(&self) -> Vec<String> {
        self.body["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// The value of variable `name` in the container's environment.
    pub fn env_var(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find_map(|e| e.strip_prefix(&format!("{name}=")).map(str::to_string))
    }
    /// Bind mounts as (source, target, readonly).
    pub fn mounts(&self) -> Vec<(String, String, bool)> {
        self.host()["Mounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["Source"].as_str().unwrap_or("").to_string(),
                            m["Target"].as_str().unwrap_or("").to_string(),
                            m["ReadOnly"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Faults a test can make the "engine" show.
#[derive(Default)]
struct Faults {
    /// Answer container creates with this status and message, as an
    /// engine that refuses would.
    refuse_create: Option<(u16, String)>,
    /// Live connections by number (to cut them all at once: the engine
    /// "goes away"); each proxy removes its own when it ends.
    live: Vec<(u64, UnixStream)>,
    next: u64,
}

pub struct Recorder {
    path: PathBuf,
    calls: Arc<Mutex<Vec<EngineCall>>>,
    stop: Arc<AtomicBool>,
    faults: Arc<Mutex<Faults>>,
}

impl Recorder {
    pub fn start(path: &Path, upstream: &str) -> Recorder {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("recorder socket {}: {e}", path.display()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (c, st, up, f) = (
            calls.clone(),
            stop.clone(),
            upstream.to_string(),
            faults.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let (c, up, f) = (c.clone(), up.clone(), f.clone());
                std::thread::spawn(move || proxy(client, &up, &c, &f));
            }
        });
        Recorder {
            path: path.to_path_buf(),
            calls,
            stop,
            faults,
        }
    }

    /// From now on, answer every job's container create (not the /bin/sh
    /// probes) with `status` and the engine-style error `message`.
    pub fn refuse_creates(&self, status: u16, message: &str) {
        self.faults.lock().unwrap().refuse_create = Some((status, message.to_string()));
    }

    /// Cut every open connection (attach streams, waits) as an engine that
    /// stops would; later connections are served again.
    pub fn cut(&self) {
        for (_, s) in self.faults.lock().unwrap().live.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn calls(&self) -> Vec<EngineCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
    }
}

/// Read the request head and its Content-Length body from the client,
/// record it, send it upstream, then splice both directions.
fn proxy(
    mut client: UnixStream,
    upstream: &str,
    calls: &Mutex<Vec<EngineCall>>,
    faults: &Mutex<Faults>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let raw_path = first.next().unwrap_or("");
    let path = match raw_path.strip_prefix("/v") {
        Some(rest) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_default(),
        None => raw_path.to_string(),
    };
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
    let call = EngineCall { method, path, body };
    let refuse = faults.lock().unwrap().refuse_create.clone();
    if let (true, Some((status, msg))) = (call.is_create() && !call.is_probe(), refuse) {
        calls.lock().unwrap().push(call);
        let body = serde_json::json!({ "message": msg }).to_string();
        let _ = write!(
            client,
            "HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    calls.lock().unwrap().push(call);
    let Ok(mut engine) = UnixStream::connect(upstream) else {
        return;
    };
    if engine.write_all(&buf).is_err() {
        return;
    }
    let me = {
        let mut f = faults.lock().unwrap();
        f.next += 1;
        let me = f.next;
        if let (Ok(a), Ok(b)) = (client.try_clone(), engine.try_clone()) {
            f.live.push((me, a));
            f.live.push((me, b));
        }
        me
    };
    splice(client, engine);
    faults.lock().unwrap().live.retain(|(n, _)| *n != me);
}

fn splice(mut client: UnixStream, mut engine: UnixStream) {
    let (Ok(mut c2), Ok(mut e2)) = (client.try_clone(), engine.try_clone()) else {
        return;
    };
    // client → engine, passing a half-close on (stdin's EOF).
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut e2);
        let _ = e2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut engine, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    // The client may never send more (a wait or attach it abandons):
    // don't keep its half open.
    let _ = client.shutdown(std::net::Shutdown::Read);
    let _ = up.join();
}
