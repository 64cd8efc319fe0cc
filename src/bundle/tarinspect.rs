//! Read an image tar without loading it (pure: a file in, facts out).
//!
//! Three layouts are understood:
//! * `docker save` classic: `manifest.json` naming the config and the layer
//!   tars (`<id>/layer.tar`, or `blobs/sha256/<hex>` as Docker 25+ writes);
//! * OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), which
//!   newer Docker writes beside manifest.json and other tools write alone;
//! * a flat root filesystem (`docker export`, `tar -C rootfs -c .`).
//!
//! The reader seeks over file data (`entries_with_seek`), in the outer tar
//! and inside each layer, so a 500 MB tar is read in milliseconds: only
//! headers, manifest.json, index.json and the config are read.
//!
//! Hostile tables are refused: absolute paths, `..` components, hard links
//! out of the archive, symlinks whose target climbs above the root, NUL or
//! non-UTF-8 names, and (in the outer save tar) device nodes, FIFOs and
//! duplicate names.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Why a tar was refused: a one-line reason naming the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarError(pub String);

impl std::fmt::Display for TarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type R<T> = std::result::Result<T, TarError>;

fn err<T>(m: impl Into<String>) -> R<T> {
    Err(TarError(m.into()))
}

fn io_err(what: &str) -> impl Fn(io::Error) -> TarError + '_ {
    move |e| TarError(format!("{what}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `docker save` with manifest.json (possibly also an OCI index).
    Save,
    /// OCI image layout only (no manifest.json).
    Oci,
    /// A flat root filesystem.
    Rootfs,
}

/// How much to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The manifest and the config (the job-start pre-check).
    Config,
    /// Also every layer's headers, to find `/bin/sh`.
    Full,
}

/// The image config's fields berth records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFacts {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
    pub env: Vec<String>,
    pub user: String,
    pub diff_ids: Vec<String>,
    pub volumes: Vec<String>,
}

/// A file inside the outer tar: where its data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct TarFacts {
    pub layout: Layout,
    /// `sha256:<hex of the config JSON>`; `None` for a flat rootfs.
    pub image_id: Option<String>,
    pub config: ConfigFacts,
    /// The raw config JSON (save and OCI layouts).
    pub config_json: Vec<u8>,
    /// Path of the config in the tar.
    pub config_path: String,
    /// The layers' paths in the tar and their data, bottom first.
    pub layers: Vec<(String, Span)>,
    /// Whether `/bin/sh` resolves to an executable file (Full depth only).
    pub has_shell: bool,
    /// Whether an OCI index.json is present.
    pub has_index: bool,
    /// Whether a manifest.json is present.
    pub has_manifest: bool,
    /// The newest modification time of any entry (a flat rootfs's date).
    pub newest_mtime: u64,
}

// ---------------------------------------------------------------------------
// paths

