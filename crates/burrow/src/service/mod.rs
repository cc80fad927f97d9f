//! `burrow service install | uninstall | status | logs`: `burrow up` in the
//! background, started the way each system starts a user's programs, from
//! the home's config.toml. No root or administrator rights on any of them:
//!
//! - Linux: a systemd user unit (`~/.config/systemd/user/`), logs in the
//!   journal ([`systemd`]).
//! - macOS: a launchd agent (`~/Library/LaunchAgents/`), logs in
//!   `~/Library/Logs/burrow/` ([`launchd`]).
//! - Windows: a Task Scheduler task started at logon, not a Windows service:
//!   installing a service takes an administrator, and a service runs outside
//!   the user's session and profile, where the home is. Logs go to
//!   `%LOCALAPPDATA%\burrow\logs\` ([`schtasks`]).
//!
//! What each system is given (the unit, the property list, the task's XML)
//! is made by a plain function in every build, so all three are tested on
//! any machine; only the commands that hand them to the system are the
//! platform's own.

pub mod launchd;
pub mod schtasks;
pub mod systemd;

use std::path::{Path, PathBuf};

use crate::CliError;

/// `burrow service ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCmd {
    /// Run this home's node in the background from now on, and at every
    /// login: a systemd user unit, a launchd agent, or a task at logon on
    /// Windows. Needs the home's config.toml (the first `burrow up --server
    /// ... --name ...` writes it).
    Install {
        /// Write the unit (or agent, or task) but don't start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop the background node and remove what `install` made.
    Uninstall,
    /// Whether the background node is installed and running.
    Status,
    /// Show the background node's log.
    Logs {
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep showing new lines as they come (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
    },
}

/// What a service runs, and its name for the system.
#[derive(Debug, Clone)]
pub struct Service {
    /// Unique per home: `burrow` for the default home, `burrow-<hash>` else.
    pub name: String,
    /// The binary to start: this one.
    pub exe: PathBuf,
    /// The node's home.
    pub home: PathBuf,
}

impl Service {
    /// The service for `home`, started as `exe`.
    pub fn new(exe: PathBuf, home: PathBuf, default_home: bool) -> Self {
        let name = if default_home {
            "burrow".to_string()
        } else {
            let hash = blake3::hash(home.to_string_lossy().as_bytes()).to_hex();
            format!("burrow-{}", &hash[..8])
        };
        Service { name, exe, home }
    }

    /// What the system runs: `burrow --home <home> up --service`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--home".into(),
            self.home.display().to_string(),
            "up".into(),
            "--service".into(),
        ]
    }
}

/// Runs `burrow service ...` for `home`.
pub async fn run(home: &Path, default_home: bool, cmd: ServiceCmd) -> Result<(), CliError> {
    let home = std::path::absolute(home)?;
    let exe = std::env::current_exe()?;
    let service = Service::new(exe, home.clone(), default_home);
    match cmd {
        ServiceCmd::Install { no_start } => {
            ready(&home)?;
            platform::install(&service, !no_start)
        }
        ServiceCmd::Uninstall => platform::uninstall(&service),
        ServiceCmd::Status => {
            platform::status(&service)?;
            match burrow_node::control::ControlClient::connect(&home).await {
                Ok(mut c) => {
                    let reply = c.request(&burrow_node::api::Request::Status).await?;
                    let name = reply.data.as_ref().and_then(|d| d["name"].as_str());
                    println!(
                        "node        answering in {} ({})",
                        home.display(),
                        name.unwrap_or("?")
                    );
                }
                Err(_) => println!("node        not answering in {}", home.display()),
            }
            Ok(())
        }
        ServiceCmd::Logs { lines, follow } => platform::logs(&service, lines, follow),
    }
}

/// A service starts `burrow up` from the config file: it must be there and
/// name the node, or the service would fail at every start.
fn ready(home: &Path) -> Result<(), CliError> {
    let loaded = crate::config::load(home)?;
    if !loaded.existed || !loaded.names_a_node() {
        return Err(CliError::new(
            format!("{} doesn't say which node to start", loaded.path.display()),
            Some("run `burrow up --server ... --name ...` once in this home: it writes the file, which the service starts from".into()),
        ));
    }
    Ok(())
}

/// Runs `program` with `args`, its output shown; fails with what it said.
#[cfg_attr(windows, allow(dead_code))]
fn command(program: &str, args: &[&str]) -> Result<(), CliError> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| CliError::new(format!("cannot run {program}: {e}"), None))?;
    if out.status.success() {
        return Ok(());
    }
    Err(CliError::new(
        format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        None,
    ))
}

/// Writes `text` to `path` (and its directory), replacing what was there.
fn write_file(path: &Path, text: &[u8]) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", path.display()), None))
}

/// Prints the last `lines` lines of `path`, then, with `follow`, each new
/// one (until Ctrl-C).
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn tail(path: &Path, lines: usize, follow: bool) -> Result<(), CliError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| {
        CliError::new(
            format!("no log at {}: {e}", path.display()),
            Some("it appears once the service has started (burrow service status)".into()),
        )
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("{line}");
    }
    if !follow {
        return Ok(());
    }
    let mut at = file.stream_position()?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let len = std::fs::metadata(path)?.len();
        if len < at {
            at = 0; // rotated or truncated
        }
        file.seek(SeekFrom::Start(at))?;
        let mut more = String::new();
        at += file.read_to_string(&mut more)? as u64;
        print!("{more}");
    }
}

/// Runs a Python script on `file` (for tests: Python's own readers check
/// what the other systems would be given) and returns what it printed.
#[cfg(test)]
pub(crate) fn python(script: &str, file: &Path) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .expect("python3 runs (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[cfg(target_os = "linux")]
use systemd::platform;

#[cfg(target_os = "macos")]
use launchd::platform;

#[cfg(windows)]
use schtasks::platform;

/// Systems with none of the three: say so.
#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
mod platform {
    use super::Service;
    use crate::CliError;

    fn unsupported() -> Result<(), CliError> {
        Err(CliError::new(
            "burrow service knows systemd, launchd and the Windows Task Scheduler, not this system's service manager",
            Some("run `burrow up` from your system's own start-up mechanism".into()),
        ))
    }
    pub fn install(_: &Service, _: bool) -> Result<(), CliError> {
        unsupported()
    }
    pub fn uninstall(_: &Service) -> Result<(), CliError> {
        unsupported()
    }
    pub fn status(_: &Service) -> Result<(), CliError> {
        unsupported()
    }
    pub fn logs(_: &Service, _: usize, _: bool) -> Result<(), CliError> {
        unsupported()
    }
}
