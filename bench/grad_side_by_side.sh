#!/bin/sh
# bench/grad_side_by_side.sh: one gradient step through the UNet, stylediff vs PyTorch eager, on the
# same device, the same weights and the same inputs, in one run, as ONE table (issue "Autodiff-lite").
#
#   sh bench/grad_side_by_side.sh --device cpu --model tiny      # this CPU VM: about a minute
#   sh bench/grad_side_by_side.sh --device cuda --model sd15     # a GPU machine (bench/gpu_check.sh grad)
#
# Steps (batch 1, t = 981, guidance 7.5, random inputs from seed 1; see src/cli/cmd_bench_grad.c):
#   forward  one UNet call, no gradient: the yardstick.
#   context  Null-text's step: UNet with a trainable unconditional context, CFG with a fixed eps_c,
#            MSE to a target, backward to the context.
#   value    StyleDiffusion's step: UNet with a trainable value input in all 16 cross-attention
#            layers, CFG with a fixed eps_u, MSE, backward to the value input.
# stylediff: `stylediff bench grad` (exact, and fast on cuda), which also writes the weights and the
# exact inputs, losses and gradients of its exact run; PyTorch: bench/reference/invert_torch.py
# --grad-io on those weights: parity of the losses and gradients (torch autograd, fp32, TF32 off),
# then its timings per mode: fp32-explicit (the reference code: AttnProcessor arithmetic, UNet
# parameters requiring grad, so its backward also computes weight gradients), fp32-sdpa-frozen
# (PyTorch at its best in fp32: SDPA, frozen parameters, activation gradients only).
#
# Options: --device cpu|cuda (cpu)  --model tiny|sd15 (tiny)  --iters N (cpu 3, cuda 10)
#          --modes LIST (fp32-explicit,fp32-sdpa-frozen)  --precision LIST (cpu exact,exact+recompute;
#          cuda exact,exact+direct,exact+wino4-all,fast,fast+tune,fast+f32grad; "+direct", "+wino", "+wino-all",
#          "+wino4-all", "+wino-mixed": the Winograd setting (bench/row_settings.sh; exact mode's default is F(4x4,
#          3x3) at 64x64 and 32x32, "+direct" none); "+tune": SD_CONV_ALGO=tune and
#          SD_GEMM_ALGO=tune, the fp16 forward convolutions timed once per shape between im2col +
#          GEMM, cuDNN's legacy algorithm and its graph API's engines, the cuBLASLt linears between
#          the heuristic's first algorithms; "+graph": SD_CONV_ALGO=graph; "+nchw": SD_CHANNELS_LAST=0, the step's
#          forward convolutions in F32 instead of on fp16 copies; "+f32grad": SD_BF16_GRADS=0, the data
#          gradients on the F32 weights instead of bf16 copies; "+recompute": `bench grad --recompute`,
#          blocks recomputed; "+eager": `bench grad --eager`, the steps launched op by op instead of
#          replayed as CUDA graphs; "+cudnn": SD_CONV_GEMM=off, cuDNN for every convolution; "+gemm":
#          SD_CONV_GEMM=all, im2col + GEMM for every convolution; "+tf32":
#          SD_FAST_GEMM=tf32, the F32 GEMMs of a step in TF32 instead of bf16; "+fb2":
#          SD_FLASH_BWD_BLOCKS_PER_SM=2, the flash attention backward at D 40 two blocks per SM;
#          "+f32step" (anywhere in the name): SD_STEP_ACTIVATIONS=f32, the step's forward storing F32
#          (fp16, "+f16step", is the default since the nineteenth session); a
#          trailing "@prev" (fast@prev): the row on the bundle's stylediff-prev, an earlier commit's
#          binary (PREV=<commit> bash bench/gpu_bundle.sh), labelled PRECISION@prev)
#          --stylediff PATH (build/stylediff)  --python PY (.venv/bin/python, else python3)
#          --work DIR (weights and io files; /tmp/stylediff_grad_bench)  --out DIR (table.txt and the
#          raw rows; $OUT/grad_bench or build/grad_bench)
# Exit status: 0 when both sides ran and every parity is within 1e-4 (exact); 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1
. bench/row_settings.sh
ROOT=$(pwd)
DEVICE=cpu MODEL=tiny ITERS="" MODES=fp32-explicit,fp32-sdpa-frozen PRECISION="" SD=${STYLEDIFF:-build/stylediff}
PY=${PYTHON:-} WORK=${WORK:-/tmp/stylediff_grad_bench} RES=""
while [ $# -gt 0 ]; do
    case $1 in
        --device) DEVICE=$2; shift ;;
        --model) MODEL=$2; shift ;;
        --iters) ITERS=$2; shift ;;
        --modes) MODES=$2; shift ;;
        --precision) PRECISION=$2; shift ;;
        --stylediff) SD=$2; shift ;;
        --python) PY=$2; shift ;;
        --work) WORK=$2; shift ;;
        --out) RES=$2; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "grad_side_by_side: unknown option '$1' (--help)" >&2; exit 2 ;;
    esac
    shift
