//! Pulling a missing image: bounded by the pull timeout, with its
//! progress in the log every few seconds (layers done, bytes fetched), so
//! a multi-gigabyte image on first use is seen moving rather than failing
//! at a fixed 30 s.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use tracing::info;

/// How long a pull may take unless configured otherwise (10 minutes).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a pull's progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Each layer's bytes fetched of its size, and whether it is done.
#[derive(Debug, Default)]
struct Progress {
    layers: HashMap<String, (u64, u64, bool)>,
}

impl Progress {
    fn note(
        &mut self,
        layer: Option<String>,
        status: &str,
        current: Option<i64>,
        total: Option<i64>,
    ) {
        let Some(layer) = layer else { return };
        let entry = self.layers.entry(layer).or_default();
        if let (Some(c), Some(t)) = (current, total) {
            entry.0 = u64::try_from(c).unwrap_or(0);
            entry.1 = u64::try_from(t).unwrap_or(0);
        }
        if matches!(status, "Pull complete" | "Already exists") {
            entry.2 = true;
        }
    }

    fn summary(&self) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let (got, of) = self
            .layers
            .values()
            .fold((0, 0), |(g, o), l| (g + l.0, o + l.1));
        format!(
            "{done} of {} layers done, {:.1} of {:.1} MB fetched",
            self.layers.len(),
            got as f64 / 1e6,
            of as f64 / 1e6
        )
    }
}

/// Pulls `image`, within `timeout`; the error says why it could not.
pub(crate) async fn pull(docker: &Docker, image: &str, timeout: Duration) -> Result<(), String> {
    info!(%image, ?timeout, "image missing; pulling it");
    let options = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let started = Instant::now();
    let mut progress = Progress::default();
    let mut logged = Instant::now();
    let work = async {
        let mut stream = docker.create_image(Some(options), None, None);
        while let Some(step) = stream.next().await {
            let step = step.map_err(|e| e.to_string())?;
            if let Some(detail) = step.error_detail.and_then(|d| d.message) {
                return Err(detail);
            }
            let (current, total) = step
                .progress_detail
                .map_or((None, None), |d| (d.current, d.total));
            progress.note(
                step.id,
                step.status.as_deref().unwrap_or(""),
                current,
                total,
            );
            if logged.elapsed() >= PROGRESS_EVERY {
                info!(%image, elapsed = ?started.elapsed(), "pulling image: {}", progress.summary());
                logged = Instant::now();
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {
            info!(%image, took = ?started.elapsed(), "image pulled");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "the pull did not finish within {} (the worker's --pull-timeout); {}",
            humantime::format_duration(timeout),
            progress.summary()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_layers_and_bytes() {
        let mut p = Progress::default();
        p.note(
            Some("a".into()),
            "Downloading",
            Some(500_000),
            Some(1_000_000),
        );
        p.note(Some("b".into()), "Already exists", None, None);
        p.note(None, "Pulling from library/x", None, None);
        assert_eq!(p.summary(), "1 of 2 layers done, 0.5 of 1.0 MB fetched");
    }
}
