//! `berth bundle create NAME --from-image IMG | --from-save TAR | --from-export TAR`.
//!
//! Every bundle's image.tar is a `docker save` tar holding exactly one
//! image, so every bundle is content-addressed: its image id is the sha256
//! of the config inside, which pins each layer's diff_id.
//!
//! * `--from-image` runs `docker save` and normalizes its output.
//! * `--from-save` normalizes a save tar: classic manifest.json or OCI
//!   layout (a manifest.json is written for an OCI-only tar so any engine can
//!   load it). Normalizing drops the tags (`RepoTags`, `repositories`, OCI
//!   name annotations): loading a bundle never moves a tag on a node.
//! * `--from-export` converts a flat rootfs into a one-layer save tar: the
//!   export tar itself becomes the layer (its sha256 is the diff_id), and a
//!   config is written from the `--change` lines with `created` set to the
//!   newest file date in the tar. The same export and changes give the same
//!   image id every time (unlike `docker import`, which mints a new one).
//!
//! The bundle is written into a private temporary sibling, checked (facts
//! re-read from the written tar, layers hashed against the config), synced,
//! and published by one atomic rename.

use super::cache::{Cache, META, TAR};
use super::tarinspect::{self, clean_path, hex, Depth, Layout, TarError};
use super::Meta;
use crate::cli::BundleCreateArgs;
use crate::core::error::{Error, Result};
use crate::core::policy::Policy;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn bad_source(what: &str, e: impl std::fmt::Display) -> Error {
    let e = e.to_string();
    // The tar crate's words for a tar that ends too soon.
    let hint = if e.contains("unexpected EOF") || e.contains("failed to fill whole buffer") {
        " (the tar is truncated)"
    } else {
        ""
    };
    Error::Malformed(format!("{what}: {e}{hint}"))
}

