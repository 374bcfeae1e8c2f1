#!/bin/sh
# bench/invert_side_by_side.sh: the cost of inverting a photo, stylediff vs PyTorch eager, on the
# same device, the same model (same weights), the same step counts, in one run, as ONE table.
#
#   sh bench/invert_side_by_side.sh --device cpu --model tiny          # this CPU VM: a few minutes
#   sh bench/invert_side_by_side.sh --device cuda --model sd15         # a GPU machine
#
# Rows (what each side times):
#   DDIM inversion, whole     N UNet calls (conditional, guidance 1) from z0 to z_T.
#                             stylediff: `bench invert`'s ddim seconds of its (last) nulltext row:
#                             the DDIM loop alone, its first (eager) step and the CUDA graph capture
#                             included (encoding the prompt, "" and the photo is timed apart, in
#                             the encode column). PyTorch: the DDIM loop on a latent.
#   Null-text, per timestep   1 conditional forward + K x (unconditional forward, CFG 7.5, backward
#                             to the null embedding, Adam step) + 1 batched CFG forward (batch 2).
#                             stylediff: the steady state, the timesteps after the first 2 (those
#                             carry the one-time plans, the first op-by-op iteration and the CUDA
#                             graphs' captures, which a 50-step inversion spreads thin); with
#                             --timesteps <= 2 the mean over them. Early stop on as in the reference
#                             (the table says if it fired).
#                             PyTorch: median of --reps timesteps, no early stop.
#   StyleDiffusion, per inner mapping net -> value input of the 16 cross-attention layers, CFG 7.5
#   iteration                 with eps_u, L_rec + L_att on the (latent/4)^2 cross maps, backward to
#                             the mapping net, Adam step. stylediff: optimisation seconds / iterations
#                             over the steady-state timesteps (as Null-text's; so it also carries,
#                             amortised, each timestep's eps_u and advance: the table gives the share).
#                             PyTorch: median of --reps iterations at timestep 0, eps_u precomputed.
#   StyleDiffusion, whole    (with --whole-sd LIST) one whole inversion per listed precision: CLIP
#   image                     features aside, the prompt and photo encoded, the DDIM inversion and
#                             all --steps-sd timesteps of --whole-inner-sd iterations (100: the
#                             reference's ceil(100 e^-0.1i), 1,015 at 30 steps), one run, so its
#                             one-time plans and graph captures included; the reconstruction's latent
#                             MSE beside it. performance.md's "whole image <= 10 s on one H100" row.
#                             PyTorch: not run (about 1,015 x its per-iteration time); a note gives
#                             that estimate.
#   ratio = PyTorch ms (first --modes entry: fp32-explicit, what the reference code runs) / stylediff ms.
#
# PyTorch runs bench/reference/invert_torch.py (fp32, TF32 off; the UNet parameters require grad as in
# the reference code, so its backward also computes UNet weight gradients; add "-frozen" modes to
# see PyTorch without them). stylediff runs `stylediff bench invert --tsv --timesteps K`.
#
# Models: tiny = the built-in tiny model (models/tiny), 256 px (32x32 latent). sd15 = the SD v1.5
# architecture with random weights, 512 px (64x64 latent): the UNet weights `stylediff bench unet
# --config configs/sd-v1.5 --save-weights` synthesizes, plus random VAE / CLIP text / CLIP ViT-B/16
# weights, written once as a diffusers-layout folder under --work (about 4 GB) that both sides load.
#
# Options (defaults: cpu | cuda):
#   --device cpu|cuda            (cpu)
#   --model tiny|sd15            (tiny)
#   --steps N                    DDIM steps of DDIM/Null-text (50 | 50)
#   --steps-sd N                 DDIM steps of StyleDiffusion (30 | 30)
#   --inner K                    Null-text iterations per timestep (10 | 10)
#   --inner-sd N                 StyleDiffusion iterations at timestep 0, decaying (10 | 30)
#   --timesteps K                timesteps stylediff times per optimising method (1 | 4)
#   --reps R / --reps-ddim R     PyTorch timed units (3 / 1 | 10 / 10)
#   --warmup W                   PyTorch untimed units (1 | 2); DDIM: (0 | 1)
#   --modes LIST                 PyTorch modes (fp32-explicit | fp32-explicit,fp32-sdpa)
#   --precision LIST             stylediff precisions on cuda (exact,fast,fast+eager,fast+f32act,fast+cudnn);
#                                cpu: exact. A trailing "@prev" (fast@prev): the same row on the bundle's
#                                stylediff-prev, an earlier commit (PREV=<commit> bash bench/gpu_bundle.sh);
#                                "+fb2": SD_FLASH_BWD_BLOCKS_PER_SM=2; "+f32step": SD_STEP_ACTIVATIONS=f32,
#                                the gradient steps storing F32 (fp16 is the default; row_settings.sh).
#                                "+find": SD_CONV_ALGO=find (convolution algorithms chosen
#                                by cuDNN's timing); "+tune": SD_CONV_ALGO=tune SD_GEMM_ALGO=tune (each
#                                convolution and linear shape timed once between its ways); "+direct", "+wino",
#                                "+wino-all", "+wino4-all", "+wino-mixed": the Winograd setting (bench/row_settings.sh;
#                                exact mode's default is F(4x4, 3x3) at 64x64 and 32x32, "+direct" none,
#                                fast mode's none, "+wino" F(2x2) there); "+cudnn": SD_CONV_GEMM=off (cuDNN for every
#                                convolution); "+tf32": SD_FAST_GEMM=tf32 (the gradient steps' F32
#                                GEMMs in TF32, not bf16). "+eager": --eager (no CUDA graphs); "+f32act": fast mode with
#                                F32 activations (SD_FAST_ACTIVATIONS=f32) instead of fp16.
#                                "+eager" runs the gradient steps op by op (--eager) instead of
#                                replaying them as CUDA graphs: the table then shows what graphs save
#   --whole-sd LIST              precisions (as --precision names them) that also run a whole
#                                StyleDiffusion inversion (none)
#   --whole-inner-sd N           its iterations at the first timestep, decaying (100)
#   --ours-warmup 0|1            run stylediff's methods once untimed first (0 | 1): the reported
#                                rows are then the second nulltext and stylediffusion runs
#   --quality none|all|LIST      also run full inversions on both sides and report the latent MSE of
#                                each reconstruction (none). LIST: methods among ddim (cheap),
#                                nulltext, stylediffusion (all N timesteps: long; PyTorch's Null-text
#                                about 2 minutes on an H200, its StyleDiffusion about 4); all: the three
#   --stylediff PATH             (build/stylediff)   --python PY (.venv/bin/python, else python3)
#   --work DIR                   big files (/tmp/stylediff_invert_bench)
#   --out DIR                    results: ours_*.tsv, torch.tsv, quality_*.tsv, table.txt
#                                ($OUT/invert_bench or build/invert_bench); logs go to --work/logs
# Exit status: 0 when both sides ran, 1 when either failed (the table still prints what ran).
set -u
cd "$(dirname "$0")/.." || exit 1
. bench/row_settings.sh
ROOT=$(pwd)

