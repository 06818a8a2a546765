//! Ships a host's spool (its events file, and the files rotated out of it)
//! to guard-collector: says hello, learns where the collector's copy of
//! this host's stream ends, checks that the spool continues that stream,
//! and sends every line from there, following the events file as guardd
//! appends to it and rotates it. Lines stay in the spool whatever happens
//! (guardd deletes a rotated file once the collector acknowledged it); a
//! lost connection resumes from the collector's end.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncSeekExt as _, BufReader},
    sync::{mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::{
    chain,
    pb::{self, ingest_service_client::IngestServiceClient},
    spool,
    tls::Target,
};

async fn open(path: &std::path::Path) -> anyhow::Result<tokio::fs::File> {
    tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))
}

pub struct Shipper {
    /// The events file.
    pub events: PathBuf,
    /// The collector, and how to reach it.
    pub collector: Target,
    pub host: String,
    /// guardd's last written sequence number, to follow the file; `None`
    /// to ship what the file holds and stop.
    pub written: Option<watch::Receiver<u64>>,
    /// The collector's latest acknowledgement.
    pub acked: watch::Sender<u64>,
}

/// Bytes read from the spool at a time: each read of a tokio file is a
/// trip to a blocking thread.
const READ_BUFFER: usize = 1 << 20;

/// Waits between connection attempts, doubling up to the last.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(15),
];

impl Shipper {
    /// Ships for as long as guardd runs, reconnecting after failures.
    pub async fn run(mut self) {
        let mut attempt = 0;
        loop {
            match self.session().await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    warn!(collector = %self.collector.url(), "shipping records: {e:#}");
                    attempt += 1;
                }
            }
            tokio::time::sleep(BACKOFF[attempt.min(BACKOFF.len() - 1)]).await;
        }
    }

    /// Ships the file's lines once and returns the last acknowledged
    /// sequence number (`guardctl audit ship`).
    pub async fn ship_file(mut self) -> anyhow::Result<u64> {
        self.session().await?;
        Ok(*self.acked.borrow())
    }

    /// One connection: hello, resume, lines and acknowledgements.
    async fn session(&mut self) -> anyhow::Result<()> {
        let mut client = IngestServiceClient::new(self.collector.connect().await?);
        let (lines, outgoing) = mpsc::channel(1024);
        lines
            .send(pb::IngestRequest {
                item: Some(pb::ingest_request::Item::Hello(pb::Hello {
                    host: self.host.clone(),
                })),
            })
            .await?;
        let mut responses = client
            .ingest(ReceiverStream::new(outgoing))
            .await
            .context("the collector refused the stream")?
            .into_inner();
        let Some(pb::IngestResponse {
            item: Some(pb::ingest_response::Item::Resume(resume)),
        }) = responses.message().await?
        else {
            bail!("the collector did not say where to resume");
        };
        let following = self.written.is_some();
        let spool = Spool::open(&self.events, &self.host, &resume, following).await?;
        info!(collector = %self.collector.url(), next_seq = resume.next_seq, "shipping records");
        let send = spool.send(lines, self.written.clone());
        let acked = &self.acked;
        let acks = async {
            while let Some(response) = responses.message().await? {
                if let Some(pb::ingest_response::Item::Ack(ack)) = response.item {
                    acked.send_replace(ack.seq);
                }
            }
            anyhow::Ok(())
        };
        tokio::pin!(send, acks);
        // Following, only an error ends the sending; shipping a file, the
        // end of the file does, and the collector then closes the stream
        // after acknowledging the rest.
        let sent = tokio::select! {
            sent = &mut send => sent?,
            closed = &mut acks => {
                closed?;
                bail!("the collector closed the stream at {}", *acked.borrow());
            }
        };
        acks.await?;
        let acked = *self.acked.borrow();
        if acked < sent {
            bail!("the collector closed the stream at {acked} of {sent}");
        }
        Ok(())
    }
}

