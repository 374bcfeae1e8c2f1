#!/usr/bin/env bash
# bench/gpu_session.sh: one device call of a GPU lease, on binaries built here (bench/gpu_bundle.sh).
#
#   run(command="bash bench/gpu_session.sh env:20 test:120 bench:200 grad:120 sanitize:60",
#       carry=["build/gpu_bundle.tar.xz", "build/wheels"], timeout_s=580)
#
# Each argument is STAGE:SECONDS, run in order, each stopped (with everything it started) after its
# seconds, so one slow stage cannot eat the lease and the results of the others always come back.
#   env       the card, the driver, the libraries the binaries resolve, torch, compute-sanitizer
#   test bench grad invert   bench/gpu_check.sh's stages (read its header), results in build/gpu_check
#   cudnn     SD_CUDNN_LOG=1: the convolution algorithms cuDNN runs for SD v1.5 (fast forward at batch 2,
#             a fast context step) and the convolutions that run as im2col + GEMM, with fast mode's
#             default (SD_CONV_GEMM=auto) and with cuDNN everywhere (off); then SD_CONV_ALGO=tune's and
#             SD_GEMM_ALGO=tune's timings per shape (every candidate, Winograd F(2x2, 3x3) included
#             through SD_CONV_WINOGRAD=on, and the choice)
#   images    after the invert stage (its SD v1.5 random-weight folder): whole-image `stylediff invert`
#             with StyleDiffusion and Null-text on data/images/chelsea.png (fast mode, default settings:
#             time per image, per timestep, reconstruction), a P2Plus edit from each (cat -> tiger,
#             LocalBlend), then `bench invert --profile` on one
#             StyleDiffusion timestep (where an inner iteration's time goes beyond the value step)
#   sanitize  compute-sanitizer memcheck on a fast and an exact one-step `generate` (tiny model) first,
#             then memcheck and racecheck on test_cuda_f16's attention cases (the fp16 kernels at
#             SD's head widths) and test_cuda_ops's attention backward cases (the flash backward,
#             SD_TEST_SMALL=1), memcheck with the Winograd kernels everywhere and on `bench grad`
#             (exact and fast), racecheck on a fast `generate`
# Results: $OUT/session.log (everything printed, written as it goes) and $OUT/results.tgz (the
# stages' files); without OUT, build/gpu_session/.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
RES=${OUT:-$ROOT/build/gpu_session}
mkdir -p "$RES"
exec > >(tee -a "$RES/session.log") 2>&1
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }

[ -f build/gpu_bundle.tar.xz ] || { echo "gpu_session: build/gpu_bundle.tar.xz missing: run bench/gpu_bundle.sh and carry it"; exit 1; }
tar -xJf build/gpu_bundle.tar.xz -C build || exit 1
# the binaries find the built-in tiny model through the source path compiled into them (the checkout
# they were built in): make that path lead here
for SRC_DIR in $(cat build/gpu_source_dir build/prev_source_dir 2>/dev/null); do
    if [ "$SRC_DIR" != "$ROOT" ] && [ ! -e "$SRC_DIR" ]; then
        mkdir -p "$(dirname "$SRC_DIR")" && ln -s "$ROOT" "$SRC_DIR" && echo "gpu_session: $SRC_DIR -> $ROOT"
    fi
done
# cuDNN comes from PyTorch's wheels when the toolkit has none (cuBLAS and the runtime too: wherever
# they are, the libraries of one folder belong together)
LIBS=$ROOT/build/gpu_lib
NV=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null)
if [ -n "$NV" ]; then
    for d in $(find "$NV" -name 'libcudnn.so.9' -o -name 'libcublas.so.13' -o -name 'libcudart.so.13' | xargs -r -n1 dirname | sort -u); do
        LIBS="$LIBS:$d"
    done
fi
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

