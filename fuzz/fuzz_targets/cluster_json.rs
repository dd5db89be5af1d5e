//! What the servers and frameworks read from the network: scheduler calls,
//! agent syncs and RecordIO event streams. Decoding must fail cleanly, and
//! the RecordIO decoder must never buffer past its limit or panic.
#![no_main]

use berth_api::cluster::{
    AgentSyncRequest, CallEnvelope, Event, RecordIoDecoder, RegisterAgentRequest, MAX_RECORD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<CallEnvelope>(data);
    let _ = serde_json::from_slice::<AgentSyncRequest>(data);
    let _ = serde_json::from_slice::<RegisterAgentRequest>(data);
    let mut d = RecordIoDecoder::default();
    for chunk in data.chunks(7) {
        d.feed(chunk);
        loop {
            match d.next_record() {
                Ok(Some(rec)) => {
                    assert!(rec.len() <= MAX_RECORD);
                    let _ = serde_json::from_slice::<Event>(&rec);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