/// The spool's lines, from where the collector's copy ends: the files
/// rotated out of the events file that hold lines from there on, oldest
/// first, then the events file, followed as guardd appends to it and
/// rotates it.
struct Spool {
    events: PathBuf,
    reader: BufReader<tokio::fs::File>,
    /// Which file `reader` reads.
    reading: PathBuf,
    /// Where the next line starts in it.
    offset: u64,
    /// Whether guardd still appends to the events file.
    following: bool,
    /// The file being read is no longer the events file (it was rotated,
    /// or is a rotated file): once read to its end, the next one follows.
    leaving: bool,
    /// The sequence number of the last line read.
    last_seq: u64,
    /// The first line to send, found while positioning.
    first: Option<(u64, String)>,
}

impl Spool {
    async fn open(
        path: &std::path::Path,
        host: &str,
        resume: &pb::Resume,
        following: bool,
    ) -> anyhow::Result<Self> {
        let mut spool = Spool {
            events: path.to_path_buf(),
            reader: BufReader::with_capacity(READ_BUFFER, open(path).await?),
            reading: path.to_path_buf(),
            offset: 0,
            following,
            leaving: false,
            // From the file that holds the collector's last line (to check
            // that this spool continues it) on.
            last_seq: resume.next_seq.saturating_sub(2),
            first: None,
        };
        spool.open_next().await?;
        let mut last_seen = 0;
        while let Some(line) = spool.read_line().await? {
            let Some((seq, hash)) = chain::seal_of(&line) else {
                bail!(
                    "{} holds a line that is not a sealed record after {last_seen}",
                    spool.reading.display()
                );
            };
            last_seen = seq;
            if seq + 1 == resume.next_seq && hex::encode(hash) != resume.last_chain {
                bail!(
                    "the collector holds another stream for host `{host}` (its record {seq} has a different chain hash): the events file was replaced, or two hosts share the name; set another --host-name"
                );
            }
            if seq >= resume.next_seq {
                spool.first = Some((seq, line));
                return Ok(spool);
            }
        }
        if last_seen + 1 < resume.next_seq {
            bail!(
                "the collector holds records of host `{host}` up to {} but {} ends at {last_seen}: the events file was replaced, or two hosts share the name; set another --host-name",
                resume.next_seq - 1,
                path.display()
            );
        }
        Ok(spool)
    }