/// A writer that hashes what passes through (SHA-256 and BLAKE3).
pub struct HashWriter<W: Write> {
    inner: W,
    sha: Sha256,
    b3: blake3::Hasher,
    n: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            sha: Sha256::new(),
            b3: blake3::Hasher::new(),
            n: 0,
        }
    }
    /// (sha256 hex, blake3 hex, bytes, inner)
    pub fn finish(self) -> (String, String, u64, W) {
        (
            hex(&self.sha.finalize()),
            self.b3.finalize().to_hex().to_string(),
            self.n,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.b3.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hash a whole file: (sha256 hex, blake3 hex, size).
pub fn hash_file(f: &File) -> Result<(String, String, u64)> {
    let mut w = HashWriter::new(io::sink());
    let mut r = f;
    use std::io::Seek;
    r.seek(io::SeekFrom::Start(0))
        .map_err(|e| Error::internal("seek", e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| Error::internal("read image.tar", e))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .map_err(|e| Error::internal("hash", e))?;
    }
    let (s, b, n, _) = w.finish();
    Ok((s, b, n))
}

type Out = tar::Builder<PipeWriter>;

/// The bundle writer's output: bytes gathered into 1 MiB chunks that a
/// second thread hashes (SHA-256 and BLAKE3 of the whole tar) and writes,
/// while this thread reads the source and hashes each layer: the two
/// SHA-256 streams of a push run on two cores instead of one after the
/// other. Refuses to grow past `limit` (a user's reservation).
pub struct PipeWriter {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<io::Result<Written>>>,
    left: u64,
}

const CHUNK: usize = 1 << 20;

/// What the writer thread ends with: its hashes, and the file.
type Written = (HashWriter<File>, File);

impl PipeWriter {
    pub fn new(file: File, limit: u64) -> Result<PipeWriter> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let out = file
            .try_clone()
            .map_err(|e| Error::internal("dup image.tar", e))?;
        let worker = std::thread::Builder::new()
            .name("bundle-writer".into())
            .spawn(move || -> io::Result<Written> {
                let mut w = HashWriter::new(out);
                for chunk in rx {
                    w.write_all(&chunk)?;
                }
                Ok((w, file))
            })
            .map_err(|e| Error::internal("starting the bundle writer thread", e))?;
        Ok(PipeWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            worker: Some(worker),
            left: limit,
        })
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        match self.tx.as_ref().map(|tx| tx.send(chunk)) {
            Some(Ok(())) => Ok(()),
            // The writer stopped on an error (a full disk): say which.
            _ => {
                self.tx = None;
                match self.worker.take().map(|w| w.join()) {
                    Some(Ok(Err(e))) => Err(e),
                    _ => Err(io::Error::other("the bundle writer stopped")),
                }
            }
        }
    }

    /// Flush, stop the writer: (sha256 hex, blake3 hex, bytes, the file).
    pub fn finish(mut self) -> io::Result<(String, String, u64, File)> {
        self.send()?;
        self.tx = None;
        let (w, file) = self
            .worker
            .take()
            .ok_or_else(|| io::Error::other("finished twice"))?
            .join()
            .map_err(|_| io::Error::other("the bundle writer thread panicked"))??;
        let (sha, b3, n, _) = w.finish();
        Ok((sha, b3, n, file))
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() as u64 > self.left {
            return Err(io::Error::other(format!("image.tar {PAST_RESERVE}")));
        }
        self.left -= data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == CHUNK {
                self.send()?;
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        // An abandoned write: stop the thread, wait for it.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// SHA-256 of every regular entry copied, by path: the layers' digests,
/// taken as their bytes pass into the bundle's tar.
pub type Digests = BTreeMap<String, String>;

/// Hashes what is read through it.
struct Tee<'a, R: Read> {
    r: R,
    h: &'a mut Sha256,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(b)?;
        self.h.update(&b[..n]);
        Ok(n)
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn add_file(out: &mut Out, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    out.append_data(&mut h, path, data)
}

/// Remove tag-like names from an OCI index so a load names nothing.
fn untag_index(v: &mut Value) {
    if let Some(ms) = v.get_mut("manifests").and_then(Value::as_array_mut) {
        for m in ms {
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("io.containerd.image.name");
                a.remove("org.opencontainers.image.ref.name");
            }
        }
    }
}

/// Most bytes of small entries kept while copying a save tar (an OCI
/// index, its manifests and configs are a few kB).
const MAX_SMALL: usize = 64 << 20;

/// A failed write of image.tar: past a user's reservation it is the
/// tar's doing (64), otherwise the node's (70; a full disk says so).
fn write_error(e: io::Error) -> Error {
    if e.to_string().contains(PAST_RESERVE) {
        Error::Malformed(format!(
            "the tar {PAST_RESERVE} (its entries grow when normalized); push a plain docker save or export tar"
        ))
    } else {
        Error::internal("writing image.tar", e)
    }
}

const PAST_RESERVE: &str = "would grow past the space reserved for it";

/// Copy a save tar (read sequentially, e.g. from a pipe) into `out`,
/// refusing hostile entries, dropping tags, and ending with a normalized
/// manifest.json naming exactly one image.
fn copy_save<Rd: Read>(src: Rd, out: &mut Out, what: &str) -> Result<Digests> {
    let mut digests = Digests::new();
    let mut ar = tar::Archive::new(src);
    let mut manifest: Option<Vec<u8>> = None;
    let mut index: Option<Vec<u8>> = None;
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    // Small entries are kept for an OCI index to resolve: bounded, like
    // the number of entries (the broker reads users' tars).
    let mut small_bytes = 0usize;
    let wr = |e: io::Error| write_error(e);
    for e in ar.entries().map_err(|e| bad_source(what, e))? {
        if seen.len() >= tarinspect::MAX_ENTRIES {
            return Err(bad_source(
                what,
                format!("more than {} entries", tarinspect::MAX_ENTRIES),
            ));
        }
        let mut e = e.map_err(|e| bad_source(what, e))?;
        let path = clean_path(&e.path_bytes()).map_err(|m| bad_source(what, m))?;
        if path.is_empty() {
            continue;
        }
        if !seen.insert(path.clone()) && e.header().entry_type() != tar::EntryType::Directory {
            return Err(bad_source(what, format!("entry {path:?} appears twice")));
        }
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                out.append_data(&mut h, format!("{path}/"), io::empty())
                    .map_err(wr)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = e.size();
                if path == "repositories" {
                    continue;
                }
                if path == "manifest.json" || path == "index.json" || size <= 64 << 10 {
                    let mut buf = Vec::new();
                    (&mut e)
                        .take(1 << 20)
                        .read_to_end(&mut buf)
                        .map_err(|e| bad_source(what, e))?;
                    match path.as_str() {
                        "manifest.json" => manifest = Some(buf),
                        "index.json" => index = Some(buf),
                        _ => {
                            add_file(out, &path, &buf).map_err(wr)?;
                            digests.insert(
                                path.clone(),
                                format!("sha256:{}", tarinspect::sha256_hex(&buf)),
                            );
                            small_bytes += buf.len();
                            if small_bytes <= MAX_SMALL {
                                small.insert(path, buf);
                            }
                        }
                    }
                    continue;
                }
                let mut h = header(tar::EntryType::Regular, 0o644, size);
                let mut sha = Sha256::new();
                out.append_data(
                    &mut h,
                    &path,
                    Tee {
                        r: &mut e,
                        h: &mut sha,
                    },
                )
                .map_err(wr)?;
                digests.insert(path, format!("sha256:{}", hex(&sha.finalize())));
            }
            tar::EntryType::Symlink => {
                let t = e.link_name_bytes().unwrap_or_default();
                let t = std::str::from_utf8(&t)
                    .map_err(|_| bad_source(what, format!("symlink {path:?} is not UTF-8")))?
                    .to_string();
                let dir = path.rfind('/').map_or("", |i| &path[..i]);
                let inside = !t.starts_with('/') && !t.is_empty() && escapes(dir, &t).is_none();
                if !inside {
                    return Err(bad_source(
                        what,
                        format!("symlink {path:?} -> {t:?} points outside the archive"),
                    ));
                }
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                out.append_link(&mut h, &path, &t).map_err(wr)?;
            }
            other => {
                return Err(bad_source(
                    what,
                    format!("entry {path:?} of type {other:?} has no place in a save tar"),
                ))
            }
        }
    }
    // Which image: the classic manifest, or the OCI index's one manifest.
    let entry = match &manifest {
        Some(m) => {
            let v: Value = serde_json::from_slice(m)
                .map_err(|e| bad_source(what, format!("manifest.json: {e}")))?;
            let a = v.as_array().cloned().unwrap_or_default();
            if a.len() != 1 {
                return Err(bad_source(
                    what,
                    format!(
                        "manifest.json lists {} images; a bundle holds exactly one (docker save one image)",
                        a.len()
                    ),
                ));
            }
            let mut e = a[0].clone();
            e["RepoTags"] = Value::Null;
            e
        }
        None => {
            let idx = index.as_ref().ok_or_else(|| {
                bad_source(
                    what,
                    "neither manifest.json nor index.json: not a docker save tar (use --from-export for a root filesystem)",
                )
            })?;
            oci_entry(idx, &small).map_err(|e| bad_source(what, e))?
        }
    };
    if let Some(i) = index {
        let mut v: Value =
            serde_json::from_slice(&i).map_err(|e| bad_source(what, format!("index.json: {e}")))?;
        untag_index(&mut v);
        add_file(
            out,
            "index.json",
            &serde_json::to_vec(&v).unwrap_or_default(),
        )
        .map_err(wr)?;
    }
    add_file(
        out,
        "manifest.json",
        &serde_json::to_vec(&json!([entry])).unwrap_or_default(),
    )
    .map_err(wr)?;
    Ok(digests)
}

