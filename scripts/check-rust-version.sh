#!/usr/bin/env bash
# Fails when a locked dependency declares a newer `rust-version` than the
# workspace's, so the declared minimum Rust stays the one the lockfile can
# actually build with.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --locked | python3 -c '
import json, sys

def parse(v):
    return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"every workspace member must declare one rust-version, found {sorted(map(str, ours))}")
ours = ours.pop()
newer = sorted(
    (parse(p["rust_version"]), p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] not in members and p.get("rust_version") and parse(p["rust_version"]) > parse(ours)
)
for _, name, version, needs in newer:
    print(f"{name} {version} needs Rust {needs}, the workspace declares {ours}", file=sys.stderr)
if newer:
    sys.exit(f"raise rust-version in Cargo.toml to {newer[-1][3]} or lock older versions")
print(f"rust-version {ours}: no locked package needs newer")
'
