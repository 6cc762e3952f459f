//! Data-parallel launches of `gla train` and `gla bench train`: `--gpus N` starts N copies of
//! the current command on this machine, one per GPU, with the torchrun environment (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) and NVLink multicast off; a process
//! that finds `RANK` already set (started by this launcher, torchrun or a cluster scheduler)
//! joins its job instead. The launcher stops every rank as soon as one fails and names it.

// without the `cuda` feature only the tests start and supervise ranks
#[cfg_attr(not(feature = "cuda"), allow(unused_imports))]
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The data-parallel job this process is a rank of.
#[derive(Debug, Clone)]
pub struct Job {
    /// This process's rank.
    pub rank: usize,
    /// Processes in the job.
    pub world: usize,
    /// The full environment (the GPU ordinal, the rendezvous address).
    #[cfg(feature = "cuda")]
    pub env: gla_cuda::dist::DistEnv,
}

impl Job {
    /// Rank 0 writes the checkpoints, the metrics and the progress; the others stay quiet.
    pub fn lead(job: Option<&Job>) -> bool {
        job.is_none_or(|j| j.rank == 0)
    }
}

/// The job of this process when it was started as one rank of several (`RANK` set).
#[cfg(feature = "cuda")]
pub fn job() -> Result<Option<Job>> {
    Ok(gla_cuda::dist::DistEnv::from_env()?.map(|env| Job { rank: env.rank, world: env.world, env }))
}

/// The job of this process when it was started as one rank of several (`RANK` set).
#[cfg(not(feature = "cuda"))]
pub fn job() -> Result<Option<Job>> {
    if std::env::var_os("RANK").is_some() && std::env::var_os("WORLD_SIZE").is_some() {
        bail!("RANK and WORLD_SIZE are set (a distributed launch) but this gla was built without the `cuda` feature");
    }
    Ok(None)
}

/// Checks `--gpus` against the job this process belongs to (launched with `--gpus N`, every
/// rank sees the same N).
pub fn check_world(gpus: Option<usize>, job: Option<&Job>) -> Result<()> {
    if let (Some(n), Some(j)) = (gpus, job) {
        if n != j.world {
            bail!("--gpus {n} but WORLD_SIZE is {} in this process's environment", j.world);
        }
    }
    Ok(())
}

/// Runs this command again as `world` local ranks, with `extra` added to their environment,
/// and waits for them (see the module doc).
#[cfg(feature = "cuda")]
pub fn local(world: usize, extra: &[(&str, String)]) -> Result<()> {
    if world == 0 {
        bail!("--gpus must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the gla binary to start the ranks")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // a free port for rank 0's rendezvous (released here, bound again by rank 0 at once)
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).context("finding a free port")?.port();
    eprintln!("gla: starting {world} ranks (one per GPU, NCCL; rendezvous on 127.0.0.1:{port})");
    let mut children = Vec::with_capacity(world);
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(&args).envs(gla_cuda::dist::DistEnv::child_vars(rank, world, port));
        cmd.envs(extra.iter().map(|(k, v)| (*k, v)));
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                stop(&mut children.into_iter().map(Some).collect::<Vec<_>>());
                return Err(e).with_context(|| format!("starting rank {rank}: {}", exe.display()));
            }
        }
    }
    supervise(children, Duration::from_millis(100))
}

/// `--gpus` in a gla built without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn local(_world: usize, _extra: &[(&str, String)]) -> Result<()> {
    bail!("--gpus needs a gla built with the `cuda` feature: cargo build --release -p gla-cli --features cuda")
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn stop(children: &mut [Option<Child>]) {
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits for the ranks (`children[r]` is rank r), checking every `poll`. When one exits with a
/// failure, kills the others at once (its peers would otherwise wait for it until the NCCL
/// timeout) and reports which rank failed.
///
/// # Errors
/// The first rank that failed and its exit status; errors waiting for a child.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn supervise(children: Vec<Child>, poll: Duration) -> Result<()> {
    let mut running: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let mut failed: Option<(usize, ExitStatus)> = None;
        for (rank, slot) in running.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    *slot = None;
                    if !status.success() {
                        failed = Some((rank, status));
                        break;
                    }
                }
                Err(e) => {
                    stop(&mut running);
                    return Err(e).with_context(|| format!("waiting for rank {rank}"));
                }
            }
        }
        if let Some((rank, status)) = failed {
            stop(&mut running);
            bail!("rank {rank} failed ({status}); the other ranks were stopped");
        }
        if running.iter().all(Option::is_none) {
            return Ok(());
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn sh(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    #[test]
    fn all_ranks_succeeding_is_success() {
        supervise(vec![sh("exit 0"), sh("sleep 0.2")], Duration::from_millis(20)).unwrap();
    }

    #[test]
    fn a_failing_rank_stops_the_others_and_is_named() {
        let t = Instant::now();
        let e = supervise(vec![sh("sleep 30"), sh("sleep 0.2; exit 3"), sh("sleep 30")], Duration::from_millis(20)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("rank 1 failed"), "{msg}");
        assert!(msg.contains('3'), "the exit status is reported: {msg}");
        assert!(msg.contains("other ranks were stopped"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(10), "the sleeping ranks were killed, not waited for");
    }

    #[test]
    fn gpus_must_match_the_world_size() {
        let j = Job {
            rank: 0,
            world: 2,
            #[cfg(feature = "cuda")]
            env: gla_cuda::dist::DistEnv { rank: 0, world: 2, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: 1 },
        };
        assert!(check_world(Some(4), Some(&j)).is_err());
        check_world(Some(2), Some(&j)).unwrap();
        check_world(None, Some(&j)).unwrap();
        check_world(Some(4), None).unwrap();
        assert!(Job::lead(None) && Job::lead(Some(&j)));
        assert!(!Job::lead(Some(&Job { rank: 1, ..j })));
    }
}
