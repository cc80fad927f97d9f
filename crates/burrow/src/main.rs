//! `burrow`: the rendezvous server, the node, and the CLI that talks to a running
//! node, in one binary. Everything that reads arguments, environment and files for
//! configuration lives here; the libraries take parsed values.

mod admin;
mod client;
mod config;
mod demo;
#[cfg(all(target_os = "linux", feature = "lab"))]
mod demo_lab;
mod files;
mod forum;
mod serve;
mod service;
mod stop;
mod tunnel;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// burrow connects your computers directly across NATs and firewalls.
///
/// Run a rendezvous server on a machine with a public address (`burrow server`),
/// a node on each computer (`burrow up`), then use the other commands to see who is
/// online, connect, and chat over end-to-end encrypted QUIC.
#[derive(Parser, Debug)]
#[command(
    name = "burrow",
    version,
    propagate_version = true,
    after_help = "Examples:
  burrow demo                                              try it all on this machine
  burrow server --listen [::]:7700 --home ./srv            prints a join URL
  burrow up --server burrow://<id>@host:7700 --name alice --home ./alice
  burrow --home ./bob connect alice                        then, as alice: burrow accept bob
  burrow --home ./bob send alice \"hello\"
  burrow --home ./alice messages --follow
  burrow --home ./alice share ./holiday.mkv                prints its hash
  burrow --home ./bob search holiday
  burrow --home ./bob get holiday.mkv -o ./downloads       from every online provider
  burrow --home ./alice post \"Anyone up for a game tonight?\"   prints the post id
  burrow --home ./bob post --reply-to 3f9a1c2e \"yes, 9pm\"
  burrow --home ./bob forum                                the forum as threads
  burrow up --name carol --home ./carol                    no server: a network of your own
  burrow --home ./carol ticket                             hand it to a friend, who runs:
  burrow up --name dave --home ./dave --join <ticket>
  burrow server --home ./srv --policy accounts             names need a password or invite
  burrow --home ./srv admin invite --expires 24h           prints an invite code
  burrow --home ./srv admin ban mallory --for 1h
  burrow --home ./srv console                              an interactive operator console
  burrow --home ./alice settings incoming contacts-only    refuse strangers quietly
  burrow --home ./alice expose ssh 127.0.0.1:22 --allow bob  offer a local service to bob
  burrow --home ./bob forward alice/ssh 127.0.0.1:2222     a local port that reaches it
  ssh -o ProxyCommand='burrow --home ./bob pipe alice/ssh' me@alice

Logs: BURROW_LOG=debug (stderr)."
)]
struct Cli {
    /// The node's (or server's) directory: key, store, control socket.
    /// Default: the platform data directory (e.g. ~/.local/share/burrow).
    #[arg(long, global = true, env = "BURROW_HOME")]
    home: Option<PathBuf>,