DEVICE=cpu MODEL=tiny STEPS=50 STEPS_SD=30 INNER=10 INNER_SD="" TIMESTEPS="" REPS="" REPS_DDIM="" WARMUP=""
MODES="" PRECISION="" OURS_WARMUP="" QUALITY=none WHOLE_SD="" WHOLE_INNER_SD=100 SD=${STYLEDIFF:-build/stylediff} PY=${PYTHON:-}
WORK=${WORK:-/tmp/stylediff_invert_bench} RES=""
while [ $# -gt 0 ]; do
    case $1 in
        --device) DEVICE=$2; shift ;;
        --model) MODEL=$2; shift ;;
        --steps) STEPS=$2; shift ;;
        --steps-sd) STEPS_SD=$2; shift ;;
        --inner) INNER=$2; shift ;;
        --inner-sd) INNER_SD=$2; shift ;;
        --timesteps) TIMESTEPS=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --reps-ddim) REPS_DDIM=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --precision) PRECISION=$2; shift ;;
        --ours-warmup) OURS_WARMUP=$2; shift ;;
        --whole-sd) WHOLE_SD=$2; shift ;;
        --whole-inner-sd) WHOLE_INNER_SD=$2; shift ;;
        --quality) QUALITY=$2; shift ;;
        --stylediff) SD=$2; shift ;;
        --python) PY=$2; shift ;;
        --work) WORK=$2; shift ;;
        --out) RES=$2; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "invert_side_by_side: unknown option '$1' (--help)" >&2; exit 2 ;;
    esac
    shift
