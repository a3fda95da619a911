//! Go's `time.ParseDuration` and `Duration.String`, the duration syntax
//! Consul reads (`wait=60000ms`, check `Interval: "10s"`) and writes back.

use std::time::Duration;

/// Parses a Go duration into signed nanoseconds: `300ms`, `1.5h`, `2h45m`,
/// `-5s`, `0`. Units `ns us µs μs ms s m h`; every number needs a unit
/// except a bare `0`. `None` where Go returns an error.
pub fn parse_go_nanos(text: &str) -> Option<i128> {
    let (neg, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit: i128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = whole.checked_mul(unit)?;
        let mut scale = unit;
        for digit in frac_part.bytes().take(30) {
            scale /= 10;
            value += i128::from(digit - b'0') * scale;
        }
        total = total.checked_add(value)?;
        if total > i128::from(i64::MAX) {
            return None;
        }
    }
    Some(if neg { -total } else { total })
}

/// A non-negative Go duration as a `Duration`.
pub fn parse_go(text: &str) -> Option<Duration> {
    let nanos = parse_go_nanos(text)?;
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// Formats like Go's `Duration.String`: `10s`, `1m0s`, `1h30m0s`, `500ms`.
pub fn format_go(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_frac(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_frac(nanos, 1_000_000));
    }
    let secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let seconds = trim_frac(u128::from(s as u64) * 1_000_000_000 + sub, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

fn trim_frac(nanos: u128, unit: u128) -> String {
    let whole = nanos / unit;
    let frac = nanos % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        let ms = 1_000_000i128;
        assert_eq!(parse_go_nanos("60000ms"), Some(60_000 * ms));
        assert_eq!(parse_go_nanos("30s"), Some(30_000 * ms));
        assert_eq!(parse_go_nanos("5m"), Some(300_000 * ms));
        assert_eq!(parse_go_nanos("1.5h"), Some(5_400_000 * ms));
        assert_eq!(parse_go_nanos("2h45m"), Some(9_900_000 * ms));
        assert_eq!(parse_go_nanos(".5s"), Some(500 * ms));
        assert_eq!(parse_go_nanos("5.s"), Some(5_000 * ms));
        assert_eq!(parse_go_nanos("-5s"), Some(-5_000 * ms));
        assert_eq!(parse_go_nanos("0"), Some(0));
        assert_eq!(parse_go_nanos("10µs"), Some(10_000));
        assert_eq!(parse_go_nanos("1us"), Some(1_000));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "5",
            "s",
            "1x",
            "abc",
            "1.2.3s",
            ".s",
            "-",
            "5 s",
            "1e3s",
            "99999999999h",
        ] {
            assert_eq!(parse_go_nanos(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go(Duration::from_secs(10)), "10s");
        assert_eq!(format_go(Duration::from_secs(60)), "1m0s");
        assert_eq!(format_go(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_go(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go(Duration::ZERO), "0s");
    }
}
