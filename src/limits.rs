//! Process limits both ends of a benchmark need: the simulated engine and the load generator each hold
//! one socket per concurrent stream.

/// Lifts the soft limit on open files to the hard one: the usual soft limit (1024) would cap a test at
/// fewer than 1000 concurrent streams. Harmless; if it fails we simply stay at the lower limit.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
