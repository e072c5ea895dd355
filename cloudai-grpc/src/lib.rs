//! # cloudai-grpc
//!
//! The gRPC transport for CloudAI-rs (tonic + prost): the master and worker
//! services over [`cloudai_core::master::Master`] and
//! [`cloudai_core::worker::Worker`], the clients implementing the core's
//! [`cloudai_core::transport`] traits, a shared-token check on every call
//! (constant-time), and optional TLS, mutual when a CA is configured.
//!
//! Errors travel as gRPC status codes (`NOT_FOUND`, `INVALID_ARGUMENT`,
//! `FAILED_PRECONDITION`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
//! `UNAUTHENTICATED`) and come back as the same core [`cloudai_core::Error`].

pub mod auth;
pub mod client;
pub mod convert;
pub mod events;
pub mod http;
pub mod master_service;
pub mod output;
pub mod security;
pub mod server;
pub mod worker_service;

mod relay;
mod rpc_metrics;

/// Generated protobuf and gRPC code.
pub mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("cloudai.v1");
}

pub use auth::Token;
pub use client::{MasterClient, WorkerClients};
pub use http::{master_routes, serve_http, worker_routes};
pub use security::{Security, Tls};
pub use server::{serve, serve_master, serve_worker};
