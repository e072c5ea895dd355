//! The dashboard in a real browser: headless Chromium, driven by
//! Selenium (`dashboard_browser.py`), against a real master and worker.
//! `scripts/test.sh` installs Chromium and Selenium
//! (`scripts/browser-test-env.sh`) and names the venv's python in
//! `CLOUDAI_TEST_BROWSER_PYTHON`. Screenshots go to
//! `target/dashboard-screenshots/`.
#![allow(clippy::print_stderr)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard_browser.py");
const SCREENSHOTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/dashboard-screenshots"
);

#[test]
fn the_dashboard_logs_in_follows_a_task_live_and_cancels_another() {
    let python = std::env::var("CLOUDAI_TEST_BROWSER_PYTHON").expect(
        "CLOUDAI_TEST_BROWSER_PYTHON is not set: run ./scripts/test.sh, which installs Chromium and Selenium",
    );
    let mut c = Cluster::start_with("dashboard", FAST, &["--http-listen", "0"]);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let url = until(EVENTUALLY, "the HTTP listener's URL in the log", || {
        c.master_log().iter().find_map(|l| {
            l["fields"]["url"]
                .as_str()
                .and_then(|u| u.strip_suffix("/metrics"))
                .map(str::to_string)
        })
    });
    let mut browser = Command::new(python);
    browser
        .arg(SCRIPT)
        .args(["--url", &url, "--token", &c.token, "--cli", MASTER_BIN])
        .args(["--master", &c.address, "--worker", &w, "--out", SCREENSHOTS]);
    let out = run_bounded(&mut browser, Duration::from_secs(240)).expect("run the browser test");
    eprintln!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "the browser test failed (see above)");
}
