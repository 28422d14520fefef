#!/usr/bin/env bash
# Runs every Discless test: formatting, lints, unit and end-to-end tests (the demo check is one:
# tests/tests/demo.rs).
# Installs what the tests need when it is missing (Debian packages; cargo-nextest), so that a
# fresh machine and CI behave alike. Under CI=true no test may skip for a missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Third-party programs the end-to-end tests drive: dcmtk, Chromium (Debian's; playwright-core
# drives it, no browser download), Node.js for playwright, Python's dicomweb-client, iproute2
# and nftables.
apt_missing=()
[ -x /usr/bin/dcmdump ] || apt_missing+=(dcmtk)
[ -x /usr/bin/gdcmconv ] || apt_missing+=(libgdcm-tools)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
# Network namespaces and firewalls for the hole-punching test (tests/tests/holepunch.rs).
[ -x /usr/sbin/ip ] || apt_missing+=(iproute2)
[ -x /usr/sbin/nft ] || apt_missing+=(nftables)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs npm)
# GDCM (JPEG-LS and 12-bit lossy JPEG, the `gdcm` feature) builds from C++ source with cmake;
# libjpeg-turbo (the `turbojpeg` feature) with cmake and nasm, for its SIMD code.
command -v cmake >/dev/null 2>&1 || apt_missing+=(cmake)
command -v c++ >/dev/null 2>&1 || apt_missing+=(g++)
command -v nasm >/dev/null 2>&1 || apt_missing+=(nasm)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing: ${apt_missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}"
fi
# Orthanc (+ its DICOMweb plugin), the reference of `bench dimse` and `bench serve`. Its package would start a service listening on every
# address: policy-rc.d keeps it from starting now, and it is disabled for later boots; the bench
# runs it in a network namespace of its own.
if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee /usr/sbin/policy-rc.d >/dev/null
    sudo_if_needed chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  installed=1
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb || installed=
  [ -z "$made_policy" ] || sudo_if_needed rm -f /usr/sbin/policy-rc.d
  [ -n "$installed" ] || { echo "installing orthanc failed" >&2; exit 1; }
  # Nor at the next boot.
  sudo_if_needed systemctl disable orthanc.service >/dev/null 2>&1 || true
fi
python3 -c 'import dicomweb_client' 2>/dev/null || python3 -m pip install -q dicomweb-client
( cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } )
# OHIF Viewer v3 for the DICOMweb interoperability test: npm's @ohif/app ships its built dist/;
# only that is unpacked (npm checks the tarball against the registry's integrity hash).
OHIF_VERSION=3.13.2
if [ "$(cat tests/browser/ohif/VERSION 2>/dev/null)" != "$OHIF_VERSION" ]; then
  rm -rf tests/browser/ohif && mkdir -p tests/browser/ohif
  ( cd tests/browser/ohif \
    && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null \
    && tar xzf "ohif-app-$OHIF_VERSION.tgz" --strip-components=1 package/dist \
    && rm "ohif-app-$OHIF_VERSION.tgz" && echo "$OHIF_VERSION" > VERSION )
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# Disk is finite on CI machines: no incremental caches there (a clean clone builds once anyway),
# and the free space is logged, so a full disk is seen for what it is.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
disk() { echo "disk ($1): $(df -h --output=avail "${CARGO_TARGET_DIR:-target}" 2>/dev/null | tail -1 || df -h --output=avail . | tail -1) free"; }

# Everything is built and tested with the optional JPEG-LS codec, one feature set for all steps
# (so nothing is built twice).
features=(--features discless/gdcm,discless/turbojpeg)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets "${features[@]}" -- -D warnings
cargo build --workspace --bins "${features[@]}"
disk "before the tests"
trap 'disk "at the end"' EXIT
cargo nextest run --workspace --no-fail-fast "${features[@]}"
cargo test --workspace --doc "${features[@]}"
