#!/usr/bin/env bash
# Build qrm's CUDA binaries on a machine WITHOUT a GPU or a CUDA install, and package what a GPU
# machine needs to check them (scripts/cuda-check.sh runs there).
#
#   scripts/cuda-build.sh [toolkit|build|dist|all]      (default: all)
#
#   toolkit  pip-download the pinned CUDA 13.0 wheels (scripts/cuda-wheels.txt, sha256-checked)
#            and lay them out as a CUDA tree in $CUDA_TREE (default .cache/cuda/13.0):
#            bin/nvcc, nvvm/, include/, lib/ (+ unversioned .so links for the linker) and
#            lib/stubs/libcuda.so, a link-time stub of the driver API generated from cudarc's
#            bindings (no registry package ships libcuda.so; the device's driver provides the
#            real libcuda.so.1 at run time).
#   build    cargo build --release --features cuda --bins, niced, JOBS jobs (default 1), in
#            CARGO_TARGET_DIR (default target/cuda-build), CUDA_COMPUTE_CAP (default 90 = H100/H200);
#            SEED_FROM=<CPU target dir> copies its release/ first so polars & co are reused.
#   dist     strip the binaries the check needs into $DIST (default .cache/cuda-dist) as one tar.xz,
#            add libcudart.so.13, synth generations and a manifest; fail if over 56 MiB.
#
# Carry to the device with the run tool: carry=[".cache/cuda-dist", ".cache/cuda-dist-curand"]
# (the second only matters where the device has no libcuRAND 13), then
#   bash scripts/cuda-check.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

CUDA_TREE="${CUDA_TREE:-$REPO/.cache/cuda/13.0}"
WHEELS="${CUDA_WHEELS_DIR:-$REPO/.cache/cuda/wheels}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target/cuda-build}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
JOBS="${JOBS:-1}"
DIST="${DIST:-$REPO/.cache/cuda-dist}"
DIST_LIMIT_MIB="${DIST_LIMIT_MIB:-40}"  # a run takes 64 MiB, tracked files included
# the binaries the device check runs (every one links polars, so each is ~tens of MB stripped)
DIST_BINS="${DIST_BINS:-qrm-score qrm-train qrm-embed}"
CUDARC_VERSION=0.19.10

say() { printf '[cuda-build] %s\n' "$*" >&2; }
die() { printf '[cuda-build] ERROR: %s\n' "$*" >&2; exit 1; }

cuda_env() {
    export CUDA_HOME="$CUDA_TREE" CUDA_PATH="$CUDA_TREE" CUDA_ROOT="$CUDA_TREE"
    export NVCC="$CUDA_TREE/bin/nvcc"
    export PATH="$CUDA_TREE/bin:$PATH"
    # cudarc reads the version from `nvcc --version`; pin it too (13.0 -> "13000").
    export CUDARC_CUDA_VERSION=13000
    # cudaforge (candle-kernels' build script) runs this many nvcc at once
    export CUDAFORGE_THREADS="$JOBS"
}

