#!/usr/bin/env bash
# bench/gpu_bundle.sh: packs what a GPU lease needs into build/gpu_bundle.tar.xz, built HERE.
#
#   bash bench/gpu_bundle.sh            # make (CUDA build) + pack; about 1 minute
#   PREV=b7215b5 bash bench/gpu_bundle.sh
#                                       # also build that commit (a git worktree in build/prev-src, a
#                                       # few minutes the first time) and pack its CLI as stylediff-prev:
#                                       # gpu_check's rows ending in @prev (fast@prev) run it, so a change
#                                       # made without a GPU is timed against what it replaced in the
#                                       # same run, on the same card
#
# Why: the lent GPU machines have nvcc, cuBLAS and PyTorch's cuDNN, but not the C libraries stylediff
# links (OpenBLAS, cJSON, libpng, libjpeg, cmocka) and no way to install them; building there also
# costs device minutes. So this machine builds, and the lease carries the binaries plus those
# libraries (8 MB compressed): run(command="bash bench/gpu_session.sh ...",
# carry=["build/gpu_bundle.tar.xz", "build/wheels"]).
#
# Contents (unpacked by gpu_session.sh into build/): gpu_source_dir (this checkout's path), stylediff, the test binaries that have GPU cases
# (tests/), and gpu_lib/ (the non-system shared libraries, resolved with ldd). Debug info is stripped;
# symbols stay, so a crash backtrace still names functions.
set -eu
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu_bundle: no nvcc here: a bundle without CUDA is useless" >&2; exit 1; }
GPU_TESTS="test_cuda_ops test_cuda_f16 test_device_parity test_cli_gpu test_step_graph test_batch_shard test_lpips"
make -j"$(nproc)" all $(for t in $GPU_TESTS; do printf 'build/tests/%s ' "$t"; done) >/dev/null
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/tests" "$STAGE/gpu_lib"
# the binaries find the built-in tiny model through this checkout's path (SD_SOURCE_DIR)
pwd > "$STAGE/gpu_source_dir"
strip --strip-debug -o "$STAGE/stylediff" build/stylediff
for t in $GPU_TESTS; do strip --strip-debug -o "$STAGE/tests/$t" "build/tests/$t"; done
if [ -n "${PREV:-}" ]; then
    prev=$(git rev-parse --short "$PREV^{commit}")
    PREV_SRC=$(pwd)/build/prev-src
    if [ "$(git -C "$PREV_SRC" rev-parse --short HEAD 2>/dev/null)" != "$prev" ]; then
        rm -rf "$PREV_SRC"
        git worktree prune
        git worktree add --detach "$PREV_SRC" "$prev" >/dev/null
    fi
    echo "gpu_bundle: building $prev in $PREV_SRC"
    make -C "$PREV_SRC" -j"$(nproc)" build/stylediff >/dev/null
    strip --strip-debug -o "$STAGE/stylediff-prev" "$PREV_SRC/build/stylediff"
    echo "$prev" > "$STAGE/prev_commit"
    echo "$PREV_SRC" > "$STAGE/prev_source_dir"
fi
# every shared library the binaries load except glibc's, the C++ runtime (newer on the GPU machine)
# and CUDA's own (the GPU machine's toolkit and PyTorch provide those)
ldd "$STAGE"/stylediff* "$STAGE"/tests/* | awk '/=> \// { print $3 }' | sort -u |
    grep -v -E '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/libcu|/libnv' |
    while read -r lib; do cp -L "$lib" "$STAGE/gpu_lib/"; done
# -9: a 64 MiB dictionary spans the binaries, which share most of their code (the kernels' fatbins):
# 11 MB where -6's 8 MiB window made 35 (the twentieth session's attention instantiations), and a
# lease carries 64 MiB with the tree and the wheel
tar -C "$STAGE" -cf - . | xz -T0 -9 > build/gpu_bundle.tar.xz.tmp
mv build/gpu_bundle.tar.xz.tmp build/gpu_bundle.tar.xz
echo "gpu_bundle: build/gpu_bundle.tar.xz ($(du -h build/gpu_bundle.tar.xz | cut -f1); libraries: $(ls "$STAGE/gpu_lib" | tr '\n' ' '))"
