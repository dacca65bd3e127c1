"""PyTorch reference of the CA-diffusion networks, training step and DDIM sampler.

The same architectures as crates/ca-models/src/diffusion/{unet,encoder,latent_prior,
schedule,ddim}.rs and the same step as crates/ca-train/src/diffusion.rs (`DiffusionStep`), as a
PyTorch user would write them (`F.scaled_dot_product_attention`, `nn.GroupNorm`,
`torch.optim.Adam`, `clip_grad_norm_`). Parameter counts match the Rust `VarStore`s.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gan import class_bce, masked_mean, mmd_rbf


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                      * (-math.log(10000.0) / half))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], 1)


def conv3(cin, cout, stride=1, zero=False):
    c = nn.Conv2d(cin, cout, 3, stride, 1)
    if zero:
        nn.init.zeros_(c.weight)
    return c


def conv1(cin, cout, zero=False):
    c = nn.Conv2d(cin, cout, 1)
    if zero:
        nn.init.zeros_(c.weight)
    return c


class ResBlock(nn.Module):
    """GN, SiLU, conv; GN; DiffAE adaptive GN `h (1 + t_scale) + t_shift, h (1 + c_scale)`;
    SiLU, dropout, zero conv; residual (1x1 conv when the channels change)."""

    def __init__(self, cin, cout, groups, emb, dropout):
        super().__init__()
        self.in_norm = nn.GroupNorm(groups, cin)
        self.in_conv = conv3(cin, cout)
        self.time_emb = nn.Linear(emb[0], 2 * cout) if emb else None
        self.cond_emb = nn.Linear(emb[1], cout) if emb else None
        self.out_norm = nn.GroupNorm(groups, cout)
        self.out_conv = conv3(cout, cout, zero=True)
        self.skip = conv1(cin, cout) if cin != cout else None
        self.dropout = dropout

    def forward(self, x, emb=None):
        h = self.out_norm(self.in_conv(F.silu(self.in_norm(x))))
        if emb is not None and self.time_emb is not None:
            temb, cemb = emb
            scale, shift = self.time_emb(F.silu(temb))[:, :, None, None].chunk(2, 1)
            c_scale = self.cond_emb(F.silu(cemb))[:, :, None, None]
            h = (h * (1 + scale) + shift) * (1 + c_scale)
        h = self.out_conv(F.dropout(F.silu(h), self.dropout, self.training))
        return (self.skip(x) if self.skip is not None else x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch, groups, heads):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = conv1(ch, 3 * ch)
        self.proj = conv1(ch, ch, zero=True)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).view(b, 3, self.heads, d, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class CondUnet(nn.Module):
    def __init__(self, m, channels, size):
        super().__init__()
        g, base = m.get("norm_groups", 8), m.get("base_channels", 16)
        emb = (m.get("time_embed_dim", 128), m.get("cond_embed_dim", 128))
        self.time_dim = emb[0]
        attn_res = m.get("attention_resolutions", [16, 8])
        heads, drop = m.get("attention_heads", 1), m.get("dropout", 0.1)
        mult, nres = m.get("channel_mult", [1, 2, 4]), m.get("res_blocks", 1)
        self.time_embed = nn.Sequential(nn.Linear(emb[0], emb[0]), nn.SiLU(),
                                        nn.Linear(emb[0], emb[0]))
        self.cond_embed = nn.Sequential(nn.Linear(m["dz"] + m["ds"], emb[1]), nn.SiLU(),
                                        nn.Linear(emb[1], emb[1]))
        self.input_conv = conv3(channels, base)
        ch, skips, res = base, [base], size
        self.down = nn.ModuleList()
        for level, mu in enumerate(mult):
            out = base * mu
            for _ in range(nres):
                item = nn.Module()
                item.res = ResBlock(ch, out, g, emb, drop)
                item.attn = AttnBlock(out, g, heads) if res in attn_res else None
                item.down = None
                self.down.append(item)
                ch = out
                skips.append(ch)
            if level + 1 < len(mult):
                item = nn.Module()
                item.res, item.attn, item.down = None, None, conv3(ch, ch, 2)
                self.down.append(item)
                skips.append(ch)
                res //= 2
        self.mid1 = ResBlock(ch, ch, g, emb, drop)
        self.mid_attn = AttnBlock(ch, g, heads) if res in attn_res else None
        self.mid2 = ResBlock(ch, ch, g, emb, drop)
        self.up = nn.ModuleList()
        for level in reversed(range(len(mult))):
            out = base * mult[level]
            for i in range(nres + 1):
                item = nn.Module()
                item.res = ResBlock(ch + skips.pop(), out, g, emb, drop)
                ch = out
                item.attn = AttnBlock(ch, g, heads) if res in attn_res else None
                item.up = conv3(ch, ch) if level > 0 and i == nres else None
                self.up.append(item)
            if level > 0:
                res *= 2
        self.out_norm = nn.GroupNorm(g, ch)
        self.out_conv = conv3(ch, channels, zero=True)

    def forward(self, x_t, t, z, s):
        temb = self.time_embed(timestep_embedding(t, self.time_dim))
        cemb = self.cond_embed(torch.cat([z, s], 1))
        emb = (temb, cemb)
        h = self.input_conv(x_t)
        skips = [h]
        for item in self.down:
            if item.down is not None:
                h = item.down(h)
            else:
                h = item.res(h, emb)
                if item.attn is not None:
                    h = item.attn(h)
            skips.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for item in self.up:
            h = item.res(torch.cat([h, skips.pop()], 1), emb)
            if item.attn is not None:
                h = item.attn(h)
            if item.up is not None:
                h = item.up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out_conv(F.silu(self.out_norm(h)))


class SemanticEncoder(nn.Module):
    def __init__(self, m, channels, size):
        super().__init__()
        e = m.get("encoder", {})
        base, mult = e.get("base_channels", 16), e.get("channel_mult", [1, 2, 4, 4])
        nres, g = e.get("res_blocks", 1), m.get("norm_groups", 8)
        self.input_conv = conv3(channels, base)
        self.blocks = nn.ModuleList()
        ch = base
        for level, mu in enumerate(mult):
            out = base * mu
            for r in range(nres):
                item = nn.Module()
                item.res = ResBlock(ch, out, g, None, 0.0)
                ch = out
                last = r + 1 == nres and level + 1 < len(mult)
                item.down = conv3(ch, ch, 2) if last else None
                self.blocks.append(item)
        self.out_norm = nn.GroupNorm(g, ch)
        self.z_head = nn.Linear(ch, m["dz"])
        self.s_head = nn.Linear(ch, m["ds"])

    def forward(self, x):
        h = self.input_conv(x)
        for item in self.blocks:
            h = item.res(h)
            if item.down is not None:
                h = item.down(h)
        f = F.silu(self.out_norm(h)).mean(dim=(2, 3))
        return self.z_head(f), self.s_head(f)


class LatentPrior(nn.Module):
    def __init__(self, m):
        super().__init__()
        p = m.get("latent_prior", {})
        self.dz, self.ds = m["dz"], m["ds"]
        d, w = self.dz + self.ds, p.get("width", 256)
        self.width, self.time_dim = w, p.get("time_embed_dim", 64)
        self.dropout = p.get("dropout", 0.0)
        self.time_embed = nn.Sequential(nn.Linear(self.time_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.group_embed = nn.Embedding(2, w)
        self.layers = nn.ModuleList()
        for i in range(p.get("layers", 4)):
            layer = nn.Module()
            layer.fc = nn.Linear(d if i == 0 else w + d, w)
            layer.norm = nn.LayerNorm(w)
            layer.mod = nn.Linear(w, 2 * w)
            self.layers.append(layer)
        self.out = nn.Linear(w, d)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))

    def forward(self, x_t, t, is_target):
        temb = self.time_embed(timestep_embedding(t, self.time_dim))
        emb = F.silu(temb + self.group_embed(is_target.long()))
        h = x_t
        for i, layer in enumerate(self.layers):
            inp = h if i == 0 else torch.cat([h, x_t], 1)
            hh = layer.norm(layer.fc(inp))
            scale, shift = layer.mod(emb).chunk(2, 1)
            h = F.dropout(F.silu(hh * (1 + scale) + shift), self.dropout, self.training)
        return self.out(h)


class Schedule:
    """Linear betas in float64, tables of sqrt(alpha_bar) and sqrt(1 - alpha_bar) in float32."""

    def __init__(self, s, device):
        n = s.get("timesteps", 1000)
        b0, b1 = s.get("beta_start", 1e-4), s.get("beta_end", 0.02)
        if s.get("kind", "linear") != "linear":
            raise SystemExit("reference: only the linear schedule is implemented")
        betas = torch.tensor([b0 + (b1 - b0) * i / (n - 1) for i in range(n)],
                             dtype=torch.float64)
        self.ac = torch.cumprod(1 - betas, 0)
        self.sa = self.ac.sqrt().float().to(device)
        self.s1 = (1 - self.ac).sqrt().float().to(device)
        self.T = n

    def coef(self, t, like):
        shape = (-1,) + (1,) * (like.dim() - 1)
        return self.sa[t].view(shape), self.s1[t].view(shape)

    def q_sample(self, x0, t, noise):
        sa, s1 = self.coef(t, x0)
        return sa * x0 + s1 * noise


def ddim_timesteps(T, n):
    if n == 1:
        return [T - 1]
    return [(2 * i * (T - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]


@torch.no_grad()
def ddim_sample(unet, sched, z, s, x, steps, clip=1.0):
    """Deterministic DDIM (eta = 0), x0 clipped at each step (`CaModel::decode`)."""
    ts = ddim_timesteps(sched.T, steps)
    for i in reversed(range(len(ts))):
        t = torch.full((x.shape[0],), ts[i], dtype=torch.long, device=x.device)
        a_prev = float(sched.ac[ts[i - 1]]) if i > 0 else 1.0
        sa, s1 = sched.coef(t, x)
        eps = unet(x, t, z, s)
        x0 = ((x - s1 * eps) / sa).clamp(-clip, clip)
        eps = (x - sa * x0) / s1
        x = x0 * math.sqrt(a_prev) + eps * math.sqrt(max(1.0 - a_prev, 0.0))
    return x


class DiffusionStep:
    """Autoencoder (E + UNet) step with the CA terms, then the latent prior's step, as
    crates/ca-train/src/diffusion.rs `DiffusionStep::step`."""

    def __init__(self, cfg, channels, size, device):
        m, self.loss, o = cfg["model"], cfg.get("loss", {}), cfg.get("optim", {})
        # train.precision = "bf16": forward passes and losses under torch.autocast (bfloat16),
        # backward and optimiser steps outside it, as the Rust trainer.
        precision = cfg.get("train", {}).get("precision", "fp32")
        if precision not in ("fp32", "bf16"):
            raise SystemExit(f"reference: train.precision = {precision!r} is not supported")
        self.amp = lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                          enabled=precision == "bf16")
        if m.get("prediction", "eps") != "eps" or \
                m.get("latent_prior", {}).get("prediction", "eps") != "eps":
            raise SystemExit("reference: only eps-prediction is implemented")
        if self.loss.get("z_adversary", 0.0) > 0:
            raise SystemExit("reference: loss.z_adversary > 0 is not implemented")
        self.dz, self.ds = m["dz"], m["ds"]
        self.unet = CondUnet(m, channels, size).to(device)
        self.unet_ema = CondUnet(m, channels, size).to(device).eval()
        self.unet_ema.load_state_dict(self.unet.state_dict())
        self.enc = SemanticEncoder(m, channels, size).to(device)
        self.enc_ema = SemanticEncoder(m, channels, size).to(device).eval()
        self.enc_ema.load_state_dict(self.enc.state_dict())
        self.prior = LatentPrior(m).to(device)
        self.heads = nn.Module()
        self.heads.cls = nn.Linear(self.ds, 1)
        self.heads.to(device)
        self.sched = Schedule(m.get("schedule", {}), device)
        self.prior_sched = Schedule(m.get("latent_prior", {}).get("schedule", {}), device)
        betas = (o.get("beta1", 0.9), o.get("beta2", 0.999))
        lr = o.get("lr_g", 2e-4)
        self.ae_params = list(self.unet.parameters()) + list(self.enc.parameters()) \
            + list(self.heads.parameters())
        self.opt = torch.optim.Adam(self.ae_params, lr=lr, betas=betas, eps=1e-8)
        self.opt_prior = torch.optim.Adam(self.prior.parameters(), lr=lr, betas=betas, eps=1e-8)
        self.grad_clip = o.get("grad_clip", 0.0)
        d = self.dz + self.ds
        self.stats_mean = torch.zeros(d, device=device)
        self.stats_sq = torch.ones(d, device=device)
        self.n_steps = 0

    def networks(self):
        return {"unet": self.unet, "enc": self.enc, "prior": self.prior, "heads": self.heads}

    def w(self, key, default=0.0):
        return self.loss.get(key, default)

    def step(self, x, n_bg, step):
        b, dev = x.shape[0], x.device
        n_t = b - n_bg
        t = torch.randint(self.sched.T, (b,), device=dev)
        noise = torch.randn_like(x)
        t_prior = torch.randint(self.prior_sched.T, (b,), device=dev)
        noise_prior = torch.randn(b, self.dz + self.ds, device=dev)
        is_target = torch.cat([torch.zeros(n_bg, device=dev), torch.ones(n_t, device=dev)])
        is_bg = 1.0 - is_target
        stats = []
        # ---------------- autoencoder ----------------
        self.opt.zero_grad()
        self.unet.train()
        self.enc.train()
        region = self.amp()
        region.__enter__()
        z, s = self.enc(x)
        cs = s * is_target[:, None] if self.w("salient_masking", True) else s
        x_t = self.sched.q_sample(x, t, noise)
        pred = self.unet(x_t, t, z, cs)
        denoise = F.mse_loss(pred, noise)
        loss = denoise * self.w("denoise", 1.0)
        stats.append(denoise.detach())
        if self.w("salient_zero") > 0 and self.w("salient_masking", True):
            tt = masked_mean(s.abs().mean(1), is_bg)
            loss = loss + tt * self.w("salient_zero")
            stats.append(tt.detach())
        if self.w("class") > 0:
            tt = class_bce(self.heads.cls(s).squeeze(1), is_target).mean()
            loss = loss + tt * self.w("class")
            stats.append(tt.detach())
        if self.w("mmd") > 0 and n_bg >= 2 and n_t >= 2:
            zn = z / (z.detach().std() + 1e-6)
            tt = mmd_rbf(zn[:n_bg], zn[n_bg:])
            loss = loss + tt * self.w("mmd")
            stats.append(tt.detach())
        region.__exit__(None, None, None)
        loss.backward()
        if self.grad_clip > 0:
            stats.append(torch.nn.utils.clip_grad_norm_(self.ae_params, self.grad_clip))
        self.opt.step()
        self.n_steps += 1
        stats.append(loss.detach())
        # ---------------- latent prior on the EMA encoder's codes ----------------
        with torch.no_grad():
            cz, cs_ = self.enc_ema(x)
            self.update_code_statistics(cz, cs_, n_bg, step == 0)
        self.opt_prior.zero_grad()
        x0 = (torch.cat([cz, cs_], 1) - self.prior.mean) / self.prior.std
        x0 = torch.cat([x0[:, :self.dz], x0[:, self.dz:] * is_target[:, None]], 1)
        xt = self.prior_sched.q_sample(x0, t_prior, noise_prior)
        prior_loss = F.mse_loss(self.prior(xt, t_prior, is_target), noise_prior)
        prior_loss.backward()
        self.opt_prior.step()
        stats.append(prior_loss.detach())
        return stats

    def update_code_statistics(self, z, s, n_bg, init):
        st = s[n_bg:]
        m = torch.cat([z.mean(0), st.mean(0)])
        q = torch.cat([z.square().mean(0), st.square().mean(0)])
        if init:
            self.stats_mean.copy_(m)
            self.stats_sq.copy_(q)
        else:
            self.stats_mean.lerp_(m, 0.01)
            self.stats_sq.lerp_(q, 0.01)
        std = (self.stats_sq - self.stats_mean.square()).clamp_min(1e-12).sqrt().clamp_min(1e-6)
        self.prior.mean.copy_(self.stats_mean)
        self.prior.std.copy_(std)

    @torch.no_grad()
    def update_ema(self, decay):
        n = self.n_steps
        decay = min(decay, (1.0 + n) / (10.0 + n))
        for ema, live in [(self.unet_ema, self.unet), (self.enc_ema, self.enc)]:
            for pe, p in zip(ema.parameters(), live.parameters()):
                pe.lerp_(p, 1.0 - decay)
            for be, b in zip(ema.buffers(), live.buffers()):
                be.copy_(b)
