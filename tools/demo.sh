#!/bin/sh
# The main job on the built-in tiny model (random weights: the pictures are not meaningful; the
# pipeline, its timings and its reports are). Everything lands in out/demo/:
#   1. reconstruct: DDIM inversion and sampling of a real photo, with a JSON report;
#   2. invert the photo with every method (DDIM, negative-prompt, Null-text, StyleDiffusion) and
#      print the table of per-timestep cost and reconstruction error per method;
#   3. edit "a cat ..." -> "a tiger ..." with P2Plus from the StyleDiffusion and the Null-text
#      inversions, writing the edits, the source rows and per-token attention heatmaps.
# The step counts are shortened so that the demo takes a couple of minutes on a laptop CPU; drop
# the --steps/--inner options (and add -m MODEL --clip DIR) for the reference settings.
set -e
cd "$(dirname "$0")/.."
OUT=out/demo
B=./build/stylediff
IMAGE=data/images/chelsea.png
SOURCE="a cat sitting on a wooden floor"
TARGET="a tiger sitting on a wooden floor"
mkdir -p "$OUT"

echo "== 1. reconstruct (DDIM inversion, guidance 1)"
$B reconstruct -q -i "$IMAGE" -p "$SOURCE" -o "$OUT/chelsea_reconstruction.png" --steps 50

echo
echo "== 2. invert with every method"
$B bench invert -q -i "$IMAGE" -p "$SOURCE" --steps 10 --steps-sd 10 --inner 5 --inner-sd 10 --save "$OUT"

echo
echo "== 3. edit with P2Plus (tau_u 0.5), LocalBlend on cat/tiger, tiger reweighted x2"
for method in stylediffusion nulltext; do
    $B edit -q "$OUT/$method.safetensors" --target "$TARGET" --blend cat,tiger --reweight tiger=2 \
        --tau-u 0.5 -o "$OUT/${method}_tiger.png" --save-attention "$OUT/${method}_attention"
done
echo
echo "demo: outputs in $OUT/ (reconstructions, inversions, edits, heatmaps, JSON reports)"
