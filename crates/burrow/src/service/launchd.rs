//! macOS: a launchd agent in `~/Library/LaunchAgents`, loaded into the
//! user's GUI domain (`launchctl bootstrap gui/<uid>`): started at login,
//! started again when it exits with a failure, its output appended to
//! `~/Library/Logs/burrow/<name>.log`.

// Built everywhere so that every system's file is tested on any machine;
// only the platform's own build calls it.
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

use std::path::PathBuf;

use super::Service;

/// The agent's label: reverse-DNS, as launchd's are.
pub fn label(service: &Service) -> String {
    format!("net.burrow.{}", service.name)
}

/// The log file the agent writes to, under `logs` (`~/Library/Logs`).
pub fn log_path(logs: &std::path::Path, service: &Service) -> PathBuf {
    logs.join("burrow").join(format!("{}.log", service.name))
}

/// Text made safe for XML.
pub fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The agent's property list, logging to `log`.
pub fn plist(service: &Service, log: &std::path::Path) -> String {
    let string = |s: &str| format!("<string>{}</string>", xml_escape(s));
    let args: Vec<String> = std::iter::once(service.exe.display().to_string())
        .chain(service.args())
        .map(|a| format!("\t\t{}\n", string(&a)))
        .collect();
    let log = string(&log.display().to_string());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `burrow service install`; `burrow service uninstall` removes it. -->
<plist version="1.0">
<dict>
	<key>Label</key>
	{label}
	<key>ProgramArguments</key>
	<array>
{args}	</array>
	<key>RunAtLoad</key>
	<true/>
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>5</integer>
	<key>EnvironmentVariables</key>
	<dict>
		<key>BURROW_LOG</key>
		<string>info</string>
	</dict>
	<key>StandardOutPath</key>
	{log}
	<key>StandardErrorPath</key>
	{log}
</dict>
</plist>
"#,
        label = string(&label(service)),
        args = args.concat(),
    )
}

#[cfg(target_os = "macos")]
pub mod platform {
    use super::*;
    use crate::service::{command, tail, write_file};
    use crate::CliError;

    fn paths(service: &Service) -> Result<(PathBuf, PathBuf), CliError> {
        let home = dirs::home_dir()
            .ok_or_else(|| CliError::new("no home directory for a launchd agent", None))?;
        let library = home.join("Library");
        Ok((
            library
                .join("LaunchAgents")
                .join(format!("{}.plist", label(service))),
            log_path(&library.join("Logs"), service),
        ))
    }

    /// `gui/<uid>`: the domain of the logged-in user's agents.
    fn domain() -> String {
        // SAFETY: getuid has no preconditions and cannot fail.
        format!("gui/{}", unsafe { libc::getuid() })
    }

    pub fn install(service: &Service, start: bool) -> Result<(), CliError> {
        let (plist_path, log) = paths(service)?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_file(&plist_path, plist(service, &log).as_bytes())?;
        println!("wrote {}", plist_path.display());
        if !start {
            println!(
                "start it with: launchctl bootstrap {} {}",
                domain(),
                plist_path.display()
            );
            return Ok(());
        }
        // An agent loaded already (an earlier install) is replaced.
        let target = format!("{}/{}", domain(), label(service));
        let _ = command("launchctl", &["bootout", &target]);
        // A bootout finishes after it returns: a bootstrap right behind it
        // can fail ("Bootstrap failed: 5"), so it is tried a few times.
        let plist_arg = plist_path.display().to_string();
        let mut tries = 0;
        while let Err(e) = command("launchctl", &["bootstrap", &domain(), &plist_arg]) {
            tries += 1;
            if tries == 5 {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        println!(
            "started {}: it runs at every login from now on",
            label(service)
        );
        println!("its log: burrow service logs ({})", log.display());
        Ok(())
    }

    pub fn uninstall(service: &Service) -> Result<(), CliError> {
        let (plist_path, _) = paths(service)?;
        if !plist_path.exists() {
            return Err(CliError::new(
                format!(
                    "{} isn't installed (no {})",
                    label(service),
                    plist_path.display()
                ),
                None,
            ));
        }
        let target = format!("{}/{}", domain(), label(service));
        let _ = command("launchctl", &["bootout", &target]);
        std::fs::remove_file(&plist_path)?;
        println!("removed {}", plist_path.display());
        Ok(())
    }

    pub fn status(service: &Service) -> Result<(), CliError> {
        let (plist_path, log) = paths(service)?;
        if !plist_path.exists() {
            println!("service     not installed (burrow service install)");
            return Ok(());
        }
        println!("service     {}, {}", label(service), plist_path.display());
        let target = format!("{}/{}", domain(), label(service));
        let state = std::process::Command::new("launchctl")
            .args(["print", &target])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("state = ").map(str::to_string))
            })
            .unwrap_or_else(|| "not loaded".into());
        println!("state       {state}");
        println!("log         {}", log.display());
        Ok(())
    }

    pub fn logs(service: &Service, lines: usize, follow: bool) -> Result<(), CliError> {
        let (_, log) = paths(service)?;
        tail(&log, lines, follow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_starts_up_from_the_home_and_logs_where_macos_keeps_logs() {
        let s = Service::new(
            "/Applications/burrow".into(),
            "/Users/ana/Library/Application Support/burrow".into(),
            true,
        );
        let log = log_path(std::path::Path::new("/Users/ana/Library/Logs"), &s);
        let text = plist(&s, &log);
        assert!(text.contains("<string>net.burrow.burrow</string>"));
        assert!(text.contains(
            "\t\t<string>/Users/ana/Library/Application Support/burrow</string>\n\t\t<string>up</string>\n"
        ));
        assert!(text.contains("<string>/Users/ana/Library/Logs/burrow/burrow.log</string>"));
        assert_eq!(xml_escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
        // Python's plistlib reads it as launchd would: the same arguments.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.plist");
        std::fs::write(&path, &text).unwrap();
        let read = crate::service::python(
            "import sys, plistlib, json\n\
             p = plistlib.load(open(sys.argv[1], 'rb'))\n\
             print(json.dumps([p['Label'], p['ProgramArguments'], p['KeepAlive'], p['StandardErrorPath']]))",
            &path,
        );
        assert_eq!(
            read.trim(),
            r#"["net.burrow.burrow", ["/Applications/burrow", "--home", "/Users/ana/Library/Application Support/burrow", "up", "--service"], {"SuccessfulExit": false}, "/Users/ana/Library/Logs/burrow/burrow.log"]"#
        );
    }
}