/// Normalize an entry name: strip leading `./`, drop `.` components and a
/// trailing `/`. Refuse absolute names, `..`, NUL and non-UTF-8. The empty
/// string is the archive root.
pub fn clean_path(raw: &[u8]) -> R<String> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        TarError(format!(
            "entry name {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    if s.contains('\0') {
        return err(format!("entry name {s:?} contains NUL"));
    }
    if s.starts_with('/') {
        return err(format!("entry {s:?} has an absolute path"));
    }
    let mut out: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return err(format!("entry {s:?} has a '..' component")),
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

fn parent(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

/// Join a relative symlink target to the link's directory, lexically.
/// `None` if it climbs above the root.
fn join_relative(dir: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Normalize an absolute target inside an image root (clamped at `/`, as
/// the kernel resolves it in the container).
fn clamp_abs(target: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

// ---------------------------------------------------------------------------
// a window on the file, so layers are read as tars of their own

struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - self.pos) as usize);
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

fn read_span(file: &File, s: Span, limit: u64, what: &str) -> R<Vec<u8>> {
    if s.size > limit {
        return err(format!("{what} is {} bytes, more than {limit}", s.size));
    }
    let mut buf = vec![0u8; s.size as usize];
    file.read_exact_at(&mut buf, s.offset)
        .map_err(io_err(what))?;
    Ok(buf)
}

// ---------------------------------------------------------------------------
// the outer table

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Target as written.
    Symlink(String),
    /// Target, cleaned (archive-relative).
    Hardlink(String),
    /// Device, FIFO, …: allowed only in a rootfs.
    Special,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    span: Span,
}

/// Most entries in one tar (the outer table, or one layer).
pub const MAX_ENTRIES: usize = 2_000_000;

/// Read the table of a tar (seeking over data), checking every name.
fn table<Rd: Read + Seek>(mut r: Rd, what: &str) -> R<(Vec<Entry>, u64)> {
    let len = r.seek(SeekFrom::End(0)).map_err(io_err(what))?;
    r.seek(SeekFrom::Start(0)).map_err(io_err(what))?;
    let mut ar = tar::Archive::new(r);
    let mut out = Vec::new();
    let mut newest = 0u64;
    let entries = ar.entries_with_seek().map_err(io_err(what))?;
    for e in entries {
        // Every entry is kept in memory: a tar of millions of tiny files
        // must not exhaust the broker (or root's create).
        if out.len() >= MAX_ENTRIES {
            return err(format!(
                "{what}: more than {MAX_ENTRIES} entries; an image this large is not a bundle"
            ));
        }
        let e = e.map_err(io_err(what))?;
        let path = clean_path(&e.path_bytes()).map_err(|m| TarError(format!("{what}: {m}")))?;
        let h = e.header();
        let mode = h.mode().unwrap_or(0);
        newest = newest.max(h.mtime().unwrap_or(0));
        use tar::EntryType as T;
        let kind = match h.entry_type() {
            T::Regular | T::Continuous => Kind::File,
            T::Directory => Kind::Dir,
            T::Symlink => {
                let t = e.link_name_bytes().unwrap_or_default();
                let t = std::str::from_utf8(&t)
                    .map_err(|_| TarError(format!("{what}: symlink {path:?} target is not UTF-8")))?
                    .to_string();
                if t.is_empty() || t.contains('\0') {
                    return err(format!("{what}: symlink {path:?} has an empty target"));
                }
                if !t.starts_with('/') && join_relative(parent(&path), &t).is_none() {
                    return err(format!(
                        "{what}: symlink {path:?} -> {t:?} points outside the archive"
                    ));
                }
                Kind::Symlink(t)
            }
            T::Link => {
                let t = e.link_name_bytes().unwrap_or_default();
                let t = clean_path(&t).map_err(|m| {
                    TarError(format!(
                        "{what}: hard link {path:?} points outside the archive ({m})"
                    ))
                })?;
                if t.is_empty() {
                    return err(format!("{what}: hard link {path:?} has an empty target"));
                }
                Kind::Hardlink(t)
            }
            T::Char | T::Block | T::Fifo => Kind::Special,
            other => {
                return err(format!(
                    "{what}: entry {path:?} has an unsupported type {other:?}"
                ))
            }
        };
        let span = Span {
            offset: e.raw_file_position(),
            size: e.size(),
        };
        // Seeking over data never reads it: a header whose size runs past
        // the end of the file is a truncated tar, not an empty tail.
        if span
            .offset
            .checked_add(span.size)
            .map_or(true, |end| end > len)
        {
            return err(format!(
                "{what}: entry {path:?} is cut short (the tar is truncated)"
            ));
        }
        out.push(Entry {
            path,
            kind,
            mode,
            span,
        });
    }
    Ok((out, newest))
}

/// The outer table of a save/OCI tar: files, dirs and symlinks only, no
/// duplicates, symlinks resolvable inside the archive.
struct Outer {
    map: BTreeMap<String, Entry>,
}

impl Outer {
    fn new(entries: Vec<Entry>) -> R<Outer> {
        let mut map = BTreeMap::new();
        for e in entries {
            match e.kind {
                Kind::Special | Kind::Hardlink(_) => {
                    return err(format!(
                        "entry {:?}: a save tar holds only files, directories and symlinks",
                        e.path
                    ))
                }
                Kind::Symlink(ref t) if t.starts_with('/') => {
                    return err(format!(
                        "symlink {:?} -> {t:?} is absolute: it would point outside the archive",
                        e.path
                    ))
                }
                _ => {}
            }
            if e.path.is_empty() {
                continue;
            }
            if let Some(prev) = map.get(&e.path) {
                let prev: &Entry = prev;
                if !(prev.kind == Kind::Dir && e.kind == Kind::Dir) {
                    return err(format!("entry {:?} appears twice", e.path));
                }
            }
            map.insert(e.path.clone(), e);
        }
        Ok(Outer { map })
    }

    /// A regular file by path, following symlinks inside the archive.
    fn file(&self, path: &str) -> R<Span> {
        let mut p = clean_path(path.as_bytes())?;
        for _ in 0..16 {
            match self.map.get(&p).map(|e| &e.kind) {
                Some(Kind::File) => return Ok(self.map[&p].span),
                Some(Kind::Symlink(t)) => {
                    p = join_relative(parent(&p), t)
                        .ok_or_else(|| TarError(format!("symlink {p:?} escapes the archive")))?;
                }
                Some(_) => return err(format!("{path:?} is not a regular file")),
                None => return err(format!("{path:?} is missing from the tar")),
            }
        }
        err(format!("{path:?}: too many symlinks"))
    }

    fn has(&self, path: &str) -> bool {
        self.map.contains_key(path)
    }
}

// ---------------------------------------------------------------------------
// the union filesystem of the layers, to answer "is there a /bin/sh?"

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File(u32),
    Symlink(String),
    Hardlink(String),
    Other,
}

#[derive(Default)]
pub struct Union {
    map: BTreeMap<String, Node>,
}

fn remove_tree(map: &mut BTreeMap<String, Node>, path: &str, keep_self: bool) {
    if !keep_self {
        map.remove(path);
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let doomed: Vec<String> = map
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .filter(|k| !k.is_empty())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

impl Union {
    /// Apply one layer's entries: whiteouts and opaque markers hide what
    /// lower layers put there, then the entries are added.
    fn apply(&mut self, entries: &[Entry]) {
        for e in entries {
            let name = e.path.rsplit('/').next().unwrap_or("");
            let dir = parent(&e.path);
            if name == ".wh..wh..opq" {
                remove_tree(&mut self.map, dir, true);
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let victim = if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                };
                remove_tree(&mut self.map, &victim, false);
            }
        }
        for e in entries {
            let name = e.path.rsplit('/').next().unwrap_or("");
            if name.starts_with(".wh.") || e.path.is_empty() {
                continue;
            }
            let node = match &e.kind {
                Kind::Dir => Node::Dir,
                Kind::File => Node::File(e.mode),
                Kind::Symlink(t) => Node::Symlink(t.clone()),
                Kind::Hardlink(t) => Node::Hardlink(t.clone()),
                Kind::Special => Node::Other,
            };
            // A non-directory replaces a whole subtree.
            if !matches!(node, Node::Dir) {
                remove_tree(&mut self.map, &e.path, false);
            }
            self.map.insert(e.path.clone(), node);
        }
    }

    /// Whether `path` resolves (symlinks followed inside the image, as the
    /// kernel would in the container) to an executable regular file.
    pub fn is_executable(&self, path: &str) -> bool {
        let mut todo: Vec<String> = clamp_abs(path)
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur = String::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            let next = if cur.is_empty() {
                c.clone()
            } else {
                format!("{cur}/{c}")
            };
            let last = todo.is_empty();
            match self.map.get(&next) {
                Some(Node::Symlink(t)) => {
                    hops += 1;
                    if hops > 40 {
                        return false;
                    }
                    let base = if t.starts_with('/') {
                        clamp_abs(t)
                    } else {
                        clamp_abs(&format!("{cur}/{t}"))
                    };
                    for comp in base.split('/').filter(|c| !c.is_empty()).rev() {
                        todo.push(comp.to_string());
                    }
                    cur = String::new();
                }
                Some(Node::Dir) | None if !last => {
                    // A parent missing from the table is made by the engine.
                    if !self.map.contains_key(&next) && !self.implicit_dir(&next) {
                        return false;
                    }
                    cur = next;
                }
                Some(Node::File(m)) if last => return m & 0o111 != 0,
                Some(Node::Hardlink(t)) if last => {
                    return matches!(self.map.get(t), Some(Node::File(m)) if m & 0o111 != 0)
                }
                _ => return false,
            }
        }
        false
    }

    fn implicit_dir(&self, p: &str) -> bool {
        let prefix = format!("{p}/");
        self.map
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

// ---------------------------------------------------------------------------
// JSON

fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of an image config JSON berth needs.
pub fn parse_config(json: &[u8]) -> R<ConfigFacts> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| TarError(format!("image config is not JSON: {e}")))?;
    let c = v.get("config").or_else(|| v.get("Config"));
    let s = |k: &str| {
        c.and_then(|c| c.get(k))
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let diff_ids = strings(v.get("rootfs").and_then(|r| r.get("diff_ids")));
    for d in &diff_ids {
        if !crate::core::facts::valid_image_id(d) {
            return err(format!("image config has a malformed diff_id {d:?}"));
        }
    }
    Ok(ConfigFacts {
        entrypoint: strings(c.and_then(|c| c.get("Entrypoint"))),
        cmd: strings(c.and_then(|c| c.get("Cmd"))),
        workdir: s("WorkingDir"),
        env: strings(c.and_then(|c| c.get("Env"))),
        user: s("User"),
        diff_ids,
        volumes: crate::core::facts::volume_keys(c.and_then(|c| c.get("Volumes"))),
    })
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn blob_path(digest: &str) -> R<String> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{h}"))
        }
        _ => err(format!("OCI digest {digest:?} is not a sha256 digest")),
    }
}

