#!/usr/bin/env bash
# Installs what building Baton needs and a fresh Debian 12 machine lacks: libclang for bindgen
# (run by the rocksdb crate), a C++ compiler and make for RocksDB. Sourced by the other scripts.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
missing=()
for pkg in libclang-dev g++ make; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing build prerequisites: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
