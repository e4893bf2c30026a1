#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for one of Baton's scripts, and sets the target
# folder. Sourced by the other scripts with what they need:
#
#   source scripts/prereqs.sh build    building only (scripts/dev, scripts/chaos, chaos-broken):
#                                      libclang for bindgen (run by the rocksdb crate), a C++
#                                      compiler and make for RocksDB
#   source scripts/prereqs.sh test     building and testing (scripts/test, bench-retained, CI):
#                                      the above, plus the tools the tests run beside Baton
#   source scripts/prereqs.sh deploy   scripts/validate-deploy's Kubernetes validator and
#                                      scripts/validate-openapi's OpenAPI validator
#   source scripts/prereqs.sh browser  scripts/browser-test: Debian's chromium and Playwright
#
# The tests need Prometheus (`prometheus` and `promtool`) for the observability test, which checks
# the metrics, the alert rules and the dashboard against a real Prometheus; etcd (`etcd-server`,
# 3.4 on Debian 12), the yardstick `baton bench --compare-etcd` runs beside Baton; `faketime`
# (libfaketime, /usr/lib/<arch>-linux-gnu/faketime/libfaketime.so.1), which
# node/tests/it/t59_clock_jumps.rs preloads into one `batond` to step its wall clock by an hour;
# python3 for the power-loss shim's SQLite test; and curl, which docs/TUTORIAL.md uses to read
# metrics (node/tests/it/t80_tutorial.rs runs it).
#
# Debian's `prometheus` package may start a system service on :9090 (where the init system allows
# it). Nothing in Baton uses that service: the test starts its own Prometheus on a free loopback
# port with a temporary storage folder. The same holds for `etcd-server`: the bench starts its own
# three members on free loopback ports. Recommends (node-exporter) are not installed.
#
# scripts/validate-deploy checks the Kubernetes manifests with kubernetes-validate (PyPI), and
# scripts/validate-openapi the JSON API's document with openapi-spec-validator (PyPI), kept in
# a venv under ~/.cache (Debian's Python refuses system-wide pip installs, PEP 668). cargo-fuzz is
# scripts/fuzz's own business (it installs it where a nightly toolchain exists).
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/baton-target}"
# Always name the set: a script sourcing this with no arguments would hand it its own.
baton_prereqs_for="${1:-}"
case "$baton_prereqs_for" in
  build) baton_packages=(libclang-dev g++ make) ;;
  test) baton_packages=(libclang-dev g++ make prometheus etcd-server python3 faketime curl) ;;
  deploy) baton_packages=(python3-venv) ;;
  browser) baton_packages=(python3-venv chromium) ;;
  *) echo "prereqs.sh: name what to install: build, test, deploy or browser (got '$baton_prereqs_for')" >&2
     return 2 2>/dev/null || exit 2 ;;
esac
missing=()
for pkg in "${baton_packages[@]}"; do
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

if [ "$baton_prereqs_for" = browser ]; then
  BATON_VENV="${BATON_VENV:-$HOME/.cache/baton-venv}"
  export BATON_VENV
  [ -x "$BATON_VENV/bin/python" ] || python3 -m venv "$BATON_VENV"
  # Playwright's Python package brings its driver; the browser is Debian's chromium (Playwright's
  # own browser download cannot reach its host from here).
  if ! "$BATON_VENV/bin/python" -c 'import playwright' >/dev/null 2>&1; then
    echo "installing playwright into $BATON_VENV" >&2
    "$BATON_VENV/bin/pip" install -q playwright==1.64.1
  fi
fi

if [ "$baton_prereqs_for" = deploy ]; then
  BATON_VENV="${BATON_VENV:-$HOME/.cache/baton-venv}"
  export BATON_VENV
  if ! "$BATON_VENV/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    echo "installing kubernetes-validate into $BATON_VENV" >&2
    python3 -m venv "$BATON_VENV"
    "$BATON_VENV/bin/pip" install -q kubernetes-validate==1.37.0
  fi
  # scripts/validate-openapi: the JSON API's OpenAPI document against the 3.1 schema.
  if ! "$BATON_VENV/bin/python" -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    echo "installing openapi-spec-validator into $BATON_VENV" >&2
    "$BATON_VENV/bin/pip" install -q openapi-spec-validator==0.9.0
  fi
fi
