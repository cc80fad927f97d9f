//! The thin-client commands: each sends one request to the node's control socket
//! and prints the reply for a person, or as JSON with `--json`.

use std::path::Path;

use burrow_node::api::{
    ContactView, MessageView, PeerView, Reply, Request, SettingsView, StatusView,
};
use burrow_node::control::{ClientError, ControlClient};
use serde::de::DeserializeOwned;

use crate::stop::StopSignal;
use crate::CliError;

/// The request operations.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Connect,
    Accept,
    Reject,
    Cancel,
}

pub(crate) async fn connect(home: &Path) -> Result<ControlClient, CliError> {
    ControlClient::connect(home).await.map_err(|e| match e {
        ClientError::NoNode(_) => CliError::new(
            e,
            Some(format!(
                "start one with: burrow up --home {} --server <address> --name <name>",
                home.display()
            )),
        ),
        other => other.into(),
    })
}

/// Sends `req`; returns the data of a successful reply.
pub(crate) async fn call(home: &Path, req: &Request) -> Result<serde_json::Value, CliError> {
    let mut client = connect(home).await?;
    let reply = client.request(req).await?;
    data(reply)
}

pub(crate) fn data(reply: Reply) -> Result<serde_json::Value, CliError> {
    if reply.ok {
        Ok(reply.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(CliError::new(
            reply.error.unwrap_or_else(|| "the node refused".into()),
            reply.hint,
        ))
    }
}

pub(crate) fn parse<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v)
        .map_err(|e| CliError::new(format!("unexpected reply from the node: {e}"), None))
}

pub(crate) fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values print")
    );
}

pub async fn status(home: &Path, json: bool) -> Result<(), CliError> {
    let v = call(home, &Request::Status).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let s: StatusView = parse(v)?;
    println!("name        {}", s.name);
    println!("id          {}", s.id);
    let link = if s.server.starts_with("none") {
        ""
    } else if s.server_connected {
        " (registered)"
    } else {
        " (reconnecting)"
    };
    println!("server      {}{link}", s.server);
    println!(
        "public addr {}",
        s.public_addr.as_deref().unwrap_or("unknown yet")
    );
    println!("local addr  {}", s.local_addr);
    if s.connections.is_empty() {
        println!("connections none");
    }
    for c in &s.connections {
        println!(
            "connection  {} {} via {}, rtt {:.1} ms",
            c.name.as_deref().unwrap_or(&c.peer[..8]),
            c.path,
            c.remote_addr,
            c.rtt_ms
        );
    }
    Ok(())
}

pub async fn nat(home: &Path, json: bool) -> Result<(), CliError> {
    let v = call(home, &Request::Nat).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let r: burrow_node::nat::NatReport = parse(v)?;
    let words = |b| {
        serde_json::to_value(b)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', "-")))
            .unwrap_or_default()
    };
    let family = |a: &std::net::SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
    println!("{}", family(&r.public_addr));
    println!(
        "public address  {}{}",
        r.public_addr,
        if r.behind_nat {
            " (behind a NAT)"
        } else {
            " (no NAT)"
        }
    );
    println!("mapping         {}", words(r.mapping));
    println!("filtering       {}", words(r.filtering));
    println!("new ports       {}", r.ports);
    match r.nat_hops {
        Some(1) => println!("NAT depth       1 hop (a home router)"),
        Some(n) => println!("NAT depth       {n} hops (NATs behind NATs, e.g. a carrier's)"),
        None if r.behind_nat => println!("NAT depth       unknown (no hop answered)"),
        None => {}
    }
    match (r.port_mapping, r.mapped_addr) {
        (Some(p), Some(a)) => println!("port mapping    {a} (granted by the router over {p})"),
        _ => println!("port mapping    none (the router granted none over PCP, NAT-PMP or UPnP)"),
    }
    println!("\n{}", r.summary);
    if let Some(o) = &r.other_family {
        println!("\n{}", if o.family == "ipv6" { "IPv6" } else { "IPv4" });
        match o.public_addr {
            Some(a) => println!(
                "public address  {a}{}",
                if o.behind_nat {
                    " (behind a NAT)"
                } else {
                    " (no NAT)"
                }
            ),
            None => println!("public address  none"),
        }
        println!("\n{}", o.summary);
    }
    Ok(())
}

