//! Lowering the CPU priority of a thread that does speculative work.
//!
//! The adaptive device races the server with its own tail (see [`crate::adaptive`]). That work
//! must only use CPU time nothing else wants, or it would slow the very answer it races, and the
//! next frame's head. On Linux the racing thread is put in the `SCHED_IDLE` class (it runs
//! only when no normal thread of the same CPU cgroup is runnable; within a CFS quota it also
//! yields the quota to them), falling back to nice 19. Elsewhere this does nothing.

/// Puts the calling thread at the lowest CPU priority the OS offers an unprivileged process.
/// Best effort: on failure the thread keeps its priority (and a debug line is logged).
pub fn lowest_for_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
        // calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
        // SAFETY: plain syscall on the calling thread (who = 0), no pointers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
            tracing::debug!("could not lower this thread's priority: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_thread_ends_up_idle_class_or_niced() {
        std::thread::spawn(|| {
            super::lowest_for_this_thread();
            // SAFETY: queries of the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert!(policy == libc::SCHED_IDLE || nice == 19, "policy {policy}, nice {nice}");
        })
        .join()
        .unwrap();
    }
}
