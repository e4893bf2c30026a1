#!/usr/bin/env bash
# Installs what building and testing Baton needs and a fresh Debian 12 machine lacks: libclang for
# bindgen (run by the rocksdb crate), a C++ compiler and make for RocksDB, and Prometheus
# (`prometheus` and `promtool`) for the observability test, which checks the metrics, the alert
# rules and the dashboard against a real Prometheus, and etcd (`etcd-server`, 3.4 on Debian 12), the
# yardstick `baton bench --compare-etcd` runs beside Baton. Sourced by the other scripts.
#
# Debian's `prometheus` package may start a system service on :9090 (where the init system allows
# it). Nothing in Baton uses that service: the test starts its own Prometheus on a free loopback
# port with a temporary storage folder. The same holds for `etcd-server`: the bench starts its own
# three members on free loopback ports. Recommends (node-exporter) are not installed.
#
# `faketime` brings libfaketime (/usr/lib/<arch>-linux-gnu/faketime/libfaketime.so.1), which
# node/tests/t59_clock_jumps.rs preloads into each `batond` to step one node's wall clock by an
# hour while the others keep real time.
#
# scripts/validate-deploy checks the Kubernetes manifests with kubernetes-validate (PyPI), kept in
# a venv under ~/.cache (Debian's Python refuses system-wide pip installs, PEP 668).
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
missing=()
for pkg in libclang-dev g++ make prometheus etcd-server python3-venv faketime; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing prerequisites: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

BATON_VENV="${BATON_VENV:-$HOME/.cache/baton-venv}"
export BATON_VENV
if ! "$BATON_VENV/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "installing kubernetes-validate into $BATON_VENV" >&2
  python3 -m venv "$BATON_VENV"
  "$BATON_VENV/bin/pip" install -q kubernetes-validate==1.37.0
fi
# cargo-fuzz, for scripts/fuzz, only where the nightly toolchain is installed (the fuzz targets
# need it); a stable-only machine skips fuzzing and needs neither.
if cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (nightly toolchain found)" >&2
  cargo install cargo-fuzz --locked --target-dir "$HOME/.cache/cargo-fuzz-build"
fi
