//! `get`: finding a file's providers, asking each for a link when there is
//! none ([`LinkHandle::ensure_link`](crate::handle::LinkHandle::ensure_link)),
//! running the [`Plan`] with workers on every provider, and moving the verified
//! file into place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use burrow_proto::files::{safe_file_name, BlobHash, FileEntry, ShareName};
use burrow_proto::rendezvous::{Query, TrackerEntry};
use burrow_proto::NodeId;
use burrow_store::{StoredDownload, StoredShare};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::fetch::{prove_size, PieceError};
use super::place::place;
use super::plan::Plan;
use super::provide::{dial_files, link_with, provide, ProviderEnd};
use super::Files;
use crate::api::{GetUpdate, GetView};
use crate::error::GetError;

/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often verified progress is made durable.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Sizes claimed for one hash that `get` tries to prove at once: the tracker
/// lists most-offered first, and a hash has one true size.
const MAX_CLAIMS: usize = 4;
/// Providers of one claim asked for its proof, one after another.
const PROVERS_PER_CLAIM: usize = 3;

/// Removes the download from the node's list and makes its progress durable,
/// however `get` ends (finished, failed, or dropped because the client left).
struct Running {
    files: Arc<Files>,
    plan: Arc<Plan>,
    stored: StoredDownload,
}

impl Running {
    /// Stores the bitmap of verified groups, if it changed. Blocks: call from a
    /// blocking thread.
    fn flush(files: &Files, plan: &Plan, stored: &StoredDownload) {
        if let Some(bits) = plan.progress() {
            let mut d = stored.clone();
            d.verified = bits;
            let now = burrow_proto::time::unix_ms(SystemTime::now());
            let mut store = files
                .link
                .store()
                .lock()
                .expect("store lock is never poisoned");
            if let Err(e) = store.put_download(&d, now) {
                warn!(error = %e, "could not record download progress");
            }
        }
    }

    /// [`Running::flush`] on a blocking thread.
    async fn flush_async(&self) {
        let (files, plan, stored) = (self.files.clone(), self.plan.clone(), self.stored.clone());
        let _ = tokio::task::spawn_blocking(move || Running::flush(&files, &plan, &stored)).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.plan.stop.store(true, Ordering::Relaxed);
        // Usually a no-op (the last flush ran already); after a cancelled `get`
        // it saves the last second's progress.
        Running::flush(&self.files, &self.plan, &self.stored);
        self.files.downloads().remove(&self.plan.hash);
    }
}

