//! The background committer: commits every branch on a timer and early under write
//! pressure. A branch whose commit fails (a full disk, most often) is retried with
//! exponential backoff, on its own schedule, while the other branches keep committing;
//! its failure is logged once when it starts and once when it ends, never per attempt
//! (the log usually lives on the same full disk). Until then its changes stay in its
//! intent log: nothing is lost, and writers past the dirty limit keep being throttled.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Daemon, COMMIT_INTERVAL};

/// The first retry of a failed commit comes this soon...
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// ...and each further one twice as late, up to this.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// A branch whose last commit failed.
struct Failing {
    failures: u64,
    delay: Duration,
    next_try: Instant,
}

impl Failing {
    fn new(now: Instant) -> Failing {
        Failing { failures: 1, delay: FIRST_RETRY, next_try: now + FIRST_RETRY }
    }

    fn failed_again(&mut self, now: Instant) {
        self.failures += 1;
        self.delay = (self.delay * 2).min(MAX_RETRY);
        self.next_try = now + self.delay;
    }
}

/// Which branches are failing to commit, and when each is tried next.
#[derive(Default)]
struct Backoff {
    failing: HashMap<String, Failing>,
}

impl Backoff {
    fn due(&self, branch: &str, now: Instant) -> bool {
        self.failing.get(branch).is_none_or(|f| now >= f.next_try)
    }

    /// How long the committer may sleep: the timer, or the next retry if sooner.
    fn sleep(&self, now: Instant) -> Duration {
        self.failing.values().map(|f| f.next_try.saturating_duration_since(now)).fold(COMMIT_INTERVAL, Duration::min)
    }

    fn failed(&mut self, branch: &str, error: &dyn std::fmt::Display, now: Instant) {
        match self.failing.get_mut(branch) {
            Some(f) => f.failed_again(now),
            None => {
                tracing::error!(
                    "background commit of {branch} failed: {error}; its changes stay in its intent log; \
                     retrying with backoff (up to every {}s) and logging again only when it works \
                     (if the store's disk is full, see `pgbranch status`, then `pgbranch branch delete` + `pgbranch gc`)",
                    MAX_RETRY.as_secs()
                );
                self.failing.insert(branch.to_string(), Failing::new(now));
            }
        }
    }

    fn succeeded(&mut self, branch: &str) {
        if let Some(f) = self.failing.remove(branch) {
            tracing::info!("commit of {branch} works again after {} failures", f.failures);
        }
    }

    /// Forgets branches that no longer exist.
    fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.failing.retain(|name, _| exists(name));
    }
}

impl Daemon {
    /// Commits branches in the background: on a timer, and early under write pressure.
    pub fn spawn_committer(self: &Arc<Self>) -> std::io::Result<()> {
        let d = self.clone();
        std::thread::Builder::new().name("committer".into()).spawn(move || d.run_committer())?;
        Ok(())
    }

    fn run_committer(&self) {
        let mut backoff = Backoff::default();
        while !self.stopping.load(Ordering::Relaxed) {
            self.signal.wait(backoff.sleep(Instant::now()));
            self.expire_branches();
            let branches = self.repo.branches();
            let mut committed = false;
            for b in &branches {
                let now = Instant::now();
                if !backoff.due(&b.name, now) {
                    continue;
                }
                // A panic in one branch's commit (a bug) is that branch's failure, retried
                // with backoff: it must not stop background commits for every branch.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.repo.commit_branch(b)));
                match outcome {
                    Ok(Ok(_)) => {
                        backoff.succeeded(&b.name);
                        committed = true;
                        self.note_position(&b.name);
                    }
                    Ok(Err(e)) => backoff.failed(&b.name, &e, now),
                    Err(panic) => {
                        let why = format!("the commit panicked: {}", super::panic_message(panic.as_ref()));
                        backoff.failed(&b.name, &why, now);
                    }
                }
            }
            backoff.retain(|name| branches.iter().any(|b| b.name == name));
            // Committed blocks were freed by many FUSE threads; hand the memory
            // back to the OS instead of leaving it in per-thread malloc arenas.
            if committed {
                crate::sys::trim_malloc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_recover() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.due("a", t0));
        b.failed("a", &"disk full", t0);
        assert!(!b.due("a", t0));
        assert!(b.due("b", t0), "other branches are unaffected");
        assert_eq!(b.sleep(t0), FIRST_RETRY);
        let mut t = t0;
        for _ in 0..20 {
            t = b.failing["a"].next_try;
            b.failed("a", &"disk full", t);
        }
        assert_eq!(b.failing["a"].delay, MAX_RETRY, "the delay stops growing");
        assert_eq!(b.failing["a"].failures, 21);
        assert!(b.due("a", t + MAX_RETRY));
        b.succeeded("a");
        assert!(b.due("a", t));
        assert_eq!(b.sleep(t), COMMIT_INTERVAL);
    }
}
