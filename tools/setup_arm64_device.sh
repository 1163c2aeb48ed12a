#!/usr/bin/env bash
# Prepare an emulated arm64 TVM device: an aarch64 Python 3.11 + TVM wheels run
# under qemu-user (recipe: /work/shared/TOOLCHAIN.md, "An emulated arm64 device").
#
#   tools/setup_arm64_device.sh [DIR]
#
# DIR defaults to ${PFCOMPILE_CACHE:-$HOME/.cache/pfcompile}/arm64-device.
# Layout made:  DIR/root  (aarch64 sysroot: python3.11, libc, ...; root/usr/bin/python3
#               is a wrapper that re-enters qemu-aarch64)
#               DIR/site  (aarch64 wheels: apache-tvm, apache-tvm-ffi, cloudpickle, psutil, tornado)
#               DIR/.stamp (written last; its presence means the folder is complete)
# Idempotent: with the stamp present (and matching versions) it does nothing; each step
# also skips work already done, so an interrupted run resumes.
# Serve with:  pfcompile device serve --target arm64
#   (= PYTHONPATH=DIR/site DIR/root/usr/bin/python3 -m tvm.exec.rpc_server --host 127.0.0.1 ...)
# Latencies measured on this device are functional checks only, never ARM latencies.
set -euo pipefail

TVM_VERSION="0.27.0.post1"
TVM_FFI_VERSION="0.1.14.post1"
STAMP_TEXT="apache-tvm==${TVM_VERSION} apache-tvm-ffi==${TVM_FFI_VERSION} python3.11 v1"

DIR="${1:-${PFCOMPILE_CACHE:-$HOME/.cache/pfcompile}/arm64-device}"
ROOT="$DIR/root"
SITE="$DIR/site"
DEBS="$DIR/debs"
STAMP="$DIR/.stamp"
# the host Python whose pip downloads the aarch64 wheels: $PFCOMPILE_HOST_PYTHON, else the
# repository's .venv, else python3
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PFCOMPILE_HOST_PYTHON:-}" ]]; then PY="$PFCOMPILE_HOST_PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY="python3"; fi

log() { printf '[setup-arm64] %s\n' "$*"; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]]; then
    log "ready (reusing $DIR: $STAMP_TEXT)"
    exit 0
fi
mkdir -p "$ROOT" "$SITE" "$DEBS"

SUDO=""
if [[ "$(id -u)" != "0" ]]; then SUDO="sudo"; fi

# 1. qemu-user and the cross compiler (host packages).
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if ((${#need[@]})); then
    log "1/5 apt-get install ${need[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
else
    log "1/5 qemu-aarch64 and aarch64-linux-gnu-g++ present"
fi
# LLVM's lld (>= 18) links arm64 libraries without GNU ld's 0-64 KB of RELRO padding
# (pfcompile.compiler.cross_link_options); optional: GNU ld is used without it
if ! ls /usr/lib/llvm-1[89]/bin/ld.lld /usr/lib/llvm-[2-9][0-9]/bin/ld.lld >/dev/null 2>&1; then
    if apt-cache policy lld-19 2>/dev/null | grep -q "Candidate: [0-9]"; then
        log "1/5 apt-get install lld-19 (optional)"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q lld-19 \
            || log "1/5 lld-19 not installed: arm64 libraries linked by GNU ld"
    fi
fi

# 2. aarch64 runtime packages, unpacked (not installed) into ROOT.
PKGS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6
      libgcc-s1 zlib1g libffi8 libssl3 libexpat1 libbz2-1.0 liblzma5 libsqlite3-0
      libncursesw6 libtinfo6 libuuid1 libreadline8 libgomp1)
if [[ -x "$ROOT/usr/bin/python3.11" && -f "$DEBS/.unpacked" ]]; then
    log "2/5 aarch64 sysroot present ($ROOT)"
else
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "2/5 dpkg --add-architecture arm64 && apt-get update"
        $SUDO dpkg --add-architecture arm64
        $SUDO apt-get update -q
    elif ! apt-cache show libc6:arm64 >/dev/null 2>&1; then
        log "2/5 apt-get update (arm64 package lists missing)"
        $SUDO apt-get update -q
    fi
    log "2/5 apt-get download ${#PKGS[@]} arm64 packages into $DEBS"
    (cd "$DEBS" && for p in "${PKGS[@]}"; do
        ls "${p}"_*_arm64.deb >/dev/null 2>&1 || apt-get download -q "${p}:arm64"
    done)
    log "2/5 unpacking into $ROOT"
    for deb in "$DEBS"/*.deb; do dpkg -x "$deb" "$ROOT"; done
    touch "$DEBS/.unpacked"
fi

# 3. aarch64 wheels for TVM and the RPC server's needs.
if [[ -f "$SITE/.installed" && "$(cat "$SITE/.installed")" == "$STAMP_TEXT" ]]; then
    log "3/5 aarch64 wheels present ($SITE)"
else
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        log "3/5 '$PY -m pip' does not work: set PFCOMPILE_HOST_PYTHON to a Python with pip"
        exit 1
    fi
    log "3/5 pip install aarch64 wheels into $SITE with $PY (~370 MB download)"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade --target "$SITE" \
        --only-binary=:all: --python-version 3.11 --implementation cp \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_24_aarch64 \
        "apache-tvm==${TVM_VERSION}" "apache-tvm-ffi==${TVM_FFI_VERSION}" \
        cloudpickle psutil tornado
    printf '%s' "$STAMP_TEXT" > "$SITE/.installed"
fi

# 4. The wrapper: the RPC server re-executes sys.executable for its workers, and the
#    kernel may have no binfmt entry for aarch64, so sys.executable must re-enter qemu.
WRAP="$ROOT/usr/bin/python3"
log "4/5 writing wrapper $WRAP"
rm -f "$WRAP"
cat > "$WRAP" <<EOF
#!/bin/sh
# aarch64 python3.11 under qemu-user (written by tools/setup_arm64_device.sh)
exec qemu-aarch64 -L "$ROOT" -0 "\$0" "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$WRAP"

# 5. Smoke test: the emulated python imports tvm and reports aarch64 (~20-40 s).
log "5/5 smoke test: import tvm under qemu-aarch64 (takes ~20-40 s)"
out="$(PYTHONPATH="$SITE" timeout 300 "$WRAP" -c \
    'import platform, tvm; print(platform.machine(), tvm.__version__)')"
log "   -> $out"
case "$out" in
    aarch64*) ;;
    *) log "smoke test failed: expected 'aarch64 <version>', got '$out'"; exit 1 ;;
esac

printf '%s' "$STAMP_TEXT" > "$STAMP"
log "ready: $DIR"
log "serve: pfcompile device serve --target arm64   (functional checks only under qemu)"