/// In an OCI layout, follow index.json to the one image manifest.
fn oci_manifest(file: &File, outer: &Outer) -> R<serde_json::Value> {
    let idx = read_span(file, outer.file("index.json")?, 1 << 20, "index.json")?;
    let mut v: serde_json::Value =
        serde_json::from_slice(&idx).map_err(|e| TarError(format!("index.json: {e}")))?;
    for _ in 0..4 {
        let ms = v
            .get("manifests")
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default();
        let pick = match ms.len() {
            0 => return err("OCI index lists no manifest"),
            1 => ms[0].clone(),
            _ => {
                let linux: Vec<_> = ms
                    .iter()
                    .filter(|m| {
                        m.pointer("/platform/os").and_then(|x| x.as_str()) == Some("linux")
                            && m.pointer("/platform/architecture").and_then(|x| x.as_str())
                                == Some(std::env::consts::ARCH.replace("x86_64", "amd64").as_str())
                    })
                    .collect();
                if linux.len() != 1 {
                    return err(format!(
                        "OCI index lists {} manifests; a bundle holds one image",
                        ms.len()
                    ));
                }
                linux[0].clone()
            }
        };
        let digest = pick.get("digest").and_then(|d| d.as_str()).unwrap_or("");
        let path = blob_path(digest)?;
        let body = read_span(file, outer.file(&path)?, 4 << 20, &path)?;
        if format!("sha256:{}", sha256_hex(&body)) != digest {
            return err(format!("OCI blob {path} does not match its digest"));
        }
        let next: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| TarError(format!("{path}: {e}")))?;
        if next.get("manifests").is_some() {
            v = next;
            continue;
        }
        return Ok(next);
    }
    err("OCI index nests too deeply")
}

