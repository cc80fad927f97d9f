//! Windows: a Task Scheduler task that starts `burrow up` when the user logs
//! on, as that user with no elevation (`schtasks /Create /XML`, which needs
//! no administrator for a task of one's own), retried every minute if it
//! fails to start (a node that stopped starts again at the next logon). A
//! task has no console to write to: `up --service` detaches from
//! the one it was given and sends what it prints to
//! `%LOCALAPPDATA%\burrow\logs\<name>.log` ([`detach`]).

// Built everywhere so that every system's file is tested on any machine;
// only the platform's own build calls it.
#![cfg_attr(not(windows), allow(dead_code))]

use std::path::{Path, PathBuf};

use super::launchd::xml_escape;
use super::Service;

/// The log file of `service`, under `local` (`%LOCALAPPDATA%`).
pub fn log_path(local: &Path, service: &Service) -> PathBuf {
    local
        .join("burrow")
        .join("logs")
        .join(format!("{}.log", service.name))
}

/// One argument as Windows programs split their command line (the
/// `CommandLineToArgvW` rules): quoted where it must be, backslashes
/// before a quote doubled.
fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    let mut slashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => slashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', 2 * slashes + 1));
                slashes = 0;
            }
            _ => slashes = 0,
        }
        out.push(c);
    }
    out.extend(std::iter::repeat_n('\\', slashes));
    out.push('"');
    out
}

/// The task's definition for `user` (`DOMAIN\name`).
pub fn task_xml(service: &Service, user: &str) -> String {
    let args: Vec<String> = service.args().iter().map(|a| quote(a)).collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<!-- Written by `burrow service install`; `burrow service uninstall` removes it. -->
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>burrow node in {home}</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>{user}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{exe}</Command>
      <Arguments>{args}</Arguments>
    </Exec>
  </Actions>
</Task>
"#,
        home = xml_escape(&service.home.display().to_string()),
        user = xml_escape(user),
        exe = xml_escape(&service.exe.display().to_string()),
        args = xml_escape(&args.join(" ")),
    )
}

