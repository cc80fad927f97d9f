//! The tunnel commands: expose, unexpose, services, forward, unforward and
//! pipe. Thin clients of the node; `pipe` carries stdin and stdout over the
//! control socket once the node has the stream.

use std::path::Path;

use burrow_node::api::{ExposureView, ForwardView, OfferedView, Request};
use burrow_node::NodeEvent;
use indicatif::HumanBytes;
use tokio::io::AsyncWriteExt;

use crate::client::{call, connect, data, parse, print_json};
use crate::CliError;

/// `burrow expose [NAME ADDR --allow ...]`: exposes a service, or lists them.
pub async fn expose(
    home: &Path,
    json: bool,
    service: Option<(String, String)>,
    udp: bool,
    allow: Vec<String>,
) -> Result<(), CliError> {
    let Some((name, addr)) = service else {
        let v = call(home, &Request::Exposed).await?;
        if json {
            print_json(&v);
            return Ok(());
        }
        let list: Vec<ExposureView> = parse(v)?;
        if list.is_empty() {
            println!("you expose nothing (burrow expose <name> <addr> --allow <peer>)");
        }
        for e in list {
            println!("{}", exposure_line(&e));
        }
        return Ok(());
    };
    let v = call(
        home,
        &Request::Expose {
            name,
            addr,
            udp,
            allow,
        },
    )
    .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let e: ExposureView = parse(v)?;
    println!("exposing {}", exposure_line(&e));
    Ok(())
}

fn exposure_line(e: &ExposureView) -> String {
    let mut who = e.allow.clone();
    if e.contacts {
        who.push("your contacts".into());
    }
    format!(
        "{} ({} {}) to {}, {} open",
        e.name,
        e.transport,
        e.addr,
        who.join(", "),
        plural(e.connections, "connection")
    )
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

pub async fn unexpose(home: &Path, json: bool, name: String) -> Result<(), CliError> {
    let v = call(home, &Request::Unexpose { name: name.clone() }).await?;
    if json {
        print_json(&v);
    } else {
        println!("no longer exposing {name}");
    }
    Ok(())
}

pub async fn services(home: &Path, json: bool, peer: String) -> Result<(), CliError> {
    let v = call(home, &Request::Services { peer: peer.clone() }).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let list: Vec<OfferedView> = parse(v)?;
    if list.is_empty() {
        println!("{peer} exposes nothing to you");
    }
    for o in list {
        println!("{peer}/{} ({})", o.name, o.transport);
    }
    Ok(())
}

/// `burrow forward [TARGET LISTEN]`: makes a forward, or lists them.
pub async fn forward(
    home: &Path,
    json: bool,
    forward: Option<(String, String)>,
) -> Result<(), CliError> {
    let Some((target, listen)) = forward else {
        let v = call(home, &Request::Forwards).await?;
        if json {
            print_json(&v);
            return Ok(());
        }
        let list: Vec<ForwardView> = parse(v)?;
        if list.is_empty() {
            println!("no forwards (burrow forward <peer>/<service> <local address>)");
        }
        for f in list {
            println!("{}", forward_line(&f));
        }
        return Ok(());
    };
    let v = call(home, &Request::Forward { target, listen }).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let f: ForwardView = parse(v)?;
    println!(
        "forwarding {} to {}/{} ({})",
        f.listen, f.peer, f.service, f.transport
    );
    Ok(())
}

fn forward_line(f: &ForwardView) -> String {
    let what = if f.transport == "udp" {
        "flow"
    } else {
        "connection"
    };
    let state = match &f.error {
        Some(e) => format!("NOT LISTENING: {e}"),
        None => format!(
            "{} open, {} in all, {} out, {} back",
            plural(f.open, what),
            f.total,
            HumanBytes(f.bytes_out),
            HumanBytes(f.bytes_back)
        ),
    };
    format!(
        "{} → {}/{} ({}): {state}",
        f.listen, f.peer, f.service, f.transport
    )
}

pub async fn unforward(home: &Path, json: bool, listen: String) -> Result<(), CliError> {
    let v = call(
        home,
        &Request::Unforward {
            listen: listen.clone(),
        },
    )
    .await?;
    if json {
        print_json(&v);
    } else {
        println!("no longer forwarding {listen}");
    }
    Ok(())
}

/// `burrow pipe peer/service`: stdin to the service, the service to stdout
/// (an ssh `ProxyCommand`). Ends when the service closes its side.
pub async fn pipe(home: &Path, target: String) -> Result<(), CliError> {
    let mut client = connect(home).await?;
    let reply = client.request(&Request::Pipe { target }).await?;
    data(reply)?;
    let (mut from_node, mut to_node) = client.into_stream();
    let up = async {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_node).await;
        let _ = to_node.shutdown().await;
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let r = tokio::io::copy(&mut from_node, &mut stdout).await;
        let _ = stdout.flush().await;
        r
    };
    // The service closing its side ends the pipe, whatever stdin does.
    tokio::select! {
        r = down => r.map(|_| ()).map_err(|e| CliError::new(format!("pipe: {e}"), None)),
        () = async { up.await; std::future::pending::<()>().await } => Ok(()),
    }
}

/// A tunnel event as a line for `burrow up`.
pub fn describe(event: &NodeEvent) -> Option<String> {
    Some(match event {
        NodeEvent::ForwardStarted {
            listen,
            target,
            transport,
        } => format!("forwarding {listen} to {target} ({transport})"),
        NodeEvent::ForwardCarried {
            listen,
            target,
            path,
            remote,
        } => format!("{listen} → {target}: carried {path} ({remote})"),
        NodeEvent::TunnelTrouble { text } => text.clone(),
        _ => return None,
    })
}

/// What `burrow up` says at start about exposures and forwards.
pub fn at_start(exposed: &[ExposureView], forwards: &[ForwardView]) {
    for e in exposed {
        println!("exposing {}", exposure_line(e));
    }
    for f in forwards {
        match &f.error {
            Some(e) => println!(
                "cannot forward {} to {}/{}: {e}",
                f.listen, f.peer, f.service
            ),
            None => println!(
                "forwarding {} to {}/{} ({})",
                f.listen, f.peer, f.service, f.transport
            ),
        }
    }
}
