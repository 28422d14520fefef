//! Threads at a lower CPU priority for work that follows an answer already given: sealing the
//! instances a modality was told are stored. On a two-core machine that work shared the CPU
//! evenly with what the next answer waits for (receiving and checking the next instance, and the
//! sender itself), which stretched every round trip. At nice 10 the scheduler runs it in the
//! gaps instead; it still gets the whole CPU when nothing else wants it, and the queues in front
//! of it bound how far it may fall behind.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Nice value of the background threads (0 is normal, 19 the lowest priority).
const NICE: i32 = 10;

/// The background work was lost (its thread panicked).
#[derive(Debug, thiserror::Error)]
#[error("background work stopped before it finished")]
pub struct Stopped;

struct Pool {
    tx: mpsc::Sender<Job>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("discless-bg-{i}"))
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::error!("cannot start a background thread: {e}");
            }
        }
        Pool { tx }
    })
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    // On Linux the nice value is per thread: this lowers only this one.
    #[cfg(unix)]
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::debug!("background thread keeps its priority: {e}");
    }
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // A panicking job drops its answer channel (the caller sees `Stopped`); the thread
        // lives on for the next one.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Runs blocking `f` on a background thread; its result, once done.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Stopped> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    pool().tx.send(job).map_err(|_| Stopped)?;
    rx.await.map_err(|_| Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        let lost = run(|| -> u8 { panic!("a job that fails") }).await;
        assert!(lost.is_err());
        let all: Vec<u32> = futures::future::join_all((0..8u32).map(|i| run(move || i * 2)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all, (0..8).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_threads_run_at_a_lower_priority() {
        let nice = run(|| rustix::process::getpriority_process(None).unwrap())
            .await
            .unwrap();
        // A test runner already at NICE or lower priority cannot be lowered to it.
        if rustix::process::getpriority_process(None).unwrap() < NICE {
            assert_eq!(nice, NICE);
        }
    }
}
