//! Child processes of the harness: each runs in its own process group with its output in a log
//! file, is killed (whole group) on drop, and is also killed by a watchdog when the test binary
//! dies without running destructors (statics are never dropped, and SIGKILL skips everything).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// Reads registrations from stdin until the test binary exits (EOF, however it died), then kills
/// every registered process group, runs every registered cleanup command (in order) and removes
/// every registered directory. It runs in its own process group so a Ctrl-C at the terminal
/// does not stop it before it has cleaned up.
const WATCHDOG_SCRIPT: &str = r#"
trap '' INT HUP
groups=""
dirs=""
commands=""
while IFS= read -r line; do
  case "$line" in
    +*) groups="$groups ${line#+}" ;;
    -*) kept=""
        for g in $groups; do [ "$g" = "${line#-}" ] || kept="$kept $g"; done
        groups="$kept" ;;
    d*) dirs="$dirs
${line#d}" ;;
    c*) commands="$commands
${line#c}" ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
printf '%s\n' "$commands" | while IFS= read -r c; do [ -n "$c" ] && sh -c "$c" </dev/null >/dev/null 2>&1; done
printf '%s\n' "$dirs" | while IFS= read -r d; do [ -n "$d" ] && rm -rf -- "$d"; done
exit 0
"#;

struct Watchdog {
    stdin: Mutex<ChildStdin>,
    // Kept so the handle lives as long as the test binary; the watchdog outlives us by design.
    _child: Child,
}

static WATCHDOG: OnceLock<std::result::Result<Watchdog, String>> = OnceLock::new();

fn watchdog() -> Result<&'static Watchdog> {
    WATCHDOG
        .get_or_init(|| {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG_SCRIPT)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting the cleanup watchdog (sh): {e}"))?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| "the cleanup watchdog has no stdin".to_string())?;
            Ok(Watchdog {
                stdin: Mutex::new(stdin),
                _child: child,
            })
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn watchdog_send(line: &str) -> Result<()> {
    let watchdog = watchdog()?;
    let mut stdin = watchdog
        .stdin
        .lock()
        .map_err(|_| anyhow!("cleanup watchdog lock poisoned"))?;
    writeln!(stdin, "{line}").context("writing to the cleanup watchdog")?;
    stdin.flush().context("writing to the cleanup watchdog")
}

/// Makes sure `dir` is removed when the test binary exits, even if nothing drops its owner.
pub fn remove_at_exit(dir: &Path) -> Result<()> {
    let dir = dir
        .to_str()
        .ok_or_else(|| anyhow!("temporary directory {} is not UTF-8", dir.display()))?;
    if dir.contains('\n') {
        bail!("temporary directory {dir:?} contains a newline");
    }
    watchdog_send(&format!("d{dir}"))
}

/// Makes sure the shell command `command` runs when the test binary exits, after its processes
/// are killed and before its directories are removed; for cleanup that must happen however the
/// test binary ends (it may also run earlier: make it idempotent).
pub fn run_at_exit(command: &str) -> Result<()> {
    if command.contains('\n') {
        bail!("cleanup command {command:?} contains a newline");
    }
    watchdog_send(&format!("c{command}"))
}

/// A child process in its own process group, writing stdout and stderr to a log file.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` in a new process group with stdin closed and both output streams
    /// appended to `log`.
    pub fn spawn(name: impl Into<String>, mut command: Command, log: &Path) -> Result<Process> {
        let name = name.into();
        // Start the watchdog before any child exists, so no child can outlive us unregistered.
        watchdog()?;
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating log directory {}", parent.display()))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening log file {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        let process = Process {
            name,
            child,
            log: log.to_path_buf(),
            exited: None,
        };
        watchdog_send(&format!("+{}", process.child.id()))?;
        Ok(process)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// `None` while the process runs, its exit status once it has ended.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("checking on {}", self.name))?;
        }
        Ok(self.exited)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Fails with the log tail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            ),
        }
    }

    /// Sends SIGTERM to the process itself (not its group), as kubelet does to stop a
    /// container; [`Process::wait_timeout`] then tells whether it ended in time.
    pub fn terminate(&mut self) -> Result<()> {
        self.signal(Signal::TERM, "SIGTERM")
    }

    /// Suspends the process (SIGSTOP): it keeps its sockets, so connections to it are accepted
    /// and never answered, like a server cut off by the network. [`Process::kill`] still ends it.
    pub fn suspend(&mut self) -> Result<()> {
        self.signal(Signal::STOP, "SIGSTOP")
    }

    fn signal(&mut self, signal: Signal, name: &str) -> Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| anyhow!("{} has no valid pid", self.name))?;
        if self.try_wait()?.is_some() {
            bail!("{} has already exited", self.name);
        }
        kill_process(pid, signal).with_context(|| format!("sending {name} to {}", self.name))
    }

    /// Kills the whole process group and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        let pid = self.child.id();
        if let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            // The group may already be gone; there is nothing useful to do about errors here.
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = self.child.kill();
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
        let _ = watchdog_send(&format!("-{pid}"));
    }

    /// Waits for the process to exit by itself, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}; last lines of its log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

pub(crate) fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => {
            if let Err(e) = file.read_to_end(&mut bytes) {
                return format!("<cannot read {}: {e}>", path.display());
            }
        }
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `lines` lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    let all: Vec<String> = BufReader::new(file)
        .lines()
        .map(|l| l.unwrap_or_else(|e| format!("<unreadable line: {e}>")))
        .collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// The status code of a plain-HTTP GET (`http://host:port/path`), for readiness checks.
pub fn http_get_status(url: &str, timeout: Duration) -> Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {authority}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .context("setting a read timeout")?;
    stream
        .set_write_timeout(Some(timeout))
        .context("setting a write timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {url}"))?;
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .with_context(|| format!("reading the response to GET {url}"))?;
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line from {url}: {status_line:?}"))
}