impl Files {
    /// Downloads `file` (a hash, or a name the tracker knows) from every online
    /// provider into `dir`, reporting on `updates`. Resumes an interrupted
    /// download of the same hash.
    pub async fn get(
        self: &Arc<Self>,
        file: &str,
        dir: &str,
        force: bool,
        updates: mpsc::Sender<GetUpdate>,
    ) -> Result<GetView, GetError> {
        let started = Instant::now();
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            return Err(GetError::File(format!(
                "{} is not an absolute path",
                dir.display()
            )));
        }
        let (entry, providers) = self.choose(file, &updates).await?;
        let (hash, name, size) = (entry.file.hash, entry.file.name, entry.file.size);
        let target = dir.join(safe_file_name(name.as_str()));
        if !force && target.symlink_metadata().is_ok() {
            return Err(GetError::Exists(target.display().to_string()));
        }
        let running = self.start(hash, &name, size).await?;
        let plan = running.plan.clone();
        info!(hash = %hash.short(), %name, size, providers = providers.len(), resumed = plan.resumed, "download starting");
        if plan.resumed > 0 {
            let _ = updates
                .send(GetUpdate::Notice(format!(
                    "resuming: {} of {} bytes already verified",
                    plan.resumed, size
                )))
                .await;
        }
        let ends = self.run(&plan, &running, providers, &updates).await;
        tracing::debug!(hash = %hash.short(), elapsed_ms = started.elapsed().as_millis() as u64, "providers done");
        running.flush_async().await;
        finished(&plan, size)?;
        let placed = self.land(&plan, &name, target, force).await?;
        tracing::debug!(hash = %hash.short(), elapsed_ms = started.elapsed().as_millis() as u64, "synced and in place");
        let elapsed_ms = started.elapsed().as_millis() as u64;
        info!(hash = %hash.short(), path = %placed.display(), elapsed_ms, "download finished");
        Ok(GetView {
            hash: hash.to_string(),
            name: name.to_string(),
            size,
            path: placed.display().to_string(),
            providers: ends
                .iter()
                .filter(|e| e.sent > 0)
                .map(|e| e.name.clone())
                .collect(),
            elapsed_ms,
            resumed_bytes: plan.resumed,
        })
    }

    /// Which file `file` names, with its size proven, and who else offers it.
    async fn choose(
        self: &Arc<Self>,
        file: &str,
        updates: &mpsc::Sender<GetUpdate>,
    ) -> Result<(TrackerEntry, Vec<(NodeId, String)>), GetError> {
        let claims = self.find(file).await?;
        let hash = claims[0].file.hash;
        let have = self.link.with_store(move |s| s.share(&hash)).await?;
        if let Some(share) = have.filter(super::unchanged) {
            return Err(GetError::AlreadyHave(share.path.display().to_string()));
        }
        let entry = self.prove(claims, updates).await?;
        let providers = entry
            .providers
            .iter()
            .filter(|p| p.peer.id != self.link.id())
            .map(|p| (p.peer.id, p.peer.name.to_string()))
            .collect();
        Ok((entry, providers))
    }

    /// Starts downloading `hash` (refused if it is already): its partial file,
    /// and what records its progress.
    async fn start(
        self: &Arc<Self>,
        hash: BlobHash,
        name: &ShareName,
        size: u64,
    ) -> Result<Running, GetError> {
        if !self.downloads().insert(hash) {
            return Err(GetError::AlreadyDownloading(name.to_string()));
        }
        let plan = match self.open_plan(hash, size).await {
            Ok(plan) => plan,
            Err(e) => {
                self.downloads().remove(&hash);
                return Err(e);
            }
        };
        Ok(Running {
            files: self.clone(),
            plan,
            stored: StoredDownload {
                hash,
                name: name.clone(),
                size,
                verified: Vec::new(),
                started_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
            },
        })
    }

    /// Puts a complete download in place (see [`place`]), forgets its
    /// progress, and shares it on if the node does that.
    async fn land(
        &self,
        plan: &Arc<Plan>,
        name: &ShareName,
        target: PathBuf,
        force: bool,
    ) -> Result<PathBuf, GetError> {
        let home = self.link.home().to_path_buf();
        let plan2 = plan.clone();
        let placed = tokio::task::spawn_blocking(move || place(&plan2, &home, &target, force))
            .await
            .map_err(|e| GetError::File(e.to_string()))??;
        let hash = plan.hash;
        self.link
            .with_store(move |s| s.remove_download(&hash))
            .await?;
        if self.link.config().reshare {
            self.reshare(&placed, hash, name.clone(), plan.size).await;
        }
        Ok(placed)
    }

    /// Opens the partial download of `hash`, continuing an earlier one of the
    /// same size.
    async fn open_plan(&self, hash: BlobHash, size: u64) -> Result<Arc<Plan>, GetError> {
        let stored = self.link.with_store(move |s| s.download(&hash)).await?;
        let bits = stored.filter(|d| d.size == size).map(|d| d.verified);
        let partial = super::partial_dir(self.link.home());
        tokio::task::spawn_blocking(move || Plan::open(&partial, hash, size, bits))
            .await
            .map_err(|e| GetError::File(e.to_string()))?
            .map(Arc::new)
            .map_err(|e| GetError::File(format!("cannot create the partial file: {e}")))
    }

    /// The tracker's entries for the file `file` means (a hash, or an exact
    /// share name that names one file): one per size its providers claim,
    /// most providers first.
    async fn find(&self, file: &str) -> Result<Vec<TrackerEntry>, GetError> {
        let wanted = file.trim();
        let hash = match wanted.parse::<BlobHash>() {
            Ok(hash) => hash,
            Err(_) => {
                let found = self.link.tracker(Query::Name(wanted.to_string())).await?;
                let mut hashes: Vec<BlobHash> = found
                    .iter()
                    .filter(|e| {
                        e.file.name.as_str() == wanted
                            || e.providers.iter().any(|p| p.name.as_str() == wanted)
                    })
                    .map(|e| e.file.hash)
                    .collect();
                hashes.sort();
                hashes.dedup();
                match hashes.as_slice() {
                    [] => return Err(GetError::UnknownFile(wanted.to_string())),
                    [one] => *one,
                    many => {
                        return Err(GetError::AmbiguousFile(
                            wanted.to_string(),
                            many.iter()
                                .map(|h| h.short())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ))
                    }
                }
            }
        };
        let claims = self.link.tracker(Query::Hash(hash)).await?;
        if claims.is_empty() {
            return Err(GetError::UnknownFile(wanted.to_string()));
        }
        Ok(claims)
    }

    /// Which of the sizes claimed for one hash is true. Asks providers of
    /// every claim at once (at most [`MAX_CLAIMS`] claims, up to
    /// [`PROVERS_PER_CLAIM`] providers each, in turn) for the file's last
    /// chunk group ([`prove_size`]), and takes the first claim proved. Nothing
    /// is allocated before that, so a claimed size costs nothing until the
    /// data backs it; a provider whose data fails the hash is struck, and one
    /// that merely claims another size is not.
    async fn prove(
        self: &Arc<Self>,
        claims: Vec<TrackerEntry>,
        updates: &mpsc::Sender<GetUpdate>,
    ) -> Result<TrackerEntry, GetError> {
        let name = claims[0].file.name.to_string();
        let offline = claims.iter().map(|c| c.offline).sum();
        let me = self.link.id();
        let mut tries = tokio::task::JoinSet::new();
        for claim in claims.into_iter().take(MAX_CLAIMS) {
            if claim.file.size > burrow_proto::files::MAX_FILE_SIZE {
                continue;
            }
            let provers: Vec<(NodeId, String)> = claim
                .providers
                .iter()
                .filter(|p| p.peer.id != me)
                .take(PROVERS_PER_CLAIM)
                .map(|p| (p.peer.id, p.peer.name.to_string()))
                .collect();
            if provers.is_empty() {
                continue;
            }
            let (node, updates) = (self.clone(), updates.clone());
            tries.spawn(async move {
                let mut why_not = Vec::new();
                for (id, who) in provers {
                    let who = format!("{who} ({})", id.short());
                    if let Err(why) = link_with(&node.link, id, &who, &updates).await {
                        why_not.push(format!("{who} {why}"));
                        continue;
                    }
                    let conn = match dial_files(&node.link, id).await {
                        Ok(c) => c,
                        Err(e) => {
                            why_not.push(format!("lost {who}: {e}"));
                            continue;
                        }
                    };
                    let proved = prove_size(&conn, claim.file.hash, claim.file.size).await;
                    conn.close(burrow_net::Close::Done.code(), b"done");
                    let e = match proved {
                        Ok(()) => return Ok(claim),
                        Err(e) => e,
                    };
                    let mut text = what_happened(&who, &e);
                    if let PieceError::Lied(_) = e {
                        node.link
                            .strike(id, "sent data that does not match its hash");
                        text.push_str("; not asked again");
                        let _ = updates.send(GetUpdate::Notice(text.clone())).await;
                    }
                    why_not.push(text);
                }
                Err(why_not)
            });
        }
        if tries.is_empty() {
            return Err(GetError::NoProviders { name, offline });
        }
        let mut why_not = Vec::new();
        while let Some(done) = tries.join_next().await {
            match done {
                Ok(Ok(claim)) => {
                    tries.abort_all();
                    return Ok(claim);
                }
                Ok(Err(reasons)) => why_not.extend(reasons),
                Err(e) => why_not.push(e.to_string()),
            }
        }
        Err(GetError::Download(format!(
            "no provider could show it has {name}: {}",
            why_not.join("; ")
        )))
    }

    /// Runs the download's workers on every provider until the file is complete
    /// or no provider is left.
    async fn run(
        self: &Arc<Self>,
        plan: &Arc<Plan>,
        running: &Running,
        providers: Vec<(NodeId, String)>,
        updates: &mpsc::Sender<GetUpdate>,
    ) -> Vec<ProviderEnd> {
        let active = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for (id, name) in providers {
            let span = tracing::info_span!("provider", peer = %id.short());
            tasks.spawn(tracing::Instrument::instrument(
                provide(
                    self.clone(),
                    plan.clone(),
                    id,
                    name,
                    active.clone(),
                    updates.clone(),
                ),
                span,
            ));
        }
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut ends = Vec::new();
        loop {
            tokio::select! {
                end = tasks.join_next() => match end {
                    None => break,
                    Some(Ok(end)) => {
                        if let Some(PieceError::Lied(_)) = &end.error {
                            self.link.strike(end.id, "sent data that does not match its hash");
                        }
                        if let Some(text) = describe(&end) {
                            let _ = updates.send(GetUpdate::Notice(text)).await;
                        }
                        ends.push(end);
                    }
                    Some(Err(e)) => warn!(error = %e, "a provider task failed"),
                },
                _ = progress.tick() => {
                    let _ = updates.try_send(GetUpdate::Progress {
                        done: plan.verified.load(Ordering::Relaxed),
                        size: plan.size,
                        providers: active.load(Ordering::Relaxed),
                    });
                }
                _ = flush.tick() => running.flush_async().await,
            }
        }
        let _ = updates.try_send(GetUpdate::Progress {
            done: plan.verified.load(Ordering::Relaxed),
            size: plan.size,
            providers: 0,
        });
        ends
    }

    /// After a download: offer the file too (unless turned off).
    async fn reshare(&self, path: &Path, hash: BlobHash, name: ShareName, size: u64) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let share = StoredShare {
            hash,
            name: name.clone(),
            path: path.to_path_buf(),
            size,
            mtime_ns: super::mtime_ns(&meta),
            downloaded: true,
            added_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
        };
        if self
            .link
            .with_store(move |s| s.put_share(&share))
            .await
            .is_ok()
        {
            super::offer(&self.link, vec![FileEntry { hash, name, size }]);
        }
    }
}

