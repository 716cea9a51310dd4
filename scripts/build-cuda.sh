#!/usr/bin/env bash
# Build the `storyreel` binary with the `cuda` feature on a machine that has no GPU and
# no CUDA installation (recipe: shared/specs/rust-stack.md §2.1 and §8.1).
#
#   bash scripts/build-cuda.sh
#
# What it does, all under target/cuda-build/ (git-ignored; nothing here is committed):
#   1. wheels/   pip-downloads the CUDA 13.0.x toolchain wheels from PyPI (nvcc, cudart,
#                CCCL headers, CRT headers, NVVM), pinned to 13.0.x so the PTX suits driver 580.
#   2. cuda/     unpacks them into a CUDA tree: cuda/nvidia/cu13/{bin/nvcc,nvvm,include,lib}.
#   3. vendor/candle-core
#                copies candle-core from the local cargo registry and switches its cudarc
#                feature "dynamic-linking" -> "dynamic-loading", so libcuda, cuBLAS(Lt),
#                cuRAND and NVRTC are dlopen()ed at run time instead of being needed at link
#                time (they are not available here). Only libcudart is linked (candle-kernels).
#   4. ws/       a copy of the workspace sources (Cargo.toml, Cargo.lock, crates/). The
#                [patch] rewrites Cargo.lock, so cargo runs on this copy and the checked-in
#                Cargo.lock is never touched.
#   5. target/   CARGO_TARGET_DIR of this build (the CPU build in target/ is left alone).
#                The binary is target/cuda-build/target/release/storyreel, with
#                libcudart.so.13 copied next to it (the binary has RPATH $ORIGIN).
#
# Re-running reuses the wheels, the unpacked toolchain, the vendored crate and the cargo
# cache, so only changed workspace code is rebuilt.
#
# Environment overrides: CUDA_COMPUTE_CAP (default 90 = H100/H200), PYTHON (default python3),
# CARGO (default cargo), NICE (default 10), BUILD_JOBS (cargo -j, default: cargo's own).
set -euo pipefail

die() { echo "build-cuda.sh: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/target/cuda-build"
WHEELS="$BUILD/wheels"
CUDA_TREE="$BUILD/cuda"
CU="$CUDA_TREE/nvidia/cu13"
VENDOR="$BUILD/vendor"
WS="$BUILD/ws"
export CARGO_TARGET_DIR="$BUILD/target"
BIN="$CARGO_TARGET_DIR/release/storyreel"

PYTHON="${PYTHON:-python3}"
CARGO="${CARGO:-cargo}"
NICE="${NICE:-10}"
COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

# Pinned CUDA 13.0.x wheels (PyPI). Do not move to 13.1+: newer PTX may not JIT on driver 580.
WHEEL_PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
)

START=$SECONDS

# ---------------------------------------------------------------- 0. tools
for tool in "$CARGO" "$PYTHON" unzip sed cp tar; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH"
done
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work (pip is needed to download the CUDA wheels)"
[ -f "$ROOT/Cargo.lock" ] || die "$ROOT/Cargo.lock not found"
mkdir -p "$BUILD"

# ---------------------------------------------------------------- 1. wheels
wheel_file() { # nvidia-cuda-nvcc==13.0.88 -> path of the downloaded wheel, or nothing
  local name="${1%%==*}" ver="${1##*==}"
  compgen -G "$WHEELS/${name//-/_}-${ver}-*.whl" | head -n 1 || true
}
missing=()
for pin in "${WHEEL_PINS[@]}"; do
  [ -n "$(wheel_file "$pin")" ] || missing+=("$pin")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "downloading CUDA wheels: ${missing[*]}"
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --python-version 3.11 -d "$WHEELS" "${missing[@]}" \
    || die "pip download of the CUDA wheels failed (needs access to PyPI)"
  for pin in "${missing[@]}"; do
    [ -n "$(wheel_file "$pin")" ] || die "wheel for $pin not found in $WHEELS after pip download"
  done
else
  say "CUDA wheels already downloaded ($WHEELS)"
fi

# ---------------------------------------------------------------- 2. unpack
STAMP="$CUDA_TREE/.unpacked-from"
want_stamp="$(printf '%s\n' "${WHEEL_PINS[@]}")"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want_stamp" ] || [ ! -x "$CU/bin/nvcc" ]; then
  say "unpacking CUDA wheels into $CUDA_TREE"
  rm -rf "$CUDA_TREE"
  mkdir -p "$CUDA_TREE"
  for pin in "${WHEEL_PINS[@]}"; do
    unzip -q -o "$(wheel_file "$pin")" -d "$CUDA_TREE" || die "unzip of the wheel for $pin failed"
  done
  # Wheels carry no executable bits for some files and no symlinks; fix both.
  chmod +x "$CU"/bin/* "$CU"/nvvm/bin/* 2>/dev/null || true
  [ -f "$CU/lib/libcudart.so.13" ] || die "libcudart.so.13 missing from the nvidia-cuda-runtime wheel"
  ln -sf libcudart.so.13 "$CU/lib/libcudart.so"
  printf '%s\n' "${WHEEL_PINS[@]}" > "$STAMP"
else
  say "CUDA toolchain already unpacked ($CU)"
fi
[ -x "$CU/bin/nvcc" ] || die "nvcc not found at $CU/bin/nvcc"
NVCC_VER="$("$CU/bin/nvcc" --version | sed -n 's/.*release [0-9.]*, V\([0-9.]*\).*/\1/p')"
case "$NVCC_VER" in
  13.0.*) ;;
  *) die "expected nvcc 13.0.x, got '$NVCC_VER' ($CU/bin/nvcc --version)" ;;
