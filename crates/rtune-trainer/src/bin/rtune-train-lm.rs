//! `rtune-train-lm`: rtune's built-in BLOOM causal-LM fine-tuning trainer.
use clap::Parser;

/// Keeps glibc malloc from returning freed tensor buffers to the kernel after every op.
///
/// Training allocates and frees the same few-megabyte buffers thousands of times per step. With
/// glibc's defaults those go through mmap/munmap or heap trimming, and the kernel then zeroes
/// fresh pages on every first touch: about a third of the run time in the benchmark (page
/// faults and `clear_page`). A high mmap threshold and no trimming keep them in the heap, with
/// the same peak RSS since the buffers are reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists and its return value (0 on failure) only means the default stays in force.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Sizes the rayon pool (burn's CPU kernels and gemm) from `OMP_NUM_THREADS`, which rtune sets
/// to each trial's CPU share, unless `RAYON_NUM_THREADS` is set explicitly. Without this every
/// concurrent trial would start one thread per core and they would oversubscribe the machine.
fn size_thread_pool() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let Some(threads) = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    else {
        return;
    };
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
}

fn main() -> std::process::ExitCode {
    size_thread_pool();
    tune_allocator();
    let cli = rtune_trainer::cli::Cli::parse();
    match rtune_trainer::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rtune-train-lm: error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