/// `text` as schtasks reads an XML file: UTF-16, little endian, with its
/// byte order mark.
pub fn utf16_file(text: &str) -> Vec<u8> {
    [0xfeffu16]
        .into_iter()
        .chain(text.encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect()
}

#[cfg(windows)]
pub mod platform {
    use super::*;
    use crate::service::{tail, write_file};
    use crate::CliError;

    fn log_of(service: &Service) -> Result<PathBuf, CliError> {
        let local = dirs::data_local_dir()
            .ok_or_else(|| CliError::new("no %LOCALAPPDATA% to keep the log in", None))?;
        Ok(log_path(&local, service))
    }

    fn schtasks(args: &[&str]) -> Result<String, CliError> {
        let out = std::process::Command::new("schtasks")
            .args(args)
            .output()
            .map_err(|e| CliError::new(format!("cannot run schtasks: {e}"), None))?;
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            return Ok(said);
        }
        Err(CliError::new(
            format!(
                "`schtasks {}` failed: {}{}",
                args.join(" "),
                said.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            None,
        ))
    }

    pub fn install(service: &Service, start: bool) -> Result<(), CliError> {
        let user = match (std::env::var("USERDOMAIN"), std::env::var("USERNAME")) {
            (Ok(d), Ok(u)) => format!("{d}\\{u}"),
            (Err(_), Ok(u)) => u,
            _ => {
                return Err(CliError::new(
                    "%USERNAME% is not set: who is the task for?",
                    None,
                ))
            }
        };
        let log = log_of(service)?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let xml = service.home.join(format!("{}.task.xml", service.name));
        write_file(&xml, &utf16_file(&task_xml(service, &user)))?;
        let made = schtasks(&[
            "/Create",
            "/TN",
            &service.name,
            "/XML",
            &xml.display().to_string(),
            "/F",
        ]);
        let _ = std::fs::remove_file(&xml);
        made?;
        println!("made the task {} (starts at every logon)", service.name);
        if start {
            schtasks(&["/Run", "/TN", &service.name])?;
            println!(
                "started it; its log: burrow service logs ({})",
                log.display()
            );
        }
        Ok(())
    }

    pub fn uninstall(service: &Service) -> Result<(), CliError> {
        let _ = schtasks(&["/End", "/TN", &service.name]);
        schtasks(&["/Delete", "/TN", &service.name, "/F"])?;
        println!("removed the task {}", service.name);
        Ok(())
    }

    pub fn status(service: &Service) -> Result<(), CliError> {
        match schtasks(&["/Query", "/TN", &service.name, "/FO", "LIST"]) {
            Ok(said) => {
                println!("service     task {}", service.name);
                let state = said
                    .lines()
                    .find_map(|l| {
                        l.trim()
                            .strip_prefix("Status:")
                            .map(|s| s.trim().to_string())
                    })
                    .unwrap_or_else(|| "unknown".into());
                println!("state       {state}");
                println!("log         {}", log_of(service)?.display());
            }
            Err(_) => println!("service     not installed (burrow service install)"),
        }
        Ok(())
    }

    pub fn logs(service: &Service, lines: usize, follow: bool) -> Result<(), CliError> {
        tail(&log_of(service)?, lines, follow)
    }

    /// For `up --service`: what the node prints goes to the service's log
    /// (appended; a log past 16 MiB is moved to `.old` first), and the
    /// console the task was given is let go, so no window stays open.
    pub fn detach(service: &Service) -> Result<(), CliError> {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::System::Console::{
            FreeConsole, SetStdHandle, STD_ERROR_HANDLE, STD_OUTPUT_HANDLE,
        };
        let log = log_of(service)?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 16 << 20) {
            let _ = std::fs::rename(&log, log.with_extension("log.old"));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let handle = file.as_raw_handle();
        // The handle stays open for the rest of the process.
        std::mem::forget(file);
        // SAFETY: `handle` is an open file handle that is never closed; the
        // console calls take no pointers.
        unsafe {
            FreeConsole();
            SetStdHandle(STD_OUTPUT_HANDLE, handle as _);
            SetStdHandle(STD_ERROR_HANDLE, handle as _);
        }
        Ok(())
    }
}

/// Elsewhere a service's output already goes where the system keeps logs.
#[cfg(not(windows))]
pub fn detach(_service: &Service) -> Result<(), crate::CliError> {
    Ok(())
}

#[cfg(windows)]
pub use platform::detach;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_as_windows_splits_them() {
        assert_eq!(quote("up"), "up");
        assert_eq!(
            quote(r"C:\Users\Ana Lee\burrow"),
            r#""C:\Users\Ana Lee\burrow""#
        );
        assert_eq!(quote(r"C:\dir\"), r"C:\dir\");
        assert_eq!(quote(r"C:\my dir\"), r#""C:\my dir\\""#);
        assert_eq!(quote(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(quote(""), r#""""#);
    }

    #[test]
    fn the_task_starts_up_at_logon_as_the_user() {
        let s = Service::new(
            r"C:\Program Files\burrow\burrow.exe".into(),
            r"C:\Users\ana\AppData\Roaming\burrow".into(),
            true,
        );
        let xml = task_xml(&s, r"PC\ana");
        assert!(xml.contains("<UserId>PC\\ana</UserId>"));
        assert!(xml.contains("<Command>C:\\Program Files\\burrow\\burrow.exe</Command>"));
        assert!(xml.contains(
            "<Arguments>--home C:\\Users\\ana\\AppData\\Roaming\\burrow up --service</Arguments>"
        ));
        let bytes = utf16_file(&xml);
        assert_eq!(&bytes[..4], &[0xff, 0xfe, b'<', 0]);
        // A real XML parser reads the file as schtasks gets it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.xml");
        std::fs::write(&path, &bytes).unwrap();
        let read = crate::service::python(
            "import sys, xml.etree.ElementTree as ET\n\
             ns = {'t': 'http://schemas.microsoft.com/windows/2004/02/mit/task'}\n\
             root = ET.parse(sys.argv[1]).getroot()\n\
             print(root.find('t:Actions/t:Exec/t:Arguments', ns).text)",
            &path,
        );
        assert_eq!(
            read.trim(),
            r"--home C:\Users\ana\AppData\Roaming\burrow up --service"
        );
    }
}
