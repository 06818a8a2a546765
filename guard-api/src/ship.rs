//! Ships a host's events file (the spool) to guard-collector: says hello,
//! learns where the collector's copy of this host's stream ends, checks
//! that the file continues that stream, and sends every line from there,
//! following the file as guardd appends to it. Lines stay in the file
//! whatever happens; a lost connection resumes from the collector's end.

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
    tls::Target,
};

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

/// The events file, read from where the collector's copy ends.
struct Spool {
    reader: BufReader<tokio::fs::File>,
    /// Where the next line starts in the file.
    offset: u64,
    /// Whether guardd still appends to the file.
    following: bool,
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
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut spool = Spool {
            reader: BufReader::new(file),
            offset: 0,
            following,
            first: None,
        };
        let mut last_seen = 0;
        while let Some(line) = spool.read_line().await? {
            let Some((seq, hash)) = chain::seal_of(&line) else {
                bail!(
                    "{} holds a line that is not a sealed record after {last_seen}",
                    path.display()
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

    /// The next complete line, or `None` at the end of the file. A partial
    /// last line is read again from its start until its newline arrives:
    /// guardd cuts a line it could not finish (a full disk), and the next
    /// line then starts where it started.
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
                return Ok(Some(line));
            }
            if n == 0 {
                if line.is_empty() || !self.following {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                self.reader
                    .seek(std::io::SeekFrom::Start(self.offset))
                    .await?;
                line.clear();
            }
        }
    }

    /// Sends lines until the file ends (`written` is `None`) or the stream
    /// closes; returns the last sequence number sent.
    async fn send(
        mut self,
        lines: mpsc::Sender<pb::IngestRequest>,
        mut written: Option<watch::Receiver<u64>>,
    ) -> anyhow::Result<u64> {
        let mut sent = 0;
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
            if let Some((seq, _)) = chain::seal_of(&line) {
                sent = seq;
            }
            let request = pb::IngestRequest {
                item: Some(pb::ingest_request::Item::Line(line)),
            };
            if lines.send(request).await.is_err() {
                return Ok(sent);
            }
        }
    }
}
