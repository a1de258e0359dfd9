//! Generated gRPC code: etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`) and the peer protocol.
#![allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod peer {
    tonic::include_proto!("rampart.kv.peer.v1");
}
