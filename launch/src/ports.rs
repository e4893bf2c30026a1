//! Loopback ports reserved for a cluster: outside the kernel's ephemeral range, locked against
//! every other launcher for as long as the [`Ports`] lives, and checked free when chosen (the
//! design is in the crate's header).

#[cfg(test)]
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::{Deref, RangeInclusive};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

/// The lowest port ever chosen: below it live most fixed ports of well-known services (and
/// `batond dev`'s 7001 and 9101).
pub const LOWEST: u16 = 10_000;

/// How many candidates [`PortPicker::reserve`] looks at before giving up.
const CANDIDATES_MAX: usize = 20_000;

/// Ports reserved for one cluster, in the order they were chosen. Dropping it releases them.
#[derive(Debug)]
pub struct Ports {
    ports: Vec<u16>,
    /// Holds one lock per port (open-file-description locks die with this descriptor).
    _locks: File,
}

impl Deref for Ports {
    type Target = [u16];

    fn deref(&self) -> &[u16] {
        &self.ports
    }
}

impl Ports {
    /// `127.0.0.1:PORT` of the `i`th port.
    pub fn addr(&self, i: usize) -> SocketAddr {
        loopback(self.ports[i])
    }

    /// Every port as `127.0.0.1:PORT`.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.ports.iter().map(|p| loopback(*p)).collect()
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Chooses and reserves ports. [`PortPicker::trying_first`] makes it take given ports first, as
/// they are: how a test forces a port that is taken on a launcher.
#[derive(Debug)]
pub struct PortPicker {
    first: VecDeque<u16>,
    rng: u64,
}

impl Default for PortPicker {
    fn default() -> Self {
        PortPicker::new()
    }
}

/// [`PortPicker::new`]`.reserve(n)`.
pub fn reserve(n: usize) -> io::Result<Ports> {
    PortPicker::new().reserve(n)
}

impl PortPicker {
    pub fn new() -> PortPicker {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = time
            ^ (u64::from(std::process::id()) << 32)
            ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        PortPicker {
            first: VecDeque::new(),
            rng: seed | 1,
        }
    }

    /// A picker whose next choices are `ports`, taken without checking that they are free (they
    /// are still locked, so two launchers never share one); then chosen as usual.
    pub fn trying_first(ports: impl IntoIterator<Item = u16>) -> PortPicker {
        PortPicker {
            first: ports.into_iter().collect(),
            ..PortPicker::new()
        }
    }

    /// `n` distinct ports, each locked against every other launcher until the result is dropped.
    pub fn reserve(&mut self, n: usize) -> io::Result<Ports> {
        let locks = open_lock_file()?;
        let bands = bands(ephemeral_range());
        let mut chosen: Vec<u16> = Vec::with_capacity(n);
        let mut looked = 0;
        while chosen.len() < n {
            looked += 1;
            if looked > CANDIDATES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("no {n} free loopback ports among {CANDIDATES_MAX} tried"),
                ));
            }
            let (port, forced) = match self.first.pop_front() {
                Some(port) => (port, true),
                None => (pick(&bands, self.next_random()), false),
            };
            if chosen.contains(&port) || !try_lock(&locks, port)? {
                continue;
            }
            if forced || is_free(port) {
                chosen.push(port);
            } else {
                unlock(&locks, port)?;
            }
        }
        Ok(Ports {
            ports: chosen,
            _locks: locks,
        })
    }

    /// `n` consecutive ports (`P`, `P+1`, ...), locked as [`PortPicker::reserve`] locks them:
    /// for a program that takes a base port and counts up from it (`batond dev --base-port`).
    pub fn reserve_consecutive(&mut self, n: usize) -> io::Result<Ports> {
        let locks = open_lock_file()?;
        let bands = bands(ephemeral_range());
        let span = n.saturating_sub(1) as u64;
        for _ in 0..CANDIDATES_MAX {
            let start = pick(&bands, self.next_random());
            let fits = bands
                .iter()
                .any(|b| b.contains(&start) && u64::from(start) + span <= u64::from(*b.end()));
            if !fits {
                continue;
            }
            let run: Vec<u16> = (0..n as u16).map(|i| start + i).collect();
            let mut locked = Vec::with_capacity(n);
            for &port in &run {
                if !try_lock(&locks, port)? {
                    break;
                }
                locked.push(port);
            }
            if locked.len() == n && run.iter().all(|&port| is_free(port)) {
                return Ok(Ports {
                    ports: run,
                    _locks: locks,
                });
            }
            for port in locked {
                unlock(&locks, port)?;
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("no {n} consecutive free loopback ports among {CANDIDATES_MAX} tried"),
        ))
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: spreads choices; nothing here needs more.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Whether `port` can be bound on loopback now (with SO_REUSEADDR, as every server here binds).
fn is_free(port: u16) -> bool {
    TcpListener::bind(loopback(port)).is_ok()
}

fn lock_path() -> PathBuf {
    std::env::temp_dir().join("baton-launch-ports.lock")
}

fn open_lock_file() -> io::Result<File> {
    let path = lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    // Another user's launcher must be able to lock it too (the umask may have narrowed the mode).
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666));
    Ok(file)
}

fn lock_op(file: &File, port: u16, kind: libc::c_int) -> io::Result<bool> {
    // SAFETY: a plain-data struct, all zeros is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = libc::off_t::from(port);
    lock.l_len = 1;
    // SAFETY: fcntl on a descriptor we own, with a pointer to a live flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(error),
    }
}