done
case $DEVICE in cpu|cuda) ;; *) echo "invert_side_by_side: --device cpu|cuda" >&2; exit 2 ;; esac
case $QUALITY in
    none|all) ;;
    *)
        for qmethod in $(echo "$QUALITY" | tr ',' ' '); do
            case $qmethod in
                ddim|nulltext|stylediffusion) ;;
                *) echo "invert_side_by_side: --quality none|all|a list of ddim,nulltext,stylediffusion" >&2; exit 2 ;;
            esac
        done
        ;;
esac
if [ "$DEVICE" = cpu ]; then
    : "${INNER_SD:=10}" "${TIMESTEPS:=1}" "${REPS:=3}" "${REPS_DDIM:=1}" "${WARMUP:=1}" "${MODES:=fp32-explicit}"
    : "${OURS_WARMUP:=0}"
    PRECISION=exact WARMUP_DDIM=0
else
    : "${INNER_SD:=30}" "${TIMESTEPS:=4}" "${REPS:=10}" "${REPS_DDIM:=10}" "${WARMUP:=2}"
    : "${MODES:=fp32-explicit,fp32-sdpa}" "${PRECISION:=exact,fast,fast+eager,fast+f32act,fast+cudnn}" "${OURS_WARMUP:=1}"
    WARMUP_DDIM=1
fi
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "$RES" ]; then
    if [ -n "${OUT:-}" ]; then RES=$OUT/invert_bench; else RES=$ROOT/build/invert_bench; fi
fi
LOGS=$WORK/logs
mkdir -p "$RES" "$WORK" "$LOGS"
note() { echo "invert_side_by_side: $*" >&2; }
FAILED=0
[ -x "$SD" ] || { note "$SD missing: build it (make NVCC= all, or make all on a GPU machine)"; exit 1; }

# ---- the machine ----
if [ "$DEVICE" = cuda ]; then
    WHERE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
    WHERE="${WHERE:-unknown GPU}"
else
    WHERE="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
fi
echo "invert_side_by_side: $(date -u '+%Y-%m-%d %H:%M UTC'), $DEVICE ($WHERE), model $MODEL, load:$(uptime | sed 's/.*load average://')"

# ---- PyTorch: importable? diffusers from a carried wheel when missing ----
HAVE_TORCH=0
if "$PY" -c "import torch, safetensors" 2>/dev/null; then
    if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        note "$PY: torch sees no GPU; the PyTorch side is skipped"
    else
        HAVE_TORCH=1
    fi
else
    note "$PY cannot import torch and safetensors; the PyTorch side is skipped"
fi
if [ "$HAVE_TORCH" = 1 ] && ! "$PY" -c "import diffusers" 2>/dev/null; then
    WHEEL=${DIFFUSERS_WHEEL:-$(ls build/wheels/diffusers-*.whl 2>/dev/null | head -n 1)}
    if [ -n "$WHEEL" ] && [ -f "$WHEEL" ] && "$PY" -m pip install --quiet --no-deps --no-index --target "$WORK/pydeps" \
            "$WHEEL" >/dev/null 2>&1; then
        PYTHONPATH="$WORK/pydeps${PYTHONPATH:+:$PYTHONPATH}"
        export PYTHONPATH
    fi
    "$PY" -c "import diffusers" 2>/dev/null || note "diffusers not importable: the PyTorch side uses" \
        "bench/reference/sd_unet_torch.py (the same module tree and arithmetic in plain PyTorch)"
fi

