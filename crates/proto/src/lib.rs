//! The stowage.v1 gRPC contracts, generated from `proto/` at build time. Nothing here is
//! written by hand except these re-exports.

pub mod v1 {
    tonic::include_proto!("stowage.v1");

    /// Encoded `FileDescriptorSet` of every stowage.v1 file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stowage_descriptor.bin"));
}

pub use prost_types;