stage_env() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    echo "repo: $ROOT; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd build/stylediff | grep -E 'not found|cudnn|cublas|cudart|openblas'
    python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
    (compute-sanitizer --version 2>/dev/null || /usr/local/cuda/bin/compute-sanitizer --version) | tail -n 1
    build/stylediff generate -p "a photo of a cat" --steps 3 --device cuda -o /tmp/gpu_session_gen.png
}
stage_cudnn() {
    # which convolution kernels cuDNN runs for SD v1.5 (random weights): forward at batch 2 in fast
    # mode (fp16), a fast context step (fp32 forward + backward data), heuristic and measured choice
    for convgemm in auto off; do
        echo "SD_CONV_GEMM=$convgemm: bench unet fast, batch 2"
        SD_CUDNN_LOG=1 SD_CONV_GEMM=$convgemm build/stylediff bench unet --config configs/sd-v1.5 --device cuda \
            --precision fast --batch 2 --iters 3 --no-graph -q 2>&1 | grep -E '^cudnn:|eager' | sort | uniq -c
        echo "SD_CONV_GEMM=$convgemm: bench grad fast, context step"
        SD_CUDNN_LOG=1 SD_CONV_GEMM=$convgemm build/stylediff bench grad --config configs/sd-v1.5 --device cuda \
            --precision fast --what context --iters 3 -q 2>&1 | grep -E '^cudnn:|^context' | sort | uniq -c
    done
    echo "SD_CONV_ALGO=tune SD_GEMM_ALGO=tune SD_CONV_WINOGRAD=on: bench unet fast, batch 2 (each fp16 convolution"
    echo "and linear shape timed once; Winograd F(2x2, 3x3) a candidate at 64x64 and 32x32)"
    SD_CUDNN_LOG=1 SD_GEMM_LOG=1 SD_CONV_ALGO=tune SD_GEMM_ALGO=tune SD_CONV_WINOGRAD=on build/stylediff bench unet --config configs/sd-v1.5 \
        --device cuda --precision fast --batch 2 --iters 3 -q 2>&1 | grep -E '^cudnn: graph|^cublasLt|plans|graph' | sort | uniq -c
}
stage_images() {
    local dir=/tmp/stylediff_gpu_check/invert
    [ -f "$dir/sd15/.complete" ] || { echo "images: no $dir/sd15 (run the invert stage first, in the same lease)"; return 1; }
    local rc=0 m
    for m in stylediffusion nulltext; do
        echo "images: stylediff invert --method $m, chelsea.png, fast"
        /usr/bin/time -f "images: $m wall %e s" build/stylediff invert --method $m -m "$dir/sd15" --clip "$dir/sd15-clip-vision" \
            -i data/images/chelsea.png -p "a cat sitting next to a mirror" -o "/tmp/gpu_session_inv_$m.safetensors" \
            --device cuda --precision fast 2>&1 | tail -n 6
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
        echo "images: stylediff edit (P2Plus, LocalBlend cat/tiger) from the $m inversion, fast"
        /usr/bin/time -f "images: edit from $m wall %e s" build/stylediff edit "/tmp/gpu_session_inv_$m.safetensors" \
            -m "$dir/sd15" --target "a tiger sitting next to a mirror" --blend cat,tiger \
            -o "/tmp/gpu_session_edit_$m.png" --device cuda --precision fast 2>&1 | tail -n 4
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    done
    echo "images: bench invert --profile, one StyleDiffusion timestep, 5 inner iterations"
    build/stylediff bench invert --profile --methods stylediffusion --timesteps 1 --inner-sd 5 -m "$dir/sd15" \
        --clip "$dir/sd15-clip-vision" --device cuda --precision fast 2>&1 | tail -n 40
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    return $rc
}
stage_sanitize() {
    local cs
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    local common=(--error-exitcode 9 --print-limit 20)
    local rc=0
    # issue 3's acceptance check first, so that a stage cut by its cap still has it: memcheck on
    # whole UNet calls (a fast and an exact one-step `generate`: text encoder, UNet, VAE)
    for prec in fast exact; do
        echo "memcheck: generate --precision $prec --steps 1"
        "$cs" --tool memcheck "${common[@]}" build/stylediff generate -p "a photo of a cat" --steps 1 \
            --device cuda --precision $prec -q -o /tmp/gpu_session_san.png || rc=1
    done
    # the fp16 attention kernels (cp.async / ldmatrix / shared-memory double buffering: the tiny
    # model's heads are too narrow to reach them), then more whole commands
    for tool in memcheck racecheck; do
        echo "$tool: test_cuda_f16's attention cases"
        SD_TEST_FILTER=test_f16_attention "$cs" --tool $tool "${common[@]}" build/tests/test_cuda_f16 2>&1 |
            grep -E "ERROR SUMMARY|RACECHECK SUMMARY|========= [A-Z]|PASSED|FAILED" | head -n 30
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
        # the flash backward (cp.async pipelines, split dK/dV) at the sizes the simulator runs
        echo "$tool: test_cuda_ops's attention backward cases (SD_TEST_SMALL=1)"
        SD_TEST_SMALL=1 SD_TEST_FILTER=test_attention_backward "$cs" --tool $tool "${common[@]}" build/tests/test_cuda_ops 2>&1 |
            grep -E "ERROR SUMMARY|RACECHECK SUMMARY|========= [A-Z]|PASSED|FAILED" | head -n 30
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    done
    for prec in exact fast; do
        # the Winograd kernels on every 3x3 "same" convolution (F(4x4) in exact mode, F(2x2) in fast)
        echo "memcheck: generate --precision $prec, SD_CONV_WINOGRAD=f4-all"
        SD_CONV_WINOGRAD=f4-all "$cs" --tool memcheck "${common[@]}" build/stylediff generate -p "a photo of a cat" \
            --steps 1 --device cuda --precision $prec -q -o /tmp/gpu_session_san.png || rc=1
    done
    echo "memcheck: bench grad --precision exact, SD_CONV_WINOGRAD=all (the data gradient's transforms)"
    SD_CONV_WINOGRAD=all "$cs" --tool memcheck "${common[@]}" build/stylediff bench grad --device cuda --precision exact \
        --what context --iters 1 -q || rc=1
    echo "memcheck: bench grad --precision fast (context and value steps, backward included)"
    "$cs" --tool memcheck "${common[@]}" build/stylediff bench grad --device cuda --precision fast --iters 1 -q || rc=1
    echo "racecheck: generate --precision fast"
    "$cs" --tool racecheck "${common[@]}" build/stylediff generate -p "a photo of a cat" --steps 1 \
        --device cuda --precision fast -q -o /tmp/gpu_session_san.png || rc=1
    return $rc
}

