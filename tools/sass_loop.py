#!/usr/bin/env python3
"""sass_loop.py: the instruction mix of a CUDA kernel's main loop, read from its sm_90 SASS.

Usage:
  tools/sass_loop.py KERNEL_FILE.cu MANGLED_OR_PATTERN [--unmasked] [--all-loops] [--nvcc-flag F ...]

Compiles KERNEL_FILE (from the repository root, with the Makefile's include path) for sm_90,
disassembles it and, for every function whose mangled name contains PATTERN, prints its register
count, spills and the instructions of its largest loop (the longest backward branch), grouped by
opcode. The flash attention kernels issue more instructions than their tensor cores can retire, so
this count is what their tiles cost when no GPU is at hand (bench/NOTES.md, eleventh session).

--all-loops prints every outermost loop in program order instead of the largest (a kernel with
several passes, such as the flash backward's dQ kernel).

--unmasked compiles a copy in which the per-tile mask tests (`if (causal || ...)` lines ending in a
marker comment `/* tile mask */`) read `if (false)`, so that the loop printed is the path every
interior tile takes.

cuobjdump and nvdisasm are not part of every CUDA toolkit install; when `cuobjdump` is not on PATH
the script fetches NVIDIA's PyPI wheels (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) into
build/sass-tools once (pip download: the package registry only).
"""
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "build", "sass-tools")


def nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    sys.exit("sass_loop: nvcc not found")


def disassembler():
    """(cuobjdump, directory holding nvdisasm)"""
    found = shutil.which("cuobjdump")
    if found and shutil.which("nvdisasm"):
        return found, os.path.dirname(shutil.which("nvdisasm"))
    bin_dir = os.path.join(TOOLS, "nvidia", "cu13", "bin")
    cuobjdump = os.path.join(bin_dir, "cuobjdump")
    if not os.path.exists(cuobjdump) or not os.path.exists(os.path.join(bin_dir, "nvdisasm")):
        os.makedirs(TOOLS, exist_ok=True)
        for pkg in ("nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm"):
            wheels = tempfile.mkdtemp()
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", pkg, "-d", wheels], check=True)
            for w in os.listdir(wheels):
                subprocess.run(["unzip", "-o", "-q", os.path.join(wheels, w), "-d", TOOLS], check=True)
        for tool in ("cuobjdump", "nvdisasm"):
            os.chmod(os.path.join(bin_dir, tool), 0o755)
    return cuobjdump, bin_dir


def compile_object(src, unmasked, extra):
    work = tempfile.mkdtemp()
    path = os.path.join(ROOT, src)
    if unmasked:
        text = open(path).read()
        text, n = re.subn(r"if \((.*)\) /\* tile mask \*/", "if (false) /* tile mask */", text)
        if n == 0:
            sys.exit("sass_loop: --unmasked found no `/* tile mask */` line in " + src)
        path = os.path.join(os.path.dirname(path), "_sass_loop_tmp.cu")  # same directory: its includes resolve
        with open(path, "w") as f:
            f.write(text)
    obj = os.path.join(work, "k.o")
    cmd = [nvcc(), "-O3", "-std=c++17", "-I" + os.path.join(ROOT, "include"), "-gencode", "arch=compute_90,code=sm_90",
           "-Xptxas", "-v", "-c", path, "-o", obj] + extra
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        if unmasked:
            os.remove(path)
    if res.returncode:
        sys.exit(res.stderr)
    return obj, res.stderr


def ptxas_usage(log):
    """mangled name -> 'N registers, S bytes spilled'"""
    usage, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            usage[name] = usage.get(name, "") + f"{m.group(1)} bytes spilled"
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            usage[name] = f"{m.group(1)} registers, " + usage.get(name, "")
    return usage


def outer_loops(sass):
    """The loops (spans from a backward branch's target to the branch) not inside a larger one, in
    program order, each as (instruction count, opcode counter)."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    where = {a: i for i, (a, _) in enumerate(ins)}
    spans = []
    for i, (a, t) in enumerate(ins):
        m = re.search(r"BRA.*?0x([0-9a-f]+)", t)
        if m:
            target = int(m.group(1), 16)
            if target < a and target in where:
                spans.append((where[target], i))
    outer = [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]
    loops = []
    for start, end in sorted(set(outer)):
        body = [t for _, t in ins[start:end + 1] if not t.startswith("@!PT")]  # never-executed padding
        ops = collections.Counter()
        for t in body:
            words = t.split()
            ops[(words[1] if words[0].startswith("@") else words[0]).split(".")[0]] += 1
        loops.append((len(body), ops))
    return loops


def main():
    args = sys.argv[1:]
    unmasked = "--unmasked" in args
    all_loops = "--all-loops" in args
    extra = []
    while "--nvcc-flag" in args:
        i = args.index("--nvcc-flag")
        extra.append(args[i + 1])
        del args[i:i + 2]
    args = [a for a in args if a not in ("--unmasked", "--all-loops")]
    if len(args) != 2:
        sys.exit(__doc__)
    src, pattern = args
    obj, log = compile_object(src, unmasked, extra)
    usage = ptxas_usage(log)
    cuobjdump, nvdisasm_dir = disassembler()
    env = dict(os.environ, PATH=nvdisasm_dir + os.pathsep + os.environ.get("PATH", ""), NVDISASM_PATH=nvdisasm_dir)
    names = re.findall(r"Function : (\S+)", subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True,
                                                            env=env, check=True).stdout)
    for name in [n for n in names if pattern in n]:
        sass = subprocess.run([cuobjdump, "-sass", "-fun", name, obj], capture_output=True, text=True, env=env,
                              check=True).stdout
        loops = outer_loops(sass)
        demangled = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
        print(f"{demangled}: {usage.get(name, '?')}")
        shown = loops if all_loops else sorted(loops, key=lambda l: -l[0])[:1]
        for n, ops in shown:
            print(f"  loop: {n} instructions: " + " ".join(f"{k} {v}" for k, v in ops.most_common(16)))


if __name__ == "__main__":
    main()