// ---------------------------------------------------------------------------
// the entry point

/// Inspect an image tar. `Depth::Config` reads only the manifest and the
/// config; `Depth::Full` also walks every layer's headers.
pub fn inspect(file: &File, depth: Depth) -> R<TarFacts> {
    // Read through a window (pread), whatever the file's offset is.
    let len = file
        .metadata()
        .map_err(|e| TarError(format!("image tar: {e}")))?
        .len();
    let whole = Window {
        file,
        start: 0,
        len,
        pos: 0,
    };
    let (entries, newest) = table(whole, "image tar")?;
    let top = |n: &str| entries.iter().any(|e| e.path == n);
    let (has_manifest, has_index) = (top("manifest.json"), top("index.json"));
    if !has_manifest && !has_index {
        let mut u = Union::default();
        if depth == Depth::Full {
            u.apply(&entries);
        }
        return Ok(TarFacts {
            layout: Layout::Rootfs,
            image_id: None,
            config: ConfigFacts::default(),
            config_json: Vec::new(),
            config_path: String::new(),
            layers: Vec::new(),
            has_shell: depth == Depth::Full && u.is_executable("/bin/sh"),
            has_index,
            has_manifest,
            newest_mtime: newest,
        });
    }
    let outer = Outer::new(entries)?;
    let (layout, config_path, layer_paths, oci_layers) = if has_manifest {
        let m = read_span(file, outer.file("manifest.json")?, 1 << 20, "manifest.json")?;
        let v: serde_json::Value =
            serde_json::from_slice(&m).map_err(|e| TarError(format!("manifest.json: {e}")))?;
        let a = v
            .as_array()
            .ok_or_else(|| TarError("manifest.json is not a list".into()))?;
        if a.len() != 1 {
            return err(format!(
                "manifest.json lists {} images; a bundle holds exactly one (docker save one image)",
                a.len()
            ));
        }
        let cfg = a[0]
            .get("Config")
            .and_then(|c| c.as_str())
            .ok_or_else(|| TarError("manifest.json has no Config".into()))?
            .to_string();
        (Layout::Save, cfg, strings(a[0].get("Layers")), None)
    } else {
        if !outer.has("oci-layout") {
            return err("index.json without oci-layout: not an OCI image layout");
        }
        let m = oci_manifest(file, &outer)?;
        let cd = m
            .pointer("/config/digest")
            .and_then(|d| d.as_str())
            .unwrap_or("");
        let layers = m
            .get("layers")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        let mut paths = Vec::new();
        let mut types = Vec::new();
        for l in &layers {
            paths.push(blob_path(
                l.get("digest").and_then(|d| d.as_str()).unwrap_or(""),
            )?);
            types.push(
                l.get("mediaType")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string(),
            );
        }
        (Layout::Oci, blob_path(cd)?, paths, Some(types))
    };
    let config_json = read_span(file, outer.file(&config_path)?, 16 << 20, &config_path)?;
    let image_id = format!("sha256:{}", sha256_hex(&config_json));
    if layout == Layout::Oci && config_path != format!("blobs/sha256/{}", &image_id[7..]) {
        return err(format!(
            "OCI config blob {config_path} does not match its digest"
        ));
    }
    let config = parse_config(&config_json)?;
    if config.diff_ids.len() != layer_paths.len() {
        return err(format!(
            "the config lists {} layers but the manifest {}",
            config.diff_ids.len(),
            layer_paths.len()
        ));
    }
    if let Some(types) = &oci_layers {
        if let Some(t) = types
            .iter()
            .find(|t| t.contains("gzip") || t.contains("zstd"))
        {
            return err(format!(
                "layer media type {t}: compressed layers are not supported; save the image with docker save"
            ));
        }
    }
    let mut layers = Vec::new();
    for p in &layer_paths {
        layers.push((p.clone(), outer.file(p)?));
    }
    let mut has_shell = false;
    if depth == Depth::Full {
        let mut u = Union::default();
        for (p, span) in &layers {
            let mut magic = [0u8; 4];
            let n = file.read_at(&mut magic, span.offset).unwrap_or(0);
            if n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
                return err(format!(
                    "layer {p} is compressed; save the image with docker save (uncompressed layers)"
                ));
            }
            let w = Window {
                file,
                start: span.offset,
                len: span.size,
                pos: 0,
            };
            let (entries, _) = table(w, &format!("layer {p}"))?;
            u.apply(&entries);
        }
        has_shell = u.is_executable("/bin/sh");
    }
    Ok(TarFacts {
        layout,
        image_id: Some(image_id),
        config,
        config_json,
        config_path,
        layers,
        has_shell,
        has_index,
        has_manifest,
        newest_mtime: newest,
    })
}