pub async fn peers(home: &Path, json: bool) -> Result<(), CliError> {
    let v = call(home, &Request::Peers).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let peers: Vec<PeerView> = parse(v)?;
    if peers.is_empty() {
        println!("nobody else is online");
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<8} {:<16} RTT",
        "NAME", "ID", "ONLINE", "CONNECTION"
    );
    for p in peers {
        // The ID column is beside every name; one nobody vouches for (a
        // serverless peer's own claim) is marked as such.
        let name = match (&p.name, p.name_verified) {
            (Some(n), true) => n.clone(),
            (Some(n), false) => format!("{n} (claimed)"),
            (None, _) => "?".into(),
        };
        let connection = match p.family.as_deref() {
            Some("ipv6") => format!("{} (IPv6)", p.connection),
            Some(_) => format!("{} (IPv4)", p.connection),
            None => p.connection.to_string(),
        };
        println!(
            "{:<20} {:<10} {:<8} {:<16} {}",
            name,
            &p.id[..8],
            if p.online { "yes" } else { "no" },
            connection,
            p.rtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

pub async fn request_op(home: &Path, json: bool, op: Op, peer: String) -> Result<(), CliError> {
    let req = match op {
        Op::Connect => Request::Connect { peer: peer.clone() },
        Op::Accept => Request::Accept { peer: peer.clone() },
        Op::Reject => Request::Reject { peer: peer.clone() },
        Op::Cancel => Request::Cancel { peer: peer.clone() },
    };
    let v = call(home, &req).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    match op {
        Op::Connect => println!(
            "asked {peer} to connect; waiting for them to accept (burrow cancel {peer} withdraws it)"
        ),
        Op::Accept => println!("accepted {peer}; they are connecting (burrow peers shows the link)"),
        Op::Reject => println!("rejected {peer}'s request"),
        Op::Cancel => println!("withdrew your request to {peer}"),
    }
    Ok(())
}

pub async fn send(home: &Path, json: bool, peer: String, text: String) -> Result<(), CliError> {
    let v = call(
        home,
        &Request::Send {
            peer: peer.clone(),
            text,
        },
    )
    .await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let m: MessageView = parse(v)?;
    println!("delivered to {peer} (message {})", &m.id[..8]);
    Ok(())
}

/// One message as a line for a person.
pub fn message_line(m: &MessageView) -> String {
    let when = m
        .received_at
        .get(..19)
        .unwrap_or(&m.received_at)
        .replace('T', " ");
    match (m.from_server, m.everyone) {
        (false, _) => format!(
            "[{when}] {}: {}",
            burrow_node::forum::shown(&m.from_name, &m.from, m.from_verified),
            m.text
        ),
        (true, true) => format!("[{when}] notice from the server to everyone: {}", m.text),
        (true, false) => format!("[{when}] notice from the server to you: {}", m.text),
    }
}

pub async fn contacts(
    home: &Path,
    json: bool,
    add: Option<String>,
    remove: Option<String>,
) -> Result<(), CliError> {
    let v = call(home, &Request::Contacts { add, remove }).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let list: Vec<ContactView> = parse(v)?;
    if list.is_empty() {
        println!("no contacts (burrow contacts add <peer>)");
    }
    for c in list {
        println!(
            "{:<20} {}  {}",
            c.name,
            &c.id[..8],
            if c.online { "online" } else { "offline" }
        );
    }
    Ok(())
}

pub async fn settings(home: &Path, json: bool, incoming: Option<String>) -> Result<(), CliError> {
    let v = call(home, &Request::Settings { incoming }).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let s: SettingsView = parse(v)?;
    let meaning = match s.incoming.as_str() {
        "ask" => "contacts are accepted; others wait for burrow accept / reject",
        "contacts-only" => "contacts are accepted; others are refused without asking",
        _ => "every request is accepted",
    };
    println!("incoming {} ({meaning})", s.incoming);
    Ok(())
}

pub async fn messages(home: &Path, json: bool, follow: bool, limit: usize) -> Result<(), CliError> {
    let mut client = connect(home).await?;
    let first = data(
        client
            .request(&Request::Messages {
                limit: Some(limit),
                follow,
            })
            .await?,
    )?;
    if json && !follow {
        print_json(&first);
        return Ok(());
    }
    let history: Vec<MessageView> = parse(first.clone())?;
    if json {
        // Follow mode as JSON Lines: the history list, then one object per message.
        println!("{first}");
    } else if history.is_empty() && !follow {
        println!("no messages yet");
    }
    if !json {
        for m in &history {
            println!("{}", message_line(m));
        }
    }
    if !follow {
        return Ok(());
    }
    let mut stop = StopSignal::install()?;
    loop {
        let reply = tokio::select! {
            _ = stop.wait() => return Ok(()),
            r = client.next_reply() => r?,
        };
        let Some(reply) = reply else {
            return Err(CliError::new("the node stopped", None));
        };
        let v = data(reply)?;
        if json {
            println!("{v}");
        } else {
            println!("{}", message_line(&parse(v)?));
        }
    }
}
