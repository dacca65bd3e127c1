"""PyTorch step timer: the reference side of `cargo xtask bench`.

Reads the same benches/rows.toml and preset configs as the Rust step timer
(crates/ca-train/benches/steps.rs), builds the same networks (gan.py, diffusion.py), times the
same work and prints the same JSON line, with the parameter count of every network.

    .libtorch/venv/bin/python benches/reference/steps.py --row gan-style-32 --threads 2
    python3 benches/reference/steps.py --row diffusion-32 --device cuda
"""

import argparse
import json
import os
import statistics
import sys
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import diffusion  # noqa: E402
import gan  # noqa: E402


def apply_overrides(table, sets):
    """`key.path=value` overrides, the value read as TOML (as ca_train::overrides)."""
    for item in sets:
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        parts = key.strip().split(".")
        cur = table
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value


def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def count(module):
    return sum(p.numel() for p in module.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rows", default=os.path.join(HERE, "..", "rows.toml"))
    ap.add_argument("--json", action="store_true", help="accepted; the output is always JSON")
    a = ap.parse_args()

    with open(a.rows, "rb") as f:
        rows = {r["name"]: r for r in tomllib.load(f)["row"]}
    if a.row not in rows:
        sys.exit(f"no row `{a.row}` in {a.rows}")
    row = rows[a.row]
    root = os.path.dirname(os.path.dirname(os.path.abspath(a.rows)))
    with open(os.path.join(root, row["config"]), "rb") as f:
        cfg = tomllib.load(f)
    apply_overrides(cfg, row.get("set", []))
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
    data = cfg.get("data", {})
    size, channels = data.get("size", 32), data.get("channels", 3)
    steps = max(a.steps if a.steps is not None else row["steps"], 1)
    warmup = a.warmup if a.warmup is not None else row["warmup"]
    torch.manual_seed(0)
    family = cfg["model"]["family"]
    step_obj = (gan.GanStep if family == "gan" else diffusion.DiffusionStep)(cfg, channels, size,
                                                                             dev)
    torch.manual_seed(1234)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def time_it(fn):
        for k in range(warmup):
            fn(k)
        sync()
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out = []
        for k in range(steps):
            t0 = time.perf_counter()
            fn(warmup + k)
            sync()
            out.append(time.perf_counter() - t0)
        return out

    kind = row["kind"]
    ddim_steps = None
    nets = step_obj.networks()
    if kind == "train":
        b = cfg.get("train", {}).get("batch_size", 64)
        n_bg = b - round(b * data.get("target_fraction", 0.5))
        x = torch.rand(b, channels, size, size, device=dev) * 2 - 1
        half_life = cfg.get("train", {}).get("ema_half_life_images", 10000.0)
        decay = 0.5 ** (b / half_life) if half_life > 0 else 0.0
        params = {k: count(v) for k, v in nets.items()}
        reset_peak_rss()

        def fn(k):
            step_obj.step(x, n_bg, k)
            step_obj.update_ema(decay)

        times, unit = time_it(fn), "step"
    elif kind == "ddim":
        b = 16
        ddim_steps = cfg.get("apply", {}).get("diffusion_ddim_steps", 50)
        unet = step_obj.unet_ema.eval()
        params = {"unet": count(unet)}
        dz, ds = step_obj.dz, step_obj.ds
        z = torch.randn(b, dz, device=dev)
        s = torch.randn(b, ds, device=dev)
        reset_peak_rss()

        def fn(k):
            torch.manual_seed(k)
            x_t = torch.randn(b, channels, size, size).to(dev)
            diffusion.ddim_sample(unet, step_obj.sched, z, s, x_t, ddim_steps)

        times, unit = time_it(fn), "sample"
    elif kind == "encode":
        b = cfg.get("eval", {}).get("batch_size", 100)
        x = torch.rand(b, channels, size, size, device=dev) * 2 - 1
        if family == "gan":
            name, enc = step_obj.encoder_for_inference()
            params = {name: count(step_obj.e_ema if name == "e" else step_obj.d)}
        else:
            enc, params = step_obj.enc_ema.eval(), {"enc": count(step_obj.enc_ema)}
        reset_peak_rss()

        def fn(k):
            with torch.no_grad():
                enc(x)

        times, unit = time_it(fn), "batch"
    else:
        sys.exit(f"row `{a.row}`: unknown kind `{kind}`")

    med = statistics.median(times)
    out = {
        "row": a.row, "impl": "pytorch", "device": a.device, "threads": torch.get_num_threads(),
        "batch": b, "ddim_steps": ddim_steps, "unit": unit, "steps": len(times), "warmup": warmup,
        "median_s": round(med, 6), "mean_s": round(sum(times) / len(times), 6),
        "min_s": round(min(times), 6), "items_per_s": round(b / med, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1), "params": params,
        "times_s": [round(t, 6) for t in times],
    }
    if a.device == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(out, separators=(",", ":")))


if __name__ == "__main__":
    main()
