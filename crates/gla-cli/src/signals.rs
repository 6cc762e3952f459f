//! Graceful stop on SIGINT / SIGTERM: the first signal sets a flag that a long command polls at
//! a safe point (`gla train`: after the current step, then a checkpoint); a second signal of
//! either kind ends the process at once with status 128 + signal, as an unhandled one would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The stop request of this process.
#[derive(Clone)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

impl Stop {
    /// Installs the handlers for SIGINT and SIGTERM.
    ///
    /// # Errors
    /// When a handler cannot be registered.
    pub fn install() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        let s = Self { flag: Arc::new(AtomicBool::new(false)), which: Arc::new(AtomicUsize::new(0)) };
        for sig in [SIGINT, SIGTERM] {
            // registered first, so it sees the flag as the previous signal left it: set means
            // this is the second signal
            flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&s.flag))?;
            flag::register_usize(sig, Arc::clone(&s.which), sig as usize)?;
            flag::register(sig, Arc::clone(&s.flag))?;
        }
        Ok(s)
    }

    /// The signal received, if any (its name).
    pub fn requested(&self) -> Option<&'static str> {
        if !self.flag.load(Ordering::SeqCst) {
            return None;
        }
        Some(match self.which.load(Ordering::SeqCst) as i32 {
            signal_hook::consts::SIGTERM => "SIGTERM",
            _ => "SIGINT",
        })
    }

    /// The exit status of a command stopped by the signal received: 128 + its number; a rank
    /// of a data-parallel job stopped because another rank got one exits as on SIGTERM.
    pub fn exit_status(&self) -> i32 {
        match self.which.load(Ordering::SeqCst) as i32 {
            0 => 128 + signal_hook::consts::SIGTERM,
            sig => 128 + sig,
        }
    }
}