done
case $DEVICE in
    cpu) : "${ITERS:=3}" "${PRECISION:=exact,exact+recompute}" ;;
    cuda) : "${ITERS:=10}" "${PRECISION:=exact,exact+direct,exact+wino4-all,fast,fast+tune,fast+f32grad}" ;;
    *) echo "grad_side_by_side: --device cpu|cuda" >&2; exit 2 ;;
esac
case $MODEL in
    tiny) OURS_MODEL=""; TORCH_MODEL="--config configs/tiny/unet.json" ;;
    sd15) OURS_MODEL="--config configs/sd-v1.5"; TORCH_MODEL="--config configs/sd-v1.5/unet.json" ;;
    *) echo "grad_side_by_side: --model tiny|sd15" >&2; exit 2 ;;
esac
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "$RES" ]; then
    if [ -n "${OUT:-}" ]; then RES=$OUT/grad_bench; else RES=$ROOT/build/grad_bench; fi
fi
mkdir -p "$RES" "$WORK"
note() { echo "grad_side_by_side: $*" >&2; }
[ -x "$SD" ] || { note "$SD missing: build it first"; exit 1; }
FAILED=0
if [ "$DEVICE" = cuda ]; then
    WHERE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
else
    WHERE="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
fi
echo "grad_side_by_side: $(date -u '+%Y-%m-%d %H:%M UTC'), $DEVICE (${WHERE:-?}), model $MODEL, load:$(uptime | sed 's/.*load average://')" >&2

W=$WORK/unet_$MODEL.safetensors IO=$WORK/grad_io_$MODEL.safetensors
OURS=$RES/ours.tsv TORCH=$RES/torch.tsv
: > "$OURS"
: > "$TORCH"
for row in $(echo "$PRECISION" | tr ',' ' '); do
    # a row ending in @prev (fast@prev) runs the bundle's stylediff-prev, an earlier commit's binary
    # beside this one (PREV=<commit> bash bench/gpu_bundle.sh); its rows are relabelled PRECISION@prev
    prec=${row%@prev}
    bin=$SD tag=""
    if [ "$prec" != "$row" ]; then
        bin=$(dirname "$SD")/stylediff-prev tag=@prev
        [ -x "$bin" ] || { note "no $bin for the row $row: bundle with PREV=<commit>"; continue; }
    fi
    extra=""
    [ "$row" = exact ] && extra="--save-weights $W --save-io $IO"
    convgemm=auto
    fastgemm=bf16
    chlast=1
    bf16grads=1
    convalgo=heuristic
    gemmalgo=heuristic
    wino=$(winograd_setting "$prec")
    fbwd=$(flash_bwd_setting "$prec")
    stepact=$(step_activations_setting "$prec")
    pdl=$(pdl_setting "$prec")
    case $prec in
        *+tune) convalgo=tune gemmalgo=tune ;;
        *+graph) convalgo=graph ;;
        *+nchw) chlast=0 ;;
        *+f32grad) bf16grads=0 ;;
        *+recompute) extra="$extra --recompute" ;;
        *+eager) extra="$extra --eager" ;;
        *+cudnn) convgemm=off ;;
        *+gemm) convgemm=all ;;
        *+tf32) fastgemm=tf32 ;;
    esac
    base=${prec%%+*}
    echo "stylediff$tag: bench grad $OURS_MODEL --device $DEVICE --precision $base --iters $ITERS$extra" \
         "(SD_CONV_GEMM=$convgemm SD_FAST_GEMM=$fastgemm SD_CHANNELS_LAST=$chlast SD_BF16_GRADS=$bf16grads" \
         "SD_CONV_ALGO=$convalgo SD_GEMM_ALGO=$gemmalgo SD_CONV_WINOGRAD=$wino SD_FLASH_BWD_BLOCKS_PER_SM=$fbwd SD_STEP_ACTIVATIONS=$stepact SD_CUDA_PDL=$pdl)" >&2
    # shellcheck disable=SC2086
    if ! SD_CUDA_PDL=$pdl SD_STEP_ACTIVATIONS=$stepact SD_FLASH_BWD_BLOCKS_PER_SM=$fbwd SD_CONV_WINOGRAD=$wino SD_CONV_ALGO=$convalgo SD_GEMM_ALGO=$gemmalgo SD_BF16_GRADS=$bf16grads SD_CHANNELS_LAST=$chlast SD_CONV_GEMM=$convgemm SD_FAST_GEMM=$fastgemm "$bin" bench grad $OURS_MODEL --device "$DEVICE" --precision "$base" --iters "$ITERS" --tsv -q \
            $extra > "$WORK/ours_row.tsv" 2> "$WORK/ours_$row.err"; then
        cat "$WORK/ours_$row.err" >&2
        note "stylediff bench grad failed ($row)"
        FAILED=1
    fi
    awk -v tag="$tag" 'BEGIN { FS = OFS = "\t" } { $4 = $4 tag; print }' "$WORK/ours_row.tsv" >> "$OURS"
