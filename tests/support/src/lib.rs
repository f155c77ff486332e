//! What a test does when it cannot run, for every test suite of the
//! workspace (`tests/`, `vmm/tests/`, `initrd-tools/tests/`): one crate, a
//! dev-dependency of each package, so that the policy and the markers the
//! nested lane parses back are written once.
//!
//! A skip is one of two kinds:
//!
//! - **not applicable** ([`skip_not_applicable!`]): the test does not apply
//!   here by design (the chroot engine boots no kernel; root can read any
//!   file; a case deliberately left out of the nested lane). Always a skip,
//!   printed as `skipped: <reason>`.
//! - **unavailable** ([`skip_unavailable!`]): the test should run here but
//!   something it needs is missing (QEMU, a kernel, GNU cpio, busybox-static,
//!   `/dev/kvm`, root, the nested lane). On a developer's machine a skip,
//!   printed as `skipped (unavailable): <reason>`; in strict mode
//!   (`MICRORUN_REQUIRE_ALL=1`, or `CI=true`) the test fails with the
//!   reason, so that a CI that lost a tool or a lane is not green.
//!
//! Both print on stderr directly, which the test harness does not capture,
//! so every run shows why a test did nothing.
//!
//! [`fixtures`] holds the inputs more than one package's tests build.

pub mod fixtures;

use std::fmt;
use std::io::Write as _;

/// `1` makes every unavailable skip fail; `0` lets them skip even where
/// `CI=true` (the nested lane sets it so inside, where the outer test
/// decides: see [`parse`]).
pub const REQUIRE_ALL_VAR: &str = "MICRORUN_REQUIRE_ALL";

/// How a not-applicable skip starts, as the suites have always printed it.
pub const NOT_APPLICABLE_MARKER: &str = "skipped: ";
/// How an unavailable skip starts: recognisably a skip to a reader and to
/// anything that greps for `skipped`, and told apart by [`parse`].
pub const UNAVAILABLE_MARKER: &str = "skipped (unavailable): ";

/// Why a test does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The test does not apply here, by design.
    NotApplicable,
    /// The test should run here, but something it needs is missing.
    Unavailable,
}

/// What becomes of a skip: a line for stderr, or a failure message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The test passes after printing this line.
    Skip(String),
    /// The test fails with this message.
    Fail(String),
}

/// Whether this process runs in strict mode, from its environment.
pub fn strict() -> bool {
    let var = |name| std::env::var(name).ok();
    strict_with(var(REQUIRE_ALL_VAR).as_deref(), var("CI").as_deref())
}

/// The strict-mode decision for the values of `MICRORUN_REQUIRE_ALL` and
/// `CI`: `MICRORUN_REQUIRE_ALL` wins when set (anything but empty, `0`,
/// `false` or `no` is on); unset, `CI=true` (or `1`), which CI services set,
/// turns it on.
pub fn strict_with(require_all: Option<&str>, ci: Option<&str>) -> bool {
    let on = |value: &str| {
        !matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        )
    };
    match require_all {
        Some(value) => on(value),
        None => ci.is_some_and(|value| {
            let value = value.trim();
            value.eq_ignore_ascii_case("true") || value == "1"
        }),
    }
}

/// What a skip of `kind` for `reason` comes to, strict or not.
pub fn decide(kind: Skip, reason: &str, strict: bool) -> Outcome {
    match (kind, strict) {
        (Skip::NotApplicable, _) => Outcome::Skip(format!("{NOT_APPLICABLE_MARKER}{reason}")),
        (Skip::Unavailable, false) => Outcome::Skip(format!("{UNAVAILABLE_MARKER}{reason}")),
        (Skip::Unavailable, true) => Outcome::Fail(format!(
            "this test cannot run here: {reason}\n\
             It is required to run ({REQUIRE_ALL_VAR}=1 or CI=true: strict mode, which .ci/run \
             sets). Install what the reason names: scripts/install-deps installs the Debian \
             packages the tests need, scripts/build-kernel builds the project kernel; or run \
             with {REQUIRE_ALL_VAR}=0 to let it skip on this machine."
        )),
    }
}

/// Reports a skip of `kind`: prints its line on stderr, or, for an
/// unavailable test in strict mode, fails the calling test. Use
/// [`skip_not_applicable!`] and [`skip_unavailable!`].
#[track_caller]
pub fn report(kind: Skip, reason: fmt::Arguments<'_>) {
    report_with(kind, reason, strict());
}