/// A relative symlink target that climbs above the root: `Some(())`.
fn escapes(dir: &str, target: &str) -> Option<()> {
    let mut depth: i64 = dir.split('/').filter(|c| !c.is_empty()).count() as i64;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Some(());
                }
            }
            _ => depth += 1,
        }
    }
    None
}

/// A classic manifest.json entry for an OCI-only layout, from the blobs
/// read into memory during the copy.
fn oci_entry(
    index: &[u8],
    small: &BTreeMap<String, Vec<u8>>,
) -> std::result::Result<Value, TarError> {
    let blob = |d: &str| -> std::result::Result<(String, Value), TarError> {
        let h = d
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
            .ok_or_else(|| TarError(format!("digest {d:?} is not sha256")))?;
        let p = format!("blobs/sha256/{h}");
        let b = small
            .get(&p)
            .ok_or_else(|| TarError(format!("OCI blob {p} is missing")))?;
        if tarinspect::sha256_hex(b) != h {
            return Err(TarError(format!("OCI blob {p} does not match its digest")));
        }
        let v = serde_json::from_slice(b).map_err(|e| TarError(format!("{p}: {e}")))?;
        Ok((p, v))
    };
    let mut v: Value =
        serde_json::from_slice(index).map_err(|e| TarError(format!("index.json: {e}")))?;
    for _ in 0..4 {
        let ms = v
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if ms.len() != 1 {
            return Err(TarError(format!(
                "OCI index lists {} manifests; a bundle holds one image",
                ms.len()
            )));
        }
        let (_, m) = blob(ms[0].get("digest").and_then(Value::as_str).unwrap_or(""))?;
        if m.get("manifests").is_some() {
            v = m;
            continue;
        }
        let cfg = m
            .pointer("/config/digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (cfg_path, _) = blob(&cfg)?;
        let layers: Vec<String> = m
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| {
                let d = l.get("digest").and_then(Value::as_str).unwrap_or("");
                format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap_or(d))
            })
            .collect();
        return Ok(json!({"Config": cfg_path, "RepoTags": null, "Layers": layers}));
    }
    Err(TarError("OCI index nests too deeply".into()))
}

