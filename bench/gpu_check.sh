#!/usr/bin/env bash
# bench/gpu_check.sh: the one command a GPU session runs. From anywhere:
#
#   bash bench/gpu_check.sh                 # build, test, bench
#   bash bench/gpu_check.sh build test      # or any subset of the stages, in this order
#   bash bench/gpu_check.sh bench
#
# Stages
#   build  make -j all + every test binary (the CUDA build when nvcc exists; says so)
#   test   $BUILD/tests/test_cuda_ops (every CUDA op vs the CPU, the tiny model vs the oracle, CUDA
#          graphs), then every other test binary through tests/run_tests.sh (capped by TEST_TIMEOUT)
#   bench  `stylediff bench unet` on the GPU, BENCH_PRECS (exact, fast and the settings still open), batch 1 and 2, eager and
#          CUDA graph, for the built-in tiny model and the SD v1.5 architecture with random weights
#          (512x512, 64x64 latent); then bench/reference/unet_torch.py times PyTorch on the same card with the
#          SAME weights (written by --save-weights) and checks parity on stylediff's own inputs and
#          outputs (--save-io); one table with the ratios; then one call per BREAKDOWN_PRECS mode with
#          every op timed alone (--profile: time, TFLOP/s and GB/s per class of op).
#   grad   bench/grad_side_by_side.sh --device cuda for each of GRAD_MODELS (default "tiny sd15"): one
#          gradient step through the UNet (Null-text's context step, StyleDiffusion's value step) and one
#          forward, stylediff exact and fast vs PyTorch fp32 on the same weights; parity of the losses and
#          gradients against torch autograd, memory (activations + weights, device in use). Issue 4's table.
#          Then where a fast-mode context and value step's time goes on SD v1.5 (bench grad --profile).
#   invert (not in the default list: `bash bench/gpu_check.sh build invert`) bench/invert_side_by_side.sh
#          --device cuda for each of INVERT_MODELS (default sd15): stylediff bench invert (exact, fast)
#          vs bench/reference/invert_torch.py (fp32 explicit / SDPA) on the same weights: DDIM
#          inversion, Null-text per timestep, StyleDiffusion per inner iteration, one table; files
#          under $WORK_DIR/invert_<model>, the table in gpu_check.log. INVERT_ARGS adds options.
#
# Results: $OUT/gpu_check/ when OUT is set (the GPU tool copies $OUT back), else build/gpu_check/:
#   gpu_check.log (everything printed), results.tsv (raw rows), table.txt, test_*.log.
#   Weights (3.4 GB for SD v1.5) go to $WORK_DIR (default /tmp/stylediff_gpu_check), never to $OUT.
#
# Knobs: BUILD (build folder, default build), ITERS (timed calls, default 20), SIZE (image side, default 512), MODELS (default
#   "tiny sd15"), TEST_TIMEOUT (seconds for the non-CUDA tests, default 420), PYTHON (default
#   python3), BENCH_PRECS / BREAKDOWN_PRECS (the bench stage's rows and per-op breakdowns, default the
#   settings still open: exact, exact+direct, exact+wino-all, exact+wino4-all, exact+wino-mixed, fast,
#   fast+graph, fast+tune, fast+cudnn / exact, exact+wino-mixed, fast, fast+tune; set but empty: none; any row the bench stage's comment names works,
#   and any row with @prev appended runs on the bundle's stylediff-prev, an earlier commit's binary: PREV=<commit>
#   bash bench/gpu_bundle.sh), TORCH_MODES (unet_torch.py's
#   --modes, default its own list; fp32-sdpa,fp16-sdpa is what the ratios need), GRAD_PRECISION (the grad
#   stage's rows: grad_side_by_side.sh's --precision, default its own list), DIFFUSERS_WHEEL (a diffusers wheel to install offline; default build/wheels/diffusers-*.whl).
# Missing pieces (no GPU, no nvcc, no torch, no diffusers) each print one line and the rest goes on.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
RES=${OUT:+$OUT/gpu_check}
RES=${RES:-$ROOT/build/gpu_check}
WORK_DIR=${WORK_DIR:-/tmp/stylediff_gpu_check}
ITERS=${ITERS:-20}
SIZE=${SIZE:-512}
MODELS=${MODELS:-tiny sd15}
TEST_TIMEOUT=${TEST_TIMEOUT:-420}
PYTHON=${PYTHON:-python3}
JOBS=$(nproc 2>/dev/null || echo 4)
BUILD=${BUILD:-build}
BENCH_PRECS=${BENCH_PRECS:-exact exact+direct exact+wino-all exact+wino4-all exact+wino-mixed fast fast+graph fast+tune fast+cudnn}
BREAKDOWN_PRECS=${BREAKDOWN_PRECS-exact exact+wino-mixed fast fast+tune}
mkdir -p "$RES" "$WORK_DIR"
LOG="$RES/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