/// Whether the download is complete; if not, why it stopped.
fn finished(plan: &Plan, size: u64) -> Result<(), GetError> {
    let fatal = plan
        .fatal
        .lock()
        .expect("fatal lock is never poisoned")
        .clone();
    if let Some(fatal) = fatal {
        return Err(GetError::Download(fatal));
    }
    if !plan.complete() {
        let done = plan.verified.load(Ordering::Relaxed);
        return Err(GetError::Download(format!(
            "no provider left to download from; {done} of {size} bytes are verified and kept"
        )));
    }
    Ok(())
}

/// What a person should hear about a provider that stopped.
fn describe(end: &ProviderEnd) -> Option<String> {
    let who = format!("{} ({})", end.name, end.id.short());
    let e = end.error.as_ref()?;
    let what = what_happened(&who, e);
    Some(match e {
        PieceError::Lied(_) => {
            format!("{what}; dropped from this download, carrying on with the others")
        }
        PieceError::Gone(_) => format!("{what}; carrying on without it"),
        PieceError::Lost(_) => format!("{what}; carrying on with the others"),
        PieceError::Disk(_) => what,
    })
}

/// What went wrong with provider `who`, in words: how every notice about it
/// starts.
fn what_happened(who: &str, e: &PieceError) -> String {
    match e {
        PieceError::Lied(why) | PieceError::Gone(why) => format!("{who} {why}"),
        PieceError::Lost(why) => format!("lost {who}: {why}"),
        PieceError::Disk(e) => format!("cannot write the download: {e}"),
    }
}
