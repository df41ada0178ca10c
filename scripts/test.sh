#!/usr/bin/env bash
# The one test command: installs what the tests need if it is missing, then runs every test
# of the workspace (unit tests, the black-box tests in tests/, the Secret Manager emulator's
# own tests). Extra arguments go to `cargo test`, e.g. `scripts/test.sh --test faults`.
#
# Needs: the Rust toolchain pinned in rust-toolchain.toml, python3, and root or unprivileged
# user namespaces (the full-disk test mounts a small tmpfs inside `unshare -m`). The
# real-systemd tier (tests/systemd.rs) boots systemd in namespaces and needs root: as root
# (CI) it must run, elsewhere it says why it cannot and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "scripts/test.sh: $1 is required: $2" >&2; exit 1; }
}
need cargo "install Rust with rustup"
need unshare "install util-linux"
need python3 "install python3 and python3-venv"

# Python tools for the end-to-end tests, in .venv at the top of the repository (gitignored):
# the FastAPI example app and its server. Installed once; reinstalled if an import fails.
venv="$PWD/.venv"
if ! "$venv/bin/python" -c 'import fastapi, uvicorn, jwt, cryptography' 2>/dev/null; then
    echo "scripts/test.sh: installing the test-only Python tools into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/fastapi/requirements.txt
fi
# kubernetes-validate, for the Kubernetes manifests in examples/kubernetes (tests/packaging.rs),
# in the same venv. Pinned: its version decides which Kubernetes schemas it knows.
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    echo "scripts/test.sh: installing kubernetes-validate into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
# Google's own Python client for Secret Manager, for the emulator's client tier
# (tests/gcp-emulator/tests/python_client.rs), in the same venv. Pinned in its requirements file.
if ! "$venv/bin/python" -c 'import google.cloud.secretmanager, google_crc32c' 2>/dev/null; then
    echo "scripts/test.sh: installing Google's Secret Manager client into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/gcp-emulator/clients/python/requirements.txt
fi
# python-dotenv, one of the .env readers the env format must round-trip through
# (tests/apps.rs), in the same venv. Pinned: its parsing rules are what the test holds to.
if ! "$venv/bin/python" -c 'import dotenv' 2>/dev/null; then
    echo "scripts/test.sh: installing python-dotenv into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check python-dotenv==1.2.4
fi
export KEYTURN_TEST_VENV="$venv"

# Prometheus' own promtool checks the /metrics output (tests/ops.rs) and the alert rules and
# dashboard queries (tests/monitoring.rs), where a real Prometheus also runs them; systemd-analyze
# checks the unit (tests/packaging.rs). All from Debian, installed when missing.
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: $1 is missing; install the Debian package $2 (as root) and run again" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null ||
        { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null; }
}
command -v promtool >/dev/null 2>&1 || apt_install promtool prometheus
command -v prometheus >/dev/null 2>&1 || apt_install prometheus prometheus
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd-analyze systemd
command -v setpriv >/dev/null 2>&1 || apt_install setpriv util-linux
# faketime (and its libfaketime) moves one process's wall clock: tests/clock.rs runs the agent
# two hours ahead and behind, three minutes ahead and a day ahead of the Secret Manager emulator.
command -v faketime >/dev/null 2>&1 || apt_install faketime faketime
# The real-systemd tier (tests/systemd.rs): D-Bus and polkit for the `systemd` notifier, which
# reloads a second unit as the keyturn user; man for keyturn(8) (tests/packaging.rs);
# dpkg-shlibdeps, which cargo-deb asks for the package's library dependencies.
command -v dbus-daemon >/dev/null 2>&1 || apt_install dbus-daemon dbus
[ -x /usr/lib/polkit-1/polkitd ] || apt_install polkitd polkitd
command -v man >/dev/null 2>&1 || apt_install man man-db
command -v dpkg-shlibdeps >/dev/null 2>&1 || apt_install dpkg-shlibdeps dpkg-dev

# cargo-deb builds the Debian package (tests/systemd.rs installs it). Pinned: its generated
# maintainer-script snippets are part of what the tests check.
cargo_deb_version=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "scripts/test.sh: installing cargo-deb $cargo_deb_version" >&2
    cargo install --quiet --locked cargo-deb --version "$cargo_deb_version"
fi

# As root the real-systemd tier can run, so it must: a missing prerequisite fails it.
if [ "$(id -u)" -eq 0 ]; then
    export KEYTURN_SYSTEMD_TIER=required
else
    echo "scripts/test.sh: not root: the real-systemd tier (tests/systemd.rs) will say why it does not run" >&2
fi

cargo test --workspace --all-targets "$@"
