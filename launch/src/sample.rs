//! A process's CPU time and memory from `/proc`, for reports of what a cluster cost (`baton
//! bench`'s resources and its etcd comparison).

/// A process's CPU time so far and memory now, from /proc.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_ticks: cpu_ticks(&stat)?,
        rss_kib: status_kib(&status, "VmRSS")?,
        rss_peak_kib: status_kib(&status, "VmHWM")?,
    })
}

/// utime + stime from /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last ')': utime and stime are fields 14 and 15.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of /proc/PID/status.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (bat) d (x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    731 269 0 0 20 0 9 0 100 2000000 3000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tbatond\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(70000));
        assert_eq!(status_kib(status, "VmHWM"), Some(81234));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("our own /proc entry");
        assert!(s.rss_kib > 0 && s.rss_peak_kib >= s.rss_kib, "{s:?}");
    }
}
