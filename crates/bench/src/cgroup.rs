//! A real CPU limit for an emulated device: a cgroup with a CFS bandwidth quota.
//!
//! On one machine the device and the edge are equally fast, which hides the whole point of
//! offloading. [`CpuLimit::create`] makes a fresh cgroup that may use `fraction` of one core
//! and [`CpuLimit::add`] moves a child process (all its threads) into it. Nothing else is
//! moved: never the calling process, so the link proxy and the benchmark's clock keep running
//! at full speed.
//!
//! - **cgroup v2** (`/sys/fs/cgroup/cgroup.controllers` lists `cpu`): a directory
//!   `/sys/fs/cgroup/cleave-<pid>-<n>` with `cpu.max` = `<quota> <period>`; the `cpu`
//!   controller is enabled in the root's `cgroup.subtree_control` if it is not already.
//! - **cgroup v1** (`/sys/fs/cgroup/cpu/cpu.cfs_quota_us` exists): a directory
//!   `/sys/fs/cgroup/cpu/cleave-<pid>-<n>` with `cpu.cfs_period_us` and `cpu.cfs_quota_us`.
//!
//! The period is as short as the kernel allows rather than its default 100 ms: a quota'd
//! process runs at full speed for `fraction` × period and then waits for the next period, so
//! a burst of work shorter than the quota is not slowed at all. The kernel's smallest quota is
//! 1 ms, so the period is 1 ms / `fraction` (6.7 ms at 15 %; [`period_us`]): work longer than
//! a few ms is slowed evenly, as on a slower CPU, but a burst under 1 ms after an idle period
//! still runs at full speed. Benchmarks therefore report the device/edge speed ratio they
//! actually measured. Creating a cgroup needs root (or a delegated subtree); every failure is a
//! [`CgroupError`], on which callers fall back to a compute-time multiplier and say so. The
//! directory is removed when the [`CpuLimit`] is dropped (after its processes have exited:
//! drop the child first).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The kernel's smallest CFS quota (and period), µs.
pub const MIN_QUOTA_US: u64 = 1_000;

/// The CFS period for `fraction` of a core: the shortest whose quota is at least
/// [`MIN_QUOTA_US`], at most the kernel default 100 ms.
pub fn period_us(fraction: f64) -> u64 {
    ((MIN_QUOTA_US as f64 / fraction).ceil() as u64).clamp(MIN_QUOTA_US, 100_000)
}

/// The quota matching [`period_us`].
pub fn quota_us(fraction: f64) -> u64 {
    ((fraction * period_us(fraction) as f64).round() as u64).max(MIN_QUOTA_US)
}

/// Why no cgroup could be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("the CPU fraction {0} must be in (0, {1}] (cores available)")]
    Fraction(f64, usize),
    #[error("no writable cgroup CPU controller (neither v2 `cpu.max` nor v1 `cpu.cfs_quota_us` under /sys/fs/cgroup)")]
    Unsupported,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

/// Which cgroup hierarchy the limit lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A cgroup limited to a fraction of one core; removed on drop.
#[derive(Debug)]
pub struct CpuLimit {
    dir: PathBuf,
    version: Version,
    fraction: f64,
}

static SERIAL: AtomicUsize = AtomicUsize::new(0);

impl CpuLimit {
    /// Makes the cgroup under the standard mount point `/sys/fs/cgroup`.
    pub fn create(fraction: f64) -> Result<CpuLimit, CgroupError> {
        Self::create_in(Path::new("/sys/fs/cgroup"), fraction)
    }

    /// Makes the cgroup under the cgroup mount point `root` (v2 if `root/cgroup.controllers`
    /// lists `cpu`, else v1 if `root/cpu/cpu.cfs_quota_us` exists).
    pub fn create_in(root: &Path, fraction: f64) -> Result<CpuLimit, CgroupError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !(fraction.is_finite() && fraction > 0.0 && fraction <= cores as f64) {
            return Err(CgroupError::Fraction(fraction, cores));
        }
        let (quota, period) = (quota_us(fraction), period_us(fraction));
        let name = format!("cleave-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        let controllers = root.join("cgroup.controllers");
        if std::fs::read_to_string(&controllers).is_ok_and(|s| s.split_whitespace().any(|c| c == "cpu")) {
            let control = root.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).is_ok_and(|s| s.split_whitespace().any(|c| c == "cpu"));
            if !enabled {
                std::fs::write(&control, "+cpu").map_err(io(&control))?;
            }
            sweep_stale(root);
            let dir = root.join(name);
            std::fs::create_dir(&dir).map_err(io(&dir))?;
            let limit = CpuLimit { dir, version: Version::V2, fraction };
            let max = limit.dir.join("cpu.max");
            std::fs::write(&max, format!("{quota} {period}")).map_err(io(&max))?;
            return Ok(limit);
        }
        let v1 = root.join("cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            sweep_stale(&v1);
            let dir = v1.join(name);
            std::fs::create_dir(&dir).map_err(io(&dir))?;
            let limit = CpuLimit { dir, version: Version::V1, fraction };
            let period_file = limit.dir.join("cpu.cfs_period_us");
            std::fs::write(&period_file, period.to_string()).map_err(io(&period_file))?;
            let q = limit.dir.join("cpu.cfs_quota_us");
            std::fs::write(&q, quota.to_string()).map_err(io(&q))?;
            return Ok(limit);
        }
        Err(CgroupError::Unsupported)
    }

    /// Moves process `pid` (every thread of it) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io(&procs))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// One line for reports, e.g. `cgroup v1 CFS quota: 15% of one core (1500/10000 µs)`.
    pub fn describe(&self) -> String {
        let (quota, period) = (quota_us(self.fraction), period_us(self.fraction));
        let (v, file) = match self.version {
            Version::V1 => ("v1", "cpu.cfs_quota_us"),
            Version::V2 => ("v2", "cpu.max"),
        };
        format!("cgroup {v} CFS quota ({file}): {:.0}% of one core ({quota} µs per {period} µs)", self.fraction * 100.0)
    }
}