/// Hash every layer and compare with the config's diff_ids (what the
/// engine's load will check): slow (SHA-256 of the whole image), for
/// create and verify only.
pub fn verify_layers(file: &File, f: &TarFacts) -> R<()> {
    let mut seen = BTreeSet::new();
    for ((p, span), want) in f.layers.iter().zip(&f.config.diff_ids) {
        if !seen.insert((span.offset, want.clone())) {
            continue;
        }
        let mut w = Window {
            file,
            start: span.offset,
            len: span.size,
            pos: 0,
        };
        let mut h = Sha256::new();
        io::copy(&mut w, &mut h).map_err(io_err(p))?;
        let got = format!("sha256:{}", hex(&h.finalize()));
        if &got != want {
            return err(format!(
                "layer {p} has digest {got}, but the config pins {want}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tar entry for tests: raw path bytes (written into the header
    /// as-is, so hostile names can be built), kind, data.
    pub enum T<'a> {
        F(&'a str, &'a [u8]),
        X(&'a str, &'a [u8]),
        D(&'a str),
        L(&'a str, &'a str),
        H(&'a str, &'a str),
        C(&'a str),
    }

    pub fn build(entries: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut h = tar::Header::new_old();
            let (path, data): (&str, &[u8]) = match e {
                T::F(p, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    (p, d)
                }
                T::X(p, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o755);
                    (p, d)
                }
                T::D(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    (p, b"")
                }
                T::L(p, t) | T::H(p, t) => {
                    h.set_entry_type(if matches!(e, T::L(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    let lb = t.as_bytes();
                    h.as_old_mut().linkname[..lb.len()].copy_from_slice(lb);
                    (p, b"")
                }
                T::C(p) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o600);
                    (p, b"")
                }
            };
            let pb = path.as_bytes();
            h.as_old_mut().name[..pb.len()].copy_from_slice(pb);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            out.extend(std::iter::repeat(0u8).take(pad));
        }
        out.extend(std::iter::repeat(0u8).take(1024));
        out
    }

    pub fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn config_for(layers: &[&[u8]], ep: &str) -> Vec<u8> {
        let ids: Vec<String> = layers
            .iter()
            .map(|l| format!("sha256:{}", sha256_hex(l)))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": serde_json::from_str::<serde_json::Value>(ep).unwrap(),
                       "Cmd": ["/bin/sh"], "WorkingDir": "/w", "Env": ["A=1"], "User": ""},
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    }

    fn save_tar(layers: &[Vec<u8>], ep: &str) -> (Vec<u8>, String) {
        let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
        let cfg = config_for(&refs, ep);
        let id = sha256_hex(&cfg);
        let names: Vec<String> = (0..layers.len())
            .map(|i| format!("l{i}/layer.tar"))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!([
            {"Config": format!("{id}.json"), "RepoTags": ["x:1"], "Layers": names}
        ]))
        .unwrap();
        let cfg_name = format!("{id}.json");
        let mut es = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            es.push((format!("l{i}/"), None));
            es.push((names[i].clone(), Some(l.clone())));
        }
        es.push((cfg_name, Some(cfg)));
        es.push(("manifest.json".into(), Some(manifest)));
        let ts: Vec<T> = es
            .iter()
            .map(|(p, d)| match d {
                None => T::D(p),
                Some(d) => T::F(p, d),
            })
            .collect();
        (build(&ts), format!("sha256:{id}"))
    }

    fn busybox_layer() -> Vec<u8> {
        build(&[
            T::D("bin/"),
            T::X("bin/busybox", b"ELF"),
            T::L("bin/sh", "busybox"),
            T::D("etc/"),
            T::F("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
        ])
    }

    #[test]
    fn classic_save_facts() {
        let (t, id) = save_tar(&[busybox_layer()], "null");
        let f = inspect(&file_of(&t), Depth::Full).unwrap();
        assert_eq!(f.layout, Layout::Save);
        assert_eq!(f.image_id.as_deref(), Some(id.as_str()));
        assert!(f.has_shell);
        assert_eq!(f.config.cmd, vec!["/bin/sh"]);
        assert_eq!(f.config.workdir, "/w");
        assert_eq!(f.config.env, vec!["A=1"]);
        verify_layers(&file_of(&t), &f).unwrap();
        // Config depth reads no layer.
        let c = inspect(&file_of(&t), Depth::Config).unwrap();
        assert!(!c.has_shell);
        assert_eq!(c.image_id, f.image_id);
    }

    #[test]
    fn whiteouts_and_usrmerge() {
        // Layer 2 deletes /bin/sh with a whiteout.
        let l2 = build(&[T::D("bin/"), T::F("bin/.wh.sh", b"")]);
        let (t, _) = save_tar(&[busybox_layer(), l2], "null");
        assert!(!inspect(&file_of(&t), Depth::Full).unwrap().has_shell);
        // An opaque /bin hides everything below.
        let l2 = build(&[
            T::D("bin/"),
            T::F("bin/.wh..wh..opq", b""),
            T::X("bin/ls", b"x"),
        ]);
        let (t, _) = save_tar(&[busybox_layer(), l2], "null");
        assert!(!inspect(&file_of(&t), Depth::Full).unwrap().has_shell);
        // Opaque marker after a new sh in the same layer: the new one stays.
        let l2 = build(&[
            T::D("bin/"),
            T::X("bin/sh", b"x"),
            T::F("bin/.wh..wh..opq", b""),
        ]);
        let (t, _) = save_tar(&[busybox_layer(), l2], "null");
        assert!(inspect(&file_of(&t), Depth::Full).unwrap().has_shell);
        // bin -> usr/bin, sh only in /usr/bin, absolute link target.
        let l = build(&[
            T::L("bin", "usr/bin"),
            T::D("usr/"),
            T::D("usr/bin/"),
            T::X("usr/bin/busybox", b"ELF"),
            T::L("usr/bin/sh", "/usr/bin/busybox"),
        ]);
        let (t, _) = save_tar(&[l], "null");
        assert!(inspect(&file_of(&t), Depth::Full).unwrap().has_shell);
        // Not executable, or a directory, or a dangling link: no shell.
        for l in [
            build(&[T::F("bin/sh", b"x")]),
            build(&[T::D("bin/sh/")]),
            build(&[T::L("bin/sh", "nowhere")]),
            build(&[T::L("bin/sh", "sh")]),
        ] {
            let (t, _) = save_tar(&[l], "null");
            assert!(!inspect(&file_of(&t), Depth::Full).unwrap().has_shell);
        }
        // A hard link to an executable counts.
        let l = build(&[T::X("bin/busybox", b"E"), T::H("bin/sh", "bin/busybox")]);
        let (t, _) = save_tar(&[l], "null");
        assert!(inspect(&file_of(&t), Depth::Full).unwrap().has_shell);
    }

    #[test]
    fn flat_rootfs() {
        let t = build(&[
            T::D("./"),
            T::D("./bin/"),
            T::X("./bin/busybox", b"E"),
            T::L("./bin/sh", "busybox"),
            T::C("./dev/null"),
        ]);
        let f = inspect(&file_of(&t), Depth::Full).unwrap();
        assert_eq!(f.layout, Layout::Rootfs);
        assert!(f.has_shell && f.image_id.is_none());
        assert_eq!(f.newest_mtime, 1_700_000_000);
    }

    #[test]
    fn oci_layout() {
        let layer = busybox_layer();
        let cfg = config_for(&[&layer], "[\"/bin/sh\"]");
        let (lh, ch) = (sha256_hex(&layer), sha256_hex(&cfg));
        let man = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{ch}"), "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{lh}"), "size": layer.len()}],
        }))
        .unwrap();
        let mh = sha256_hex(&man);
        let idx = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{mh}"), "size": man.len()}],
        }))
        .unwrap();
        let (p1, p2, p3) = (
            format!("blobs/sha256/{lh}"),
            format!("blobs/sha256/{ch}"),
            format!("blobs/sha256/{mh}"),
        );
        let t = build(&[
            T::D("blobs/"),
            T::D("blobs/sha256/"),
            T::F(&p1, &layer),
            T::F(&p2, &cfg),
            T::F(&p3, &man),
            T::F("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}"),
            T::F("index.json", &idx),
        ]);
        let f = inspect(&file_of(&t), Depth::Full).unwrap();
        assert_eq!(f.layout, Layout::Oci);
        assert_eq!(f.image_id, Some(format!("sha256:{ch}")));
        assert_eq!(f.config.entrypoint, vec!["/bin/sh"]);
        assert!(f.has_shell);
        verify_layers(&file_of(&t), &f).unwrap();
        // A tampered manifest blob, or config blob, is refused.
        for pat in [&b"\"layers\":["[..], &b"\"type\":\"layers\""[..]] {
            let mut bad = t.clone();
            let pos = bad.windows(pat.len()).position(|w| w == pat).unwrap();
            bad[pos + 2] = b'X';
            let e = inspect(&file_of(&bad), Depth::Config).unwrap_err();
            assert!(e.0.contains("digest"), "{e}");
        }
    }

    #[test]
    fn hostile_outer_tables() {
        let ok_manifest = br#"[{"Config":"c.json","Layers":[]}]"#;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (build(&[T::F("../evil", b"x")]), ".."),
            (build(&[T::F("a/../../evil", b"x")]), ".."),
            (build(&[T::F("/etc/passwd", b"x")]), "absolute"),
            (
                build(&[
                    T::F("manifest.json", ok_manifest),
                    T::L("c.json", "/etc/shadow"),
                ]),
                "absolute",
            ),
            (
                build(&[
                    T::F("manifest.json", ok_manifest),
                    T::L("c.json", "../../etc/shadow"),
                ]),
                "outside",
            ),
            (
                build(&[
                    T::F("manifest.json", ok_manifest),
                    T::H("c.json", "../etc/shadow"),
                ]),
                "outside",
            ),
            (
                build(&[T::F("manifest.json", ok_manifest), T::C("c.json")]),
                "only files",
            ),
            (
                build(&[
                    T::F("manifest.json", ok_manifest),
                    T::F("manifest.json", b"[]"),
                ]),
                "twice",
            ),
            (build(&[T::F("manifest.json", b"[]")]), "exactly one"),
            // Found by fuzzing: a header whose data runs past the end of
            // the file (a truncated tar) was accepted as if it were whole.
            (
                {
                    let mut t = build(&[
                        T::F("manifest.json", ok_manifest),
                        T::F("c.json", &[b'x'; 2000]),
                    ]);
                    t.truncate(1536);
                    t
                },
                "truncated",
            ),
        ];
        for (t, want) in cases {
            let e = inspect(&file_of(&t), Depth::Full).unwrap_err();
            assert!(e.0.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn hostile_layers() {
        for (l, want) in [
            (build(&[T::F("../../etc/cron.d/x", b"x")]), ".."),
            (build(&[T::F("/etc/passwd", b"x")]), "absolute"),
            (build(&[T::H("x", "../../etc/shadow")]), "outside"),
            (build(&[T::H("x", "/etc/shadow")]), "outside"),
            (build(&[T::L("a/b", "../../../etc")]), "outside"),
        ] {
            let (t, _) = save_tar(&[l], "null");
            let e = inspect(&file_of(&t), Depth::Full).unwrap_err();
            assert!(e.0.contains(want) && e.0.contains("layer"), "{e}");
        }
        // Absolute symlinks inside an image are normal.
        let (t, _) = save_tar(&[build(&[T::L("etc/mtab", "/proc/mounts")])], "null");
        inspect(&file_of(&t), Depth::Full).unwrap();
    }

    #[test]
    fn mismatches() {
        // A layer whose bytes differ from the pinned diff_id.
        let (mut t, _) = save_tar(&[busybox_layer()], "null");
        let f = inspect(&file_of(&t), Depth::Full).unwrap();
        let pos = t.windows(3).position(|w| w == b"ELF").unwrap();
        t[pos] = b'X';
        assert!(verify_layers(&file_of(&t), &f)
            .unwrap_err()
            .0
            .contains("pins"));
        // Wrong layer count.
        let cfg = config_for(&[b"a", b"b"], "null");
        let id = sha256_hex(&cfg);
        let man = format!("[{{\"Config\":\"{id}.json\",\"Layers\":[\"l.tar\"]}}]");
        let t = build(&[
            T::F("l.tar", &busybox_layer()),
            T::F(&format!("{id}.json"), &cfg),
            T::F("manifest.json", man.as_bytes()),
        ]);
        assert!(inspect(&file_of(&t), Depth::Config).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(clean_path(b"./a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(clean_path(b"./").unwrap(), "");
        assert!(clean_path(b"a/../b").is_err());
        assert!(clean_path(b"/a").is_err());
        assert!(clean_path(&[0xff]).is_err());
        assert_eq!(join_relative("a/b", "../c"), Some("a/c".into()));
        assert_eq!(join_relative("a", "../../c"), None);
        assert_eq!(clamp_abs("/../../etc/./x"), "etc/x");
    }
}