# ---- the model ----
case $MODEL in
    tiny)
        MODEL_DIR=$ROOT/models/tiny
        OURS_MODEL=""
        ;;
    sd15)
        MODEL_DIR=$WORK/sd15
        OURS_MODEL="-m $MODEL_DIR --clip $WORK/sd15-clip-vision"
        if [ ! -f "$MODEL_DIR/.complete" ]; then
            note "writing the SD v1.5 random-weight model folder $MODEL_DIR (once; about 4 GB)"
            W=$WORK/unet_sd15_stylediff.safetensors
            dev_opt="--device $DEVICE"
            [ "$DEVICE" = cuda ] && dev_opt="$dev_opt --no-graph"
            # shellcheck disable=SC2086
            "$SD" bench unet --config configs/sd-v1.5 $dev_opt --batch 1 --iters 1 -q --save-weights "$W" >/dev/null \
                || { note "stylediff bench unet --save-weights failed"; exit 1; }
            "$PY" bench/reference/invert_torch.py \
                --make-model "$MODEL_DIR" --from-config configs/sd-v1.5 --unet-weights "$W" \
                --clip-out "$WORK/sd15-clip-vision" || { note "writing the model folder failed"; exit 1; }
            rm -f "$W"
            touch "$MODEL_DIR/.complete"
        fi
        ;;
    *) note "--model tiny|sd15"; exit 2 ;;
esac

# ---- stylediff ----
# run_ours PREC OUT ERR ARGS...: `stylediff bench invert ARGS --tsv -q` with the settings the row name
# PREC gives (bench/row_settings.sh and the suffixes below) into OUT, its messages into ERR. A name
# ending in @prev (fast@prev) runs the bundle's stylediff-prev, an earlier commit's binary beside this
# one (PREV=<commit> bash bench/gpu_bundle.sh). Status 3: no such binary.
run_ours() {
    prec=$1 out=$2 err=$3
    shift 3
    bin=$SD
    row=${prec%@prev}
    if [ "$row" != "$prec" ]; then
        bin=$(dirname "$SD")/stylediff-prev
        [ -x "$bin" ] || { note "no $bin for the row $prec: bundle with PREV=<commit>"; return 3; }
    fi
    eager=""
    act=f16
    convalgo=heuristic
    gemmalgo=heuristic
    convgemm=auto
    fastgemm=bf16
    wino=$(winograd_setting "$row")
    fbwd=$(flash_bwd_setting "$row")
    stepact=$(step_activations_setting "$row")
    pdl=$(pdl_setting "$row")
    case $row in
        *+eager) eager=--eager ;;
        *+f32act) act=f32 ;;
        *+find) convalgo=find ;;
        *+tune) convalgo=tune gemmalgo=tune ;;
        *+cudnn) convgemm=off ;;
        *+tf32) fastgemm=tf32 ;;
    esac
    # shellcheck disable=SC2086
    SD_CUDA_PDL=$pdl SD_STEP_ACTIVATIONS=$stepact SD_FLASH_BWD_BLOCKS_PER_SM=$fbwd SD_CONV_WINOGRAD=$wino \
        SD_FAST_ACTIVATIONS=$act SD_CONV_ALGO=$convalgo SD_GEMM_ALGO=$gemmalgo SD_CONV_GEMM=$convgemm \
        SD_FAST_GEMM=$fastgemm "$bin" bench invert $OURS_MODEL --device "$DEVICE" --precision "${row%%+*}" $eager \
        "$@" --tsv -q > "$out" 2> "$err"
}

METHODS=nulltext,stylediffusion
[ "$OURS_WARMUP" = 1 ] && METHODS=nulltext,stylediffusion,nulltext
OURS_FILES=""
for prec in $(echo "$PRECISION" | tr ',' ' '); do
    f=$RES/ours_$prec.tsv
    echo "stylediff: bench invert --device $DEVICE --precision $prec --methods $METHODS --steps $STEPS" \
         "--steps-sd $STEPS_SD --inner $INNER --inner-sd $INNER_SD --timesteps $TIMESTEPS" >&2
    run_ours "$prec" "$f" "$LOGS/ours_$prec.err" --methods "$METHODS" --steps "$STEPS" --steps-sd "$STEPS_SD" \
        --inner "$INNER" --inner-sd "$INNER_SD" --timesteps "$TIMESTEPS"
    rc=$?
    [ "$rc" -eq 3 ] && continue
    if [ "$rc" -eq 0 ]; then
        sed "s/^/  /" "$f" >&2
    else
        sed "s/^/  /" "$LOGS/ours_$prec.err" >&2
        note "stylediff bench invert failed ($prec); its column stays empty"
        FAILED=1
    fi
    OURS_FILES="$OURS_FILES $prec=$f"
