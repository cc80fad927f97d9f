//! `burrow admin ...` and `burrow console`: thin clients of a running server's
//! admin socket (`<server home>/control.sock`).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use burrow_node::control::{ClientError, ControlClient};
use burrow_server::admin::{AdminRequest, BanView, InviteView, LogView, StatusView, UserView};
use clap::{Parser, Subcommand};
use tokio::io::AsyncBufReadExt;

use crate::client::{data, parse, print_json};
use crate::stop::StopSignal;
use crate::CliError;

/// What the operator can ask a running server.
#[derive(Subcommand, Debug, Clone)]
pub enum AdminCmd {
    /// The policy, how many nodes are online, how many bans are in force.
    Status,
    /// Registered names: key, account, online or not, and from where.
    Users,
    /// Make an account that owns NAME (policy `accounts`). The password is
    /// asked for on the terminal, or read from standard input.
    AddUser {
        /// The name the account owns.
        name: String,
        /// Read the password from standard input (its first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make an invite code: a new user runs `burrow up --invite CODE --name NAME`
    /// (with --password-stdin to set a password for other machines).
    Invite {
        /// How many accounts the code can make.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid ("24h", "7days"); default: until used up.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// Let a node register (policy `allowlist`): its id, as `burrow status` shows it.
    Allow {
        /// The node's id (64 hex digits).
        node: String,
    },
    /// Take a node off the allowlist (an online one is disconnected).
    Deny {
        /// The node's id, or the name it holds.
        node: String,
    },
    /// Send a notice to every online node.
    Say {
        /// The text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Send a notice to one node.
    Tell {
        /// Its name or id.
        who: String,
        /// The text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Disconnect a node; its `burrow up` stops and says why.
    Kick {
        /// Its name or id.
        who: String,
    },
    /// Ban a name (and the key that holds it), a node id, or an address (an
    /// IPv6 address bans its /64). Online nodes it covers are disconnected.
    /// Bans are kept across restarts.
    Ban {
        /// A name, a node id, or an IP address.
        who: String,
        /// How long ("1h", "30min"); default: for good.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban (as given to `ban`, or as `bans` lists it).
    Unban {
        /// A name, a node id, an IP address, or a target from `bans`.
        who: String,
    },
    /// The bans in force.
    Bans,
    /// The audit log: every decision the server made about who may use it.
    Log {
        /// Keep running and print each new entry.
        #[arg(long, short)]
        follow: bool,
        /// How many of the newest entries to show first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

async fn connect(home: &Path) -> Result<ControlClient, CliError> {
    ControlClient::connect(home).await.map_err(|e| match e {
        ClientError::NoNode(_) => CliError::new(
            format!("no server is running in {}", home.display()),
            Some(format!(
                "start one with: burrow server --home {}",
                home.display()
            )),
        ),
        other => other.into(),
    })
}

/// Runs one admin command.
pub async fn run(home: &Path, json: bool, cmd: AdminCmd) -> Result<(), CliError> {
    execute(home, json, request(cmd)?, None).await
}

/// Sends one admin request and prints its answer. `log --follow` runs until
/// a stop signal: the console's `stop`, or one caught for this follow alone
/// (other commands leave Ctrl-C its default action).
async fn execute(
    home: &Path,
    json: bool,
    request: AdminRequest,
    stop: Option<&mut StopSignal>,
) -> Result<(), CliError> {
    let mut client = connect(home).await?;
    if let AdminRequest::Log { follow: true, .. } = request {
        return match stop {
            Some(stop) => follow_log(&mut client, &request, json, stop).await,
            None => follow_log(&mut client, &request, json, &mut StopSignal::install()?).await,
        };
    }
    let v = data(client.request(&request).await?)?;
    if json {
        print_json(&v);
        return Ok(());
    }
    print_human(&request, v)
}

/// The request a command makes (asking for a password where it needs one).
fn request(cmd: AdminCmd) -> Result<AdminRequest, CliError> {
    Ok(match cmd {
        AdminCmd::Status => AdminRequest::Status,
        AdminCmd::Users => AdminRequest::Users,
        AdminCmd::AddUser {
            name,
            password_stdin,
        } => AdminRequest::AddUser {
            password: read_password(password_stdin, &format!("password for {name}: "))?,
            name,
        },
        AdminCmd::Invite { uses, expires } => AdminRequest::Invite {
            uses,
            expires_secs: expires.map(|d| d.as_secs().max(1)),
        },
        AdminCmd::Allow { node } => AdminRequest::Allow { node },
        AdminCmd::Deny { node } => AdminRequest::Deny { node },
        AdminCmd::Say { text } => AdminRequest::Say {
            text: text.join(" "),
        },
        AdminCmd::Tell { who, text } => AdminRequest::Tell {
            who,
            text: text.join(" "),
        },
        AdminCmd::Kick { who } => AdminRequest::Kick { who },
        AdminCmd::Ban {
            who,
            duration,
            reason,
        } => AdminRequest::Ban {
            who,
            for_secs: duration.map(|d| d.as_secs().max(1)),
            reason,
        },
        AdminCmd::Unban { who } => AdminRequest::Unban { who },
        AdminCmd::Bans => AdminRequest::Bans,
        AdminCmd::Log { follow, limit } => AdminRequest::Log {
            limit: Some(limit),
            follow,
        },
    })
}

/// A password: the first line of standard input, or asked on the terminal
/// without echo.
pub fn read_password(from_stdin: bool, prompt: &str) -> Result<String, CliError> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        rpassword::prompt_password(prompt).map_err(|e| {
            CliError::new(
                format!("cannot ask for the password: {e}"),
                Some("no terminal? pass it on standard input with --password-stdin".into()),
            )
        })?
    };
    if password.is_empty() {
        return Err(CliError::new("the password is empty", None));
    }
    Ok(password)
}

fn print_human(request: &AdminRequest, v: serde_json::Value) -> Result<(), CliError> {
    match request {
        AdminRequest::Status => {
            let s: StatusView = parse(v)?;
            println!(
                "policy {}, {} node{} online, {} ban{} in force",
                s.policy,
                s.online,
                plural(s.online),
                s.bans,
                plural(s.bans)
            );
            if s.handshakes > 0 || s.retries > 0 {
                println!(
                    "{} handshake{} in progress, {} Retr{} sent (connections asked to prove their address under load)",
                    s.handshakes,
                    plural(s.handshakes),
                    s.retries,
                    if s.retries == 1 { "y" } else { "ies" }
                );
            }
        }
        AdminRequest::Users => {
            let users: Vec<UserView> = parse(v)?;
            if users.is_empty() {
                println!("nobody has registered yet");
            }
            println!(
                "{:<20} {:<9} {:<8} {:<22} account",
                "name", "id", "online", "address"
            );
            for u in users {
                let account = match (u.account, u.password) {
                    (true, true) => "yes (password)",
                    (true, false) => "yes (key only)",
                    (false, _) => "no",
                };
                println!(
                    "{:<20} {:<9} {:<8} {:<22} {account}{}",
                    u.name,
                    u.id.as_deref().map_or("-", |i| &i[..8]),
                    if u.online { "online" } else { "-" },
                    u.addr.as_deref().unwrap_or("-"),
                    if u.allowed { ", allowed" } else { "" }
                );
            }
        }
        AdminRequest::Invite { .. } => {
            let i: InviteView = parse(v)?;
            println!("invite code: {}", i.code);
            println!(
                "good for {} account{}, {}",
                i.uses,
                plural(i.uses as usize),
                i.expires_at
                    .map_or("until used".to_string(), |t| format!("until {t}"))
            );
            println!(
                "a new user joins with: burrow up --server <url> --name <name> --invite {}",
                i.code
            );
        }
        AdminRequest::Bans => {
            let bans: Vec<BanView> = parse(v)?;
            if bans.is_empty() {
                println!("no bans in force");
            }
            for b in bans {
                println!(
                    "{:<44} {:<24} {}",
                    b.target,
                    b.until
                        .map_or("for good".into(), |t| format!("until {}", short_time(&t))),
                    b.reason
                );
            }
        }
        AdminRequest::Ban { .. } => {
            let bans: Vec<BanView> = parse(v)?;
            for b in bans {
                println!(
                    "banned {} {}",
                    b.target,
                    b.until
                        .map_or("for good".into(), |t| format!("until {}", short_time(&t)))
                );
            }
        }
        AdminRequest::Unban { .. } => {
            let lifted: Vec<String> = parse(v)?;
            println!("lifted the ban on {}", lifted.join(", "));
        }
        AdminRequest::Log { .. } => {
            let entries: Vec<LogView> = parse(v)?;
            for e in entries {
                println!("{}", log_line(&e));
            }
        }
        AdminRequest::Say { .. } => {
            let n = v["delivered_to"].as_u64().unwrap_or(0);
            println!("sent to {n} node{}", plural(n as usize));
        }
        AdminRequest::AddUser { name, .. } => println!("account {name} made"),
        AdminRequest::Allow { node } => println!("{node} may register"),
        AdminRequest::Deny { node } => println!("{node} is off the allowlist"),
        AdminRequest::Tell { who, .. } => println!("told {who}"),
        AdminRequest::Kick { who } => println!("disconnected {who}"),
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "2026-11-30T20:31:46.123Z" as "2026-11-30 20:31:46".
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replace('T', " ")
}

fn log_line(e: &LogView) -> String {
    let detail = if e.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", e.detail)
    };
    format!(
        "[{}] {} {} {}{detail}",
        short_time(&e.at),
        e.actor,
        e.action,
        e.subject
    )
}

async fn follow_log(
    client: &mut ControlClient,
    request: &AdminRequest,
    json: bool,
    stop: &mut StopSignal,
) -> Result<(), CliError> {
    let first = data(client.request(request).await?)?;
    let print = |v: serde_json::Value| -> Result<(), CliError> {
        if json {
            println!("{}", serde_json::to_string(&v).expect("JSON values print"));
        } else {
            let e: LogView = parse(v)?;
            println!("{}", log_line(&e));
        }
        Ok(())
    };
    let entries: Vec<serde_json::Value> = parse(first)?;
    for e in entries {
        print(e)?;
    }
    loop {
        let next = tokio::select! {
            _ = stop.wait() => return Ok(()),
            r = client.next_reply() => r?,
        };
        match next {
            Some(reply) => print(data(reply)?)?,
            None => return Ok(()),
        }
    }
}

/// One console line: an admin command without the `burrow admin` in front.
#[derive(Parser, Debug)]
#[command(name = "console", no_binary_name = true, disable_version_flag = true)]
struct ConsoleLine {
    #[command(subcommand)]
    cmd: AdminCmd,
}

const CONSOLE_HELP: &str =
    "commands (each as `burrow admin <command>` takes it; <command> --help for more):
  status                      policy, nodes online, bans
  users                       registered names, online or not, from where
  say <text>                  a notice to every online node
  tell <who> <text>           a notice to one node
  kick <who>                  disconnect a node
  ban <who> [--for 1h]        ban a name, node id or address
  unban <who>                 lift a ban
  bans                        the bans in force
  log [--follow]              the audit log (Ctrl-C ends --follow)
  add-user <name>             make an account (asks for its password)
  invite [--uses N] [--expires 24h]
  allow <node-id> | deny <node-id>
  help                        this list
  exit                        leave the console (the server keeps running)";

/// `burrow console`: an interactive session with a running server.
pub async fn console(home: &Path) -> Result<(), CliError> {
    // Fail now, with the usual hint, if no server runs there.
    let mut client = connect(home).await?;
    let status: StatusView = parse(data(client.request(&AdminRequest::Status).await?)?)?;
    println!(
        "burrow console: server in {} (policy {}, {} online). Type help for commands.",
        home.display(),
        status.policy,
        status.online
    );
    // Ctrl-C at the prompt leaves the console; during `log --follow` it ends
    // just the follow.
    let mut stop = StopSignal::install()?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        print!("burrow> ");
        std::io::stdout().flush()?;
        let line = tokio::select! {
            _ = stop.wait() => None,
            line = lines.next_line() => line?,
        };
        let Some(line) = line else {
            println!();
            return Ok(());
        };
        let Some(words) = shlex::split(&line) else {
            println!("error: unbalanced quotes");
            continue;
        };
        match words.first().map(String::as_str) {
            None => continue,
            Some("exit" | "quit") => return Ok(()),
            Some("help" | "?") => {
                println!("{CONSOLE_HELP}");
                continue;
            }
            Some(_) => {}
        }
        let cmd = match ConsoleLine::try_parse_from(&words) {
            Ok(c) => c.cmd,
            Err(e) if e.kind() == clap::error::ErrorKind::InvalidSubcommand => {
                println!("error: unknown command {:?} (type help)", words[0]);
                continue;
            }
            Err(e) => {
                // clap's own text: a command's --help, or what was wrong with it.
                let _ = e.print();
                continue;
            }
        };
        let result = match request(cmd) {
            Ok(request) => execute(home, false, request, Some(&mut stop)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            println!("error: {}", e.message);
            if let Some(hint) = e.hint {
                println!("hint: {hint}");
            }
        }
    }
}
