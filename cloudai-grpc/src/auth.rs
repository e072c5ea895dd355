//! Token authentication: every call carries `authorization: Bearer <token>`,
//! compared in constant time so the comparison leaks nothing about the
//! secret through timing.

use std::fmt;

use cloudai_core::model::{InstanceId, Term, WorkerId};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// Header naming the calling master on master→worker calls.
pub const MASTER_HEADER: &str = "x-cloudai-master";
/// Header carrying the calling master's term on master→worker calls
/// (absent: 0); a worker refuses a term below the highest it has seen.
pub const TERM_HEADER: &str = "x-cloudai-term";
/// Header a follower's `UNAVAILABLE` answer carries: where the leader is.
pub const LEADER_HEADER: &str = "x-cloudai-leader";
/// Header naming the worker a master→worker call is meant for.
pub const WORKER_HEADER: &str = "x-cloudai-worker";
/// Header naming that worker's instance, once the master knows it.
pub const INSTANCE_HEADER: &str = "x-cloudai-instance";

/// A shared cluster secret. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a secret; refuses one that is empty or not a valid header value.
    pub fn new(secret: impl Into<String>) -> Result<Token, String> {
        let s = secret.into();
        if s.is_empty() {
            return Err("token must not be empty".into());
        }
        if s.len() > 4096 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("token must be printable ASCII without spaces, at most 4096 bytes".into());
        }
        Ok(Token(s))
    }

    /// The `authorization` header value.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether `presented` (a full header value) carries this token.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.header();
        expected.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Checks the token on an incoming request (`None`: auth disabled).
pub fn check(token: Option<&Token>, metadata: &MetadataMap) -> Result<(), Status> {
    let Some(token) = token else { return Ok(()) };
    match metadata.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(presented) if token.matches(presented) => Ok(()),
        Some(_) => Err(Status::unauthenticated("wrong token")),
        None => Err(Status::unauthenticated(
            "missing token (authorization: Bearer <token>)",
        )),
    }
}

/// Adds the token (and, for a master, its id and term) to an outgoing
/// request.
pub(crate) fn sign<T>(req: &mut Request<T>, token: Option<&Token>, master: Option<(&str, Term)>) {
    if let Some(t) = token {
        if let Ok(v) = t.header().parse() {
            req.metadata_mut().insert("authorization", v);
        }
    }
    if let Some((id, term)) = master {
        if let Ok(m) = id.parse() {
            req.metadata_mut().insert(MASTER_HEADER, m);
        }
        if let Ok(t) = term.get().to_string().parse() {
            req.metadata_mut().insert(TERM_HEADER, t);
        }
    }
}

/// The calling master's term (0 if it names none); refused if malformed.
pub fn caller_term(metadata: &MetadataMap) -> Result<Term, Status> {
    match metadata.get(TERM_HEADER) {
        None => Ok(Term::ZERO),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Term::new)
            .ok_or_else(|| Status::invalid_argument(format!("{TERM_HEADER}: not a term"))),
    }
}

/// Names the worker (and instance) a master→worker request is meant for.
pub(crate) fn address_to<T>(
    req: &mut Request<T>,
    worker: &WorkerId,
    instance: Option<&InstanceId>,
) {
    if let Ok(v) = worker.as_str().parse() {
        req.metadata_mut().insert(WORKER_HEADER, v);
    }
    if let Some(v) = instance.and_then(|i| i.as_str().parse().ok()) {
        req.metadata_mut().insert(INSTANCE_HEADER, v);
    }
}

/// The worker (and instance) a master→worker request names; refused if
/// it names none. A listener shared by several workers routes by it.
pub fn addressee(metadata: &MetadataMap) -> Result<(WorkerId, Option<InstanceId>), Status> {
    let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    let worker = header(WORKER_HEADER).ok_or_else(|| {
        Status::invalid_argument(format!(
            "a call to a worker must name it ({WORKER_HEADER}: <worker id>)"
        ))
    })?;
    let worker = WorkerId::new(worker)
        .map_err(|e| Status::invalid_argument(format!("{WORKER_HEADER}: {e}")))?;
    let instance = header(INSTANCE_HEADER)
        .map(InstanceId::new)
        .transpose()
        .map_err(|e| Status::invalid_argument(format!("{INSTANCE_HEADER}: {e}")))?;
    Ok((worker, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves_and_hide_in_debug() {
        let t = Token::new("s3cret").unwrap();
        assert!(t.matches("Bearer s3cret"));
        assert!(!t.matches("Bearer s3creT") && !t.matches("s3cret") && !t.matches(""));
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert!(Token::new("").is_err() && Token::new("a b").is_err());
    }

    #[test]
    fn check_rejects_missing_and_wrong_tokens() {
        let t = Token::new("abc").unwrap();
        let mut md = MetadataMap::new();
        assert_eq!(
            check(Some(&t), &md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            check(Some(&t), &md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert("authorization", "Bearer abc".parse().unwrap());
        assert!(check(Some(&t), &md).is_ok());
        assert!(check(None, &MetadataMap::new()).is_ok());
    }
}