done

# whole StyleDiffusion inversions (--whole-sd): one run each, reconstruction included (its quality)
WHOLE_FILES=""
for prec in $(echo "$WHOLE_SD" | tr ',' ' '); do
    f=$RES/whole_sd_$prec.tsv
    echo "stylediff: bench invert --device $DEVICE --precision $prec --methods stylediffusion --steps-sd $STEPS_SD" \
         "--inner-sd $WHOLE_INNER_SD (whole)" >&2
    run_ours "$prec" "$f" "$LOGS/whole_sd_$prec.err" --methods stylediffusion --steps-sd "$STEPS_SD" \
        --inner-sd "$WHOLE_INNER_SD"
    rc=$?
    [ "$rc" -eq 3 ] && continue
    if [ "$rc" -eq 0 ]; then
        sed "s/^/  /" "$f" >&2
        WHOLE_FILES="$WHOLE_FILES whole:$prec=$f"
    else
        sed "s/^/  /" "$LOGS/whole_sd_$prec.err" >&2
        note "stylediff whole StyleDiffusion inversion failed ($prec)"
        FAILED=1
    fi
done

# ---- PyTorch ----
TORCH_TSV=$RES/torch.tsv
: > "$TORCH_TSV"
if [ "$HAVE_TORCH" = 1 ]; then
    echo "pytorch: invert_torch.py --device $DEVICE --model $MODEL --modes $MODES --reps $REPS --reps-ddim $REPS_DDIM" >&2
    "$PY" bench/reference/invert_torch.py --model "$MODEL_DIR" --label "$MODEL" --device "$DEVICE" --modes "$MODES" \
        --steps "$STEPS" --steps-sd "$STEPS_SD" --inner "$INNER" --guidance 7.5 --reps "$REPS" --warmup "$WARMUP" \
        --reps-ddim "$REPS_DDIM" --warmup-ddim "$WARMUP_DDIM" --tsv > "$TORCH_TSV" 2> "$LOGS/torch.err"
    rc=$?
    sed "s/^/  /" "$TORCH_TSV" >&2
    grep -v "^$" "$LOGS/torch.err" | sed "s/^/  /" >&2
    [ "$rc" -ne 0 ] && { note "the PyTorch side failed (exit $rc)"; FAILED=1; }
else
    FAILED=1
fi

# ---- reconstruction quality (optional): full inversions on both sides ----
QUAL_OURS=$RES/quality_ours.tsv QUAL_TORCH=$RES/quality_torch.tsv
: > "$QUAL_OURS"
: > "$QUAL_TORCH"
if [ "$QUALITY" != none ]; then
    qm=$QUALITY
    [ "$QUALITY" = all ] && qm=ddim,nulltext,stylediffusion
    qprec=$(echo "$PRECISION" | cut -d, -f1)
    qprec=${qprec%+*}
    rm -rf "$WORK/saved_$MODEL"
    mkdir -p "$WORK/saved_$MODEL"
    echo "quality: stylediff bench invert --methods $qm (full) --save $WORK/saved_$MODEL" >&2
    # shellcheck disable=SC2086
    "$SD" bench invert $OURS_MODEL --device "$DEVICE" --precision "$qprec" --methods "$qm" --steps "$STEPS" \
        --steps-sd "$STEPS_SD" --inner "$INNER" --inner-sd "$INNER_SD" --save "$WORK/saved_$MODEL" --tsv -q \
        > "$QUAL_OURS" 2> "$LOGS/quality_ours.err" \
        || { cat "$LOGS/quality_ours.err" >&2; note "stylediff quality run failed"; FAILED=1; }
    sed "s/^/  /" "$QUAL_OURS" >&2
    if [ "$HAVE_TORCH" = 1 ]; then
        echo "quality: invert_torch.py --reconstruct $WORK/saved_$MODEL" >&2
        "$PY" bench/reference/invert_torch.py --model "$MODEL_DIR" --label "$MODEL" --device "$DEVICE" \
            --modes "$(echo "$MODES" | cut -d, -f1)" --steps "$STEPS" --steps-sd "$STEPS_SD" --inner "$INNER" \
            --inner-sd "$INNER_SD" --reconstruct "$WORK/saved_$MODEL" --recon-methods "$qm" --tsv \
            > "$QUAL_TORCH" 2> "$LOGS/quality_torch.err" \
            || { cat "$LOGS/quality_torch.err" >&2; note "PyTorch quality run failed"; FAILED=1; }
        sed "s/^/  /" "$QUAL_TORCH" >&2
    fi
