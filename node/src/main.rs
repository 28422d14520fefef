//! The `discless` binary: parse the command line, set up logging, run, exit with the command's
//! code. Everything else lives in the library (`discless::cli`).

use std::process::ExitCode;

use clap::Parser;
use discless::cli::{self, Cli};
use discless::home::ENV_LOG;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tune_allocator();
    let args = Cli::parse();
    let default = match args.verbose {
        0 => "warn",
        1 => "discless=info",
        _ => "discless=debug",
    };
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages carry their causes already; print the chain only where a
            // source adds something the message does not say.
            let e = anyhow::Error::from(e);
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// glibc's allocator gives blocks over 128 KiB back to the system when they are freed, and
/// trims the top of a heap above twice that (both thresholds adapt, but only up to the largest
/// block freed so far). Serving a frame allocated and freed about 2 MB in half-megabyte
/// buffers (the decrypted instance, the parsed and decoded pixels, the offsets, the picture;
/// native pixels are now read in place), which every request then faulted in again: a fifth
/// of the server's time for a first-time frame, 0.3 ms of 1.8. Fixed thresholds keep up to 16 MiB free at the top of each heap for
/// reuse, and blocks over 4 MiB (large multi-frame objects) still go straight back. With the
/// same settings (through `GLIBC_TUNABLES`) the peak RSS of `bench import` and `bench
/// transfer` did not change; mimalloc, tried instead, was as fast but nearly tripled it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters, takes the allocator's own locks, and
    // is called with valid parameter numbers and values before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}
