//! Connectors in a cluster: each configured on every node, run by one node at a time, the one
//! holding its lease ([`Leases`]). The others stand by and take over when the lease lapses.
//!
//! The holder renews every third of the lease time. It stops its source as soon as a renewal
//! is refused, or once no renewal succeeded for the lease time minus a margin (a node cut off
//! from NATS stops before another can take over). Whatever a stopped holder still tries to
//! write is refused by the checkpoint's compare-and-set, so every change lands once, in commit
//! order, whichever node wrote it.

use std::sync::Arc;
use std::time::Duration;

use tidings_connectors_core::{Source, SourceError};
use tokio_util::sync::CancellationToken;

use crate::log::{Acquired, ChannelLog, Leases};
use crate::source::SourceOptions;

/// How long before a lease would lapse its holder stops, at most (a quarter of the lease time
/// when that is shorter): room for a clock that runs a little fast and for the stop itself.
const MARGIN: Duration = Duration::from_secs(2);

/// How long a source that lost its lease may go on finishing the batch in flight.
const ABANDON_AFTER: Duration = Duration::from_secs(1);

/// Run `source` whenever this node holds its lease, until `shutdown` or a fatal error (which
/// it returns, after giving the lease up).
pub async fn run(
    mut source: Box<dyn Source>,
    opts: SourceOptions,
    log: Arc<dyn ChannelLog>,
    leases: Arc<dyn Leases>,
    shutdown: CancellationToken,
) -> Option<SourceError> {
    let ttl = leases.ttl();
    let every = ttl / 3;
    loop {
        // Stand by until the lease is ours. Shutdown first; then another try every third of
        // the lease time (a lapsed lease is taken within that of lapsing).
        let token = loop {
            match leases.acquire(&opts.name).await {
                Ok(Acquired::Taken(token)) => break token,
                Ok(Acquired::HeldBy(holder)) => opts
                    .status
                    .standby(Some(holder).filter(|h: &String| !h.is_empty())),
                Err(e) => {
                    tracing::warn!(connector = %opts.name, error = %e, "cannot reach the connector leases; retrying");
                    opts.status.standby(None);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(every) => {}
            }
        };
        tracing::info!(connector = %opts.name, lease = ?ttl, "took the connector's lease; running it here");
        let lost = shutdown.child_token();
        let keeper = tokio::spawn(keep(leases.clone(), opts.name.clone(), token, lost.clone()));
        let failure = {
            let running = crate::source::run(source.as_mut(), &opts, log.clone(), lost.clone());
            tokio::pin!(running);
            // On shutdown the runner finishes its batch; on a lost lease a batch still being
            // written (NATS cut off) is abandoned after a moment: were it to land later, the
            // checkpoint's compare-and-set refuses it.
            let abandon = async {
                lost.cancelled().await;
                if shutdown.is_cancelled() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(ABANDON_AFTER).await;
            };
            tokio::select! {
                failure = &mut running => failure,
                () = abandon => {
                    tracing::warn!(connector = %opts.name, "abandoned the batch in flight when the lease was lost");
                    None
                }
            }
        };
        lost.cancel();
        // Let go of the database's feed (a Postgres slot takes one reader at a time): the next
        // holder needs it.
        source.stop().await;
        let token = keeper.await.ok().flatten();
        if shutdown.is_cancelled() || failure.is_some() {
            if let Some(token) = token {
                leases.release(&opts.name, token).await;
            }
            return failure;
        }
        tracing::warn!(connector = %opts.name, "lost the connector's lease; standing by");
    }
}

/// Renew the lease until `stop` (then answer the last token) or until it is lost (then cancel
/// `stop` and answer `None`).
async fn keep(
    leases: Arc<dyn Leases>,
    name: String,
    mut token: u64,
    stop: CancellationToken,
) -> Option<u64> {
    let ttl = leases.ttl();
    let every = ttl / 3;
    let margin = MARGIN.min(ttl / 4);
    let mut renewed = tokio::time::Instant::now();
    loop {
        // Stop first; then the deadline past which this node may no longer hold the lease;
        // then the next renewal.
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Some(token),
            _ = tokio::time::sleep_until(renewed + ttl - margin) => {
                tracing::warn!(connector = %name, "no lease renewal succeeded in time; stopping the connector here");
                stop.cancel();
                return None;
            }
            _ = tokio::time::sleep(every) => {}
        }
        let attempt = tokio::time::Instant::now();
        let Ok(renewal) =
            tokio::time::timeout_at(renewed + ttl - margin, leases.renew(&name, token)).await
        else {
            tracing::warn!(connector = %name, "no lease renewal succeeded in time; stopping the connector here");
            stop.cancel();
            return None;
        };
        match renewal {
            Ok(Some(next)) => {
                token = next;
                renewed = attempt;
            }
            Ok(None) => {
                tracing::warn!(connector = %name, "the connector's lease was taken by another node; stopping it here");
                stop.cancel();
                return None;
            }
            Err(e) => {
                tracing::warn!(connector = %name, error = %e, "cannot renew the connector's lease; retrying")
            }
        }
    }
}