STAGES="$*"
[ -z "$STAGES" ] && STAGES="build test bench grad"
want() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
note() { echo "gpu_check: $*"; }
. bench/row_settings.sh
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }
FAILED=0

echo "==================== stylediff gpu_check ($(date -u '+%Y-%m-%d %H:%M UTC'), stages: $STAGES) ===================="
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
else
    note "nvidia-smi not found: no NVIDIA driver here? (CUDA tests will skip, benchmarks will not run)"
fi
NVCC=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
if [ -n "$NVCC" ]; then "$NVCC" --version | tail -n 2 | head -n 1; else note "nvcc not found: the build will be CPU-only"; fi
echo "cores: $JOBS, results: $RES"

# ------------------------------------------------------------------------------------------------
if want build; then
    echo "---- build ($(elapsed)) ----"
    TESTS=$(for f in tests/unit/test_*.c; do printf '%s/tests/%s ' "$BUILD" "$(basename "$f" .c)"; done)
    if ! make -j"$JOBS" BUILD="$BUILD" all $TESTS > "$RES/build.log" 2>&1; then
        tail -n 40 "$RES/build.log"
        note "BUILD FAILED (full log: $RES/build.log)"
        exit 1
    fi
    if ls $BUILD/obj/kernels/*.o >/dev/null 2>&1; then
        note "built with CUDA: $(ls $BUILD/obj/kernels/*.o | wc -l) kernel objects"
    else
        note "built WITHOUT CUDA (no nvcc): the GPU parts cannot run"
    fi
    grep -c "warning:" "$RES/build.log" | sed 's/^/gpu_check: compiler warnings: /'
fi

# ------------------------------------------------------------------------------------------------
if want test; then
    echo "---- test_cuda_ops ($(elapsed)) ----"
    if [ -x $BUILD/tests/test_cuda_ops ]; then
        $BUILD/tests/test_cuda_ops > "$RES/test_cuda_ops.log" 2>&1
        rc=$?
        # the per-check lines (errors measured) and cmocka's verdicts
        grep -E "max rel err|bit-identical|\[  (FAILED|PASSED|SKIPPED) \]|\[  ERROR   \]|^\[ RUN|OK \]|SKIP|Failure|error:|cuda:0|ms per call|message" \
            "$RES/test_cuda_ops.log" | grep -v "^\[ RUN" | head -n 400
        [ "$rc" -ne 0 ] && { note "test_cuda_ops FAILED (exit $rc; full log: $RES/test_cuda_ops.log)"; FAILED=1; }
    else
        note "$BUILD/tests/test_cuda_ops missing: run the build stage first"
        FAILED=1
    fi
    echo "---- all other tests ($(elapsed)) ----"
    OTHERS=$(ls "$BUILD"/tests/test_* 2>/dev/null | grep -v -E '\.d$|test_cuda_ops$' | tr '\n' ' ')
    if [ -n "$OTHERS" ]; then
        timeout "$TEST_TIMEOUT" sh tests/run_tests.sh $OTHERS > "$RES/test_others.log" 2>&1
        rc=$?
        grep -E "\[  FAILED  \]|counted as one failure" "$RES/test_others.log" | head -n 40
        # test_device_parity's programmatic dependent launch check (SD_CUDA_PDL) against plain launches
        grep -E "programmatic launches|test_programmatic_launch_cuda" "$RES/test_others.log" | head -n 6
        if [ "$rc" -eq 124 ]; then
            note "other tests stopped after TEST_TIMEOUT=$TEST_TIMEOUT s (log: $RES/test_others.log)"
        else
            tail -n 1 "$RES/test_others.log" | sed 's/^/gpu_check: other tests: /'
            [ "$rc" -ne 0 ] && FAILED=1
        fi
    fi
fi

# ------------------------------------------------------------------------------------------------
if want bench; then
    echo "---- bench ($(elapsed)) ----"
    TSV="$RES/results.tsv"
    : > "$TSV"
    SD=./$BUILD/stylediff
    [ -x "$SD" ] || { note "$SD missing: run the build stage first"; exit 1; }
    if ! nvidia-smi -L >/dev/null 2>&1; then
        note "no GPU visible (nvidia-smi -L failed): benchmarks skipped"
        MODELS=""
    fi
    HAVE_TORCH=0
    if "$PYTHON" -c "import torch, safetensors; assert torch.cuda.is_available()" 2>/dev/null; then
        HAVE_TORCH=1
        "$PYTHON" -c "import torch; print('gpu_check: torch', torch.__version__, 'CUDA', torch.version.cuda)"
        if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
            WHEEL=${DIFFUSERS_WHEEL:-$(ls build/wheels/diffusers-*.whl 2>/dev/null | head -n 1)}
            if [ -n "$WHEEL" ] && [ -f "$WHEEL" ]; then
                "$PYTHON" -m pip install --quiet --no-deps --no-index --target "$WORK_DIR/pydeps" "$WHEEL" \
                    >/dev/null 2>&1 && export PYTHONPATH="$WORK_DIR/pydeps${PYTHONPATH:+:$PYTHONPATH}"
            fi
        fi
        if "$PYTHON" -c "import diffusers" 2>"$RES/diffusers_import.log"; then
            "$PYTHON" -c "import diffusers; print('gpu_check: diffusers', diffusers.__version__)"
        else
            note "diffusers not importable ($(tail -n 1 "$RES/diffusers_import.log")): the reference uses" \
                 "bench/reference/sd_unet_torch.py (the same module tree and arithmetic in plain PyTorch)"
        fi
    else
        note "PyTorch with CUDA (and safetensors) not available to $PYTHON: the reference side is skipped"
    fi

    # args / cfg: `bench unet`'s options and the UNet config for a model of MODELS
    model_args() {
        case $1 in
            tiny) args=""; cfg=configs/tiny/unet.json ;;
            sd15) args="--config configs/sd-v1.5"; cfg=configs/sd-v1.5/unet.json ;;
            *) note "unknown model '$1' in MODELS (tiny, sd15)"; return 1 ;;
        esac
    }
    for model in $MODELS; do
        model_args "$model" || continue
        W="$WORK_DIR/weights_$model.safetensors"
        rm -f "$W"
        ios=""
        for batch in 1 2; do
            # exact = exact mode's default: the 3x3 convolutions at 64x64 and 32x32 as fp32 Winograd
            # F(4x4, 3x3) (SD_CONV_WINOGRAD=auto), the others im2col + SGEMM; exact+direct =
            # SD_CONV_WINOGRAD=off, every convolution im2col + SGEMM; exact+wino = on, F(2x2, 3x3) at
            # 64x64 and 32x32; exact+wino4-all = f4-all, F(4x4) on the 16x16 and 8x8 levels too;
            # exact+wino-mixed = f4-mixed, F(4x4) at 64x64 and 32x32 and F(2x2) on the smaller maps;
            # fast+wino = on, F(2x2, 3x3) on fast mode's fp16 channels-last maps at 64x64 and 32x32
            # (fp16 transformed operands, tensor-core GEMMs, the epilogue in the output transform)
            # instead of cuDNN; fast+wino-all / exact+wino-all = all, F(2x2) everywhere;
            # fast = fp16 UNet activations (the default); fast+fa1 = SD_FLASH_BLOCKS_PER_SM=1, the fp16
            # flash attention at D 40 one block per SM without its register spill instead of two
            # with it; fast+graph = SD_CONV_ALGO=graph, the fp16 cuDNN convolutions through the graph
            # API's first engine; fast+tune = SD_CONV_ALGO=tune SD_GEMM_ALGO=tune, each convolution
            # shape timed once between im2col + GEMM, the legacy algorithm and the graph API's
            # engines, each cuBLASLt linear between the heuristic's first 8 algorithms (its rows are
            # labelled fast+tune+gtune); fast+cudnn = SD_CONV_GEMM=off, cuDNN for
            # every convolution (fast mode's default runs the 16x16 and 8x8 levels as im2col + GEMM).
            # (Measured and settled: SD_CONV_ALGO=find, cuDNN's timed legacy choice, slower than its
            # heuristic on an H200; SD_CONV_GEMM=all lost, 14.2 ms; fp16 against F32 storage, 6.03 /
            # 9.12 against 9.88 / 16.09 ms; NCHW fp16 maps (SD_CHANNELS_LAST=0) 6.10 / 9.16 ms; exact
            # mode on cuDNN (exact+cudnn) 42.29 / 64.56 ms against 26.50 / 58.09 with GEMMs, H100.
            # Tenth session, H100, batch 1 / 2 graph: exact+direct 26.18 / 57.82, exact+wino 23.28 /
            # 49.31, F(4x4) (now exact) 22.35 / 47.27; fast 5.15 / 7.78, fast+wino 5.24 / 7.78,
            # fast+fa1 5.47 / 8.38, fast+tune 5.11 / 7.62.)
            # A row ending in @prev (fast@prev) runs the same settings on the bundle's stylediff-prev,
            # the binary of an earlier commit (PREV=<commit> bash bench/gpu_bundle.sh): a change made
            # without a GPU measured against what it replaced, in the same run on the same card.
            for row in $BENCH_PRECS; do
                prec=${row%@prev}
                bin=$SD impl=stylediff
                if [ "$prec" != "$row" ]; then
                    bin=$BUILD/stylediff-prev impl="stylediff@prev($(cat "$BUILD/prev_commit" 2>/dev/null || echo '?'))"
                    [ -x "$bin" ] || { note "no $bin for the row $row: bundle with PREV=<commit>"; continue; }
                fi
                extra=""
                act=f16
                wino=$(winograd_setting "$prec")
                convgemm=auto
                convalgo=heuristic
                gemmalgo=heuristic
                chlast=1
                fa=2
                pdl=$(pdl_setting "$prec")
                [ "$prec" = "fast+fa1" ] && fa=1
                [ "$prec" = "fast+graph" ] && convalgo=graph
                [ "$prec" = "fast+tune" ] && convalgo=tune gemmalgo=tune
                case $prec in *+cudnn) convgemm=off ;; *+gemm) convgemm=all ;; esac
                [ -f "$W" ] || extra="--save-weights $W"
                io="$WORK_DIR/io_${model}_${row/@/-}_b$batch.safetensors"
                extra="$extra --save-io $io"
                echo "$impl: $model batch $batch $prec ($(elapsed))"
                # shellcheck disable=SC2086
                if SD_CUDA_PDL=$pdl SD_FAST_ACTIVATIONS=$act SD_CONV_GEMM=$convgemm SD_CONV_ALGO=$convalgo SD_GEMM_ALGO=$gemmalgo \
                    SD_CHANNELS_LAST=$chlast SD_FLASH_BLOCKS_PER_SM=$fa SD_CONV_WINOGRAD=$wino \
                    "$bin" bench unet $args --device cuda --precision "${prec%%+*}" \
                    --batch "$batch" --size "$SIZE" \
                    --iters "$ITERS" --tsv -q $extra > "$WORK_DIR/row.tsv" 2> "$WORK_DIR/row.err"; then
                    awk -v m="$model" -v impl="$impl" 'BEGIN { FS = OFS = "\t" } { $2 = m; $1 = impl; print }' \
                        "$WORK_DIR/row.tsv" | tee -a "$TSV"
                    [ "$impl" = stylediff ] && ios="$ios --io ${prec}-b$batch=$io"
                else
                    cat "$WORK_DIR/row.err"
                    note "$impl bench failed for $model batch $batch $prec"
                    FAILED=1
                fi
            done
        done
        if [ "$HAVE_TORCH" = 1 ] && [ -f "$W" ]; then
            echo "pytorch: $model ($(elapsed))"
            # shellcheck disable=SC2086
            "$PYTHON" bench/reference/unet_torch.py --config "$cfg" --weights "$W" $ios --batch 1,2 --size "$SIZE" \
                ${TORCH_MODES:+--modes "$TORCH_MODES"} \
                --iters "$ITERS" --label "$model" --tsv | tee -a "$TSV" \
                || { note "the PyTorch reference failed for $model"; FAILED=1; }
        fi
        rm -f "$W"
    done

    echo "---- table ($(elapsed)) ----"
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    {
        echo "UNet forward, ${SIZE}x${SIZE} image ($((SIZE / 8))x$((SIZE / 8)) latent), t = 981, ${GPU_NAME:-unknown GPU}," \
             "median of $ITERS calls (CUDA events) after warm-up."
        echo "stylediff exact = fp32, no TF32, the 64x64 and 32x32 3x3 convolutions as fp32 Winograd F(4x4, 3x3), the"
        echo "others as im2col + fp32 cuBLAS GEMMs; exact+direct = every one im2col + GEMM; exact+wino = F(2x2, 3x3) at"
        echo "64x64 and 32x32; +wino4-all / +wino-all = F(4x4) / F(2x2) on every 3x3 'same' convolution; +wino-mixed ="
        echo "F(4x4) at 64x64 and 32x32, F(2x2) on the smaller maps; fast = fp16 UNet"
        echo "activations with fp16 tensor-core GEMMs, convolutions and attention (fp32 accumulation), feature maps"
        echo "channels-last, 16x16 and 8x8 convolutions as im2col + cuBLAS GEMM; fast+wino = the 64x64 and 32x32 3x3 ones"
        echo "as fp16 Winograd F(2x2, 3x3) instead of cuDNN; fast+fa1 = the fp16 flash attention at D 40 one block"
        echo "per SM (no register spill); fast+graph = fp16 cuDNN convolutions through its graph API's first engine;"
        echo "fast+tune+gtune = each fp16 convolution shape timed once (im2col + GEMM, legacy algorithm, graph-API"
        echo "engines) and each cuBLASLt linear (the heuristic's first 8), the fastest kept; +cudnn = cuDNN for every"
        echo "convolution."
        echo "'x fp32' / 'x fp16' = PyTorch's fp32-sdpa / fp16-sdpa median divided by this row's (higher is faster)."
        echo "peak MiB: stylediff = activation arena only; PyTorch = allocator peak including weights."
        echo "TFLOP/s: the call's arithmetic (counted op by op by stylediff; the same model for PyTorch) / median;"
        echo "of bf16: that rate as a share of the card's dense bf16 tensor-core peak at its max SM clock."
        awk 'BEGIN { FS = "\t" }
             NR == FNR { if ($1 ~ /^pytorch/ && $4 == "fp32-sdpa") b32[$2 SUBSEP $6] = $8;
                         if ($1 ~ /^pytorch/ && $4 == "fp16-sdpa") b16[$2 SUBSEP $6] = $8;
                         if ($1 == "stylediff" && $11 + 0 > 0) { tf[$2 SUBSEP $6] = $11 * $8 / 1e3
                             if ($12 ~ /%$/) pk[$2 SUBSEP $6] = $11 / (substr($12, 1, length($12) - 1) / 100) }
                         next }
             $1 == "parity" { par = par sprintf("  %-6s batch %s %-24s vs PyTorch %-14s max rel err %s\n", $2, $6, $5, $4, $8); next }
             { k = $2 SUBSEP $6
               r32 = (k in b32 && $8 > 0) ? sprintf("%.2f", b32[k] / $8) : "-"
               r16 = (k in b16 && $8 > 0) ? sprintf("%.2f", b16[k] / $8) : "-"
               rate = (k in tf && $8 > 0) ? tf[k] / ($8 / 1e3) : -1
               rs = rate >= 0 ? sprintf("%.1f", rate) : "-"
               sh = (rate >= 0 && (k in pk) && pk[k] > 0) ? sprintf("%.1f%%", 100 * rate / pk[k]) : "-"
               printf "%-6s %-5s %-28s %-14s %-6s %10.2f %10.2f %9s %8s %8s %8s %8s\n", $2, $6, $1, $4, $5, $8, $9, $10, r32, r16, rs, sh }
             END { if (par != "") { print ""; print "parity (PyTorch fp32 on stylediff'"'"'s weights, inputs and eps):"; printf "%s", par } }' \
            "$TSV" "$TSV" | { printf "%-6s %-5s %-28s %-14s %-6s %10s %10s %9s %8s %8s %8s %8s\n" model batch impl precision mode \
                                "median ms" "min ms" "peak MiB" "x fp32" "x fp16" "TFLOP/s" "of bf16"; cat; }
    } | tee "$RES/table.txt"

    # where the time goes: one call per mode with every op timed alone (issue 3's per-kernel
    # breakdown), after the table: a stage cut short by its cap then loses these, not the ratios
    for model in $MODELS; do
        model_args "$model" || continue
        for row in $BREAKDOWN_PRECS; do
            prec=${row%@prev}
            bin=$SD
            if [ "$prec" != "$row" ]; then
                bin=$BUILD/stylediff-prev
                [ -x "$bin" ] || { note "no $bin for the breakdown $row: bundle with PREV=<commit>"; continue; }
            fi
            echo "stylediff: $model batch 2 $row, per-op breakdown ($(elapsed))"
            tune=heuristic
            wino=$(winograd_setting "$prec")
            [ "$prec" = "fast+tune" ] && tune=tune
            # shellcheck disable=SC2086
            SD_CONV_ALGO=$tune SD_GEMM_ALGO=$tune SD_CONV_WINOGRAD=$wino "$bin" bench unet $args --device cuda --precision "${prec%%+*}" --batch 2 --size "$SIZE" \
                --iters 3 --no-graph --profile -q 2>&1 | sed -n '/where the time goes/,$p' | head -n 28 \
                || note "the breakdown failed for $model $prec"
        done
    done
fi

# ------------------------------------------------------------------------------------------------
if want grad; then
    echo "---- grad ($(elapsed)) ----"
    for model in ${GRAD_MODELS:-tiny sd15}; do
        sh bench/grad_side_by_side.sh --device cuda --model "$model" --stylediff "./$BUILD/stylediff" --python "$PYTHON" \
            --iters "$ITERS" --work "$WORK_DIR/grad" --out "$RES/grad_$model" ${GRAD_PRECISION:+--precision "$GRAD_PRECISION"} \
            || { note "grad_side_by_side failed for $model (see above)"; FAILED=1; }
    done
    # where a fast-mode gradient step's time goes, backward included (SD v1.5, random weights)
    # (the value and context steps with the defaults, fp16 activations in the step; the context step
    # also with SD_STEP_ACTIVATIONS=f32, F32 activations on fp16 weight copies)
    for run in "value SD_CONV_GEMM=auto" "context SD_CONV_GEMM=auto" "context SD_STEP_ACTIVATIONS=f32"; do
        what=${run%% *}
        setting=${run#* }
        echo "stylediff: sd15 $what step, fast, $setting, per-op breakdown ($(elapsed))"
        env "$setting" "./$BUILD/stylediff" bench grad --config configs/sd-v1.5 --device cuda --precision fast \
            --what "$what" --iters 3 --profile -q 2>&1 | sed -n '/^step /,$p' | head -n 40 \
            || note "the gradient-step breakdown failed ($what, $setting)"
    done
    # the same context step on the bundle's earlier binary, when there is one (PREV=<commit>)
    if [ -x "$BUILD/stylediff-prev" ]; then
        echo "stylediff@prev($(cat "$BUILD/prev_commit" 2>/dev/null)): sd15 context step, fast, per-op breakdown ($(elapsed))"
        "./$BUILD/stylediff-prev" bench grad --config configs/sd-v1.5 --device cuda --precision fast \
            --what context --iters 3 --profile -q 2>&1 | sed -n '/^step /,$p' | head -n 40 \
            || note "the earlier binary's gradient-step breakdown failed"
    fi
fi

# ------------------------------------------------------------------------------------------------
if want invert; then
    echo "---- invert ($(elapsed)) ----"
    for model in ${INVERT_MODELS:-sd15}; do
        # shellcheck disable=SC2086
        sh bench/invert_side_by_side.sh --device cuda --model "$model" --stylediff "./$BUILD/stylediff" --python "$PYTHON" \
            --work "$WORK_DIR/invert" --out "$WORK_DIR/invert_$model" --quality ddim ${INVERT_ARGS:-} \
            || { note "invert_side_by_side failed for $model (see above)"; FAILED=1; }
    done
fi

echo "==================== gpu_check done in $(elapsed): $([ "$FAILED" = 0 ] && echo OK || echo 'SOMETHING FAILED (see above)') ===================="
exit "$FAILED"