// ---------------------------------------------------------------------------
// --change

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && (s.starts_with('"') && s.ends_with('"') || s.starts_with('\'') && s.ends_with('\''))
    {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// `KEY=VALUE …` pairs (values may be quoted), or `KEY VALUE`.
fn pairs(rest: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let rest = rest.trim();
    if !rest.contains('=')
        || rest
            .split_whitespace()
            .next()
            .is_some_and(|w| !w.contains('='))
    {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{rest:?} is not KEY=VALUE or KEY VALUE"))?;
        return Ok(vec![(k.to_string(), unquote(v))]);
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut words = Vec::new();
    for c in rest.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("{rest:?} has an unterminated quote"));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not KEY=VALUE"))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn exec_form(rest: &str) -> std::result::Result<Vec<String>, String> {
    let rest = rest.trim();
    if rest.starts_with('[') {
        serde_json::from_str::<Vec<String>>(rest).map_err(|e| format!("{rest:?}: {e}"))
    } else if rest.is_empty() {
        Ok(Vec::new())
    } else {
        Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
    }
}

/// Parse `--change` lines: ENTRYPOINT, CMD, ENV, WORKDIR, USER, LABEL.
pub fn parse_changes(lines: &[String]) -> Result<Changes> {
    if lines.len() > 256 || lines.iter().any(|l| l.len() > 64 << 10) {
        return Err(Error::Malformed(
            "--change: at most 256 lines of at most 64 KiB each".into(),
        ));
    }
    let mut c = Changes::default();
    for l in lines {
        let bad = |why: String| Error::Malformed(format!("--change {l:?}: {why}"));
        let l2 = l.trim();
        let (ins, rest) = l2.split_once(char::is_whitespace).unwrap_or((l2, ""));
        match ins.to_ascii_uppercase().as_str() {
            "ENTRYPOINT" => c.entrypoint = Some(exec_form(rest).map_err(bad)?),
            "CMD" => c.cmd = Some(exec_form(rest).map_err(bad)?),
            "ENV" => {
                for (k, v) in pairs(rest).map_err(bad)? {
                    c.env.retain(|e| !e.starts_with(&format!("{k}=")));
                    c.env.push(format!("{k}={v}"));
                }
            }
            "WORKDIR" => {
                let w = unquote(rest);
                if !w.starts_with('/') {
                    return Err(bad("WORKDIR must be an absolute path".into()));
                }
                c.workdir = Some(w);
            }
            "USER" => c.user = Some(unquote(rest)),
            "LABEL" => c.labels.extend(pairs(rest).map_err(bad)?),
            other => {
                return Err(bad(format!(
                    "{other} is not supported; use ENTRYPOINT, CMD, ENV, WORKDIR, USER or LABEL"
                )))
            }
        }
    }
    Ok(c)
}

/// The image config of a one-layer image made from an export.
pub fn export_config(diff_id: &str, created: &str, c: &Changes) -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    };
    let mut cfg = serde_json::Map::new();
    if let Some(e) = &c.entrypoint {
        cfg.insert("Entrypoint".into(), json!(e));
    }
    if let Some(e) = &c.cmd {
        cfg.insert("Cmd".into(), json!(e));
    }
    if !c.env.is_empty() {
        cfg.insert("Env".into(), json!(c.env));
    }
    if let Some(w) = &c.workdir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &c.user {
        cfg.insert("User".into(), json!(u));
    }
    if !c.labels.is_empty() {
        cfg.insert("Labels".into(), json!(c.labels));
    }
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "berth bundle create --from-export"}],
    }))
    .unwrap_or_default()
}

