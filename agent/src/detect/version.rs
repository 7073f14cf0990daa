//! Version ordering as dpkg and rpm define it (kernel releases and package versions are not
//! semver: `6.1.0-13-amd64` < `6.1.0-17-amd64`, `1.0~rc1` < `1.0`).

use std::cmp::Ordering;

/// Which ordering rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionScheme {
    /// dpkg's rules (Debian policy 5.6.12): `[epoch:]upstream[-revision]`, `~` sorts first.
    Debian,
    /// rpm's `rpmvercmp` on `[epoch:]version[-release]`, `~` sorts first, `^` after the end.
    Rpm,
}

impl VersionScheme {
    /// Compares two versions.
    pub fn compare(self, a: &str, b: &str) -> Ordering {
        match self {
            VersionScheme::Debian => debian_compare(a, b),
            VersionScheme::Rpm => rpm_compare(a, b),
        }
    }
}

/// Splits off a numeric epoch (`2:1.0` → `(2, "1.0")`); none means 0.
fn split_epoch(v: &str) -> (u64, &str) {
    match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, v),
    }
}

/// Compares two strings of digits numerically, whatever their length.
fn compare_digits(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn debian_compare(a: &str, b: &str) -> Ordering {
    let (ea, a) = split_epoch(a);
    let (eb, b) = split_epoch(b);
    let (ua, ra) = a.rsplit_once('-').unwrap_or((a, ""));
    let (ub, rb) = b.rsplit_once('-').unwrap_or((b, ""));
    ea.cmp(&eb)
        .then_with(|| verrevcmp(ua, ub))
        .then_with(|| verrevcmp(ra, rb))
}

/// dpkg's weight of a character in a non-digit run: `~` before the end, letters before the rest.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let da = std::str::from_utf8(&a[si..i]).unwrap_or("");
        let db = std::str::from_utf8(&b[sj..j]).unwrap_or("");
        let c = compare_digits(da, db);
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

fn rpm_compare(a: &str, b: &str) -> Ordering {
    let (ea, a) = split_epoch(a);
    let (eb, b) = split_epoch(b);
    ea.cmp(&eb).then_with(|| rpmvercmp(a, b))
}

/// rpm's `rpmvercmp`: alternating runs of digits and letters, separators ignored.
fn rpmvercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        while i < a.len() && sep(a[i]) {
            i += 1;
        }
        while j < b.len() && sep(b[j]) {
            j += 1;
        }
        let (ca, cb) = (a.get(i).copied(), b.get(j).copied());
        if ca == Some(b'~') || cb == Some(b'~') {
            if ca != Some(b'~') {
                return Ordering::Greater;
            }
            if cb != Some(b'~') {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if ca == Some(b'^') || cb == Some(b'^') {
            if ca.is_none() {
                return Ordering::Less;
            }
            if cb.is_none() {
                return Ordering::Greater;
            }
            if ca != Some(b'^') {
                return Ordering::Greater;
            }
            if cb != Some(b'^') {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        let (Some(ca), Some(_)) = (ca, cb) else {
            break;
        };
        let numeric = ca.is_ascii_digit();
        let take = |s: &[u8], mut k: usize| {
            let start = k;
            while k < s.len()
                && (if numeric {
                    s[k].is_ascii_digit()
                } else {
                    s[k].is_ascii_alphabetic()
                })
            {
                k += 1;
            }
            (start, k)
        };
        let (sa, ea) = take(a, i);
        let (sb, eb) = take(b, j);
        i = ea;
        j = eb;
        if sb == eb {
            // Different kinds of segment: a number is newer than letters.
            return if numeric {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let sega = std::str::from_utf8(&a[sa..ea]).unwrap_or("");
        let segb = std::str::from_utf8(&b[sb..eb]).unwrap_or("");
        let c = if numeric {
            compare_digits(sega, segb)
        } else {
            sega.cmp(segb)
        };
        if c != Ordering::Equal {
            return c;
        }
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn debian_ordering() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+deb12u1", Less),
            ("1.0-1", "1.0-2", Less),
            ("1:0.9", "2.0", Greater),
            ("6.1.0-13-amd64", "6.1.0-17-amd64", Less),
            ("6.1.0-9-amd64", "6.1.0-13-amd64", Less),
            ("2.36-9+deb12u3", "2.36-9+deb12u4", Less),
            ("1.30.1-1.1", "1.30.2-1.1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0~", "1.0~~", Greater),
            ("1.0.10", "1.0.9", Greater),
            ("00001", "1", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(VersionScheme::Debian.compare(a, b), want, "{a} vs {b}");
            assert_eq!(
                VersionScheme::Debian.compare(b, a),
                want.reverse(),
                "{b} vs {a}"
            );
        }
    }

    #[test]
    fn rpm_ordering() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("2.0.1a", "2.0.1", Greater),
            ("5.5p1", "5.5p10", Less),
            ("10xyz", "10.1xyz", Less),
            ("xyz10", "xyz10.1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0^", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("a", "1", Less),
            ("1:1.0", "2.0", Greater),
            (
                "5.14.0-362.8.1.el9_3.x86_64",
                "5.14.0-362.13.1.el9_3.x86_64",
                Less,
            ),
            ("6.5.6-300.fc39.x86_64", "6.5.12-300.fc39.x86_64", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(VersionScheme::Rpm.compare(a, b), want, "{a} vs {b}");
            assert_eq!(
                VersionScheme::Rpm.compare(b, a),
                want.reverse(),
                "{b} vs {a}"
            );
        }
    }
}
