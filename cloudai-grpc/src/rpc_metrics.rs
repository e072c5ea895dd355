//! Counts every gRPC call a server answers, by method and status code.
//!
//! The code is read where gRPC puts it: in the response headers when a
//! call fails at once, else in the trailers that end the body (a stream's
//! outcome is known only then). A call whose body is dropped before its
//! trailers (the client went away) counts as `CANCELLED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use cloudai_core::metrics::Rpcs;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Body, Service};
use tonic::Code;
use tower_layer::Layer;

/// Every method the servers answer; a call to any other path counts as
/// `unknown`, so a stranger sending made-up paths cannot add series.
const METHODS: &[&str] = &[
    "/cloudai.v1.Master/Register",
    "/cloudai.v1.Master/Heartbeats",
    "/cloudai.v1.Master/Report",
    "/cloudai.v1.Master/Leave",
    "/cloudai.v1.Master/Submit",
    "/cloudai.v1.Master/Cancel",
    "/cloudai.v1.Master/CancelMany",
    "/cloudai.v1.Master/ListTasks",
    "/cloudai.v1.Master/CountTasks",
    "/cloudai.v1.Master/CountMatching",
    "/cloudai.v1.Master/GetTask",
    "/cloudai.v1.Master/SetPriority",
    "/cloudai.v1.Master/ListWorkers",
    "/cloudai.v1.Master/PreRegister",
    "/cloudai.v1.Master/Drain",
    "/cloudai.v1.Master/Undrain",
    "/cloudai.v1.Master/Reconcile",
    "/cloudai.v1.Master/Reconnect",
    "/cloudai.v1.Master/FollowOutput",
    "/cloudai.v1.Master/WatchEvents",
    "/cloudai.v1.Worker/Identify",
    "/cloudai.v1.Worker/MasterRegister",
    "/cloudai.v1.Worker/Assign",
    "/cloudai.v1.Worker/Cancel",
    "/cloudai.v1.Worker/FollowOutput",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// The method label of a call to `path`.
fn method(path: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == path)
        .copied()
        .unwrap_or("unknown")
}

/// Wraps a server's routes so each call is counted into `rpcs`.
#[derive(Debug, Clone)]
pub(crate) struct CountRpcs(pub(crate) Rpcs);

impl<S> Layer<S> for CountRpcs {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            rpcs: self.0.clone(),
        }
    }
}

/// The counting service.
#[derive(Debug, Clone)]
pub(crate) struct Counted<S> {
    inner: S,
    rpcs: Rpcs,
}

impl<S, B, RB> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method(req.uri().path());
        let call = self.inner.call(req);
        let rpcs = self.rpcs.clone();
        Box::pin(async move {
            let res = call.await?;
            let mut pending = Some(Pending { rpcs, method });
            if let Some(code) = code_in(res.headers()) {
                if let Some(p) = pending.take() {
                    p.record(code);
                }
            }
            Ok(res.map(|body| CountedBody { body, pending }))
        })
    }
}

/// A call whose code is not known yet.
#[derive(Debug)]
struct Pending {
    rpcs: Rpcs,
    method: &'static str,
}

impl Pending {
    fn record(self, code: Code) {
        self.rpcs.record(self.method, name(code));
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when the trailers pass.
    pub(crate) struct CountedBody<B> {
        #[pin]
        body: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for CountedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(p) = this.project().pending.take() {
                p.record(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| code_in(t).unwrap_or(Code::Ok)),
            Some(Err(_)) => Some(Code::Internal),
            // Ended without trailers: gRPC always sends them, so this is a
            // body cut short.
            None => Some(Code::Unknown),
        };
        if let Some(code) = code {
            if let Some(p) = this.pending.take() {
                p.record(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn code_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// A code as gRPC names it (`OK`, `NOT_FOUND`, …).
fn name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list is the proto's services' methods, and the health service's.
    #[test]
    fn the_known_methods_are_the_protos() {
        let proto = include_str!("../proto/cloudai.proto");
        let mut service = None;
        let mut found = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next();
            } else if let (Some(s), Some(rest)) = (service, line.strip_prefix("rpc ")) {
                let name = rest.split('(').next().unwrap_or_default();
                found.push(format!("/cloudai.v1.{s}/{name}"));
            }
        }
        found.extend([
            "/grpc.health.v1.Health/Check".into(),
            "/grpc.health.v1.Health/Watch".into(),
        ]);
        assert_eq!(
            METHODS,
            found.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(
            method("/cloudai.v1.Master/Submit"),
            "/cloudai.v1.Master/Submit"
        );
        assert_eq!(method("/junk/path-1"), "unknown");
    }
}
