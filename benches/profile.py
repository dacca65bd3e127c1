"""Where a bench row's step time goes, Rust against PyTorch: CPU ms per step by category.

Runs each side of a `benches/rows.toml` row twice under `perf record` (CPU-clock sampling), with
`--steps LO` and `--steps HI`, and divides the difference of the sample counts by HI - LO: startup,
imports and warm-up cancel, and so does time spent waiting for a busy CPU (perf samples only while
the process runs). Each sample is put in one category by its shared object and symbol:

* compute: oneDNN JIT kernels, MKL, ATen's vectorised loops and reductions (the arithmetic);
* framework: the rest of libtorch / libc10 (dispatcher, autograd engine, TensorIterator set-up,
  tensor bookkeeping);
* allocator: glibc malloc / free;
* kernel: the operating system (page faults of fresh allocations, scheduling);
* host language: libpython + libtorch_python (PyTorch), the Rust binary (Rust);
* other: the remaining shared objects (libc string functions, libgomp, libstdc++, ld.so, ...).

Needs `perf` (linux-tools) with permission to record (root or kernel.perf_event_paranoid <= 1),
a built Rust step timer (`cargo bench -p ca-train --bench steps --no-run`) and the PyTorch of
`cargo xtask setup`:

    python3 benches/profile.py --row gan-style-32 --lo 3 --hi 11
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREQ = 997

CATEGORIES = ["compute", "framework", "allocator", "kernel", "host language", "other"]

COMPUTE = re.compile(
    r"mkl_|dnnl::|jit_|brgemm|at::native::|at::vec::|sgemm|dgemm|gemm|"
    r"VectorizedLoop|vectorized_|cpu_kernel|_kernel_impl|Reduce|reduce|"
    r"mkldnn|ideep::|GroupNorm|group_norm|batch_norm|softmax|upsample|conv"
)
ALLOC = re.compile(r"malloc|free|unlink_chunk|_int_|sysmalloc|tcache|arena|brk|mmap|munmap")


def category(dso, sym):
    if dso.startswith("[JIT]"):
        return "compute"
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("libpython") or dso.startswith("libtorch_python"):
        return "host language"
    if dso.startswith("steps-"):
        return "host language"
    if dso.startswith("libc.so") and ALLOC.search(sym):
        return "allocator"
    if dso.startswith("libtorch_cpu") or dso.startswith("libc10.so"):
        return "compute" if COMPUTE.search(sym) else "framework"
    return "other"


def record(cmd, data):
    subprocess.run(
        ["perf", "record", "-q", "-F", str(FREQ), "-o", data, "--"] + cmd,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def short(sym):
    """A readable key for a symbol: ATen's elementwise loops are named by their kernel."""
    m = re.search(r"(\w+_kernel\w*)\(", sym)
    if "VectorizedLoop" in sym and m:
        return "elementwise " + m.group(1)
    return sym[:90]


def counts(data):
    """Samples per category of one perf.data, and per (category, symbol)."""
    out = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "-n", "--sort", "dso,sym", "--percent-limit", "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = {c: 0 for c in CATEGORIES}
    by_sym = {}
    # "    6.41%          263  libtorch_cpu.so   [.] symbol..."
    line_re = re.compile(r"^\s*[\d.]+%\s+(\d+)\s+(\S+(?: tid \d+)?)\s+\[(.)\]\s+(.*)$")
    for line in out.splitlines():
        m = line_re.match(line)
        if m:
            n, dso, _, sym = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            cat = category(dso, sym)
            total[cat] += n
            key = (cat, "JIT kernels" if dso.startswith("[JIT]") else short(sym))
            by_sym[key] = by_sym.get(key, 0) + n
    return total, by_sym


def steps_bin():
    found = sorted(
        (p for p in glob.glob(os.path.join(ROOT, "target/release/deps/steps-*")) if os.access(p, os.X_OK) and not p.endswith(".d")),
        key=os.path.getmtime,
    )
    if not found:
        sys.exit("profile.py: no Rust step timer; run `cargo bench -p ca-train --bench steps --no-run` first")
    return found[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", required=True, help="a row of benches/rows.toml")
    ap.add_argument("--lo", type=int, default=3, help="timed steps of the short run")
    ap.add_argument("--hi", type=int, default=11, help="timed steps of the long run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--python", default=os.path.join(ROOT, ".libtorch/venv/bin/python"))
    ap.add_argument("--symbols", type=int, default=12, help="symbols to list by |Rust - PyTorch|")
    a = ap.parse_args()
    if a.hi <= a.lo:
        sys.exit("profile.py: --hi must be larger than --lo")
    common = ["--row", a.row, "--threads", str(a.threads), "--device", "cpu", "--warmup", "1"]
    sides = {
        "Rust": [steps_bin()] + common,
        "PyTorch": [a.python, "benches/reference/steps.py"] + common,
    }
    per_step, sym_step = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for side, cmd in sides.items():
            c, s = {}, {}
            for n in (a.lo, a.hi):
                data = os.path.join(tmp, f"{side}-{n}.data")
                record(cmd + ["--steps", str(n)], data)
                c[n], s[n] = counts(data)
            scale = 1e3 / (a.hi - a.lo) / FREQ
            per_step[side] = {k: (c[a.hi][k] - c[a.lo][k]) * scale for k in CATEGORIES}
            keys = set(s[a.hi]) | set(s[a.lo])
            sym_step[side] = {k: (s[a.hi].get(k, 0) - s[a.lo].get(k, 0)) * scale for k in keys}
    print(f"row {a.row}, {a.threads} thread(s): CPU ms per step (perf, steps {a.lo} vs {a.hi})\n")
    print("| category | Rust | PyTorch | Rust - PyTorch |")
    print("|---|---:|---:|---:|")
    for k in CATEGORIES + ["total"]:
        r = sum(per_step["Rust"].values()) if k == "total" else per_step["Rust"][k]
        t = sum(per_step["PyTorch"].values()) if k == "total" else per_step["PyTorch"][k]
        print(f"| {k} | {r:.0f} | {t:.0f} | {r - t:+.0f} |")
    if a.symbols > 0:
        r, t = sym_step["Rust"], sym_step["PyTorch"]
        keys = sorted(set(r) | set(t), key=lambda k: -abs(r.get(k, 0) - t.get(k, 0)))
        print("\nlargest differences by symbol (CPU ms per step; sampling noise is a few ms):\n")
        print("| category | symbol | Rust | PyTorch |")
        print("|---|---|---:|---:|")
        for k in keys[: a.symbols]:
            print(f"| {k[0]} | `{k[1]}` | {r.get(k, 0):.1f} | {t.get(k, 0):.1f} |")


if __name__ == "__main__":
    main()