/// Write a one-layer save tar from a flat rootfs file.
fn convert_export(
    src: &File,
    len: u64,
    what: &str,
    changes: &Changes,
    out: &mut Out,
    watch: &mut Watch<'_>,
) -> Result<Digests> {
    let t = tarinspect::inspect(src, Depth::Full).map_err(|e| bad_source(what, e))?;
    if t.layout != Layout::Rootfs {
        return Err(bad_source(
            what,
            "this is a docker save tar (it has manifest.json or index.json); use --from-save",
        ));
    }
    // The layer is the export itself; hash it on the way into the output.
    let mut h = Sha256::new();
    // A fixed name: the layer's digest is known only after it is written.
    let tmp_name = "layer.tar".to_string();
    let wr = write_error;
    {
        let r = Counted {
            r: PosReader::new(src, len),
            done: 0,
            total: len,
            last: std::time::Instant::now(),
            w: watch,
        };
        let mut hd = header(tar::EntryType::Regular, 0o644, len);
        // A source that shrinks while read is an error of PosReader.
        out.append_data(&mut hd, &tmp_name, Tee { r, h: &mut h })
            .map_err(|e| bad_source(what, e))?;
    }
    let diff_id = format!("sha256:{}", hex(&h.finalize()));
    let created = super::rfc3339(t.newest_mtime);
    let cfg = export_config(&diff_id, &created, changes);
    let cfg_name = format!("{}.json", tarinspect::sha256_hex(&cfg));
    add_file(out, &cfg_name, &cfg).map_err(wr)?;
    let manifest = json!([{"Config": cfg_name, "RepoTags": null, "Layers": [tmp_name]}]);
    add_file(
        out,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )
    .map_err(wr)?;
    Ok(Digests::from([(tmp_name, diff_id)]))
}

// ---------------------------------------------------------------------------

/// Removes the temporary directory unless the bundle was published.
pub struct TempGuard(pub Option<PathBuf>);

impl TempGuard {
    /// The directory was published: nothing to remove.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn create_file(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", p.display())))
}

fn write_small(p: &Path, data: &[u8]) -> Result<()> {
    let mut f = create_file(p)?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", p.display())))
}

/// A minimal OCI runtime config so `<cache>/<name>` is also a bundle for
/// `sbatch --container`; berth's Slurm runtime finds the image by the
/// annotations.
pub fn oci_runtime_config(m: &Meta) -> Value {
    let mut args: Vec<String> = m.entrypoint.iter().chain(m.cmd.iter()).cloned().collect();
    if args.is_empty() {
        args = vec!["/bin/sh".into()];
    }
    let env = if m.env.is_empty() {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
    } else {
        m.env.clone()
    };
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": if m.workdir.is_empty() { "/" } else { m.workdir.as_str() },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "berth",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
        "annotations": {
            "org.berth.bundle": m.name,
            "org.berth.image_id": m.image_id,
        },
    })
}

fn run_docker_save(policy: &Policy, image: &str) -> Result<std::process::Child> {
    // The reference must parse (never an option to docker).
    if !crate::core::facts::valid_image_id(image) {
        crate::core::image::ImageRef::parse(image)?;
    }
    std::process::Command::new(&policy.docker.path)
        .arg("save")
        .arg(image)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", policy.docker.socket.display()),
        )
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Config(format!(
                "cannot run {}: {e}; fix docker.path in the policy",
                policy.docker.path.display()
            ))
        })
}

/// Reads `[pos, end)` of a file with pread: the offset of a descriptor a
/// user passed (and may share) is never used, and a file that grows while
/// it is read is read only up to the size it had.
pub struct PosReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> PosReader<'a> {
    pub fn new(file: &'a File, len: u64) -> Self {
        PosReader {
            file,
            pos: 0,
            end: len,
        }
    }
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.end {
            return Ok(0);
        }
        let n = buf.len().min((self.end - self.pos) as usize);
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 && self.end != u64::MAX {
            // The file shrank while it was read.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at {} of its {} bytes", self.pos, self.end),
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// Progress of long work: `(done, total)` in bytes, and whether to stop.
pub struct Watch<'a> {
    pub tick: &'a mut dyn FnMut(u64, u64),
    /// Set by whoever asked for the work when it no longer wants it (a
    /// broker client that went away).
    pub abort: Option<&'a std::sync::atomic::AtomicBool>,
}

/// A reader that reports progress (at most every 100 ms) and stops when
/// the work is abandoned.
struct Counted<'a, 'w, R: Read> {
    r: R,
    done: u64,
    total: u64,
    last: std::time::Instant,
    w: &'a mut Watch<'w>,
}

impl<R: Read> Read for Counted<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self
            .w
            .abort
            .is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        {
            // Not ErrorKind::Interrupted: io::copy retries those.
            return Err(io::Error::other(ABANDONED));
        }
        let n = self.r.read(buf)?;
        self.done += n as u64;
        if self.last.elapsed() >= std::time::Duration::from_millis(100) {
            self.last = std::time::Instant::now();
            (self.w.tick)(self.done, self.total);
        }
        Ok(n)
    }
}

const ABANDONED: &str = "the push was abandoned by its client";

