#!/usr/bin/env bash
# The benchmark suite: builds keyturn, the Secret Manager emulator and the baselines (release
# profile), runs every benchmark in bench/ and writes BENCHMARKS.md at the top of the
# repository. Progress goes to stderr. About 4 to 5 minutes of benchmarks plus the build
# (3 to 4 minutes from scratch on 2 cores).
#
# Needs: the Rust toolchain pinned in rust-toolchain.toml, gcc, libssl-dev, binutils (strip), git, and
# /dev/shm (tmpfs). Everything listens on 127.0.0.1 and is stopped and removed at the end.
#
#   scripts/bench.sh                      # everything
#   scripts/bench.sh --only cold,memory   # a subset: cold,memory,latency,rotation,traffic,fleet
#   CARGO_TARGET_DIR=/elsewhere scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "scripts/bench.sh: $1 is required: $2" >&2; exit 1; }
}
need cargo "install Rust with rustup"
need gcc "apt-get install gcc"
need git "apt-get install git"
[ -f /usr/include/openssl/evp.h ] || { echo "scripts/bench.sh: OpenSSL's headers are required (the sealed-cache baseline decrypts with EVP): apt-get install libssl-dev" >&2; exit 1; }

started=$(date +%s)
target="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$target"

echo "scripts/bench.sh: building keyturn, gcp-emulator and keyturn-bench (release) into $target" >&2
cargo build --release -p keyturn -p gcp-emulator -p keyturn-bench >&2
baseline="$target/bench-baseline"
mkdir -p "$baseline"
gcc -O2 -Wall -Wextra -o "$baseline/io" bench/baseline/io.c -lcrypto
gcc -O2 -Wall -Wextra -o "$baseline/stamp" bench/baseline/stamp.c
built=$(date +%s)

# The suite stops what it starts as it goes; run in a process group of its own so that an
# interrupted run (Ctrl-C, a timeout, a killed suite) leaves no agent, emulator or work
# directory behind either (the suite names them after its pid).
setsid "$target/release/keyturn-bench" --bin-dir "$target/release" --c-dir "$baseline" \
    --out BENCHMARKS.md --build-seconds "$((built - started))" "$@" &
suite=$!
stop_suite() {
    kill -TERM -- "-$suite" 2>/dev/null || true
    rm -rf "/dev/shm/keyturn-bench-$suite" "/var/tmp/keyturn-bench-$suite"
}
trap 'stop_suite; exit 130' INT TERM
trap stop_suite EXIT
status=0
wait "$suite" || status=$?
if [ "$status" -ne 0 ]; then
    echo "scripts/bench.sh: the suite failed (exit $status)" >&2
    exit "$status"
fi
echo "scripts/bench.sh: done in $(($(date +%s) - started)) s (build $((built - started)) s)" >&2