STATUS=""
for spec in "$@"; do
    name=${spec%%:*}
    cap=${spec#*:}
    [ "$cap" = "$spec" ] && cap=300
    echo "==================== $name (at most $cap s; started at $(elapsed)) ===================="
    case $name in
        env) timeout -k 5 "$cap" bash -c "ROOT=$ROOT; $(declare -f stage_env); stage_env" ;;
        sanitize) timeout -k 5 "$cap" bash -c "$(declare -f stage_sanitize); stage_sanitize" ;;
        cudnn) timeout -k 5 "$cap" bash -c "$(declare -f stage_cudnn); stage_cudnn" ;;
        images) timeout -k 5 "$cap" bash -c "$(declare -f stage_images); stage_images" ;;
        test|bench|grad|invert) OUT= timeout -k 5 "$cap" bash bench/gpu_check.sh "$name" ;;
        *) echo "gpu_session: unknown stage '$name' (env test bench grad invert images sanitize cudnn)"; false ;;
    esac
    rc=$?
    [ "$rc" = 124 ] && rc="stopped after $cap s"
    echo "==================== $name: $rc ($(elapsed)) ===================="
    STATUS="$STATUS $name=$rc;"
done
[ -d build/gpu_check ] && tar -czf "$RES/results.tgz.tmp" -C build gpu_check && mv "$RES/results.tgz.tmp" "$RES/results.tgz"
echo "gpu_session done in $(elapsed):$STATUS"
