//! Go's `time.ParseDuration` syntax, which containerd configs use for every
//! timeout ("5s", "100ms", "1m30s", "1.5h").

use std::time::Duration;

/// Parses a Go duration string. Negative durations are rejected because no
/// corten timeout can be negative; "-0s" is allowed since Go allows it and it
/// means zero.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    // Go accepts a bare zero without a unit, and nothing else unit-less.
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (nanos, tail) = component(rest)?;
        total = total.checked_add(nanos)?;
        rest = tail;
    }
    // Go's Duration is an int64 of nanoseconds; stay within what it accepts.
    if total > i64::MAX as u128 || (negative && total != 0) {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

/// One `<number><unit>` group, in nanoseconds, plus the unparsed rest.
fn component(text: &str) -> Option<(u128, &str)> {
    let int_len = text.bytes().take_while(u8::is_ascii_digit).count();
    let (int_digits, rest) = text.split_at(int_len);
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let len = after.bytes().take_while(u8::is_ascii_digit).count();
            after.split_at(len)
        }
        None => ("", rest),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return None;
    }
    let unit_len = rest
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(unit_len);
    let scale: u128 = match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return None,
    };
    let mut whole: u128 = 0;
    for d in int_digits.bytes() {
        whole = whole.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
    }
    let mut nanos = whole.checked_mul(scale)?;
    // Digits past the 20th cannot change the result by a whole nanosecond
    // for any unit up to hours, so they are dropped instead of overflowing.
    let mut frac: u128 = 0;
    let mut denom: u128 = 1;
    for d in frac_digits.bytes().take(20) {
        frac = frac * 10 + u128::from(d - b'0');
        denom *= 10;
    }
    nanos = nanos.checked_add(frac * scale / denom)?;
    Some((nanos, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn go_examples() {
        assert_eq!(parse_duration("5s"), ms(5_000));
        assert_eq!(parse_duration("100ms"), ms(100));
        assert_eq!(parse_duration("1m30s"), ms(90_000));
        assert_eq!(parse_duration("1.5h"), ms(5_400_000));
        assert_eq!(parse_duration("4h0m0s"), ms(4 * 3_600_000));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("-0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("+2s"), ms(2_000));
        assert_eq!(parse_duration(".5s"), ms(500));
        assert_eq!(parse_duration("5.s"), ms(5_000));
        assert_eq!(parse_duration("300us"), Some(Duration::from_micros(300)));
        assert_eq!(parse_duration("300µs"), Some(Duration::from_micros(300)));
        assert_eq!(parse_duration("300μs"), Some(Duration::from_micros(300)));
        assert_eq!(parse_duration("7ns"), Some(Duration::from_nanos(7)));
        assert_eq!(
            parse_duration("1h2m3s4ms5us6ns"),
            Some(Duration::from_nanos(3_723_004_005_006))
        );
        assert_eq!(
            parse_duration("0.1234567890123456789012345s"),
            Some(Duration::from_nanos(123_456_789))
        );
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "5",
            "s",
            ".s",
            "-",
            "+",
            "5x",
            "5 s",
            " 5s",
            "1m30",
            "-1s",
            "1e3s",
            "5S",
            "9999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
