//! Linux: a systemd user unit. `systemctl --user` starts it at login (and at
//! boot with `loginctl enable-linger`), restarts it when it fails, and the
//! journal keeps what it prints (`journalctl --user -u <name>`).

// Built everywhere so that every system's file is tested on any machine;
// only the platform's own build calls it.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::path::PathBuf;

use super::Service;

/// Where user units live: `$XDG_CONFIG_HOME/systemd/user`, by default
/// `~/.config/systemd/user`.
pub fn unit_dir() -> Option<PathBuf> {
    dirs::config_dir().map(|c| c.join("systemd").join("user"))
}

/// The unit file's name.
pub fn unit_name(service: &Service) -> String {
    format!("{}.service", service.name)
}

/// One word of a command line as systemd reads `ExecStart=`: quoted, with
/// `\` and `"` escaped, and `%` and `$` doubled so they are not specifiers
/// or variables.
fn quote(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The unit.
pub fn unit(service: &Service) -> String {
    let command: Vec<String> = std::iter::once(service.exe.display().to_string())
        .chain(service.args())
        .map(|w| quote(&w))
        .collect();
    format!(
        "# Written by `burrow service install`; `burrow service uninstall` removes it.\n\
         [Unit]\n\
         Description=burrow node in {home}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={command}\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         # What the node says goes to the journal: burrow service logs.\n\
         Environment=BURROW_LOG=info\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        home = service.home.display().to_string().replace('%', "%%"),
        command = command.join(" "),
    )
}

/// The unit's path for `service`.
fn unit_path(service: &Service) -> Result<PathBuf, crate::CliError> {
    unit_dir()
        .map(|d| d.join(unit_name(service)))
        .ok_or_else(|| {
            crate::CliError::new("no home directory to put a systemd user unit in", None)
        })
}

#[cfg(target_os = "linux")]
pub mod platform {
    use super::*;
    use crate::service::{command, write_file};
    use crate::CliError;
    use std::path::Path;

    /// Why `systemctl --user` failed, and what to do.
    fn no_manager(e: CliError, path: &Path) -> CliError {
        CliError::new(
            format!("the unit is written ({}), but {}", path.display(), e.message),
            Some(
                "systemd's user manager isn't answering (no login session, or a container): log in normally, or run `loginctl enable-linger $USER`, then `systemctl --user enable --now` the unit; or run `burrow up` by hand".into(),
            ),
        )
    }

    pub fn install(service: &Service, start: bool) -> Result<(), CliError> {
        let path = unit_path(service)?;
        write_file(&path, unit(service).as_bytes())?;
        println!("wrote {}", path.display());
        if !start {
            println!(
                "start it with: systemctl --user enable --now {}",
                unit_name(service)
            );
            return Ok(());
        }
        let name = unit_name(service);
        command("systemctl", &["--user", "daemon-reload"])
            .and_then(|()| command("systemctl", &["--user", "enable", "--now", &name]))
            .map_err(|e| no_manager(e, &path))?;
        println!("started {name}: it runs at every login from now on");
        println!("to keep it running while you are logged out: loginctl enable-linger $USER");
        println!("its log: burrow service logs");
        Ok(())
    }

    pub fn uninstall(service: &Service) -> Result<(), CliError> {
        let path = unit_path(service)?;
        let name = unit_name(service);
        if !path.exists() {
            return Err(CliError::new(
                format!("{name} isn't installed (no {})", path.display()),
                None,
            ));
        }
        // A manager that isn't running has nothing to stop.
        let stopped = command("systemctl", &["--user", "disable", "--now", &name]);
        std::fs::remove_file(&path)?;
        let _ = command("systemctl", &["--user", "daemon-reload"]);
        println!("removed {}", path.display());
        if let Err(e) = stopped {
            eprintln!("note: {}", e.message);
        }
        Ok(())
    }

    pub fn status(service: &Service) -> Result<(), CliError> {
        let path = unit_path(service)?;
        let name = unit_name(service);
        if !path.exists() {
            println!("service     not installed (burrow service install)");
            return Ok(());
        }
        println!("service     {name}, {}", path.display());
        let ask = |what: &str| {
            std::process::Command::new("systemctl")
                .args(["--user", what, &name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown (systemd's user manager isn't answering)".into())
        };
        println!("state       {}, {}", ask("is-active"), ask("is-enabled"));
        Ok(())
    }

    pub fn logs(service: &Service, lines: usize, follow: bool) -> Result<(), CliError> {
        let lines = lines.to_string();
        let unit = unit_name(service);
        let mut args = vec!["--user", "-u", &unit, "-n", &lines, "--no-pager"];
        if follow {
            args.push("-f");
        }
        let status = std::process::Command::new("journalctl")
            .args(&args)
            .status()
            .map_err(|e| CliError::new(format!("cannot run journalctl: {e}"), None))?;
        if !status.success() {
            return Err(CliError::new("journalctl failed", None));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_as_systemd_reads_them() {
        assert_eq!(quote("/usr/bin/burrow"), "\"/usr/bin/burrow\"");
        assert_eq!(
            quote("/home/a b/50%$x\"\\"),
            "\"/home/a b/50%%$$x\\\"\\\\\""
        );
    }

    #[test]
    fn the_unit_starts_up_from_the_home() {
        let s = Service::new("/opt/burrow".into(), "/home/ana/my burrow".into(), false);
        let text = unit(&s);
        assert!(
            text.contains("\nExecStart=\"/opt/burrow\" \"--home\" \"/home/ana/my burrow\" \"up\" \"--service\"\n"),
            "{text}"
        );
        assert!(text.contains("\nRestart=on-failure\n"));
        assert!(unit_name(&s).starts_with("burrow-"));
    }
}
