//! The file commands: share, shares, unshare, search, files, get. Thin clients of
//! the node; `get` draws a progress bar on a terminal and plain lines otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use burrow_node::api::{FileView, GetUpdate, GetView, Request, SearchView, ShareView};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::client::{call, connect, data, parse, print_json};
use crate::stop::StopSignal;
use crate::CliError;

/// An absolute form of `path` (relative to where the command runs: the node
/// has its own working directory).
fn absolute(path: &Path) -> Result<std::path::PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| CliError::new(format!("{}: {e}", path.display()), None))
}

pub async fn share(
    home: &Path,
    json: bool,
    path: &Path,
    name: Option<String>,
) -> Result<(), CliError> {
    let full = std::fs::canonicalize(path).map_err(|e| {
        CliError::new(
            format!("cannot share {}: {e}", path.display()),
            Some("give the path of a file that exists".into()),
        )
    })?;
    let v = call(
        home,
        &Request::Share {
            path: full.display().to_string(),
            name,
        },
    )
    .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let s: ShareView = parse(v)?;
    println!("{}", s.hash);
    println!(
        "sharing {:?} ({}) from {}",
        s.name,
        HumanBytes(s.size),
        s.path
    );
    Ok(())
}

pub async fn shares(home: &Path, json: bool) -> Result<(), CliError> {
    let v = call(home, &Request::Shares).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let shares: Vec<ShareView> = parse(v)?;
    if shares.is_empty() {
        println!("you share nothing yet (burrow share <file>)");
        return Ok(());
    }
    println!("{:<30} {:>10}  {:<16}  PATH", "NAME", "SIZE", "HASH");
    for s in shares {
        println!(
            "{:<30} {:>10}  {:<16}  {}{}",
            s.name,
            HumanBytes(s.size).to_string(),
            &s.hash[..16],
            s.path,
            if s.downloaded { " (downloaded)" } else { "" }
        );
    }
    Ok(())
}

pub async fn unshare(home: &Path, json: bool, file: String) -> Result<(), CliError> {
    let v = call(home, &Request::Unshare { file }).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let s: ShareView = parse(v)?;
    println!("no longer sharing {:?} ({})", s.name, s.path);
    Ok(())
}

pub async fn search(home: &Path, json: bool, query: String) -> Result<(), CliError> {
    let v = call(
        home,
        &Request::Search {
            query: query.clone(),
        },
    )
    .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let found: Vec<SearchView> = parse(v)?;
    if found.is_empty() {
        println!("no shared file has {query:?} in its name");
        return Ok(());
    }
    println!("{:<30} {:>10}  {:<24}  HASH", "NAME", "SIZE", "PROVIDERS");
    for f in found {
        // A provider that names the file differently says so.
        let mut who: Vec<String> = f
            .providers
            .iter()
            .map(|p| match p.file_name == f.name {
                true => p.name.clone(),
                false => format!("{} (as {:?})", p.name, p.file_name),
            })
            .collect();
        if f.offline_providers > 0 {
            who.push(format!("+{} offline", f.offline_providers));
        }
        if who.is_empty() {
            who.push("none online".into());
        }
        println!(
            "{:<30} {:>10}  {:<24}  {}",
            f.name,
            HumanBytes(f.size).to_string(),
            who.join(", "),
            f.hash
        );
    }
    Ok(())
}

pub async fn files(home: &Path, json: bool, peer: String) -> Result<(), CliError> {
    let v = call(home, &Request::Files { peer: peer.clone() }).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let list: Vec<FileView> = parse(v)?;
    if list.is_empty() {
        println!("{peer} shares nothing");
        return Ok(());
    }
    println!("{:<30} {:>10}  HASH", "NAME", "SIZE");
    for f in list {
        println!(
            "{:<30} {:>10}  {}",
            f.name,
            HumanBytes(f.size).to_string(),
            f.hash
        );
    }
    Ok(())
}

/// How `get` shows its progress.
enum Progress {
    Bar(ProgressBar),
    /// A line as soon as bytes flow, then one a second.
    Lines {
        last: Option<Instant>,
        first_done: Option<u64>,
    },
    Quiet,
}

impl Progress {
    fn new(json: bool) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("the template is valid"),
            );
            Progress::Bar(bar)
        } else if json {
            Progress::Quiet
        } else {
            Progress::Lines {
                last: None,
                first_done: None,
            }
        }
    }

    fn update(&mut self, done: u64, size: u64, providers: usize, started: Instant) {
        let from = format!(
            "from {providers} provider{}",
            if providers == 1 { "" } else { "s" }
        );
        match self {
            Progress::Bar(bar) => {
                bar.set_length(size);
                bar.set_position(done);
                bar.set_message(from);
            }
            Progress::Lines { last, first_done } => {
                let first = *first_done.get_or_insert(done);
                if done == first || last.is_some_and(|l| l.elapsed() < Duration::from_secs(1)) {
                    return;
                }
                *last = Some(Instant::now());
                let rate = (done - first) as f64 / started.elapsed().as_secs_f64().max(0.001);
                println!(
                    "{} of {} ({:.0}%), {}/s, {from}",
                    HumanBytes(done),
                    HumanBytes(size),
                    100.0 * done as f64 / size.max(1) as f64,
                    HumanBytes(rate as u64)
                );
            }
            Progress::Quiet => {}
        }
    }

    fn notice(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.suspend(|| eprintln!("{text}")),
            _ => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

pub async fn get(
    home: &Path,
    json: bool,
    file: String,
    output: &Path,
    force: bool,
) -> Result<(), CliError> {
    let dir = absolute(output)?;
    let mut client = connect(home).await?;
    let first = client
        .request(&Request::Get {
            file,
            dir: dir.display().to_string(),
            force,
        })
        .await?;
    let started = Instant::now();
    let mut stop = StopSignal::install()?;
    let mut progress = Progress::new(json);
    let mut reply = Some(first);
    let result = loop {
        let r = match reply.take() {
            Some(r) => r,
            None => {
                let next = tokio::select! {
                    _ = stop.wait() => {
                        progress.finish();
                        // The node saves what was verified as it lets go.
                        client.hang_up(Duration::from_secs(2)).await;
                        return Err(CliError::new(
                            "stopped",
                            Some("run the same command again: it continues from what was already verified".into()),
                        ));
                    }
                    r = client.next_reply() => r?,
                };
                next.ok_or_else(|| CliError::new("the node stopped during the download", None))?
            }
        };
        let v = match data(r) {
            Ok(v) => v,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        match serde_json::from_value::<GetUpdate>(v.clone()) {
            Ok(GetUpdate::Progress {
                done,
                size,
                providers,
            }) => progress.update(done, size, providers, started),
            Ok(GetUpdate::Notice(text)) => progress.notice(&text),
            Err(_) => break v,
        }
    };
    progress.finish();
    if json {
        print_json(&result);
        return Ok(());
    }
    let g: GetView = parse(result)?;
    let secs = (g.elapsed_ms as f64 / 1000.0).max(0.001);
    println!(
        "saved {} ({}, verified) in {:.1} s, {}/s from {}",
        g.path,
        HumanBytes(g.size),
        secs,
        HumanBytes(((g.size - g.resumed_bytes) as f64 / secs) as u64),
        if g.providers.is_empty() {
            "nobody (already complete)".into()
        } else {
            g.providers.join(", ")
        }
    );
    Ok(())
}
