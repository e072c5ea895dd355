//! What a server answers for: one master, or whichever master this
//! process's [`Leadership`] runs now. The transport resolves it on every
//! call, so a new term's master serves the same listener.

use super::{Leadership, Master};
use crate::metrics::{MasterMetrics, Snapshot};
use crate::model::StatusCounts;
use crate::{Error, Result};

/// One master, or a [`Leadership`]. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Serving {
    /// A master without a lease, for ever.
    One(Master),
    /// Whichever master leads from this process, if any.
    Elected(Leadership),
}

impl From<Master> for Serving {
    fn from(m: Master) -> Self {
        Serving::One(m)
    }
}

impl From<Leadership> for Serving {
    fn from(l: Leadership) -> Self {
        Serving::Elected(l)
    }
}

impl Serving {
    /// The master to answer a call with (see [`Leadership::acting`]).
    pub fn master(&self) -> Result<Master> {
        match self {
            Serving::One(m) => Ok(m.clone()),
            Serving::Elected(l) => l.acting(),
        }
    }

    /// The masters' metrics, kept across terms: the transport counts its
    /// calls into them.
    pub fn metrics(&self) -> MasterMetrics {
        match self {
            Serving::One(m) => m.metrics().clone(),
            Serving::Elected(l) => l.master_metrics().clone(),
        }
    }

    /// Ends the open event streams of the master acting now (a server
    /// shutting down must not wait for their clients to leave).
    pub fn close_watches(&self) {
        let current = match self {
            Serving::One(m) => Some(m.clone()),
            Serving::Elected(l) => l.current(),
        };
        if let Some(m) = current {
            m.close_watches();
        }
    }

    /// Ready when this process leads and its store answers. A follower
    /// is not ready, and says who leads.
    pub async fn ready(&self) -> Result<()> {
        if let Serving::Elected(l) = self {
            if let Some(following) = l.following() {
                return Err(Error::Unavailable(following));
            }
        }
        self.master()?.ready().await
    }

    /// Every metric in the Prometheus text format: the acting master's,
    /// and with a lease, the lease's. A follower's state gauges read
    /// zero, so summing them over the masters gives the leader's.
    pub async fn render_metrics(&self) -> String {
        let l = match self {
            Serving::One(m) => return m.render_metrics().await,
            Serving::Elected(l) => l,
        };
        let master = match l.current() {
            Some(m) => m.render_metrics().await,
            None => l.master_metrics().render(&Snapshot {
                tasks: Some(StatusCounts::default()),
                ..Snapshot::default()
            }),
        };
        // One exposition: the lease's series before the master's, whose
        // text carries the closing `# EOF`.
        let lease = l.metrics().render();
        let lease = lease.strip_suffix("# EOF\n").unwrap_or(&lease);
        format!("{lease}{master}")
    }
}
