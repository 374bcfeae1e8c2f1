#!/bin/sh
# CPU reference timings of one UNet call: the built-in tiny model and the full SD v1.5
# architecture with random weights (no checkpoint needed). Speed on the CPU is not a goal; these
# numbers say what a CPU run costs. GPU benchmarks live with the CUDA backend.
set -e
cd "$(dirname "$0")/.."
B=./build/stylediff
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(date -u +%Y-%m-%d)"
$B bench unet -q --device cpu --batch 1 --size 256 --iters 5
$B bench unet -q --device cpu --batch 2 --size 256 --iters 5 | tail -n 1
$B bench unet -q --device cpu --batch 1 --size 512 --iters 3 | tail -n 1
$B bench unet -q --device cpu --batch 2 --size 512 --iters 3 | tail -n 1
$B bench unet -q --device cpu --config configs/sd-v1.5 --batch 1 --size 512 --iters 2 | tail -n 1