    /// Opens the file that follows line `last_seq`: the oldest file rotated
    /// out after it, else the events file.
    async fn open_next(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let after = |last_seq| -> anyhow::Result<Option<PathBuf>> {
            Ok(spool::rotated(&self.events)
                .with_context(|| {
                    format!(
                        "cannot list the files rotated out of {}",
                        self.events.display()
                    )
                })?
                .into_iter()
                .find(|r| r.last_seq > last_seq)
                .map(|r| r.path))
        };
        loop {
            let older = after(self.last_seq)?;
            let path = older.clone().unwrap_or_else(|| self.events.clone());
            let file = open(&path).await?;
            // Rotated while being opened, the events file opened may be
            // newer than a file rotated out meanwhile: that one first.
            if older.is_none()
                && let Some(rotated) = after(self.last_seq)?
            {
                let (opened, meta) = (file.metadata().await?, tokio::fs::metadata(&rotated).await?);
                if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
                    continue;
                }
            }
            self.reader = BufReader::with_capacity(READ_BUFFER, file);
            self.reading = path;
            self.offset = 0;
            self.leaving = false;
            return Ok(());
        }
    }

    /// The next complete line, or `None` at the end of the spool. A partial
    /// last line of the events file is read again from its start until its
    /// newline arrives: guardd cuts a line it could not finish (a full
    /// disk), and the next line then starts where it started.
    async fn read_line(&mut self) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        loop {
            let n = self.reader.read_line(&mut line).await?;
            if line.ends_with('\n') {
                self.offset += line.len() as u64;
                line.pop();
                if line.is_empty() {
                    continue;
                }
                if let Some((seq, _)) = chain::seal_of(&line) {
                    self.last_seq = seq;
                }
                return Ok(Some(line));
            }
            if n > 0 {
                continue;
            }
            // The end of this file.
            if self.leaving {
                self.open_next().await?;
                line.clear();
                continue;
            }
            if !self.reading_events().await? {
                // A rotated file: guardd may have appended to it just
                // before renaming it, so it is read to its end once more.
                self.leaving = true;
            } else if !self.following {
                return Ok(None);
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.reader
                .seek(std::io::SeekFrom::Start(self.offset))
                .await?;
            line.clear();
        }
    }

    /// Whether the file being read is the events file. Also while the name
    /// is missing, in the moment between guardd's two renames.
    async fn reading_events(&self) -> anyhow::Result<bool> {
        use std::os::unix::fs::MetadataExt as _;
        let reading = self.reader.get_ref().metadata().await?;
        Ok(match tokio::fs::metadata(&self.events).await {
            Ok(events) => (events.dev(), events.ino()) == (reading.dev(), reading.ino()),
            Err(_) => true,
        })
    }

    /// Sends lines until the file ends (`written` is `None`) or the stream
    /// closes; returns the last sequence number sent.
    async fn send(
        mut self,
        lines: mpsc::Sender<pb::IngestRequest>,
        mut written: Option<watch::Receiver<u64>>,
    ) -> anyhow::Result<u64> {
        let mut sent = 0;
        // `last_seq` is the line's: `read_line` read it (also the first's).
        let mut next = self.first.take().map(|(_, line)| line);
        loop {
            let line = match next.take() {
                Some(line) => line,
                None => match self.read_line().await? {
                    Some(line) => line,
                    None => match &mut written {
                        None => return Ok(sent),
                        Some(written) => {
                            // Woken by guardd's next write, or after a
                            // while in case the wake-up was missed.
                            let _ = tokio::time::timeout(Duration::from_secs(1), written.changed())
                                .await;
                            continue;
                        }
                    },
                },
            };
            sent = self.last_seq;
            let request = pb::IngestRequest {
                item: Some(pb::ingest_request::Item::Line(line)),
            };
            if lines.send(request).await.is_err() {
                return Ok(sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;

    fn lines(chain: &mut Chain, n: usize) -> String {
        (0..n)
            .map(|_| {
                let json = format!("{{\"seq\":{}}}", chain.next_seq());
                String::from_utf8(chain.seal(json.into_bytes()).0).unwrap() + "\n"
            })
            .collect()
    }

    /// The shipper reads a spool from the collector's end through the
    /// rotated files, then follows the events file through rotations, two
    /// of them back to back, losing and repeating nothing.
    #[tokio::test]
    async fn the_spool_is_read_across_rotations_while_followed() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let mut chain = Chain::default();
        std::fs::write(spool::rotated_name(&events, 10), lines(&mut chain, 10)).unwrap();
        std::fs::write(spool::rotated_name(&events, 20), lines(&mut chain, 10)).unwrap();
        std::fs::write(&events, lines(&mut chain, 5)).unwrap();
        // The collector holds 1 to 12.
        let twelfth = std::fs::read_to_string(spool::rotated_name(&events, 20)).unwrap();
        let (_, hash) = chain::seal_of(twelfth.lines().nth(1).unwrap()).unwrap();
        let resume = pb::Resume {
            next_seq: 13,
            last_chain: hex::encode(hash),
        };
        let mut spool = Spool::open(&events, "h", &resume, true).await.unwrap();
        let mut seen = vec![spool.first.take().unwrap().0];
        let writer = {
            let events = events.clone();
            tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let append = |text: String| {
                    let mut file = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&events)
                        .unwrap();
                    file.write_all(text.as_bytes()).unwrap();
                };
                std::thread::sleep(Duration::from_millis(50));
                append(lines(&mut chain, 5)); // 26-30
                std::fs::rename(&events, spool::rotated_name(&events, 30)).unwrap();
                append(lines(&mut chain, 3)); // 31-33
                std::fs::rename(&events, spool::rotated_name(&events, 33)).unwrap();
                append(lines(&mut chain, 4)); // 34-37
            })
        };
        while seen.last() != Some(&37) {
            let line = tokio::time::timeout(Duration::from_secs(10), spool.read_line())
                .await
                .expect("every line arrives")
                .unwrap()
                .unwrap();
            seen.push(chain::seal_of(&line).unwrap().0);
        }
        writer.await.unwrap();
        assert_eq!(seen, (13..=37).collect::<Vec<_>>());
    }
}
