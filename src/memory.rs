//! The process's memory as the operating system and the GPU driver report it, for sizing runs.
//!
//! [`peak_rss_mib`] reads the peak resident set (`VmHWM`, the high-water mark of the resident
//! set) from Linux's `/proc/self/status`; on other systems, or when the file cannot be read, it is
//! `None`. It is host memory only. [`reset_peak_rss`] starts the high-water mark again from the
//! current resident set (Linux's `/proc/self/clear_refs`), so a bench measures each setting's own
//! peak.
//!
//! On CUDA, [`sample_device_memory`] asks the driver how much of the GPU's memory is in use (total
//! − free, `cuMemGetInfo`: every process's allocations and the CUDA context included, as
//! `nvidia-smi` shows it) and keeps the largest answer; [`peak_device_mib`] gives it. The trainer
//! samples after each micro-batch's backward pass, while the step's graph and gradients are all
//! alive, so the figure is the peak at those moments, not between them. On the CPU (or a build
//! without the `cuda` feature) nothing is sampled and the peak is `None`.

use std::sync::atomic::{AtomicU64, Ordering};

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

/// The largest device memory in use seen by [`sample_device_memory`], in bytes; 0 before any
/// sample.
static DEVICE_PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Bytes in a MiB.
const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Samples the memory in use on `device`'s GPU and keeps it when it is the largest so far; does
/// nothing on the CPU, or when the driver cannot say.
pub fn sample_device_memory(device: &candle_core::Device) {
    if let Some(bytes) = device_memory_in_use(device) {
        DEVICE_PEAK_BYTES.fetch_max(bytes, Ordering::Relaxed);
    }
}

/// The largest device memory in use [`sample_device_memory`] has seen, in MiB; `None` when
/// nothing was sampled (the CPU).
pub fn peak_device_mib() -> Option<f64> {
    sampled_mib(DEVICE_PEAK_BYTES.load(Ordering::Relaxed))
}

/// A sampled byte count in MiB; 0 (nothing sampled) is `None`.
fn sampled_mib(bytes: u64) -> Option<f64> {
    match bytes {
        0 => None,
        bytes => Some(bytes as f64 / BYTES_PER_MIB),
    }
}

/// Forgets the device peak, so the next samples start a new one (a bench's settings).
pub fn reset_peak_device() {
    DEVICE_PEAK_BYTES.store(0, Ordering::Relaxed);
}

/// Total − free memory of the GPU whose context is current on this thread (candle binds the
/// device's context to the thread that opened it, where training runs).
#[cfg(feature = "cuda")]
fn device_memory_in_use(device: &candle_core::Device) -> Option<u64> {
    match device {
        candle_core::Device::Cuda(_) => {
            let (free, total) = candle_core::cuda::cudarc::driver::result::mem_get_info().ok()?;
            Some(total.saturating_sub(free) as u64)
        }
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn device_memory_in_use(_device: &candle_core::Device) -> Option<u64> {
    None
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
    fn the_cpu_has_no_device_peak() {
        // Nothing is sampled on the CPU, so a log row carries no device figure there.
        sample_device_memory(&candle_core::Device::Cpu);
        if !cfg!(feature = "cuda") {
            assert_eq!(peak_device_mib(), None);
        }
        // 3 GiB in bytes is 3072 MiB; no sample is no figure. (The shared peak itself is left
        // alone: trainer tests in the same process read it.)
        assert_eq!(sampled_mib(3 << 30), Some(3072.0));
        assert_eq!(sampled_mib(0), None);
    }

    #[test]
    fn this_process_has_a_peak_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = peak_rss_mib().expect("VmHWM on Linux");
            assert!(peak > 0.0, "{peak}");
        }
    }
}
