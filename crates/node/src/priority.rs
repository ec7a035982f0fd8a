//! Lowering the CPU priority of a thread that does speculative work.
//!
//! The adaptive device races the server with its own tail (see [`crate::adaptive`]). That work
//! must only use CPU time nothing else wants, or it would slow the very answer it races, and the
//! next frame's head. On Linux the racing thread is put in the `SCHED_IDLE` class (it runs
//! only when no normal thread of the same CPU cgroup is runnable on its CPU), falling back to
//! nice 19. Elsewhere this does nothing. Under a CFS quota the class does not shield the
//! others fully: the race uses the quota whenever they sleep, and a thread that wakes into a
//! throttled period waits for the next one, whatever its class (`docs/TRACES.md`, the round at
//! `bd40553`: the tokio threads waited about 3× longer per timeslice while a race ran, and
//! longer still with the whole process kept on one CPU). A really slower CPU has no such wait.
//!
//! [`Worker::idle`] keeps one such thread alive and hands it jobs. A fresh thread for each race
//! ran resnet50-light's tract plan 16 % slower than a thread that had run it before (62.4 vs
//! 53.8 ms, `cargo bench -p cleave-bench --bench race_thread`; no difference on the small
//! built-in model): what a thread builds up over its first runs (its allocations and buffers)
//! is lost with it. [`Worker::normal`] is the same at the default priority, for the device's own
//! compute: a pool such as tokio's blocking threads hands consecutive frames to different
//! threads, and each new one pays that again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

type Job = Box<dyn FnOnce() + Send + 'static>;

/// One long-lived thread that runs the jobs given to it one at a time, in order: at the lowest
/// CPU priority ([`Worker::idle`], see [`lowest_for_this_thread`]) or at the default one
/// ([`Worker::normal`]). The thread starts with the first job and ends when the worker is
/// dropped; a job that panics loses only its own answer, and a thread that died is replaced at
/// the next job.
#[derive(Debug)]
pub struct Worker {
    name: String,
    idle: bool,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    used: Arc<JobsUsed>,
}

/// What a [`Worker`]'s jobs have used so far, summed over jobs (Linux: the thread's own
/// `getrusage(RUSAGE_THREAD)` around each job; elsewhere nothing is counted).
#[derive(Debug, Default)]
struct JobsUsed {
    cpu_us: AtomicU64,
    preempted: AtomicU64,
}

/// CPU time and involuntary context switches of the calling thread so far.
fn thread_usage() -> Option<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `usage` is ours and of the type the call writes.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
            return None;
        }
        let us = |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64;
        Some((us(usage.ru_utime) + us(usage.ru_stime), usage.ru_nivcsw.max(0) as u64))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

impl Worker {
    /// A worker whose thread (started on demand, called `name`) runs at the lowest priority.
    pub fn idle(name: impl Into<String>) -> Self {
        Worker { name: name.into(), idle: true, tx: Mutex::new(None), used: Arc::default() }
    }

    /// A worker whose thread (started on demand, called `name`) keeps the default priority.
    pub fn normal(name: impl Into<String>) -> Self {
        Worker { name: name.into(), idle: false, tx: Mutex::new(None), used: Arc::default() }
    }

    /// Queues `job`; its result arrives on the returned channel (closed without a value if the
    /// job panicked). Fails only if no thread could be started.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let used = self.used.clone();
        let mut job: Job = Box::new(move || {
            let before = thread_usage();
            let out = job();
            // Counted before the answer goes, so a caller that has it sees the job's use.
            if let Some(((cpu0, pre0), (cpu1, pre1))) = before.zip(thread_usage()) {
                used.cpu_us.fetch_add(cpu1.saturating_sub(cpu0), Ordering::Relaxed);
                used.preempted.fetch_add(pre1.saturating_sub(pre0), Ordering::Relaxed);
            }
            let _ = tx.send(out);
        });
        let mut slot = self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Twice at most: a thread that died is found out by a failed send and replaced once.
        for _ in 0..2 {
            if let Some(sender) = slot.as_ref() {
                match sender.send(job) {
                    Ok(()) => return Ok(rx),
                    Err(mpsc::SendError(back)) => job = back,
                }
            }
            let (sender, jobs) = mpsc::channel::<Job>();
            let idle = self.idle;
            std::thread::Builder::new().name(self.name.clone()).spawn(move || {
                if idle {
                    lowest_for_this_thread();
                }
                for job in jobs {
                    // A panicking job drops its result sender; the thread carries on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
            *slot = Some(sender);
        }
        Err(std::io::Error::other("the worker thread stopped at once"))
    }

    /// CPU time the jobs this worker finished have used on its thread, and how often they were
    /// preempted (involuntary context switches), summed over jobs; zero where the platform does
    /// not tell. A job is counted when it ends (a panicking one not at all).
    pub fn used(&self) -> (Duration, u64) {
        (Duration::from_micros(self.used.cpu_us.load(Ordering::Relaxed)), self.used.preempted.load(Ordering::Relaxed))
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

    #[test]
    fn only_an_idle_worker_lowers_its_thread() {
        let policy = |w: super::Worker| {
            // SAFETY: a query of the calling (worker) thread.
            w.run(|| unsafe { libc::sched_getscheduler(0) }).unwrap().blocking_recv().unwrap()
        };
        // Root or not, SCHED_IDLE is allowed to anyone; the fallback (nice 19) keeps the class.
        let idle = policy(super::Worker::idle("cleave-test-idle"));
        assert!(idle == libc::SCHED_IDLE || idle == libc::SCHED_OTHER, "{idle}");
        assert_eq!(policy(super::Worker::normal("cleave-test-normal")), libc::SCHED_OTHER);
    }

    #[test]
    fn a_worker_counts_the_cpu_its_jobs_used() {
        let w = super::Worker::normal("cleave-test-used");
        assert_eq!(w.used().0, std::time::Duration::ZERO);
        let spin = || {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < std::time::Duration::from_millis(30) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        };
        w.run(spin).unwrap().blocking_recv().unwrap();
        let (cpu, _) = w.used();
        // Busy for 30 ms of wall time: most of it on the CPU, unless the machine is very loaded.
        assert!(cpu >= std::time::Duration::from_millis(5) && cpu <= std::time::Duration::from_millis(500), "{cpu:?}");
        w.run(|| std::thread::sleep(std::time::Duration::from_millis(30))).unwrap().blocking_recv().unwrap();
        assert!(w.used().0 - cpu < std::time::Duration::from_millis(10), "a sleeping job uses no CPU");
    }

    #[test]
    fn an_idle_worker_runs_jobs_in_order_on_one_thread_and_survives_a_panic() {
        let w = super::Worker::idle("cleave-test-idle");
        let id = |w: &super::Worker| w.run(|| std::thread::current().id()).unwrap().blocking_recv().unwrap();
        let first = id(&w);
        let panicked = w.run(|| -> u32 { panic!("a job that panics") }).unwrap().blocking_recv();
        assert!(panicked.is_err(), "a panicking job yields no value");
        assert_eq!(id(&w), first, "the same thread runs every job, even after a panic");
        assert_ne!(first, std::thread::current().id());
        let order: Vec<_> = (0..5).map(|k| w.run(move || k).unwrap()).collect();
        let got: Vec<i32> = order.into_iter().map(|r| r.blocking_recv().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }
}