/// [`report`] with the strict-mode decision given.
#[track_caller]
pub fn report_with(kind: Skip, reason: fmt::Arguments<'_>, strict: bool) {
    match decide(kind, &reason.to_string(), strict) {
        Outcome::Skip(line) => {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        Outcome::Fail(message) => panic!("{message}"),
    }
}

/// The skip a line of a test's output reports, with its reason, if it
/// reports one. The marker may follow other text on the line: run with
/// `--nocapture --test-threads 1`, libtest prints `test NAME ... ` and
/// then the test's own output on the same line.
pub fn parse(line: &str) -> Option<(Skip, &str)> {
    [
        (Skip::NotApplicable, NOT_APPLICABLE_MARKER),
        (Skip::Unavailable, UNAVAILABLE_MARKER),
    ]
    .into_iter()
    .filter_map(|(kind, marker)| {
        line.find(marker)
            .map(|at| (at, kind, line[at + marker.len()..].trim()))
    })
    .min_by_key(|(at, _, _)| *at)
    .map(|(_, kind, reason)| (kind, reason))
}

/// Skips the calling test (the caller returns after it): it does not apply
/// here. Takes `format!` arguments.
#[macro_export]
macro_rules! skip_not_applicable {
    ($($arg:tt)*) => {
        $crate::report($crate::Skip::NotApplicable, format_args!($($arg)*))
    };
}

/// Skips the calling test (the caller returns after it), or fails it in
/// strict mode: it should run here, but what it needs is missing. The
/// reason should say how to get it. Takes `format!` arguments.
#[macro_export]
macro_rules! skip_unavailable {
    ($($arg:tt)*) => {
        $crate::report($crate::Skip::Unavailable, format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_all_decides_and_ci_true_turns_strict_mode_on() {
        assert!(!strict_with(None, None));
        assert!(strict_with(Some("1"), None));
        assert!(strict_with(None, Some("true")));
        assert!(strict_with(None, Some("1")));
        assert!(!strict_with(None, Some("false")));
        assert!(!strict_with(None, Some("")));
        // Set, MICRORUN_REQUIRE_ALL wins over CI either way.
        assert!(!strict_with(Some("0"), Some("true")));
        assert!(!strict_with(Some(""), Some("true")));
        assert!(strict_with(Some("1"), Some("false")));
        assert!(strict_with(Some("yes"), None));
        assert!(!strict_with(Some("no"), None));
    }

    #[test]
    fn not_applicable_always_skips_with_the_plain_marker() {
        for strict in [false, true] {
            assert_eq!(
                decide(Skip::NotApplicable, "boots no kernel", strict),
                Outcome::Skip("skipped: boots no kernel".into())
            );
        }
    }

    #[test]
    fn unavailable_skips_with_its_marker_unless_strict() {
        assert_eq!(
            decide(Skip::Unavailable, "no cpio (install cpio)", false),
            Outcome::Skip("skipped (unavailable): no cpio (install cpio)".into())
        );
        let Outcome::Fail(message) = decide(Skip::Unavailable, "no cpio (install cpio)", true)
        else {
            panic!("an unavailable test must fail in strict mode");
        };
        assert!(message.contains("no cpio (install cpio)"), "{message}");
        assert!(message.contains("scripts/install-deps"), "{message}");
        assert!(message.contains(REQUIRE_ALL_VAR), "{message}");
    }

    #[test]
    fn report_panics_only_for_unavailable_in_strict_mode() {
        let fails = |kind, strict| {
            std::panic::catch_unwind(|| report_with(kind, format_args!("why"), strict)).is_err()
        };
        assert!(fails(Skip::Unavailable, true));
        assert!(!fails(Skip::Unavailable, false));
        assert!(!fails(Skip::NotApplicable, true));
        assert!(!fails(Skip::NotApplicable, false));
    }

    /// What the nested lane reads back is what was printed inside: an inner
    /// unavailable skip must not come back as a not-applicable one, which
    /// strict mode would let pass.
    #[test]
    fn printed_lines_parse_back_to_their_kind() {
        for kind in [Skip::NotApplicable, Skip::Unavailable] {
            let Outcome::Skip(line) = decide(kind, "the reason: it", false) else {
                panic!("not strict: a skip");
            };
            assert_eq!(parse(&line), Some((kind, "the reason: it")));
            // As libtest prints it under --nocapture with one thread.
            let framed = format!("test uarts::stdin_is_forwarded ... {line}");
            assert_eq!(parse(&framed), Some((kind, "the reason: it")));
        }
        assert_eq!(parse("test x ... ok"), None);
        assert_eq!(parse("sockets are skipped"), None);
    }
}