/// Removes the cgroups an earlier cleave left behind when it was killed before its `Drop` ran
/// (`cleave-<pid>-<n>` whose process is gone). The kernel refuses to remove one that still holds
/// a process, so a cgroup in use is never touched.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("cleave-")).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Fails while a process is still inside; the caller drops its children first.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fractions_are_refused_before_touching_anything() {
        let root = Path::new("/nonexistent-cgroup-root");
        for f in [0.0, -1.0, f64::NAN, 1e9] {
            assert!(matches!(CpuLimit::create_in(root, f), Err(CgroupError::Fraction(..))), "{f}");
        }
        assert!(matches!(CpuLimit::create_in(root, 0.5), Err(CgroupError::Unsupported)));
    }

    #[test]
    fn periods_are_as_short_as_the_minimum_quota_allows() {
        assert_eq!((period_us(0.15), quota_us(0.15)), (6667, 1000));
        assert_eq!((period_us(0.5), quota_us(0.5)), (2000, 1000));
        assert_eq!((period_us(2.0), quota_us(2.0)), (1000, 2000));
        assert_eq!((period_us(0.001), quota_us(0.001)), (100_000, 1000));
    }

    /// Regression: a `bench trace` killed by a signal left an empty `cleave-*` cgroup behind.
    #[test]
    fn cgroups_of_dead_cleave_processes_are_swept() {
        let root = std::env::temp_dir().join(format!("cleave-cgroup-sweep-{}", std::process::id()));
        std::fs::create_dir_all(root.join("cpu")).unwrap();
        std::fs::write(root.join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        // pid_max is at most 2^22: this process cannot exist.
        let stale = root.join("cpu/cleave-4999999-0");
        let other = root.join("cpu/someone-else");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let limit = CpuLimit::create_in(&root, 0.5).unwrap();
        assert!(!stale.exists(), "the stale cgroup is gone");
        assert!(other.exists(), "other cgroups are left alone");
        drop(limit);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_layout_is_written_and_removed() {
        // A fake v1 hierarchy in a temp dir: plain files stand in for the kernel's.
        let root = std::env::temp_dir().join(format!("cleave-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("cpu")).unwrap();
        std::fs::write(root.join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        let limit = CpuLimit::create_in(&root, 0.15).unwrap();
        assert_eq!(limit.version(), Version::V1);
        let dir = limit.path().to_owned();
        assert_eq!(std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(), "1000");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap(), "6667");
        assert!(limit.describe().contains("15%"), "{}", limit.describe());
        // A real cgroup directory empties itself; this fake one has files, so remove them first.
        for f in ["cpu.cfs_quota_us", "cpu.cfs_period_us"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        drop(limit);
        assert!(!dir.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v2_layout_enables_the_controller_and_writes_cpu_max() {
        let root = std::env::temp_dir().join(format!("cleave-cgroup2-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let limit = CpuLimit::create_in(&root, 0.5).unwrap();
        assert_eq!(limit.version(), Version::V2);
        assert_eq!(std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(), "+cpu");
        assert_eq!(std::fs::read_to_string(limit.path().join("cpu.max")).unwrap(), "1000 2000");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_real_child_is_moved_in_and_the_cgroup_removed_after_it_exits() {
        let limit = match CpuLimit::create(0.5) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipping: no cgroup here ({e})");
                return;
            }
        };
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        limit.add(child.id()).unwrap();
        let name = limit.path().file_name().unwrap().to_string_lossy().into_owned();
        let groups = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(groups.contains(&name), "{groups}");
        child.kill().unwrap();
        child.wait().unwrap();
        let dir = limit.path().to_owned();
        drop(limit);
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}