done
sed "s/^/  /" "$OURS" >&2
if [ -f "$IO" ] && [ -f "$W" ] && "$PY" -c "import torch, safetensors" 2>/dev/null; then
    echo "pytorch: invert_torch.py $TORCH_MODEL --grad-io --modes $MODES --reps $ITERS" >&2
    # shellcheck disable=SC2086
    "$PY" bench/reference/invert_torch.py $TORCH_MODEL --weights "$W" --label "$MODEL" --device "$DEVICE" \
        --grad-io "$IO" --modes "$MODES" --reps "$ITERS" --warmup 1 --tsv > "$TORCH" 2> "$WORK/torch.err" \
        || { cat "$WORK/torch.err" >&2; note "the PyTorch side failed"; FAILED=1; }
    sed "s/^/  /" "$TORCH" >&2
    grep -v "^$" "$WORK/torch.err" | sed "s/^/  /" >&2
else
    note "no PyTorch side (torch/safetensors not importable by $PY, or stylediff wrote no weights/io)"
    FAILED=1
fi
rm -f "$W"

python3 - "$DEVICE" "${WHERE:-?}" "$MODEL" "$ITERS" "$OURS" "$TORCH" <<'EOF' | tee "$RES/table.txt"
import sys, time
device, where, model, iters, ours_path, torch_path = sys.argv[1:7]

def rows(path):
    try:
        return [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    except OSError:
        return []

ours = {(r[3], r[4]): r for r in rows(ours_path) if r[0] == "grad"}
ref = {(r[4], r[1]): r for r in rows(torch_path) if r[0] == "grad_ref"}
parity = [r for r in rows(torch_path) if r[0] == "grad_parity"]
ORDER = ("exact", "exact+direct", "exact+wino", "exact+wino4-all", "exact+wino-all", "exact+wino-mixed", "exact+cudnn", "exact+recompute", "fast", "fast+wino", "fast+tune+gtune", "fast+tune", "fast+graph", "fast+nchw", "fast+f32grad", "fast+fb2", "fast+pdl", "fast+f16step", "fast+f16step+pdl", "fast+f32step", "fast+f32step+pdl", "fast+cudnn", "fast+gemm", "fast+tf32",
         "fast+eager", "fast+recompute")
precs = sorted({k[0] for k in ours}, key=lambda p: ORDER.index(p) if p in ORDER else 9)
modes = []
for r in rows(torch_path):
    if r[0] == "grad_ref" and r[4] not in modes:
        modes.append(r[4])
side = next((r[5] for r in ours.values()), "?")
print(f"One UNet gradient step, stylediff vs PyTorch eager: model {model} ({side}x{side} latent, batch 1), "
      f"{device} ({where}), {time.strftime('%Y-%m-%d', time.gmtime())}, median of {iters}")
print("  context = Null-text's step (backward to the unconditional context); value = StyleDiffusion's"
      " (backward to the value input of the 16 cross-attention layers); forward = one plain UNet call.")
print("  ratio = PyTorch mode / stylediff precision (higher: stylediff faster). PyTorch fp32-explicit is what the"
      " reference code runs (its UNet parameters require grad); -frozen: activation gradients only.")
head = ["step"] + [f"stylediff {p} ms" for p in precs] + [f"PyTorch {m} ms" for m in modes]
head += [f"{m} / {p}" for m in modes for p in precs]
table = [head]
for step in ("forward", "context", "value"):
    line = [step]
    for p in precs:
        r = ours.get((p, step))
        line.append(f"{float(r[6]):,.2f}" if r else "-")
    for m in modes:
        r = ref.get((m, step))
        line.append(f"{float(r[5]):,.2f}" if r else "-")
    for m in modes:
        for p in precs:
            a, b = ref.get((m, step)), ours.get((p, step))
            line.append(f"{float(a[5]) / float(b[6]):.2f}x" if a and b and float(b[6]) > 0 else "-")
    table.append(line)
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
for n, r in enumerate(table):
    print("  " + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    if n == 0:
        print("  " + "  ".join("-" * w for w in widths))
for p in precs:
    for step in ("context", "value"):
        r = ours.get((p, step))
        if r:
            act, wts, dev = float(r[8]), float(r[9]), float(r[10])
            extra = f", device memory in use {dev / 1024:.2f} GiB (CUDA context included)" if dev >= 0 else ""
            print(f"  memory, stylediff {p} {step}: activations {act / 1024:.2f} GiB + weights {wts / 1024:.2f} GiB"
                  f" = {(act + wts) / 1024:.2f} GiB{extra}")
peaks = {}
for (m, step), r in ref.items():
    if r[7] not in ("", "-"):
        peaks[m] = max(peaks.get(m, 0.0), float(r[7]))
for m, v in peaks.items():
    print(f"  memory, PyTorch {m}: peak allocated {v / 1024:.2f} GiB (weights included)")
bad = 0
for r in parity:
    ok = float(r[5]) <= 1e-4
    bad += not ok
    print(f"  parity, stylediff exact vs torch autograd {r[4]}, {r[1]}: gradient max rel err {r[5]}, loss rel err {r[6]}"
          + ("" if ok else "  <-- over 1e-4"))
sys.exit(1 if bad or not parity else 0)
EOF
[ $? -ne 0 ] && FAILED=1
echo "grad_side_by_side: done; files in $RES" >&2
exit "$FAILED"
