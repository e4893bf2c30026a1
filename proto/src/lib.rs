//! Baton's wire types: the public gRPC API `baton.v1`, the internal Raft transport, and the
//! workflow spec model (YAML/JSON parsing and validation) shared by the server and the CLI.

#![allow(clippy::large_enum_variant)]

pub mod v1 {
    //! The public API.
    tonic::include_proto!("baton.v1");
}

pub mod raft {
    //! The internal node-to-node transport.
    pub mod v1 {
        tonic::include_proto!("baton.raft.v1");
    }
}

/// The encoded file descriptor set of every Baton proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");

pub mod json;
pub mod limits;
pub mod names;
pub mod schedule;
pub mod spec;
pub mod status;
pub mod text;
pub mod validate;