esac
say "nvcc $NVCC_VER"

# ---------------------------------------------------------------- 3. vendored candle-core
CANDLE_VER="$(awk '/^name = "candle-core"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")"
[ -n "$CANDLE_VER" ] || die "candle-core not found in Cargo.lock"
VCORE="$VENDOR/candle-core"
if [ ! -f "$VCORE/.storyreel-vendored" ] || [ "$(cat "$VCORE/.storyreel-vendored")" != "$CANDLE_VER" ]; then
  CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
  src="$(compgen -G "$CARGO_HOME_DIR/registry/src/*/candle-core-$CANDLE_VER" | head -n 1 || true)"
  if [ -z "$src" ]; then
    say "candle-core $CANDLE_VER not in the cargo registry cache; running cargo fetch"
    (cd "$ROOT" && "$CARGO" fetch --locked) || die "cargo fetch failed"
    src="$(compgen -G "$CARGO_HOME_DIR/registry/src/*/candle-core-$CANDLE_VER" | head -n 1 || true)"
    [ -n "$src" ] || die "candle-core-$CANDLE_VER not found under $CARGO_HOME_DIR/registry/src/"
  fi
  say "vendoring $src -> $VCORE (cudarc: dynamic-linking -> dynamic-loading)"
  rm -rf "$VCORE"
  mkdir -p "$VENDOR"
  cp -a "$src" "$VCORE"
  grep -q '"dynamic-linking"' "$VCORE/Cargo.toml" \
    || die "candle-core $CANDLE_VER Cargo.toml has no \"dynamic-linking\" feature; the recipe needs updating"
  sed -i 's/"dynamic-linking"/"dynamic-loading"/' "$VCORE/Cargo.toml"
  echo "$CANDLE_VER" > "$VCORE/.storyreel-vendored"
fi
grep -q '"dynamic-loading"' "$VCORE/Cargo.toml" && ! grep -q '"dynamic-linking"' "$VCORE/Cargo.toml" \
  || die "vendored $VCORE/Cargo.toml is not patched to dynamic-loading (delete $VCORE and re-run)"
say "vendored candle-core $CANDLE_VER ready ($VCORE)"

# ---------------------------------------------------------------- 4. workspace copy
# cp -a keeps mtimes, so cargo rebuilds only what really changed.
say "copying workspace sources to $WS"
mkdir -p "$WS"
rm -rf "$WS/crates"
cp -a "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/crates" "$WS/"
for f in rust-toolchain rust-toolchain.toml; do
  if [ -f "$ROOT/$f" ]; then cp -a "$ROOT/$f" "$WS/"; fi
done
if [ -d "$ROOT/.cargo" ]; then rm -rf "$WS/.cargo"; cp -a "$ROOT/.cargo" "$WS/"; fi

# ---------------------------------------------------------------- 5. build
JOBS_ARGS=()
if [ -n "${BUILD_JOBS:-}" ]; then JOBS_ARGS=(-j "$BUILD_JOBS"); fi
say "cargo build --release -p storyreel --features cuda (CUDA_COMPUTE_CAP=$COMPUTE_CAP; a cold build takes ~14 min on 2 cores)"
BUILD_START=$SECONDS
(
  cd "$WS"
  # RUSTFLAGS: find libcudart.so for the link; RPATH $ORIGIN so libcudart.so.13 next to
  # the binary is found at run time.
  env PATH="$CU/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_ROOT="$CU" \
      CUDA_COMPUTE_CAP="$COMPUTE_CAP" CUDARC_CUDA_VERSION=13000 \
      RUSTFLAGS="-L $CU/lib -C link-arg=-Wl,-rpath,\$ORIGIN" \
    nice -n "$NICE" "$CARGO" build --release -p storyreel --features cuda "${JOBS_ARGS[@]}" \
      --config "patch.crates-io.candle-core.path=\"$VCORE\""
) || die "cargo build failed (see the output above)"
BUILD_SECS=$((SECONDS - BUILD_START))
[ -x "$BIN" ] || die "build finished but $BIN is missing"

# ---------------------------------------------------------------- 6. runtime lib + check
cp -f "$CU/lib/libcudart.so.13" "$(dirname "$BIN")/libcudart.so.13"
"$BIN" --help >/dev/null || die "$BIN --help failed (does it find libcudart.so.13? try: ldd $BIN)"

SIZE="$(stat -c %s "$BIN")"
cat <<EOF

Built: $BIN
  size $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.1f MB", s / 1e6 }')), cargo build ${BUILD_SECS}s, whole script $((SECONDS - START))s
  CUDA toolchain: nvcc $NVCC_VER (PyPI wheels: ${WHEEL_PINS[*]}), PTX for sm_$COMPUTE_CAP
  libcudart.so.13 copied next to it (the binary has RPATH \$ORIGIN)

To run it on a GPU host (this machine has no GPU), copy the binary together with libcudart.so.13,
and make sure the host has:
  - an NVIDIA driver >= 580 (CUDA 13.0); libcuda.so.1 comes with the driver;
  - CUDA 13 libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13, from a CUDA 13
    installation or the PyPI nvidia-* cu13 wheels (e.g. a torch+cu130 venv: <site-packages>/nvidia/cu13/lib).
    They are dlopen()ed at run time, so put their folder on LD_LIBRARY_PATH, e.g.
      export LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib:\$LD_LIBRARY_PATH
  Then:  ./storyreel bench matmul --device cuda --dtype bf16
         ./storyreel bench dit --device cuda --dtype bf16
EOF
