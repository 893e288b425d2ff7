//! The one wrapper of the suite's long-lived child processes (redis-server, cluster nodes,
//! tansu, `wallet worker`, background `wallet` commands, prometheus): spawned through
//! [`tied`](super::tied), so they die with the test thread that started them, with their
//! output in files of a temporary folder, signalled by name, waited on with a deadline, and
//! SIGKILLed when killed, replaced or dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tied;

/// A child process, or none once it was killed or has exited.
#[derive(Default)]
pub struct Proc(Option<Child>);

impl Proc {
    /// Spawns `cmd` tied to the calling thread; panics naming `what` when it cannot start.
    pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
        let child = tied(cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc(Some(child))
    }

    /// Whether a child is held: spawned, and not yet killed nor seen to exit.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("a running process").id()
    }

    /// Sends `kill -SIG` (`STOP`, `CONT`, `TERM`, `KILL`); panics when it fails.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// The exit code when the child has exited (it is then no longer held): `Some(None)` for
    /// an exit by a signal; `None` while it runs.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let child = self.0.as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.0 = None;
        Some(status.code())
    }

    /// Whether the child still runs.
    pub fn is_running(&mut self) -> bool {
        self.is_held() && self.exited().is_none()
    }

    /// Waits for the exit and returns its code; panics after `timeout_ms` with `what` and
    /// `context()` (a log, say). The child is killed by the drop after such a panic.
    pub fn wait_exit(
        &mut self,
        timeout_ms: u64,
        what: &str,
        context: impl Fn() -> String,
    ) -> Option<i32> {
        assert!(self.is_held(), "{what} is not running");
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(code) = self.exited() {
                return code;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not exit within {timeout_ms} ms:\n{}",
                context()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap; nothing when no child is held.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends both outputs of `cmd` to the file at `path`, appended (a restarted server keeps its
/// earlier log).
pub fn log_to<'c>(cmd: &'c mut Command, path: &Path) -> &'c mut Command {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
    cmd.stdout(Stdio::from(log.try_clone().expect("clone log")))
        .stderr(Stdio::from(log))
}
