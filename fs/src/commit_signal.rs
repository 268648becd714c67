//! Wakes the background committer when a branch holds too much uncommitted data, and
//! makes writers wait when a branch is far over that mark (bounded memory).

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

pub struct CommitSignal {
    wanted: Mutex<bool>,
    cv: Condvar,
    /// Dirty blocks per branch that trigger a commit.
    pub soft_limit: u64,
    /// Dirty blocks per branch at which writers wait for the committer.
    pub hard_limit: u64,
}

impl CommitSignal {
    pub fn new(soft_limit: u64) -> CommitSignal {
        CommitSignal { wanted: Mutex::new(false), cv: Condvar::new(), soft_limit, hard_limit: soft_limit * 4 }
    }

    pub fn nudge(&self) {
        *self.wanted.lock() = true;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for a nudge; true if nudged.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut wanted = self.wanted.lock();
        if !*wanted {
            self.cv.wait_for(&mut wanted, timeout);
        }
        std::mem::replace(&mut *wanted, false)
    }
}
