//! Sources: each knows its transport, not the payload format. A source turns what it receives into
//! records, pushes them into its flows' bounded queues, and answers its peer from the delivery outcome.

pub mod coap;
pub mod esp3_websocket;
pub mod kafka;
pub mod mqtt;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::record::Record;

/// Hands `record` to every flow, waiting for room in each (so a full flow holds the source back).
/// False on shutdown, or when a flow has stopped (which stops the pipeline).
pub async fn hand_to_flows(
    flows: &[mpsc::Sender<Record>],
    record: Record,
    shutdown: &CancellationToken,
) -> bool {
    let mut permits = Vec::with_capacity(flows.len());
    for flow in flows {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            permit = flow.reserve() => match permit {
                Ok(p) => permits.push(p),
                Err(_) => return false,
            }
        }
    }
    let mut permits = permits.into_iter();
    if let Some(last) = permits.next_back() {
        for permit in permits {
            permit.send(record.clone());
        }
        last.send(record);
    }
    true
}
