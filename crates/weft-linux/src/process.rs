//! Starting the router in the background and finding it again.
//!
//! `weft launch` runs `weft router ...` as a daemon: a new session (so it outlives the shell and
//! ignores its terminal's hangup), stdin from /dev/null, output to the log file. Liveness is
//! checked by PID; a zombie counts as dead.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

/// Spawns `cmd` detached from our session and returns its PID.
pub fn spawn_detached(cmd: &mut Command) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed; setsid(2) is one, and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {:?}", cmd.get_program()), e))?;
    Ok(child.id())
}

/// True if `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    match stat.rsplit_once(") ") {
        Some((_, rest)) => !rest.starts_with('Z') && !rest.starts_with('X'),
        None => false,
    }
}

/// Sends SIGTERM (or SIGKILL with `force`) to `pid`.
pub fn signal(pid: u32, force: bool) -> Result<()> {
    let sig = if force {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    let pid = i32::try_from(pid).map_err(|_| Error::Other(format!("invalid pid {pid}")))?;
    kill(Pid::from_raw(pid), sig)
        .map_err(|e| Error::io(format!("signalling process {pid}"), e.into()))
}
