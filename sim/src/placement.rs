//! Where a replay's threads run: the applying thread on a CPU of its own, its helpers
//! (reader, storage, snapshot) on the others.
//!
//! The applying thread is the replay's bottleneck and its helpers together need most of
//! another CPU. Left to the scheduler on a two-CPU machine, the helpers kept landing on
//! the applying thread's CPU: a system-wide scheduler trace of one replay of 12.49M
//! events (`perf record -a -e sched:sched_switch`) counted 690 switches away from it,
//! 646 of them preemptions by the reader and the storage helper, 0.26 s off its CPU in
//! a 2.6 s replay. Placed, the same trace shows 75 switches and 3 ms. Device interrupts
//! usually go to the first CPU, so the applying thread takes the last one allowed.
//!
//! Placement changes only which CPU runs what, never a result. It is skipped with
//! fewer than two CPUs allowed, with `TALLY_REPLAY_PLACEMENT=off`, and wherever the
//! operating system refuses (the replay then runs as placed by the scheduler).

use rustix::thread::CpuSet;

/// The environment variable that turns placement off (`off`; `on`, the default, or unset
/// leaves it on).
pub const PLACEMENT_TUNABLE: &str = "TALLY_REPLAY_PLACEMENT";

/// The CPUs allowed to the process, split between the applying thread and its helpers.
#[derive(Clone, Copy)]
pub struct Placement {
    allowed: CpuSet,
    applier: CpuSet,
    helpers: CpuSet,
}

impl Placement {
    /// The split of the calling thread's allowed CPUs: the last for the applying thread,
    /// the rest for the helpers. `None` when there is nothing to split or it is turned off.
    pub fn split() -> Option<Placement> {
        match std::env::var(PLACEMENT_TUNABLE).as_deref() {
            Ok("off") => return None,
            Ok("on") | Err(std::env::VarError::NotPresent) => {}
            Ok(other) => eprintln!(
                "warning: {PLACEMENT_TUNABLE}={other:?} is neither \"on\" nor \"off\"; threads are placed"
            ),
            Err(std::env::VarError::NotUnicode(_)) => eprintln!(
                "warning: {PLACEMENT_TUNABLE} is not UTF-8, so neither \"on\" nor \"off\"; threads are placed"
            ),
        }
        let allowed = rustix::thread::sched_getaffinity(None).ok()?;
        Placement::split_of(allowed)
    }

    fn split_of(allowed: CpuSet) -> Option<Placement> {
        if allowed.count() < 2 {
            return None;
        }
        let last = (0..CpuSet::MAX_CPU)
            .rev()
            .find(|&cpu| allowed.is_set(cpu))?;
        let mut applier = CpuSet::new();
        applier.set(last);
        let mut helpers = allowed;
        helpers.unset(last);
        Some(Placement {
            allowed,
            applier,
            helpers,
        })
    }

    /// Moves the calling thread, the applying one, to its CPU until the guard is dropped
    /// (then it may run on any allowed CPU again). Threads it starts inherit its CPU:
    /// each helper calls [`place_helper`] first.
    pub fn place_applier(&self) -> Placed {
        let placed = rustix::thread::sched_setaffinity(None, &self.applier).is_ok();
        Placed {
            restore: placed.then_some(self.allowed),
        }
    }
}

/// The applying thread's placement, undone on drop.
#[must_use]
pub struct Placed {
    restore: Option<CpuSet>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        if let Some(allowed) = &self.restore {
            let _ = rustix::thread::sched_setaffinity(None, allowed);
        }
    }
}

/// Moves the calling thread, a helper, to the helpers' CPUs, if there is a placement.
pub fn place_helper(placement: Option<Placement>) {
    if let Some(placement) = placement {
        // A refusal leaves the helper where it is: slower, the same results.
        let _ = rustix::thread::sched_setaffinity(None, &placement.helpers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(cpus: &[usize]) -> CpuSet {
        let mut set = CpuSet::new();
        for &cpu in cpus {
            set.set(cpu);
        }
        set
    }

    fn cpus_of(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect()
    }

    #[test]
    fn the_applier_takes_the_last_allowed_cpu_and_the_helpers_the_rest() {
        let placement = Placement::split_of(set_of(&[0, 1])).expect("two CPUs split");
        assert_eq!(cpus_of(&placement.applier), [1]);
        assert_eq!(cpus_of(&placement.helpers), [0]);

        let placement = Placement::split_of(set_of(&[2, 5, 7, 9])).expect("four CPUs split");
        assert_eq!(cpus_of(&placement.applier), [9]);
        assert_eq!(cpus_of(&placement.helpers), [2, 5, 7]);
        assert_eq!(cpus_of(&placement.allowed), [2, 5, 7, 9]);
    }

    #[test]
    fn one_cpu_is_not_split() {
        assert!(Placement::split_of(set_of(&[3])).is_none());
        assert!(Placement::split_of(CpuSet::new()).is_none());
    }

    #[test]
    fn the_applier_is_placed_and_put_back() {
        let before = rustix::thread::sched_getaffinity(None).expect("affinity readable");
        let Some(placement) = Placement::split_of(before) else {
            return; // one CPU: nothing to place on this machine
        };
        {
            let _placed = placement.place_applier();
            let now = rustix::thread::sched_getaffinity(None).expect("affinity readable");
            assert_eq!(cpus_of(&now), cpus_of(&placement.applier));
            assert_eq!(
                rustix::thread::sched_getcpu(),
                cpus_of(&placement.applier)[0]
            );
        }
        let after = rustix::thread::sched_getaffinity(None).expect("affinity readable");
        assert_eq!(cpus_of(&after), cpus_of(&before));
    }
}
