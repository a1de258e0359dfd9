//! Fuzz targets for the store's request decoders: what a client or a peer can put on the
//! wire. Under `cargo test` each runs a bounded number of random inputs; under
//! `cargo bolero test -p rampart-kv --test fuzz <name>` (nightly) it runs under libFuzzer.

use prost::Message;
use rampart_kv::access::{Forwarded, authorize_forwarded};
use rampart_kv::auth::AuthState;
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::state::validate;
use rampart_kv::types::Command;

/// Decodes `bytes` as `M`; when it decodes, encoding and decoding again gives the same
/// message (the decoder keeps nothing it cannot give back).
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(again, m);
    Some(m)
}

#[test]
fn etcd_client_requests() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Some(p) = round_trip::<pb::PutRequest>(bytes) {
            let _ = validate(&Command::Put(p));
        }
        if let Some(d) = round_trip::<pb::DeleteRangeRequest>(bytes) {
            let _ = validate(&Command::DeleteRange(d));
        }
        if let Some(t) = round_trip::<pb::TxnRequest>(bytes) {
            let _ = validate(&Command::Txn(t));
        }
        if let Some(c) = round_trip::<pb::CompactionRequest>(bytes) {
            let _ = validate(&Command::Compact(c));
        }
        let _ = round_trip::<pb::RangeRequest>(bytes);
        let _ = round_trip::<pb::WatchRequest>(bytes);
        let _ = round_trip::<pb::LeaseGrantRequest>(bytes);
        let _ = round_trip::<pb::AuthenticateRequest>(bytes);
        let _ = round_trip::<pb::AuthRoleGrantPermissionRequest>(bytes);
        let _ = round_trip::<pb::MemberAddRequest>(bytes);
        let _ = round_trip::<pb::AlarmRequest>(bytes);
    });
}

#[test]
fn peer_forwarded_writes() {
    bolero::check!().for_each(|bytes: &[u8]| {
        if let Ok(f) = postcard::from_bytes::<Forwarded>(bytes) {
            let _ = validate(&f.cmd);
            let _ = authorize_forwarded(&AuthState::default(), &f, &|_| Vec::new());
        }
    });
}
