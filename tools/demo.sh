#!/bin/sh
# The main job on the built-in tiny model: reconstruct a real photo through DDIM inversion and
# write the PNG and the JSON report under out/demo/. (The tiny model's weights are random, so the
# picture is not the cat; the point is the pipeline, its timings and its report.)
set -e
cd "$(dirname "$0")/.."
mkdir -p out/demo
./build/stylediff reconstruct -i data/images/chelsea.png -p "a cat sitting on a wooden floor" \
    -o out/demo/chelsea_reconstruction.png --steps 50
echo "demo: wrote out/demo/chelsea_reconstruction.png and out/demo/chelsea_reconstruction.json"
