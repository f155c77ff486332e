//! Module names and aliases as kmod compares them: `-` as `_`, and
//! `modules.alias` globs matched like fnmatch(3).

/// `-` and `_` are the same in module names.
pub(super) fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Aliases compare with `-` as `_`, except inside `[...]` classes, as kmod
/// normalizes both the index and the query. A class ends at a line's end, so
/// a whole `modules.alias` normalizes at once (module names have no classes).
pub(super) fn normalize_alias(alias: &str) -> String {
    let mut bytes = alias.as_bytes().to_vec();
    let mut in_class = false;
    for b in &mut bytes {
        match *b {
            b'[' => in_class = true,
            b']' | b'\n' => in_class = false,
            b'-' if !in_class => *b = b'_',
            _ => {}
        }
    }
    // Only ASCII bytes were replaced by ASCII bytes: still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Matches a bracket class starting after `[` at `pattern[0..]` against `c`:
/// `(matched, bytes of the class including `]`)`, or `None` if unterminated.
fn match_class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(pattern.first(), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let p = *pattern.get(i)?;
        if p == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|e| *e != b']') {
            let (lo, hi) = (p, pattern[i + 2]);
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= p == c;
            i += 1;
        }
    }
}

/// Shell-style glob match (`*`, `?`, `[...]`, `\` escapes), as fnmatch(3)
/// without flags. It backtracks only to the last `*`, so it takes at most
/// pattern length × text length steps.
pub(super) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match match_class(&pattern[p + 1..], text[t]) {
                Some((true, len)) => Some(1 + len),
                Some((false, _)) => None,
                None => (text[t] == b'[').then_some(1),
            },
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(2),
            Some(c) => (*c == text[t]).then_some(1),
            None => None,
        };
        match step {
            Some(n) => {
                p += n;
                t += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    p = sp;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abd"));
        assert!(!m("abc", "abcd"));
        assert!(m("a*", "a"));
        assert!(m("*", ""));
        assert!(m("a*c*e", "abcdcxe"));
        assert!(!m("a*c*e", "abcdcxf"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[a-c]x", "dx"));
        assert!(m("[!a-c]x", "dx"));
        assert!(m("[^a]x", "bx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("[abc", "[abc"), "an unterminated class is literal");
        assert!(m(
            "pci:v00008086d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001234sv0sd0bc02sc00i00"
        ));
        // Many stars against a long text stay fast (no exponential backtracking).
        let text = "a".repeat(5000);
        assert!(!m("*a*a*a*a*a*a*a*a*b", &text));
        assert_eq!(normalize_alias("fs-9p[a-z]-x"), "fs_9p[a-z]_x");
    }
}
