"""Count the aten ops of one training step of a bench row's PyTorch mirror.

Non-view ops are about the kernels a CUDA step launches; where the step is bound by the host
launching them (small models on a big GPU), step time / kernels is the host cost per kernel.
Runs on the CPU, 16 steps after one (lazy R1 every 16), EMA update included. From the repo root:

    .libtorch/venv/bin/python benches/gpu/count_kernels.py gan-style-32
"""
import sys, os, collections
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benches", "reference"))
import tomllib, torch
from torch.utils._python_dispatch import TorchDispatchMode
import steps as S, gan, diffusion
row_name = sys.argv[1]
rows = {r["name"]: r for r in tomllib.load(open(os.path.join(ROOT, "benches", "rows.toml"), "rb"))["row"]}
row = rows[row_name]
cfg = tomllib.load(open(os.path.join(ROOT, row["config"]), "rb"))
S.apply_overrides(cfg, row.get("set", []))
torch.set_num_threads(1)
data = cfg.get("data", {}); size = data.get("size", 32); ch = data.get("channels", 3)
torch.manual_seed(0)
fam = cfg["model"]["family"]
st = (gan.GanStep if fam == "gan" else diffusion.DiffusionStep)(cfg, ch, size, torch.device("cpu"))
b = cfg.get("train", {}).get("batch_size", 64)
n_bg = b - round(b * data.get("target_fraction", 0.5))
x = torch.rand(b, ch, size, size) * 2 - 1
hl = cfg.get("train", {}).get("ema_half_life_images", 10000.0); decay = 0.5 ** (b / hl)
VIEW = {"view", "_unsafe_view", "expand", "t", "transpose", "permute", "unsqueeze", "squeeze",
        "select", "slice", "narrow", "as_strided", "alias", "detach", "reshape", "split",
        "unbind", "chunk", "split_with_sizes", "_reshape_alias", "view_as", "expand_as",
        "numpy_T", "lift_fresh", "unfold", "diagonal"}
class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.c = collections.Counter()
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.c[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
st.step(x, n_bg, 0); st.update_ema(decay)
tot = collections.Counter()
n = 16
for k in range(1, n + 1):
    m = Count()
    with m:
        st.step(x, n_bg, k); st.update_ema(decay)
    tot.update(m.c)
kern = sum(v for k, v in tot.items() if k not in VIEW) / n
allops = sum(tot.values()) / n
print(f"{row_name}: {allops:.0f} aten ops per step, {kern:.0f} non-view (kernels), top:",
      [(k, round(v / n)) for k, v in tot.most_common(12)])
