//! A master binary started for a benchmark, and its address read from its
//! JSON log.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `bin` with `args` plus `--listen 127.0.0.1:0 --log-json --token
/// <token>`, and returns the address it logs as "master listening" (within
/// 20 s). Its log keeps being drained, so it never blocks on a full pipe;
/// it is killed when the child is dropped.
pub async fn start(bin: &str, args: &[String], token: &str) -> Result<(String, Child), String> {
    let mut child = Command::new(bin)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--log-json", "--token", token])
        .env("RUST_LOG", "warn,cloudai_master=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot start {bin} (build it with `cargo build --release -p cloudai-examples`): {e}")
        })?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(Some(line)) = lines.next_line().await else {
            break;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["fields"]["message"] == "master listening" {
            let address = v["fields"]["address"]
                .as_str()
                .ok_or("no address in log")?
                .to_string();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((address, child));
        }
    }
    Err(format!("{bin} did not report its address"))
}
