#!/usr/bin/env bash
# The one test command: installs what the tests need if it is missing, then runs every test
# of the workspace (unit tests, the black-box tests in tests/, the Secret Manager emulator's
# own tests). Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test faults`.
#
# Needs: the Rust toolchain pinned in rust-toolchain.toml, python3, and root or unprivileged
# user namespaces (the full-disk test mounts a small tmpfs inside `unshare -m`).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "scripts/test.sh: $1 is required: $2" >&2; exit 1; }
}
need cargo "install Rust with rustup"
need unshare "install util-linux"

cargo test --workspace --all-targets "$@"