/// Where a bundle's image comes from.
pub enum Source<'a> {
    /// `docker save` of an image on this node's engine.
    Image(&'a str),
    /// A save tar, read with pread up to `len`.
    Save { file: &'a File, len: u64 },
    /// A flat rootfs tar, read with pread up to `len`.
    Export { file: &'a File, len: u64 },
}

/// What a bundle is made of besides its tar.
pub struct Spec<'a> {
    /// The key in bundle.toml: `NAME`, or `OWNER/NAME` for a user's.
    pub key: &'a str,
    /// bundle.toml's `source` (`save:PATH`, `push:…`).
    pub label: String,
    pub changes: &'a Changes,
    pub created_by: String,
    pub owner: Option<crate::core::share::Owner>,
    /// Most bytes image.tar may have (a user's quota reservation).
    pub limit: Option<u64>,
}

fn source_error(e: Error) -> Error {
    // A read the watcher interrupted is the client's doing, not the tar's.
    if e.to_string().contains(ABANDONED) {
        Error::Unavailable(ABANDONED.into())
    } else {
        e
    }
}

/// Write a complete bundle into the private directory `tmp`: image.tar
/// (checked: facts re-read from the written tar, layers hashed against
/// the config, read back), bundle.toml, config.json and rootfs/. The
/// caller publishes it.
pub fn write_bundle(
    policy: &Policy,
    tmp: &Path,
    src: Source<'_>,
    spec: &Spec<'_>,
    watch: &mut Watch<'_>,
) -> Result<Meta> {
    let tar_path = tmp.join(TAR);
    let out_file = create_file(&tar_path)?;
    let mut out: Out =
        tar::Builder::new(PipeWriter::new(out_file, spec.limit.unwrap_or(u64::MAX))?);
    out.mode(tar::HeaderMode::Deterministic);
    let mut expect_id = None;
    let digests = match src {
        Source::Image(img) => {
            let engine = crate::engine::Engine::new(&policy.docker.socket);
            let v = engine.inspect_image(img)?.ok_or_else(|| {
                Error::Malformed(format!("the engine on this node has no image {img}"))
            })?;
            expect_id = v.get("Id").and_then(Value::as_str).map(str::to_string);
            let total = v.get("Size").and_then(Value::as_u64).unwrap_or(0);
            let mut child = run_docker_save(policy, img)?;
            let mut stdout = child
                .stdout
                .take()
                .ok_or_else(|| Error::Internal("docker save stdout".into()))?;
            let r = copy_save(
                Counted {
                    r: &mut stdout,
                    done: 0,
                    total,
                    last: std::time::Instant::now(),
                    w: watch,
                },
                &mut out,
                &format!("docker save {img}"),
            );
            if r.is_ok() {
                // The tar ends before docker's last writes (the padding of
                // its final record): read them, or docker dies of SIGPIPE
                // writing them and a complete save looks failed. Bounded:
                // more than a record's padding is not a tar's.
                let _ = io::copy(&mut (&mut stdout).take(1 << 20), &mut io::sink());
            }
            drop(stdout);
            let st = child
                .wait()
                .map_err(|e| Error::internal("docker save", e))?;
            let d = r?;
            if !st.success() {
                return Err(Error::Unavailable(format!(
                    "docker save {img} failed ({st})"
                )));
            }
            d
        }
        Source::Save { file, len } => {
            let r = Counted {
                r: io::BufReader::with_capacity(1 << 20, PosReader::new(file, len)),
                done: 0,
                total: len,
                last: std::time::Instant::now(),
                w: watch,
            };
            copy_save(r, &mut out, &spec.label).map_err(source_error)?
        }
        Source::Export { file, len } => {
            convert_export(file, len, &spec.label, spec.changes, &mut out, watch)
                .map_err(source_error)?
        }
    };
    let (sha256, blake3, size, f) = out
        .into_inner()
        .and_then(PipeWriter::finish)
        .map_err(write_error)?;
    f.sync_all()
        .map_err(|e| Error::internal("fsync image.tar", e))?;

    // Facts from the written tar, checked like a load would.
    // What was read is what counts (a source may change while it is
    // read): its faults are the source's.
    let t = tarinspect::inspect(&f, Depth::Full).map_err(|e| bad_source(&spec.label, e))?;
    // Each layer against the config, by the digest taken as it was
    // written (the read-back below proves the file holds those bytes);
    // a layer not hashed on the way is hashed from the file.
    let streamed = t.layers.len() == t.config.diff_ids.len()
        && t.layers.iter().all(|(p, _)| digests.contains_key(p));
    if streamed {
        for ((p, _), want) in t.layers.iter().zip(&t.config.diff_ids) {
            let got = &digests[p];
            if got != want {
                return Err(bad_source(
                    &spec.label,
                    format!("layer {p} has digest {got}, but the config pins {want}"),
                ));
            }
        }
    } else {
        tarinspect::verify_layers(&f, &t).map_err(|e| bad_source(&spec.label, e))?;
    }
    let image_id = t.image_id.clone().unwrap_or_default();
    if let Some(want) = &expect_id {
        if want != &image_id {
            return Err(Error::Internal(format!(
                "docker save wrote image {image_id}, but the engine's image is {want}"
            )));
        }
    }
    // Publish-time check: the file on disk is what was hashed.
    // Only BLAKE3 (fast), in 1 MiB reads: SHA-256 of the same bytes is
    // the same.
    let (b3_disk, size_disk) = {
        let mut h = blake3::Hasher::new();
        let mut r = PosReader::new(&f, u64::MAX);
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let got = r
                .read(&mut buf)
                .map_err(|e| Error::internal("re-reading image.tar", e))?;
            if got == 0 {
                break;
            }
            h.update(&buf[..got]);
            n += got as u64;
        }
        (h.finalize().to_hex().to_string(), n)
    };
    if b3_disk != blake3 || size_disk != size {
        return Err(Error::Config(format!(
            "{} does not read back as written; check the filesystem",
            tar_path.display()
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let meta = Meta {
        name: spec.key.to_string(),
        format: "docker-save".into(),
        source: spec.label.clone(),
        image_id,
        sha256,
        blake3,
        size,
        entrypoint: t.config.entrypoint.clone(),
        cmd: t.config.cmd.clone(),
        workdir: t.config.workdir.clone(),
        env: t.config.env.clone(),
        user: t.config.user.clone(),
        volumes: t.config.volumes.clone(),
        has_shell: t.has_shell,
        created: super::rfc3339(now),
        created_by: spec.created_by.clone(),
        berth_version: env!("CARGO_PKG_VERSION").into(),
        owner: spec.owner.clone(),
    };
    let toml_text = toml::to_string(&meta).map_err(|e| Error::internal("bundle.toml", e))?;
    // What Cache::get reads back: a bundle.toml past it would publish a
    // bundle nothing can use (nor count against a quota).
    if toml_text.len() > super::cache::META_LIMIT as usize - 1024 {
        return Err(bad_source(
            &spec.label,
            format!(
                "its image config (entrypoint, cmd, env, volumes) takes {} bytes, more than a bundle records",
                toml_text.len()
            ),
        ));
    }
    write_small(
        &tmp.join(META),
        format!(
            "# berth bundle (SPEC §6); written by berth bundle create, do not edit\n{toml_text}"
        )
        .as_bytes(),
    )?;
    write_small(
        &tmp.join("config.json"),
        serde_json::to_string_pretty(&oci_runtime_config(&meta))
            .unwrap_or_default()
            .as_bytes(),
    )?;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(tmp.join("rootfs"))
        .map_err(|e| Error::Config(format!("cannot create rootfs/: {e}")))?;
    Ok(meta)
}

/// Open a source tar for `create` (root's own path) and size it.
fn open_source(p: &Path) -> Result<(File, u64)> {
    let f = File::open(p).map_err(|e| bad_source(&p.display().to_string(), e))?;
    let md = f
        .metadata()
        .map_err(|e| bad_source(&p.display().to_string(), e))?;
    if !md.is_file() {
        return Err(bad_source(
            &p.display().to_string(),
            "is not a regular file",
        ));
    }
    Ok((f, md.len()))
}

/// The name `created_by` records for a uid.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

pub fn run(policy: &Policy, a: &BundleCreateArgs) -> Result<i32> {
    let cache = Cache::open(policy)?;
    if !matches!(
        crate::core::share::parse_key(&a.name),
        Some(crate::core::share::Key::Site(_))
    ) {
        return Err(Error::Malformed(format!(
            "bundle name {:?} must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit (and not be users, which holds users' bundles)",
            a.name
        )));
    }
    let changes = parse_changes(&a.change)?;
    if a.from_export.is_none() && !a.change.is_empty() {
        return Err(Error::Malformed(
            "--change applies to --from-export only (it would change the image id)".into(),
        ));
    }
    let opened;
    let (src, label) = if let Some(img) = &a.from_image {
        (Source::Image(img), format!("image:{img}"))
    } else if let Some(p) = &a.from_save {
        opened = open_source(p)?;
        (
            Source::Save {
                file: &opened.0,
                len: opened.1,
            },
            format!("save:{}", p.display()),
        )
    } else if let Some(p) = &a.from_export {
        opened = open_source(p)?;
        (
            Source::Export {
                file: &opened.0,
                len: opened.1,
            },
            format!("export:{}", p.display()),
        )
    } else {
        return Err(Error::Malformed(
            "give one of --from-image, --from-save, --from-export".into(),
        ));
    };
    let tmp = cache.temp_dir(&a.name)?;
    let guard = TempGuard(Some(tmp.clone()));
    let spec = Spec {
        key: &a.name,
        label,
        changes: &changes,
        created_by: user_name(crate::sys::real_uid()),
        owner: None,
        limit: None,
    };
    let mut meter = crate::bundle::progress::Meter::stderr(&format!("creating bundle {}", a.name));
    let t0 = std::time::Instant::now();
    let meta = write_bundle(
        policy,
        &tmp,
        src,
        &spec,
        &mut Watch {
            tick: &mut |d, t| meter.update(d, t),
            abort: None,
        },
    )?;
    meter.clear();
    cache.publish(&tmp, &a.name)?;
    guard.keep();
    println!(
        "bundle {} published: {} bytes, image {}, shell {}{}",
        a.name,
        meta.size,
        meta.image_id,
        if meta.has_shell { "yes" } else { "no" },
        crate::bundle::progress::rate_suffix(meta.size, t0.elapsed()),
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes() {
        let c = parse_changes(&[
            "ENTRYPOINT [\"/bin/echo\", \"hi\"]".into(),
            "CMD run me".into(),
            "ENV A=1 B=\"two words\"".into(),
            "ENV C 3".into(),
            "WORKDIR /opt/w".into(),
            "USER 1000".into(),
            "LABEL a=b".into(),
        ])
        .unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/bin/echo".into(), "hi".into()]));
        assert_eq!(
            c.cmd,
            Some(vec!["/bin/sh".into(), "-c".into(), "run me".into()])
        );
        assert_eq!(c.env, vec!["A=1", "B=two words", "C=3"]);
        assert_eq!(c.workdir.as_deref(), Some("/opt/w"));
        assert_eq!(c.user.as_deref(), Some("1000"));
        for bad in ["RUN rm -rf /", "WORKDIR rel", "ENTRYPOINT [\"x\"", "ENV x"] {
            assert!(parse_changes(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn export_config_is_deterministic() {
        let c = parse_changes(&["WORKDIR /w".into()]).unwrap();
        let d = format!("sha256:{}", "c".repeat(64));
        let a = export_config(&d, "2020-01-01T00:00:00Z", &c);
        assert_eq!(a, export_config(&d, "2020-01-01T00:00:00Z", &c));
        let f = tarinspect::parse_config(&a).unwrap();
        assert_eq!(f.workdir, "/w");
        assert_eq!(f.diff_ids, vec![d]);
    }

    #[test]
    fn the_writer_hashes_writes_and_reports_its_own_error() {
        let f = tempfile::tempfile().unwrap();
        let mut w = PipeWriter::new(f.try_clone().unwrap(), 10 << 20).unwrap();
        let data = vec![5u8; 3 * CHUNK + 17];
        w.write_all(&data).unwrap();
        let (sha, _, n, _) = w.finish().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(sha, tarinspect::sha256_hex(&data));
        assert_eq!(f.metadata().unwrap().len(), data.len() as u64);
        // Past the limit: refused before anything is queued.
        let mut small = PipeWriter::new(tempfile::tempfile().unwrap(), 10).unwrap();
        let e = small.write_all(&[0u8; 11]).unwrap_err();
        assert!(e.to_string().contains(PAST_RESERVE), "{e}");
        // A file that cannot be written: the writer's own error comes back.
        let ro = std::fs::File::open("/dev/null").unwrap();
        let mut bad = PipeWriter::new(ro, u64::MAX).unwrap();
        let mut err = None;
        for _ in 0..16 {
            if let Err(e) = bad.write_all(&vec![0u8; CHUNK]) {
                err = Some(e);
                break;
            }
        }
        let e = err.or_else(|| bad.finish().err()).expect("an error");
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    }

    #[test]
    fn symlink_escape() {
        assert!(escapes("a", "../../x").is_some());
        assert!(escapes("a/b", "../x").is_none());
        assert!(escapes("", "x/../y").is_none());
    }
}
