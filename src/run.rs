//! One run, start to finish: the plan, the engine that runs it, and what
//! microrun says about how it ended.

use std::time::Instant;

use crate::engine::{chroot, kvm, qemu};
use crate::plan::{Plan, Target};
use crate::spec::{Engine, PhaseTimes, RunOutcome, Verbosity};

/// Runs `plan` with its engine and returns how it ended.
pub fn run(plan: &Plan) -> anyhow::Result<RunOutcome> {
    if let Some(note) = &plan.engine_note {
        if plan.verbosity != Verbosity::Quiet {
            crate::say(format_args!("{note}"));
        }
    }
    // With -it, microrun's terminal is in raw mode until this returns,
    // whichever way (see `terminal` for the other ways out).
    let _terminal = plan
        .terminal
        .then(crate::terminal::Session::start)
        .transpose()?;
    let mut outcome = match &plan.target {
        Target::Kvm {
            vm,
            irqchip,
            seccomp,
        } => kvm::run(plan, vm, *irqchip, *seccomp)?,
        Target::Qemu {
            vm,
            accel,
            accel_why,
        } => qemu::run(plan, vm, *accel, accel_why)?,
        Target::Chroot(root) => chroot::run(plan, root)?,
    };
    let guest_init = plan.vm().is_some_and(|vm| vm.initrd.init_archive.is_some());
    if outcome.exit_code == 125 && outcome.times.init.is_none() {
        if let (Some(said), Some(vm)) = (&outcome.unpack_failure, plan.vm()) {
            // Whatever else ended the run, this is why.
            let why = crate::plan::memory::unpack_failed(&vm.sizing, said);
            outcome.reason = Some(match outcome.reason.take() {
                Some(reason) => format!("{reason}\nmicrorun: {why}"),
                None => why,
            });
        } else if guest_init {
            if let (Some(reason), Some(vm)) = (outcome.reason.as_mut(), plan.vm()) {
                reason.push_str(&stopped_before_the_program(vm.mem_size, plan.verbosity));
            }
        }
    }
    Ok(outcome)
}

/// What to add when a VM ended before guest-init reported `@init`: the
/// kernel never got as far as the program, and the usual reasons.
fn stopped_before_the_program(mem_size: u64, verbosity: Verbosity) -> String {
    let log = if verbosity == Verbosity::Verbose {
        "the kernel log above says why"
    } else {
        "run with -v to see the kernel log"
    };
    format!(
        "\nmicrorun: the kernel stopped before the program started (guest-init never \
         reported): it may need more memory than {} MiB (--mem), or a command line that \
         suits it (--cmdline); {log}",
        mem_size >> 20
    )
}

/// The `--timings` report: one line per phase and the total, on stderr.
pub fn timings_report(engine: Engine, started: Instant, t: &PhaseTimes) -> String {
    let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(a), Some(b)) => format!(
            "{:9.2} ms",
            b.saturating_duration_since(a).as_secs_f64() * 1e3
        ),
        _ => format!("{:>12}", "-"),
    };
    let setup_label = match engine {
        Engine::Chroot => "namespace set-up",
        _ => "VMM set-up",
    };
    let boot_label = match engine {
        Engine::Chroot => "until guest-init starts",
        _ => "kernel until guest-init starts",
    };
    let mut out = format!("microrun: timings ({engine:?} engine)\n").to_lowercase();
    let rows = [
        (setup_label, Some(started), t.ready),
        (boot_label, t.ready, t.init),
        ("program", t.init, t.status),
        ("teardown", t.status, t.end),
        ("total, boot to exit", Some(started), t.end),
    ];
    for (label, from, to) in rows {
        out.push_str(&format!("microrun:   {:<32}{}\n", label, span(from, to)));
        if label == setup_label {
            for (step, took) in t.setup_steps.rows() {
                if let Some(took) = took {
                    out.push_str(&format!(
                        "microrun:     {:<30}{:9.2} ms\n",
                        step,
                        took.as_secs_f64() * 1e3
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timings_have_one_line_per_phase_and_a_total() {
        let s = Instant::now();
        let t = PhaseTimes {
            ready: Some(s + Duration::from_millis(2)),
            init: Some(s + Duration::from_millis(12)),
            status: Some(s + Duration::from_millis(13)),
            end: Some(s + Duration::from_millis(14)),
            ..PhaseTimes::default()
        };
        let r = timings_report(Engine::Kvm, s, &t);
        assert_eq!(r.lines().count(), 6, "{r}");
        assert!(r.contains("VMM set-up") && r.contains("2.00 ms"), "{r}");
        assert!(r.contains("kernel until guest-init starts") && r.contains("10.00 ms"));
        assert!(r.contains("total, boot to exit") && r.contains("14.00 ms"));
        let partial = timings_report(Engine::Qemu, s, &PhaseTimes::default());
        assert!(partial.contains(" -\n"), "{partial}");
        // The kvm engine's set-up steps, indented under the set-up.
        let steps = PhaseTimes {
            setup_steps: crate::spec::SetupSteps {
                plan: Some(Duration::from_micros(1500)),
                kernel_load: Some(Duration::from_millis(3)),
                ..Default::default()
            },
            ..t
        };
        let r = timings_report(Engine::Kvm, s, &steps);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 8, "{r}");
        assert!(lines[1].contains("VMM set-up"), "{r}");
        assert!(
            lines[2].contains("  plan") && lines[2].contains("1.50 ms"),
            "{r}"
        );
        assert!(lines[3].contains("kernel load") && lines[3].contains("3.00 ms"));
    }
}
