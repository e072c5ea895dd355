//! Two hosts of a test's own: two network namespaces joined by a veth
//! pair, and a partition between them made and healed with `iptables`
//! inside one of them. Namespaces split only the network: both see the
//! same filesystem and processes.
//!
//! Everything is named after this process's id (and a counter), so runs
//! in parallel do not meet, and the machine's own network is never
//! touched: the veth ends are created inside the namespaces, and the
//! rules live in them. [`Pair`]'s `Drop` kills what still runs inside
//! them and deletes both (the veth and the rules go with them), also when
//! the test panics.
//!
//! It needs root and `ip` and `iptables` (Debian's `iproute2` and
//! `iptables`, which `scripts/test.sh` installs): [`unavailable`] says why
//! a test should skip.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// One side: a namespace and its address on the link.
#[derive(Debug, Clone)]
pub struct Side {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub ns: String,
    /// Its address on the veth link (no prefix length).
    pub addr: String,
}

/// Two namespaces, `a` and `b`, joined by a veth pair on a /24 of
/// 10.231.0.0/16; deleted on drop.
#[derive(Debug)]
pub struct Pair {
    pub a: Side,
    pub b: Side,
}

/// The path of system tool `name` (`ip`, `iptables`): found in `PATH`, or
/// in `/usr/sbin` or `/sbin` when `PATH` leaves them out; `name` itself if
/// it is nowhere.
pub fn tool(name: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map_or_else(|| name.to_string(), |p| p.display().to_string())
}

/// Why this machine cannot give a test namespaces (not root, a tool
/// missing), or `None` when it can.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    for (tool, args, package) in [
        ("ip", &["-V"][..], "iproute2"),
        ("iptables", &["--version"][..], "iptables"),
    ] {
        let found = Command::new(self::tool(tool))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is missing (apt-get install {package}; scripts/test.sh installs it)"
            ));
        }
    }
    None
}

/// Runs tool `prog` (`ip`) with `args`, panicking with its stderr on
/// failure.
fn run(prog: &str, args: &[&str]) {
    let out = Command::new(tool(prog))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Pair {
    /// Creates the two namespaces (`cloudai-<tag>-<pid>-<n>-a`, `…-b`),
    /// the veth pair between them, addresses `10.231.X.1` (a) and
    /// `10.231.X.2` (b), and brings every link, loopback included, up.
    /// Panics if a step fails (what was made is deleted).
    pub fn create(tag: &str) -> Pair {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = format!("10.231.{}", (pid + n) % 254 + 1);
        let pair = Pair {
            a: Side {
                ns: format!("cloudai-{tag}-{pid}-{n}-a"),
                addr: format!("{subnet}.1"),
            },
            b: Side {
                ns: format!("cloudai-{tag}-{pid}-{n}-b"),
                addr: format!("{subnet}.2"),
            },
        };
        // At most 15 characters each; they exist only inside the namespaces.
        let (va, vb) = (format!("cv{pid}-{n}a"), format!("cv{pid}-{n}b"));
        run("ip", &["netns", "add", &pair.a.ns]);
        run("ip", &["netns", "add", &pair.b.ns]);
        run(
            "ip",
            &[
                "link", "add", &va, "netns", &pair.a.ns, "type", "veth", "peer", "name", &vb,
                "netns", &pair.b.ns,
            ],
        );
        for (side, dev) in [(&pair.a, &va), (&pair.b, &vb)] {
            let cidr = format!("{}/24", side.addr);
            run("ip", &["-n", &side.ns, "addr", "add", &cidr, "dev", dev]);
            run("ip", &["-n", &side.ns, "link", "set", "lo", "up"]);
            run("ip", &["-n", &side.ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// The `iptables` rules in b's namespace that drop everything to and
    /// from a (`-A` adds them, `-D` removes them).
    fn rules(&self, op: &str) {
        let a = self.a.addr.as_str();
        let iptables = tool("iptables");
        for rule in [["INPUT", "-s", a], ["OUTPUT", "-d", a]] {
            let mut args = vec!["netns", "exec", &self.b.ns, &iptables, "-w", "5", op];
            args.extend(rule);
            args.extend(["-j", "DROP"]);
            run("ip", &args);
        }
    }

    /// Cuts the link both ways: b's namespace drops every packet from and
    /// to a (established connections included).
    pub fn cut(&self) {
        self.rules("-A");
    }

    /// Undoes [`Pair::cut`].
    pub fn heal(&self) {
        self.rules("-D");
    }

    /// The processes running in namespace `ns`.
    pub fn pids(ns: &str) -> Vec<u32> {
        Command::new(tool("ip"))
            .args(["netns", "pids", ns])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for side in [&self.a, &self.b] {
            // Only processes this test started run in its namespaces.
            for pid in Self::pids(&side.ns) {
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -9 {pid} 2>/dev/null")])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new(tool("ip"))
                .args(["netns", "delete", &side.ns])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