fi

# ---- the table ----
# shellcheck disable=SC2086
python3 - "$DEVICE" "$WHERE" "$MODEL" "$STEPS" "$STEPS_SD" "$INNER" "$INNER_SD" "$TIMESTEPS" "$REPS" "$REPS_DDIM" \
    "$TORCH_TSV" "$QUAL_OURS" "$QUAL_TORCH" "$WHOLE_INNER_SD" $OURS_FILES $WHOLE_FILES <<'EOF' | tee "$RES/table.txt"
import math, sys, time
(device, where, model, steps, steps_sd, inner, inner_sd, timesteps, reps, reps_ddim,
 torch_tsv, qual_ours, qual_torch, whole_inner_sd) = sys.argv[1:15]
steps, steps_sd, inner, inner_sd, timesteps, whole_inner_sd = map(int, (steps, steps_sd, inner, inner_sd, timesteps,
                                                                         whole_inner_sd))
ours_files = [a.split("=", 1) for a in sys.argv[15:] if not a.startswith("whole:")]
whole_files = [a[len("whole:"):].split("=", 1) for a in sys.argv[15:] if a.startswith("whole:")]

def rows(path):
    try:
        return [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    except OSError:
        return []

# the columns of `stylediff bench invert --tsv` (print_rows in src/cli/cmd_bench_invert.c), by name:
# a column added there must be added here, or every index after it reads its neighbour
OURS_FIELDS = ("tag", "method", "steps", "timesteps", "iterations", "total_s", "ddim_s", "opt_s", "latent_mse",
               "psnr", "peak_mib", "graph_iterations", "encode_s", "first_s", "steady_timestep_s",
               "steady_iteration_s")
C = {name: i for i, name in enumerate(OURS_FIELDS)}

def our_rows(path):
    out = [r for r in rows(path) if r[0] == "invert"]
    for r in out:
        if len(r) != len(OURS_FIELDS):
            sys.exit(f"invert_side_by_side: {path}: a bench invert row has {len(r)} columns, this script reads "
                     f"{len(OURS_FIELDS)} ({', '.join(OURS_FIELDS)}): update OURS_FIELDS")
    return out

# stylediff: the last row of each method (after the warm-up runs, when there were any)
ours, notes = {}, []
expect_nt = timesteps * inner
expect_sd = sum(math.ceil(inner_sd * math.exp(-0.1 * i)) for i in range(min(timesteps, steps_sd)))
for prec, path in ours_files:
    last = {r[C["method"]]: r for r in our_rows(path)}
    col = {}
    def steady(r, name):  # steady-state seconds per timestep / per iteration (nan: not measured)
        v = float(r[C[name]]) if r[C[name]] not in ("", "nan", "-nan") else float("nan")
        return v if math.isfinite(v) else None
    if "nulltext" in last:
        r = last["nulltext"]
        ts, iters = int(r[C["timesteps"]]), int(r[C["iterations"]])
        ddim_s, opt_s = float(r[C["ddim_s"]]), float(r[C["opt_s"]])
        col["ddim"] = 1e3 * ddim_s
        if ts:
            col["nulltext_mean"] = 1e3 * opt_s / ts
            col["nulltext"] = 1e3 * (steady(r, "steady_timestep_s") or opt_s / ts)
            if steady(r, "steady_timestep_s"):
                notes.append(f"stylediff {prec}: Null-text per timestep = the steady state, timesteps 3 to {ts}: "
                             f"{1e3 * steady(r, 'steady_timestep_s'):.1f} ms; the mean over all {ts}, with the first two's one-time "
                             f"plans and CUDA graph captures: {1e3 * opt_s / ts:.1f} ms")
        if iters != expect_nt:
            notes.append(f"stylediff {prec}: Null-text stopped early: {iters} of {expect_nt} iterations "
                         f"(per-timestep time is over fewer iterations than PyTorch's)")
    if "stylediffusion" in last:
        r = last["stylediffusion"]
        ts, iters, opt_s = int(r[C["timesteps"]]), int(r[C["iterations"]]), float(r[C["opt_s"]])
        if iters:
            col["sd"] = 1e3 * (steady(r, "steady_iteration_s") or opt_s / iters)
            if steady(r, "steady_iteration_s"):
                notes.append(f"stylediff {prec}: StyleDiffusion per iteration = the steady state, timesteps 3 to "
                             f"{ts}: {1e3 * steady(r, 'steady_iteration_s'):.1f} ms; the mean over all {ts}: {1e3 * opt_s / iters:.1f} ms")
            share = 2 * ts / (2 * ts + 3 * iters)
            notes.append(f"stylediff {prec}: StyleDiffusion per iteration = {opt_s:.2f} s / {iters} iterations over "
                         f"{ts} timestep(s); about {100 * share:.0f}% of it is each timestep's eps_u and advance "
                         f"(2 forwards per timestep vs ~3 per iteration)")
        if iters != expect_sd:
            notes.append(f"stylediff {prec}: StyleDiffusion stopped early: {iters} of {expect_sd} iterations")
    for name in ("nulltext", "stylediffusion"):
        r = last.get(name)
        if r:
            notes.append(f"stylediff {prec}: {name}: {r[C['graph_iterations']]} of {r[C['iterations']]} gradient "
                         f"iterations replayed from a CUDA graph")
    ours[prec] = col

# whole StyleDiffusion inversions: seconds of sd_invert (encode, DDIM, every timestep), iterations, quality
whole = {}
whole_iters = sum(math.ceil(whole_inner_sd * math.exp(-0.1 * i)) for i in range(steps_sd))
for prec, path in whole_files:
    r = {x[C["method"]]: x for x in our_rows(path)}.get("stylediffusion")
    if not r:
        continue
    whole[prec] = r
    ours.setdefault(prec, {})["sd_whole"] = 1e3 * float(r[C["total_s"]])
    notes.append(f"stylediff {prec}: StyleDiffusion whole image {float(r[C['total_s']]):.2f} s: encode "
                 f"{float(r[C['encode_s']]):.2f} s, DDIM inversion {float(r[C['ddim_s']]):.2f} s, {r[C['timesteps']]} "
                 f"timesteps {float(r[C['opt_s']]):.2f} s for {r[C['iterations']]} of {whole_iters} iterations "
                 f"({1e3 * float(r[C['opt_s']]) / max(1, int(r[C['iterations']])):.1f} ms each, eps_u and advance "
                 f"included); one run: its one-time plans and CUDA graph captures included; the CLIP image features "
                 f"apart; performance.md: <= 10 s on one H100")

torch_rows = [r for r in rows(torch_tsv) if r[0] == "invert_ref"]
modes = []
for r in torch_rows:
    if r[4] not in modes:
        modes.append(r[4])
ref = {(r[1], r[4]): r for r in torch_rows}
peak = {}
for r in torch_rows:
    if r[7] not in ("", "-"):
        peak[r[4]] = max(peak.get(r[4], 0), float(r[7]))

# quality: latent MSE of the reconstruction (ours: bench invert rows; PyTorch: invert_ref_quality rows)
q_ours = {r[C["method"]]: r for r in our_rows(qual_ours)}
q_torch = {r[1]: r for r in rows(qual_torch) if r[0] == "invert_ref_quality"}
parity = [r for r in rows(qual_torch) if r[0] == "parity"]

def qo(m):
    r = q_ours.get(m) if m != "sd_whole" else next(iter(whole.values()), None)
    if not r or r[C["latent_mse"]] == "nan":
        return "-"
    psnr = r[C["psnr"]]
    return f"{float(r[C['latent_mse']]):.3g}" + (f" ({float(psnr):.1f} dB)" if psnr != "nan" else "")

def qt(m):
    r = q_torch.get(m)
    return f"{float(r[5]):.3g}" if r else "-"

work = [("ddim", f"DDIM inversion, whole ({steps} steps)", "ddim"),
        ("nulltext", f"Null-text, per timestep (K={inner})", "nulltext"),
        ("sd", "StyleDiffusion, per inner iteration", "stylediffusion")]
if whole:
    work.append(("sd_whole", f"StyleDiffusion, whole image ({steps_sd} steps, {whole_iters} iterations)", "sd_whole"))
precs = [p for p, _ in ours_files] + [p for p, _ in whole_files if p not in dict(ours_files)]
head = ["work"] + [f"stylediff {p} ms" for p in precs] + [f"PyTorch {m} ms" for m in modes]
if modes:
    head += [f"ratio {p}" for p in precs]
head += ["latent MSE stylediff", "latent MSE PyTorch"]
table = [head]

def fmt(v):
    return "-" if v is None else (f"{v:,.1f}" if v >= 10 else f"{v:.2f}")

for key, label, qkey in work:
    line = [label]
    for p in precs:
        line.append(fmt(ours[p].get(key)))
    for m in modes:
        r = ref.get((key, m))
        line.append(fmt(float(r[5])) if r and key != "sd_whole" else "-")
    if modes:
        r = ref.get((key, modes[0]))
        for p in precs:
            o = ours[p].get(key)
            line.append(f"{float(r[5]) / o:.2f}x" if (r and o and key != "sd_whole") else "-")
    line += [qo(qkey), qt(qkey)]
    table.append(line)

side = {"tiny": 256, "sd15": 512}.get(model, 0)
print(f"Inversion cost, stylediff vs PyTorch eager: model {model} ({side} px, {side // 8}x{side // 8} latent), "
      f"{device} ({where}), {time.strftime('%Y-%m-%d', time.gmtime())}")
print(f"  DDIM: {steps} steps, conditional, guidance 1, the loop alone on both sides (stylediff's includes its "
      f"first step's graph capture).")
print(f"  Null-text: 1 cond fwd + {inner} x (uncond fwd + backward + Adam) + 1 CFG fwd (batch 2), guidance 7.5;"
      f" stylediff: steady state (timesteps after the first 2) when {timesteps} > 2, else the mean; PyTorch: median"
      f" of {reps}, no early stop.")
print(f"  StyleDiffusion ({steps_sd} steps, {inner_sd} iterations at timestep 0, decaying): one mapping net -> 16 value "
      f"inputs -> CFG -> L_rec + L_att -> backward -> Adam; stylediff: optimisation time / iterations"
      f" over {timesteps} timestep(s), PyTorch: median of {reps} at timestep 0.")
if modes:
    print(f"  ratio = PyTorch {modes[0]} / stylediff (higher: stylediff faster). PyTorch fp32, TF32 off; its UNet"
          f" parameters require grad as in the reference code (weight gradients computed too) unless the mode says frozen.")
if peak:
    print("  PyTorch peak memory: " + ", ".join(f"{m} {v:,.0f} MiB" for m, v in peak.items())
          + " (torch.cuda.max_memory_allocated, weights included)")
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
for n, r in enumerate(table):
    print("  " + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    if n == 0:
        print("  " + "  ".join("-" * w for w in widths))
for r in parity:
    print(f"  parity: PyTorch vs stylediff {r[1]}: max rel err {r[5]}")
if q_torch:
    print("  latent MSE = mean (reconstruction - z0)^2 after sampling back with the method's own variables"
          " (both sides full inversions, early stop on, from stylediff's z0 and prompt)")
if "stylediffusion" in q_torch:
    print("  StyleDiffusion's two errors agree only statistically: each side draws its mapping network's initial"
          " weights from its own generator (DDIM and Null-text start from identical values)")
if whole:
    for m in modes:
        r = ref.get(("sd", m))
        if r:
            print(f"  StyleDiffusion whole image, PyTorch {m}: not run; its per-iteration median x {whole_iters} "
                  f"iterations would be about {float(r[5]) * whole_iters / 1e3:,.0f} s (the iterations alone)")
    first = next(iter(whole))
    print(f"  the whole-image row's latent MSE is stylediff {first}'s reconstruction")
for n in notes:
    print("  note: " + n)
EOF
echo "invert_side_by_side: done, load:$(uptime | sed 's/.*load average://'); files in $RES" >&2
exit "$FAILED"