    /// Print machine-readable JSON: exactly what the node's API returned.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a rendezvous server (STUN, registry, presence, connect broker).
    Server(serve::ServerArgs),
    /// Run a node in the foreground: register, watch presence, accept connections.
    Up(up::UpArgs),
    /// Run a server and two nodes on this machine and show them connect and chat.
    Demo {
        /// Behind real NATs: build a small internet in network namespaces (root
        /// needed) with alice, bob and carol behind three NAT routers (in a
        /// burrow built with `--features lab`).
        #[arg(long)]
        lab: bool,
    },
    /// Show this node's id, name, server, public address and connections.
    Status,
    /// List who is online and the state of each link.
    Peers,
    /// Ask a peer for a direct connection (they must accept).
    Connect {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Accept a peer's connection request.
    Accept {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Refuse a peer's connection request.
    Reject {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Withdraw your pending request to a peer.
    Cancel {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Send a chat message over the connection to a peer.
    Send {
        /// Peer name, or a unique prefix of its id.
        peer: String,
        /// The message (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Diagnose the NAT in front of this node: public address, mapping, filtering.
    Nat,
    /// Offer a file to others: hash it (served from where it is) and tell the
    /// server's tracker. Prints its hash.
    Share {
        /// The file.
        path: PathBuf,
        /// The name to offer it under (default: its file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the files you offer.
    Shares,
    /// Stop offering a file.
    Unshare {
        /// Its hash (or at least 8 hex digits of it), or its share name.
        file: String,
    },
    /// Search the server's tracker: files whose name contains TEXT, with their
    /// online providers.
    Search {
        /// Text the name contains (case-insensitive).
        text: String,
    },
    /// Ask a connected peer what it offers.
    Files {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Download a file from every online provider at once, verifying each
    /// piece against its hash. Interrupted downloads continue where they stopped.
    Get {
        /// The file's hash, or its exact name in the tracker.
        file: String,
        /// Directory to save it in (created if missing).
        #[arg(long, short, default_value = ".")]
        output: PathBuf,
        /// Replace a file of the same name there.
        #[arg(long)]
        force: bool,
    },
    /// Write a forum post: signed, kept by every member, spread peer to peer.
    /// Prints its id.
    Post {
        /// Answer this post (its id, or a unique prefix of it).
        #[arg(long)]
        reply_to: Option<String>,
        /// Post in this topic (default: forum). A reply goes in its parent's.
        #[arg(long)]
        topic: Option<String>,
        /// The text (several words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Show the forum as threads, newest first (works while the node is
    /// stopped: it reads the store). Reading a topic follows it.
    Forum {
        /// Show only this thread (a post id or unique prefix) and its replies.
        thread: Option<String>,
        /// The topic (default: forum).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Print this node's ticket (serverless networks): a friend runs
    /// `burrow up --join <ticket>` to join the network through this node.
    Ticket,
    /// Operate a running server (run on the server's machine, with its --home).
    Admin {
        #[command(subcommand)]
        cmd: admin::AdminCmd,
    },
    /// An interactive console on a running server: users, say, tell, kick, ban,
    /// unban, log, ... (type help).
    Console,
    /// Run this node in the background, as the system runs services: install,
    /// uninstall, status, logs (systemd on Linux, launchd on macOS, Task
    /// Scheduler on Windows).
    Service {
        #[command(subcommand)]
        cmd: service::ServiceCmd,
    },
    /// Peers that may connect without asking: list them, add or remove one.
    Contacts {
        #[command(subcommand)]
        cmd: Option<ContactsCmd>,
    },
    /// Show or change this node's settings.
    Settings {
        #[command(subcommand)]
        cmd: Option<SettingsCmd>,
    },
    /// Offer a local TCP or UDP service to the peers you name, or list what you offer.
    ///
    /// With no arguments, lists your services with their live connections.
    /// Exposing a name again changes it: connections of peers still allowed
    /// stay, the others are reset.
    Expose {
        /// The service's name (a-z, 0-9, - and _), as peers type it: alice/web.
        #[arg(requires = "addr")]
        name: Option<String>,
        /// Where its connections go: host:port, or a port on this machine.
        /// Only this address is ever dialed for it. It need not be listening yet.
        addr: Option<String>,
        /// A UDP service (a game server, WireGuard) rather than TCP.
        #[arg(long)]
        udp: bool,
        /// Who may reach it: a peer's name or id, or `contacts` for everyone
        /// in your contacts list (as it is when they connect). Repeat for several.
        #[arg(long)]
        allow: Vec<String>,
    },
    /// Stop offering a service; its connections end.
    Unexpose {
        /// The service's name.
        name: String,
    },
    /// List what a peer exposes to you (asking for a link if there is none).
    Services {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Make a local address reach a peer's service, or list your forwards.
    ///
    /// TCP or UDP, as the peer exposes it. With no arguments, lists your
    /// forwards with their connections and bytes. Forwards are kept: they
    /// listen again when the node restarts. The link to the peer is made
    /// (asking, as `connect` does) when a connection needs it.
    Forward {
        /// peer/service (burrow services <peer> lists them).
        #[arg(requires = "listen")]
        target: Option<String>,
        /// The local address to listen on: host:port, or a port on 127.0.0.1.
        listen: Option<String>,
    },
    /// End a forward, and the connections through it.
    Unforward {
        /// Its local address (as `burrow forward` lists it).
        listen: String,
    },
    /// Connect stdin and stdout to a peer's TCP service (ssh's ProxyCommand).
    ///
    /// ssh -o ProxyCommand='burrow pipe alice/ssh' me@alice
    Pipe {
        /// peer/service.
        target: String,
    },
    /// Show chat history (and notices from the server's operator).
    Messages {
        /// Keep running and print new messages as they arrive.
        #[arg(long, short)]
        follow: bool,
        /// How many of the newest messages to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `burrow contacts ...`.
#[derive(Subcommand, Debug)]
enum ContactsCmd {
    /// List contacts (the default).
    List,
    /// Let a peer connect without asking (it must be online or known).
    Add {
        /// Peer name, or a unique prefix of its id.
        peer: String,
    },
    /// Stop treating a peer as a contact.
    Remove {
        /// Contact name, or a prefix of its id.
        peer: String,
    },
}

/// `burrow settings ...`.
#[derive(Subcommand, Debug)]
enum SettingsCmd {
    /// What happens to connect requests: `ask` (default: contacts are accepted,
    /// others wait for accept/reject), `contacts-only` (others are refused
    /// without asking you), `anyone` (all are accepted).
    Incoming {
        /// ask, contacts-only or anyone.
        #[arg(value_parser = ["ask", "contacts-only", "anyone"])]
        policy: String,
    },
}

/// An error for a person: what went wrong, and what to do about it.
#[derive(Debug)]
pub struct CliError {
    message: String,
    hint: Option<String>,
}

impl CliError {
    fn new(message: impl ToString, hint: Option<String>) -> Self {
        CliError {
            message: message.to_string(),
            hint,
        }
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::new(e, None)
    }
}

/// The directory used when `--home` isn't given.
fn default_home(server: bool) -> PathBuf {
    let base = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
    base.join(if server { "burrow-server" } else { "burrow" })
}

/// Whether `home` is the node's default home, however it was named (the
/// service of the default home has the plain name `burrow`).
fn is_default_home(home: &std::path::Path) -> bool {
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    absolute(home) == absolute(&default_home(false))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BURROW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal, not in a journal or a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// The ids of the options in `matches` that the user set, on the command
/// line or in their environment variables (not those left at defaults).
fn given(matches: &clap::ArgMatches) -> std::collections::HashSet<String> {
    matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.to_string())
        .collect()
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let is_server = matches!(
        cli.command,
        Command::Server(_) | Command::Admin { .. } | Command::Console
    );
    let home = cli.home.clone().unwrap_or_else(|| default_home(is_server));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    let mut settings = None;
    if let Command::Up(args) = &mut cli.command {
        if args.service {
            let exe = std::env::current_exe().unwrap_or_default();
            let me = service::Service::new(exe, home.clone(), is_default_home(&home));
            if let Err(e) = service::schtasks::detach(&me) {
                return fail(e);
            }
        }
        // The config file fills in what the command line left out, before
        // the runtime is sized by it.
        let up = matches.subcommand_matches("up").expect("up was parsed");
        let given = given(up);
        // What the first run writes to the file: what was given, but not a
        // proxy that came from HTTPS_PROXY (the environment's, not burrow's).
        let saving = given
            .iter()
            .filter(|id| {
                *id != "proxy" || up.value_source("proxy") == Some(ValueSource::CommandLine)
            })
            .cloned()
            .collect();
        match config::load(&home) {
            Ok(loaded) => {
                args.fill_from(&loaded.file, &given);
                settings = Some((loaded, saving));
            }
            Err(e) => return fail(e),
        }
        runtime.worker_threads(args.worker_threads());
    }
    // After a service's detach: its log is where stderr goes now.
    init_tracing();
    let runtime = runtime
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(cli, home, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Says what went wrong, and what to do.
fn fail(e: CliError) -> ExitCode {
    eprintln!("error: {}", e.message);
    if let Some(hint) = e.hint {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

async fn run(
    cli: Cli,
    home: PathBuf,
    settings: Option<(config::Loaded, std::collections::HashSet<String>)>,
) -> Result<(), CliError> {
    match cli.command {
        Command::Server(args) => serve::run(home, args).await,
        Command::Up(args) => {
            let (loaded, given) = settings.expect("up's settings were read");
            up::run(home, args, loaded, given).await
        }
        Command::Demo { lab: false } => demo::run().await,
        Command::Demo { lab: true } => demo_lab().await,
        Command::Status => client::status(&home, cli.json).await,
        Command::Peers => client::peers(&home, cli.json).await,
        Command::Nat => client::nat(&home, cli.json).await,
        Command::Connect { peer } => {
            client::request_op(&home, cli.json, client::Op::Connect, peer).await
        }
        Command::Accept { peer } => {
            client::request_op(&home, cli.json, client::Op::Accept, peer).await
        }
        Command::Reject { peer } => {
            client::request_op(&home, cli.json, client::Op::Reject, peer).await
        }
        Command::Cancel { peer } => {
            client::request_op(&home, cli.json, client::Op::Cancel, peer).await
        }
        Command::Send { peer, text } => client::send(&home, cli.json, peer, text.join(" ")).await,
        Command::Share { path, name } => files::share(&home, cli.json, &path, name).await,
        Command::Shares => files::shares(&home, cli.json).await,
        Command::Unshare { file } => files::unshare(&home, cli.json, file).await,
        Command::Search { text } => files::search(&home, cli.json, text).await,
        Command::Files { peer } => files::files(&home, cli.json, peer).await,
        Command::Get {
            file,
            output,
            force,
        } => files::get(&home, cli.json, file, &output, force).await,
        Command::Post {
            reply_to,
            topic,
            text,
        } => forum::post(&home, cli.json, text.join(" "), reply_to, topic).await,
        Command::Forum { thread, topic } => forum::forum(&home, cli.json, thread, topic).await,
        Command::Ticket => forum::ticket(&home, cli.json).await,
        Command::Messages { follow, limit } => {
            client::messages(&home, cli.json, follow, limit).await
        }
        Command::Expose {
            name,
            addr,
            udp,
            allow,
        } => tunnel::expose(&home, cli.json, name.zip(addr), udp, allow).await,
        Command::Unexpose { name } => tunnel::unexpose(&home, cli.json, name).await,
        Command::Services { peer } => tunnel::services(&home, cli.json, peer).await,
        Command::Forward { target, listen } => {
            tunnel::forward(&home, cli.json, target.zip(listen)).await
        }
        Command::Unforward { listen } => tunnel::unforward(&home, cli.json, listen).await,
        Command::Pipe { target } => tunnel::pipe(&home, target).await,
        Command::Admin { cmd } => admin::run(&home, cli.json, cmd).await,
        Command::Service { cmd } => service::run(&home, is_default_home(&home), cmd).await,
        Command::Console => admin::console(&home).await,
        Command::Contacts { cmd } => {
            let (add, remove) = match cmd.unwrap_or(ContactsCmd::List) {
                ContactsCmd::List => (None, None),
                ContactsCmd::Add { peer } => (Some(peer), None),
                ContactsCmd::Remove { peer } => (None, Some(peer)),
            };
            client::contacts(&home, cli.json, add, remove).await
        }
        Command::Settings { cmd } => {
            let incoming = cmd.map(|SettingsCmd::Incoming { policy }| policy);
            client::settings(&home, cli.json, incoming).await
        }
    }
}

#[cfg(all(target_os = "linux", feature = "lab"))]
async fn demo_lab() -> Result<(), CliError> {
    demo_lab::run().await
}

#[cfg(all(target_os = "linux", not(feature = "lab")))]
async fn demo_lab() -> Result<(), CliError> {
    Err(CliError::new(
        "this burrow was built without the lab",
        Some("sudo cargo run --release --features lab -- demo --lab".into()),
    ))
}

#[cfg(not(target_os = "linux"))]
async fn demo_lab() -> Result<(), CliError> {
    Err(CliError::new(
        "demo --lab needs Linux network namespaces",
        Some("run `burrow demo` without --lab".into()),
    ))
}
