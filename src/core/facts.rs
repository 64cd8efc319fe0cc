//! What berth needs to know about an image, learnt once per image id (the
//! engine side, `engine::facts`, gathers and caches them).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// `sha256:<hex>`: the image is always run by this id.
    pub id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
    pub user: String,
    /// Whether `/bin/sh` resolves to an executable regular file.
    pub has_shell: bool,
    /// The image's declared `VOLUME`s (docker would put an anonymous
    /// volume, on the node's own disk, at each).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// A user's bundle: its owner and share (SPEC §15); `None` for site
    /// bundles and engine images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::core::share::Owner>,
}

/// The keys of a config's `Volumes` object (`{"/data": {}}`).
pub fn volume_keys(v: Option<&serde_json::Value>) -> Vec<String> {
    let mut out: Vec<String> = v
        .and_then(serde_json::Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    out.sort();
    out
}

pub fn valid_image_id(id: &str) -> bool {
    id.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}
