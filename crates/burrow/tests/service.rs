//! What `burrow up` remembers (`<home>/config.toml`) and `burrow service` on
//! Linux, with real processes: the first `up` writes the file, a bare `up`
//! starts the same node from it, a bad key stops `up` with its line, and
//! `service install` writes a systemd user unit that systemd's own
//! `systemd-analyze verify` accepts.
#![cfg(target_os = "linux")] // systemd; the other systems' files are checked by unit tests

mod common;

use std::path::Path;
use std::process::Command;

use common::proc::*;

/// `burrow <args>` in `home` with the user's config directory at `config`;
/// returns (success, stdout, stderr).
fn service(home: &Path, config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .arg("service")
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_first_up_writes_the_config_and_a_bare_up_starts_the_same_node() {
    let dir = tempfile::tempdir().unwrap();
    let (srv, home) = (dir.path().join("srv"), dir.path().join("alice"));
    let (_server, url) = loopback_server(&srv, &[]);
    let mut alice = loopback_up(&home, &url, "alice");
    alice.expect_line("wrote");
    let id = json(&home, &["status"])["id"].as_str().unwrap().to_string();
    drop(alice);

    let text = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(text.contains("\nname = \"alice\"\n"), "{text}");
    assert!(text.contains(&format!("\nserver = \"{url}\"\n")), "{text}");
    assert!(text.contains("\nkeepalive = \"300ms\"\n"), "{text}");
    assert!(text.contains("\n# links = 4\n"), "{text}");

    // Nothing but the home: the same node, registered under the same name.
    let mut again = Proc::spawn(&["--home", home.to_str().unwrap(), "up"]);
    again.expect_line("alice is up");
    let status = json(&home, &["status"]);
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["name"], "alice");
    drop(again);
    assert_eq!(
        std::fs::read_to_string(home.join("config.toml")).unwrap(),
        text,
        "a run without --save leaves the file as it was"
    );

    // A misspelt key stops `up`, naming the file and the line.
    std::fs::write(
        home.join("config.toml"),
        format!("name = \"alice\"\nsever = \"{url}\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--home", home.to_str().unwrap(), "up"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("config.toml") && err.contains("line 2") && err.contains("sever"),
        "{err}"
    );
}

#[test]
fn service_install_writes_a_unit_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (home, config) = (dir.path().join("node"), dir.path().join("config"));
    std::fs::create_dir_all(&home).unwrap();

    // No config yet: the service would have nothing to start.
    let (ok, _, err) = service(&home, &config, &["install", "--no-start"]);
    assert!(!ok);
    assert!(err.contains("burrow up --server"), "{err}");

    std::fs::write(home.join("config.toml"), "name = \"alice\"\n").unwrap();
    let (_, out, _) = service(&home, &config, &["status"]);
    assert!(out.contains("not installed"), "{out}");
    let (ok, out, err) = service(&home, &config, &["install", "--no-start"]);
    assert!(ok, "{err}");
    let units = config.join("systemd/user");
    let unit = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "service"))
        .expect("a unit was written");
    assert!(out.contains(unit.to_str().unwrap()), "{out}");
    let name = unit.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("burrow-"),
        "a non-default home gets its own name: {name}"
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "\nExecStart=\"{BIN}\" \"--home\" \"{}\" \"up\" \"--service\"\n",
            home.display()
        )),
        "{text}"
    );

    // systemd's own reader: no error, no warning. It needs a runtime
    // directory to stand up its manager in; a private one does.
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["--user", "verify"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .expect("systemd-analyze runs (CI installs systemd)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let (_, out, _) = service(&home, &config, &["status"]);
    assert!(out.contains(name) && out.contains("not answering"), "{out}");
    let (ok, out, err) = service(&home, &config, &["uninstall"]);
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(!unit.exists());
}