/// Locks `port`'s byte; `false` if another launcher holds it.
fn try_lock(file: &File, port: u16) -> io::Result<bool> {
    lock_op(file, port, libc::F_WRLCK)
}

fn unlock(file: &File, port: u16) -> io::Result<()> {
    lock_op(file, port, libc::F_UNLCK).map(|_| ())
}

/// The kernel's ephemeral range, if it can be read.
fn ephemeral_range() -> Option<(u16, u16)> {
    parse_port_range(&std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?)
}

/// `ip_local_port_range`'s text: two numbers.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (numbers.next()?.ok()?, numbers.next()?.ok()?);
    (low <= high).then_some((low, high))
}

/// Where ports are chosen: [`LOWEST`]..=65535 minus the ephemeral range; the ephemeral range
/// itself (or all of it, unknown) when nothing is left outside it.
pub fn bands(ephemeral: Option<(u16, u16)>) -> Vec<RangeInclusive<u16>> {
    let Some((low, high)) = ephemeral else {
        return vec![LOWEST..=u16::MAX];
    };
    let mut outside = Vec::new();
    if low > LOWEST {
        outside.push(LOWEST..=low - 1);
    }
    if high < u16::MAX {
        outside.push(high.max(LOWEST - 1) + 1..=u16::MAX);
    }
    if outside.is_empty() {
        outside.push(low.max(1)..=high);
    }
    outside
}

/// The `random`th port of `bands`, counted across them.
fn pick(bands: &[RangeInclusive<u16>], random: u64) -> u16 {
    let total: u64 = bands
        .iter()
        .map(|b| u64::from(*b.end() - *b.start()) + 1)
        .sum();
    let mut index = random % total;
    for band in bands {
        let size = u64::from(*band.end() - *band.start()) + 1;
        if index < size {
            return *band.start() + index as u16;
        }
        index -= size;
    }
    unreachable!("index below the total")
}

/// Whether some live [`Ports`] (of any process) holds `port`.
pub fn is_reserved(port: u16) -> io::Result<bool> {
    let file = open_lock_file()?;
    let free = try_lock(&file, port)?;
    Ok(!free)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(ports: &[u16]) -> Vec<u16> {
        ports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn the_range_file_is_two_numbers() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn ports_are_chosen_outside_the_ephemeral_range() {
        assert_eq!(
            bands(Some((32768, 60999))),
            vec![10_000..=32_767, 61_000..=65_535]
        );
        assert_eq!(bands(Some((1024, 40000))), vec![40_001..=65_535]);
        assert_eq!(bands(Some((20000, 65535))), vec![10_000..=19_999]);
        // Nothing left outside: the range itself.
        assert_eq!(bands(Some((1024, 65535))), vec![1024..=65_535]);
        assert_eq!(bands(None), vec![10_000..=65_535]);
    }

    #[test]
    fn picks_cover_every_band_and_stay_inside() {
        let bands = bands(Some((32768, 60999)));
        let low = 32_767 - 10_000 + 1;
        assert_eq!(pick(&bands, 0), 10_000);
        assert_eq!(pick(&bands, low - 1), 32_767);
        assert_eq!(pick(&bands, low), 61_000);
        assert_eq!(pick(&bands, low + 4535), 65_535);
        assert_eq!(pick(&bands, low + 4536), 10_000);
        let mut picker = PortPicker::new();
        for _ in 0..10_000 {
            let port = pick(&bands, picker.next_random());
            assert!(!(32768..=60999).contains(&port) && port >= 10_000, "{port}");
        }
    }

    #[test]
    fn consecutive_ports_are_a_run_of_free_locked_ports() {
        let ports = PortPicker::new().reserve_consecutive(4).unwrap();
        assert_eq!(ports.len(), 4);
        for (i, port) in ports.iter().enumerate() {
            assert_eq!(*port, ports[0] + i as u16);
            assert!(is_reserved(*port).unwrap(), "{port} is locked");
            assert!(is_free(*port), "{port} is free to bind");
        }
        let again = PortPicker::new().reserve_consecutive(4).unwrap();
        assert!(
            again.iter().all(|p| !ports.contains(p)),
            "a second run shares no port"
        );
        let first = ports[0];
        drop(ports);
        assert!(!is_reserved(first).unwrap());
    }

    #[test]
    fn reserved_ports_are_distinct_free_and_locked_until_dropped() {
        let ports = reserve(8).unwrap();
        assert_eq!(sorted(&ports).len(), 8);
        let range = ephemeral_range();
        for &port in ports.iter() {
            if let Some((low, high)) = range {
                assert!(!(low..=high).contains(&port) || bands(range) == vec![low..=high]);
            }
            assert!(is_reserved(port).unwrap(), "{port} is locked");
            // Not bound by the reservation: the child binds it.
            assert!(is_free(port), "{port} is free to bind");
        }
        // Another reservation never overlaps a live one.
        let more = reserve(8).unwrap();
        assert!(more.iter().all(|p| !ports.contains(p)));
        let kept = ports[0];
        drop(ports);
        assert!(!is_reserved(kept).unwrap(), "released on drop");
        drop(more);
    }

    #[test]
    fn forced_choices_come_first_even_when_taken() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let ports = PortPicker::trying_first([port]).reserve(3).unwrap();
        assert_eq!(ports[0], port);
        assert!(!ports[1..].contains(&port));
        // A port reserved elsewhere is never forced on a second launcher.
        let other = PortPicker::trying_first([port]).reserve(1).unwrap();
        assert_ne!(other[0], port);
    }
}
