//! Sizes as docker writes them: `512`, `64k`, `4m`, `10g`, `1t` (binary units).

pub fn parse(s: &str) -> Option<u64> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let body = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match body.chars().last()? {
        'k' => (&body[..body.len() - 1], 1u64 << 10),
        'm' => (&body[..body.len() - 1], 1 << 20),
        'g' => (&body[..body.len() - 1], 1 << 30),
        't' => (&body[..body.len() - 1], 1 << 40),
        c if c.is_ascii_digit() => (body, 1),
        _ => return None,
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 15 {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A size for people, rounded: `512 B`, `1.5 KiB`, `47.7 MiB`.
pub fn approx(n: u64) -> String {
    let mut v = n as f64;
    for u in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || u == "TiB" {
            return if u == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {u}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

/// A size for people: the largest binary unit that divides it exactly
/// (`64M`, `1536K`), else bytes.
pub fn human(n: u64) -> String {
    for (u, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{u}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn human() {
        assert_eq!(super::human(64 << 20), "64M");
        assert_eq!(super::human(1536 << 10), "1536K");
        assert_eq!(super::human(1000), "1000");
    }

    #[test]
    fn sizes() {
        assert_eq!(super::parse("4g"), Some(4 << 30));
        assert_eq!(super::parse("64M"), Some(64 << 20));
        assert_eq!(super::parse("512"), Some(512));
        assert_eq!(super::parse("10gb"), Some(10 << 30));
        for bad in ["", "g", "-1g", "1.5g", "1x", "4 g", "99999999999999999999"] {
            assert_eq!(super::parse(bad), None, "{bad}");
        }
    }
}
