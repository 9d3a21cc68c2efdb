//! The process's memory as the operating system reports it, for sizing runs.
//!
//! [`peak_rss_mib`] reads the peak resident set (`VmHWM`, the high-water mark of the resident
//! set) from Linux's `/proc/self/status`; on other systems, or when the file cannot be read, it is
//! `None`. It is host memory only: on CUDA the device memory the tensors take is not part of it
//! and is not measured yet. [`reset_peak_rss`] starts the high-water mark again from the current
//! resident set (Linux's `/proc/self/clear_refs`), so a bench measures each setting's own peak.

/// KiB in a MiB; `/proc` writes KiB as "kB".
const KIB_PER_MIB: f64 = 1024.0;

/// The peak resident set of this process so far, in MiB; `None` where `/proc/self/status` is
/// not available (not Linux) or has no `VmHWM` line.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_hwm_mib(&status)
}

/// Resets the peak resident set to the current one (writes `5` to `/proc/self/clear_refs`, Linux
/// 4.0 on); `false` where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The `VmHWM:  <n> kB` line of a `/proc/<pid>/status` text, in MiB.
fn vm_hwm_mib(status: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let mut fields = line["VmHWM:".len()..].split_whitespace();
    let kib: f64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib / KIB_PER_MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_water_mark_is_read_in_mib() {
        let status =
            "Name:\tqrm-train\nVmPeak:\t  999999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        // 204800 kB / 1024 = 200 MiB; VmPeak (virtual) and VmRSS (current) are not it.
        assert_eq!(vm_hwm_mib(status), Some(200.0));
        assert_eq!(vm_hwm_mib("VmRSS:\t 100 kB\n"), None);
        assert_eq!(vm_hwm_mib("VmHWM:\t lots kB\n"), None);
        assert_eq!(vm_hwm_mib("VmHWM:\t 100 pages\n"), None);
    }

    #[test]
    fn a_reset_peak_forgets_memory_given_back() {
        if !cfg!(target_os = "linux") {
            return;
        }
        // 512 MiB touched, then freed (a block this large is its own mapping, unmapped on drop).
        let block = vec![1u8; 512 << 20];
        std::hint::black_box(&block);
        let with_block = peak_rss_mib().expect("VmHWM on Linux");
        drop(block);
        assert!(reset_peak_rss(), "clear_refs refused");
        let after = peak_rss_mib().expect("VmHWM on Linux");
        assert!(
            after < with_block - 256.0,
            "peak {with_block:.0} MiB with the block, {after:.0} MiB after the reset"
        );
    }

    #[test]
    fn this_process_has_a_peak_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = peak_rss_mib().expect("VmHWM on Linux");
            assert!(peak > 0.0, "{peak}");
        }
    }
}
