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
}

pub fn valid_image_id(id: &str) -> bool {
    id.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}