step_toolkit() {
    local stamp="$CUDA_TREE/.installed"
    if [[ -f "$stamp" ]] && cmp -s "$stamp" scripts/cuda-wheels.txt; then
        say "toolkit: $CUDA_TREE is up to date"
    else
        command -v python3 >/dev/null || die "python3 with pip is needed to download the CUDA wheels"
        command -v unzip >/dev/null || die "unzip is needed (apt-get install unzip)"
        command -v gcc >/dev/null || die "gcc is needed (nvcc's host compiler and the libcuda stub)"
        mkdir -p "$WHEELS"
        say "toolkit: downloading the pinned wheels into $WHEELS (~680 MB the first time)"
        python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
            -r scripts/cuda-wheels.txt -d "$WHEELS" \
            || die "pip download of scripts/cuda-wheels.txt failed (network? hash mismatch?)"
        rm -rf "$CUDA_TREE.tmp" && mkdir -p "$CUDA_TREE.tmp"
        local name ver whl
        while read -r spec _; do
            [[ -z "$spec" || "$spec" == \#* ]] && continue
            name="${spec%%==*}"; ver="${spec#*==}"
            whl=$(ls "$WHEELS/${name//-/_}-$ver-"*.whl 2>/dev/null | head -1)
            [[ -n "$whl" ]] || die "no wheel for $spec in $WHEELS"
            say "toolkit: unpacking $(basename "$whl")"
            unzip -q -o "$whl" 'nvidia/cu13/*' -d "$CUDA_TREE.tmp/x"
        done < scripts/cuda-wheels.txt
        mv "$CUDA_TREE.tmp/x/nvidia/cu13"/* "$CUDA_TREE.tmp/"
        rm -rf "$CUDA_TREE.tmp/x" "$CUDA_TREE.tmp/.metadata"
        (   cd "$CUDA_TREE.tmp/lib"
            # the linker wants unversioned names (-lcublas); the wheels ship only sonames
            for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
                [[ -f "$so" ]] || die "$so missing from the wheels"
                ln -sf "$so" "${so%.so.*}.so"
            done
        )
        ln -sfn lib "$CUDA_TREE.tmp/lib64"
        make_libcuda_stub "$CUDA_TREE.tmp/lib/stubs"
        rm -rf "$CUDA_TREE" && mv "$CUDA_TREE.tmp" "$CUDA_TREE"
        cp scripts/cuda-wheels.txt "$stamp"
    fi
    cuda_env
    "$NVCC" --version | grep -q 'release 13\.0' || die "$NVCC is not CUDA 13.0: $("$NVCC" --version | tail -2)"
    # smoke test: one kernel with the headers candle's kernels include, to PTX for sm_90a
    local t; t=$(mktemp -d)
    printf '#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include <mma.h>\n#include <cuda_runtime.h>\n__global__ void k(__half *x) { x[threadIdx.x] = __hadd(x[threadIdx.x], x[threadIdx.x]); }\n' > "$t/k.cu"
    "$NVCC" --ptx -std=c++17 -arch="sm_${CUDA_COMPUTE_CAP}a" "$t/k.cu" -o "$t/k.ptx" \
        || die "nvcc cannot compile a test kernel (host gcc: $(gcc -dumpfullversion))"
    grep -q '^\.version 9\.0' "$t/k.ptx" || say "warning: PTX ISA is not 9.0: $(grep '^\.version' "$t/k.ptx")"
    rm -rf "$t"
    say "toolkit: ok ($("$NVCC" --version | grep -o 'V13[0-9.]*'), CUDA_HOME=$CUDA_TREE)"
}

# libcuda.so for the linker: every driver-API function cudarc 0.19.10 declares, each returning
# CUDA_ERROR_STUB_LIBRARY (34). Never shipped; at run time the driver's libcuda.so.1 is used.
make_libcuda_stub() {
    local dir="$1" sys
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-$CUDARC_VERSION/src/driver/sys/mod.rs 2>/dev/null | head -1)
    if [[ -z "$sys" ]]; then
        cargo fetch --quiet >/dev/null 2>&1 || true
        sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-$CUDARC_VERSION/src/driver/sys/mod.rs 2>/dev/null | head -1)
    fi
    [[ -n "$sys" ]] || die "cudarc-$CUDARC_VERSION sources not found (cargo fetch failed?)"
    mkdir -p "$dir"
    grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys" | awk '{print $4}' | sort -u \
        | awk '{printf "int %s(void) { return 34; }\n", $1}' > "$dir/libcuda_stub.c"
    [[ $(wc -l < "$dir/libcuda_stub.c") -gt 300 ]] || die "too few cu* functions found in $sys"
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/libcuda_stub.c"
    ln -sf libcuda.so "$dir/libcuda.so.1"  # lets the CPU-only tools of this build start here
    say "toolkit: libcuda stub with $(wc -l < "$dir/libcuda_stub.c") functions"
}

step_build() {
    cuda_env
    [[ -x "$NVCC" ]] || die "no toolkit in $CUDA_TREE: run '$0 toolkit' first"
    say "build: cargo build --release --features cuda --bins -j $JOBS (nice 19) into $CARGO_TARGET_DIR, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
    # SEED_FROM=<a CPU build's target dir>: copy its release/ first; cargo then rebuilds only the
    # crates the cuda feature changes (candle-*, qrm) and reuses polars & co (~half the time)
    if [[ -n "${SEED_FROM:-}" && ! -d "$CARGO_TARGET_DIR/release" && -d "$SEED_FROM/release" ]]; then
        say "build: seeding $CARGO_TARGET_DIR/release from $SEED_FROM/release"
        mkdir -p "$CARGO_TARGET_DIR" && nice -n 19 cp -a "$SEED_FROM/release" "$CARGO_TARGET_DIR/release"
    fi
    local t0=$SECONDS
    nice -n 19 cargo build --release --features cuda --bins -j "$JOBS"
    say "build: done in $((SECONDS - t0)) s"
    local b="$CARGO_TARGET_DIR/release/qrm-score"
    readelf -d "$b" | grep -q 'libcuda.so.1' || die "$b does not link libcuda.so.1: not a CUDA build?"
    say "build: $b needs: $(readelf -d "$b" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
}

step_dist() {
    local rel="$CARGO_TARGET_DIR/release"
    rm -rf "$DIST.tmp" && mkdir -p "$DIST.tmp/bin" "$DIST.tmp/lib" "$DIST.tmp/data"
    local b stage="$DIST.tmp/stage"
    mkdir -p "$stage"
    for b in $DIST_BINS; do
        [[ -x "$rel/$b" ]] || die "$rel/$b missing: run '$0 build' first"
        readelf -d "$rel/$b" | grep -q 'libcuda.so.1' || die "$rel/$b is not a CUDA build"
        strip -o "$stage/$b" "$rel/$b"
    done
    # one archive with a dictionary bigger than a binary, so the code the binaries share
    # (polars, candle, the kernels) is stored once: ~1.5x one binary instead of 3x
    say "dist: compressing $(du -sh "$stage" | cut -f1) of binaries (xz, 192 MiB dictionary; minutes)"
    tar -C "$stage" -cf - $DIST_BINS \
        | nice -n 19 xz -T1 --lzma2=preset=6,dict=192MiB -c > "$DIST.tmp/bin/qrm-bins.tar.xz"
    rm -rf "$stage"
    # the CUDA runtime is small and candle-kernels links it; ship it in case the device lacks it
    cp -L "$CUDA_TREE/lib/libcudart.so.13" "$DIST.tmp/lib/"
    # cuRAND (candle opens a generator when it opens the device, and a new value head is drawn
    # with it): 132 MB, 39 MB as xz, in a folder of its own so that it is carried only where
    # the device lacks it (a PyTorch install often has cuBLAS 13 but no cuRAND).
    if [[ "${DIST_CURAND:-1}" == 1 ]]; then
        local cur="$DIST-curand" want
        want="$(sha256sum "$CUDA_TREE/lib/libcurand.so.10" | cut -d' ' -f1)"
        if [[ -f "$cur/libcurand.so.10.xz" && "$(cat "$cur/SOURCE_SHA256" 2>/dev/null)" == "$want" ]]; then
            say "dist: $cur is up to date"
        else
            say "dist: compressing libcurand.so.10 into $cur (xz -9; minutes)"
            rm -rf "$cur" && mkdir -p "$cur"
            nice -n 19 xz -T1 -9 -c "$CUDA_TREE/lib/libcurand.so.10" > "$cur/libcurand.so.10.xz.tmp"
            mv "$cur/libcurand.so.10.xz.tmp" "$cur/libcurand.so.10.xz"
            echo "$want" > "$cur/SOURCE_SHA256"
        fi
    fi
    # synth generations for the throughput run
    make_check_data "$DIST.tmp/data"
    {
        echo "built: $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+dirty')"
        echo "cuda: $("$CUDA_TREE/bin/nvcc" --version | grep -o 'V13[0-9.]*') compute_cap=$CUDA_COMPUTE_CAP"
        echo "needs: $(readelf -d "$rel/qrm-score" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
        (cd "$DIST.tmp" && find . -type f ! -name MANIFEST | sort | xargs sha256sum)
    } > "$DIST.tmp/MANIFEST"
    rm -rf "$DIST" && mv "$DIST.tmp" "$DIST"
    local size tracked extra=0
    size=$(du -sb "$DIST" | cut -f1)
    [[ -d "$DIST-curand" ]] && extra=$(du -sb "$DIST-curand" | cut -f1)
    tracked=$(git ls-files -z | xargs -0 cat 2>/dev/null | wc -c)
    say "dist: $DIST is $((size / 1024 / 1024)) MiB ($size bytes):"
    (cd "$DIST" && find . -type f | sort | xargs ls -l | awk '{printf "  %10d %s\n", $5, $9}') >&2
    [[ $extra -gt 0 ]] && say "dist: $DIST-curand is $((extra / 1024 / 1024)) MiB ($extra bytes), carry it where the device has no libcurand.so.10"
    say "dist: with the tracked files ($((tracked / 1024 / 1024)) MiB) a carry of both is $(((size + extra + tracked) / 1024 / 1024)) MiB of the 64 MiB a run takes"
    [[ $size -le $((DIST_LIMIT_MIB * 1024 * 1024)) ]] \
        || die "dist is over ${DIST_LIMIT_MIB} MiB: drop binaries (DIST_BINS) or compress harder"
    [[ $((size + extra + tracked)) -le $((62 * 1024 * 1024)) ]] \
        || say "WARNING: dist + curand + tracked files are over 62 MiB: carry .cache/cuda-dist-curand only if the device lacks cuRAND"
}

make_check_data() {
    # synth generations for the throughput run (the CPU-only qrm-synth of this CUDA build still
    # needs libcuda.so.1 to load: point it at the stub)
    local out="$1" synth="$CARGO_TARGET_DIR/release/qrm-synth"
    [[ -x "$synth" ]] || die "$synth missing"
    LD_LIBRARY_PATH="$CUDA_TREE/lib:$CUDA_TREE/lib/stubs" "$synth" --questions 256 --seed 7 -q \
        -o "$out/gens.parquet"
}

case "${1:-all}" in
    toolkit) step_toolkit ;;
    build) step_build ;;
    dist) step_dist ;;
    all) step_toolkit; step_build; step_dist ;;
    *) die "usage: $0 [toolkit|build|dist|all]" ;;
esac
