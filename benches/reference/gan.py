"""PyTorch reference of the CA-GAN networks and training step.

The same architectures as crates/ca-models/src/gan/*.rs and blocks/*.rs, and the same step as
crates/ca-train/src/gan.rs (`GanStep::step`), written as a PyTorch user would write them:
`F.leaky_relu`, `F.binary_cross_entropy_with_logits`, `torch.optim.Adam`,
`zero_grad()` (set to None). Parameter names and counts match the Rust `VarStore`s
(`xtask bench` checks the counts).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def channels_at(base, cap, size, res):
    return max(min(base * (size // res), cap), 1)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate (ProGAN); plain init when not equalised."""

    def __init__(self, cin, cout, equalized=True, lr_mul=1.0, bias_init=0.0):
        super().__init__()
        he = 1.0 / math.sqrt(cin)
        if equalized:
            std, self.w_scale, self.b_scale = 1.0 / lr_mul, he * lr_mul, lr_mul
        else:
            std, self.w_scale, self.b_scale = he, 1.0, 1.0
        self.weight = nn.Parameter(torch.randn(cout, cin) * std)
        self.bias = nn.Parameter(torch.full((cout,), bias_init / self.b_scale))

    def forward(self, x):
        return F.linear(x, self.weight * self.w_scale, self.bias * self.b_scale)

    def forward_lrelu(self, x):
        """StyleGAN2's fused bias + leaky ReLU with gain sqrt(2)."""
        return F.leaky_relu(self.forward(x), 0.2) * SQRT2


class EqualConv2d(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, equalized=True):
        super().__init__()
        he = 1.0 / math.sqrt(cin * k * k)
        std, self.w_scale = (1.0, he) if equalized else (he, 1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * std)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.w_scale, self.bias, self.stride, self.padding)

    def forward_lrelu(self, x):
        return F.leaky_relu(self.forward(x), 0.2)


def minibatch_stddev(x, group):
    b, c, h, w = x.shape
    g = next(g for g in range(min(group, b), 0, -1) if b % g == 0)
    y = x.view(g, b // g, c, h, w)
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    y = y.view(1, b // g, 1, 1, 1).expand(g, b // g, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y], 1)


class Trunk(nn.Module):
    def __init__(self, base, cap, eq, channels, size):
        super().__init__()
        ch = lambda r: channels_at(base, cap, size, r)  # noqa: E731
        self.from_rgb = EqualConv2d(channels, ch(size), 1, 1, 0, eq)
        blocks, res = [], size
        while res > 4:
            blk = nn.Module()
            blk.conv0 = EqualConv2d(ch(res), ch(res), 3, 1, 1, eq)
            blk.conv1 = EqualConv2d(ch(res), ch(res // 2), 4, 2, 1, eq)
            blocks.append(blk)
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = ch(4)

    def forward(self, x):
        h = self.from_rgb.forward_lrelu(x)
        feats = []
        for blk in self.blocks:
            h = blk.conv1.forward_lrelu(blk.conv0.forward_lrelu(h))
            feats.append(h)
        return feats


class Head(nn.Module):
    def __init__(self, cin, c, hidden, eq):
        super().__init__()
        self.conv = EqualConv2d(cin, c, 3, 1, 1, eq)
        self.fc = EqualLinear(c * 16, hidden, eq)

    def forward(self, h):
        return F.leaky_relu(self.fc(self.conv.forward_lrelu(h).flatten(1)), 0.2)


class Discriminator(nn.Module):
    """Four heads: adversarial (with minibatch stddev), dataset, z, s; multi-scale features."""

    def __init__(self, cfg, dz, ds, channels, size):
        super().__init__()
        eq = cfg.get("equalized_lr", True)
        self.trunk = Trunk(cfg.get("base_channels", 16), cfg.get("max_channels", 64), eq,
                           channels, size)
        c, hidden = self.trunk.out_channels, cfg.get("hidden", 256)
        self.mbstd = cfg.get("mbstd_group", 4)
        self.adv = Head(c + (1 if self.mbstd > 0 else 0), c, hidden, eq)
        self.enc = Head(c, c, hidden, eq)
        self.adv_out = EqualLinear(hidden, 1, eq)
        self.dataset_out = EqualLinear(hidden, 1, eq)
        self.z_out = EqualLinear(hidden, dz, eq)
        self.s_out = EqualLinear(hidden, ds, eq)

    def forward(self, x):
        feats = self.trunk(x)
        h = feats[-1]
        ha = minibatch_stddev(h, self.mbstd) if self.mbstd > 0 else h
        adv = self.adv_out(self.adv(ha)).squeeze(1)
        e = self.enc(h)
        return dict(adv=adv, dataset=self.dataset_out(e).squeeze(1), z=self.z_out(e),
                    s=self.s_out(e), features=feats)

    def encode(self, x):
        e = self.enc(self.trunk(x)[-1])
        return self.z_out(e), self.s_out(e)


class Encoder(nn.Module):
    def __init__(self, cfg, dz, ds, channels, size):
        super().__init__()
        eq = cfg.get("equalized_lr", True)
        self.trunk = Trunk(cfg.get("base_channels", 16), cfg.get("max_channels", 64), eq,
                           channels, size)
        c, hidden = self.trunk.out_channels, cfg.get("hidden", 256)
        self.enc = Head(c, c, hidden, eq)
        self.z_out = EqualLinear(hidden, dz, eq)
        self.s_out = EqualLinear(hidden, ds, eq)

    def forward(self, x):
        e = self.enc(self.trunk(x)[-1])
        return self.z_out(e), self.s_out(e)


class DcganGenerator(nn.Module):
    """DCGAN: ConvTranspose 4x4 to 4x4, then (ConvT + BN + ReLU) per doubling, ConvT, tanh."""

    def __init__(self, cfg, dz, ds, channels, size):
        super().__init__()
        base = cfg.get("base_channels", 64)
        n_up = int(math.log2(size)) - 2
        c = base << (n_up - 1)
        layers = [nn.ConvTranspose2d(dz + ds, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c),
                  nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z, s):
        return self.main(torch.cat([z, s], 1)[:, :, None, None])


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv, input-scaling form (`fused_modconv=False`); `up`: stride-2
    transposed 4x4 conv with demodulation gain 2."""

    def __init__(self, cin, cout, k, w_dim, demodulate, up, eq):
        super().__init__()
        fan_in = cin * k * k
        std, self.scale = (1.0, 1.0 / math.sqrt(fan_in)) if eq else (1.0 / math.sqrt(fan_in), 1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * std)
        self.modulation = EqualLinear(w_dim, cin, eq, bias_init=1.0)
        self.demodulate, self.up, self.k = demodulate, up, k

    def forward(self, x, w):
        style = self.modulation(w)
        weight = self.weight * self.scale
        xs = x * style[:, :, None, None]
        if self.up:
            y = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=2, padding=(self.k - 1) // 2)
        else:
            y = F.conv2d(xs, weight, padding=self.k // 2)
        if self.demodulate:
            w2 = weight.square().sum(dim=(2, 3))  # [out, in]
            d = torch.rsqrt(style.square() @ w2.t() + 1e-8) * (2.0 if self.up else 1.0)
            y = y * d[:, :, None, None]
        return y


class StyledConv(nn.Module):
    def __init__(self, cin, cout, w_dim, up, noise, eq):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 4 if up else 3, w_dim, True, up, eq)
        if noise:
            self.noise = nn.Module()
            self.noise.weight = nn.Parameter(torch.zeros(1))
        else:
            self.noise = None
        self.activate = nn.Module()
        self.activate.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, w, fixed=None):
        y = self.conv(x, w)
        if self.noise is not None:
            n = fixed if fixed is not None else torch.randn(
                y.shape[0], 1, y.shape[2], y.shape[3], device=y.device)
            y = y + n * self.noise.weight
        return F.leaky_relu(y + self.activate.bias[None, :, None, None], 0.2) * SQRT2


class ToRgb(nn.Module):
    def __init__(self, cin, channels, w_dim, eq):
        super().__init__()
        self.conv = ModulatedConv2d(cin, channels, 1, w_dim, False, False, eq)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, w, skip=None):
        y = self.conv(x, w) + self.bias[None, :, None, None]
        if skip is not None:
            y = y + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return y


class StyleGenerator(nn.Module):
    """Compact StyleGAN2: mapping net on [pixel_norm(z), s], learned 4x4 constant, modulated
    convs (transposed 4x4 up-convs), noise, skip toRGBs, linear output."""

    def __init__(self, cfg, dz, ds, channels, size):
        super().__init__()
        eq = cfg.get("equalized_lr", True)
        w_dim = cfg.get("w_dim", 128)
        noise = cfg.get("noise", True)
        ch = lambda r: channels_at(cfg.get("base_channels", 16),  # noqa: E731
                                   cfg.get("max_channels", 64), size, r)
        self.mapping = nn.ModuleList(
            EqualLinear(dz + ds if i == 0 else w_dim, w_dim, eq,
                        lr_mul=cfg.get("mapping_lr_mul", 0.01))
            for i in range(cfg.get("mapping_layers", 4)))
        self.input = nn.Module()
        self.input.input = nn.Parameter(torch.randn(1, ch(4), 4, 4))
        self.conv1 = StyledConv(ch(4), ch(4), w_dim, False, noise, eq)
        self.to_rgb1 = ToRgb(ch(4), channels, w_dim, eq)
        convs, rgbs, noise_res, res = [], [], [4], 8
        while res <= size:
            convs.append(StyledConv(ch(res // 2), ch(res), w_dim, True, noise, eq))
            convs.append(StyledConv(ch(res), ch(res), w_dim, False, noise, eq))
            rgbs.append(ToRgb(ch(res), channels, w_dim, eq))
            noise_res += [res, res]
            res *= 2
        self.convs, self.to_rgbs = nn.ModuleList(convs), nn.ModuleList(rgbs)
        self.noises = nn.Module()
        for j, r in enumerate(noise_res if noise else []):
            self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, r, r))
        self.normalize_z = cfg.get("normalize_z", True)
        self.tanh = cfg.get("output", "linear") == "tanh"

    def forward(self, z, s, train=True):
        if self.normalize_z:
            z = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
        w = torch.cat([z, s], 1)
        for layer in self.mapping:
            w = layer.forward_lrelu(w)
        fixed = (lambda j: None) if train else (lambda j: getattr(self.noises, f"noise_{j}", None))
        x = self.input.input.expand(w.shape[0], -1, -1, -1)
        x = self.conv1(x, w, fixed(0))
        skip = self.to_rgb1(x, w)
        for i, rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * i](x, w, fixed(2 * i + 1))
            x = self.convs[2 * i + 1](x, w, fixed(2 * i + 2))
            skip = rgb(x, w, skip)
        return skip.tanh() if self.tanh else skip


def build_generator(gcfg, dz, ds, channels, size):
    kind = gcfg.get("kind", "style")
    if kind == "dcgan":
        return DcganGenerator(gcfg, dz, ds, channels, size)
    return StyleGenerator(gcfg, dz, ds, channels, size)


# ------------------------------------------------------------------ losses (ca-losses)

def l1_per_sample(a, b):
    return (a - b).abs().flatten(1).mean(1)


def masked_mean(per_sample, weight):
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


def class_bce(logits, y):
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none")


def rbf(a, b, bandwidths):
    sq = (a[:, None, :] - b[None, :, :]).square().sum(-1)
    return sum(torch.exp(sq * (-0.5 / (s * s))) for s in bandwidths)


def mmd_rbf(x, y, bandwidths=(0.5, 1.0, 2.0, 4.0, 8.0)):
    return rbf(x, x, bandwidths).mean() + rbf(y, y, bandwidths).mean() \
        - 2.0 * rbf(x, y, bandwidths).mean()


class GanStep:
    """One D step then one G (+E) step, as crates/ca-train/src/gan.rs `GanStep::step`."""

    def __init__(self, cfg, channels, size, device):
        m, self.loss, o = cfg["model"], cfg.get("loss", {}), cfg.get("optim", {})
        # train.precision = "bf16": forward passes and losses under torch.autocast (bfloat16),
        # backward and optimiser steps outside it, as the Rust trainer.
        precision = cfg.get("train", {}).get("precision", "fp32")
        if precision not in ("fp32", "bf16"):
            raise SystemExit(f"reference: train.precision = {precision!r} is not supported")
        self.amp = lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                          enabled=precision == "bf16")
        self.dz, self.ds = m["dz"], m["ds"]
        args = (self.dz, self.ds, channels, size)
        self.g = build_generator(m.get("generator", {}), *args).to(device)
        self.g_ema = build_generator(m.get("generator", {}), *args).to(device)
        self.g_ema.load_state_dict(self.g.state_dict())
        self.d = Discriminator(m.get("discriminator", {}), *args).to(device)
        self.e = self.e_ema = None
        if "encoder" in m:
            self.e = Encoder(m["encoder"], *args).to(device)
            self.e_ema = Encoder(m["encoder"], *args).to(device)
            self.e_ema.load_state_dict(self.e.state_dict())
        if self.loss.get("z_adversary", 0.0) > 0:
            raise SystemExit("reference: loss.z_adversary > 0 is not implemented")
        if self.loss.get("prior", 0.0) > 0:
            raise SystemExit("reference: loss.prior > 0 is not implemented")
        betas = (o.get("beta1", 0.5), o.get("beta2", 0.999))
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=o.get("lr_g", 2e-4), betas=betas,
                                      eps=1e-8)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=o.get("lr_d", 2e-4), betas=betas,
                                      eps=1e-8)
        self.opt_e = None if self.e is None else torch.optim.Adam(
            self.e.parameters(), lr=o.get("lr_e", 2e-4), betas=betas, eps=1e-8)

    def networks(self):
        nets = {"g": self.g, "d": self.d}
        if self.e is not None:
            nets["e"] = self.e
        return nets

    def w(self, key, default=0.0):
        return self.loss.get(key, default)

    def masked(self, z, s, is_target):
        return (z, s * is_target[:, None]) if self.w("salient_masking", True) else (z, s)

    def sample_code(self, is_target):
        b = is_target.shape[0]
        z = torch.randn(b, self.dz, device=is_target.device)
        s = torch.randn(b, self.ds, device=is_target.device)
        return z, s * is_target[:, None]

    def encoder_terms(self, real, fake_pred, fake_code, x, is_target, is_bg, n_bg, stats,
                      in_d_step):
        loss = torch.zeros((), device=x.device)
        if self.w("info_z") > 0 or self.w("info_s") > 0:
            t = l1_per_sample(fake_pred[0], fake_code[0]).mean() * self.w("info_z") \
                + l1_per_sample(fake_pred[1], fake_code[1]).mean() * self.w("info_s")
            loss = loss + t
            stats.append(t.detach())
        if self.w("salient_zero") > 0 and self.w("salient_masking", True):
            t = masked_mean(real[1].abs().mean(1), is_bg)
            loss = loss + t * self.w("salient_zero")
            stats.append(t.detach())
        if in_d_step and self.w("recon_pixel") > 0:
            x_rec = self.g(*self.masked(real[0], real[1], is_target))
            t = l1_per_sample(x_rec, x).mean()
            loss = loss + t * self.w("recon_pixel")
            stats.append(t.detach())
        n_t = x.shape[0] - n_bg
        if self.w("mmd") > 0 and n_bg >= 2 and n_t >= 2:
            t = mmd_rbf(real[0][:n_bg], real[0][n_bg:])
            loss = loss + t * self.w("mmd")
            stats.append(t.detach())
        return loss

    def step(self, x, n_bg, step):
        b, dev = x.shape[0], x.device
        n_t = b - n_bg
        is_target = torch.cat([torch.zeros(n_bg, device=dev), torch.ones(n_t, device=dev)])
        is_bg = 1.0 - is_target
        stats, heads = [], self.e is None
        hinge = self.w("adversarial_kind", "nonsaturating") == "hinge"

        # ---------------- D step ----------------
        self.opt_d.zero_grad()
        region = self.amp()
        region.__enter__()
        code_f = self.sample_code(is_target)
        with torch.no_grad():
            x_f = self.g(*code_f)
        r1_gamma, r1_every = self.w("r1_gamma"), self.w("r1_every", 16)
        r1_now = r1_gamma > 0 and step % r1_every == 0
        x_r = x.detach().requires_grad_(True) if r1_now else x
        out_r = self.d(x_r)
        real_feats = [f.detach() for f in out_r["features"]] if self.w("recon_features") > 0 \
            else []
        out_f = self.d(x_f)
        loss_d = torch.zeros((), device=dev)
        if self.w("adversarial") > 0:
            if hinge:
                t = (F.relu(1 - out_r["adv"]) + F.relu(1 + out_f["adv"])).mean()
            else:
                t = (F.softplus(-out_r["adv"]) + F.softplus(out_f["adv"])).mean()
            loss_d = loss_d + t * self.w("adversarial")
            stats.append(t.detach())
        if self.w("class") > 0:
            t = class_bce(out_r["dataset"], is_target).mean()
            loss_d = loss_d + t * self.w("class")
            stats.append(t.detach())
        if heads:
            loss_d = loss_d + self.encoder_terms((out_r["z"], out_r["s"]),
                                                 (out_f["z"], out_f["s"]), code_f, x, is_target,
                                                 is_bg, n_bg, stats, True)
        region.__exit__(None, None, None)
        if r1_now:
            (grad,) = torch.autograd.grad(out_r["adv"].sum(), x_r, create_graph=True)
            r1 = grad.square().reshape(b, -1).sum(1).mean()
            loss_d = loss_d + r1 * (r1_gamma * 0.5 * r1_every)
            stats.append(r1.detach())
        if loss_d.requires_grad:
            loss_d.backward()
            self.opt_d.step()

        # ---------------- G (+E) step ----------------
        self.opt_g.zero_grad()
        if self.opt_e is not None:
            self.opt_e.zero_grad()
        region = self.amp()
        region.__enter__()
        code_f = self.sample_code(is_target)
        x_f = self.g(*code_f)
        out_f = self.d(x_f)
        loss_g = torch.zeros((), device=dev)
        if self.w("adversarial") > 0:
            t = (-out_f["adv"]).mean() if hinge else F.softplus(-out_f["adv"]).mean()
            loss_g = loss_g + t * self.w("adversarial")
            stats.append(t.detach())
        if self.w("class") > 0:
            t = class_bce(out_f["dataset"], is_target).mean()
            loss_g = loss_g + t * self.w("class")
            stats.append(t.detach())
        if heads:
            with torch.no_grad():
                real_code = self.d.encode(x)
            if self.w("info_z") > 0 or self.w("info_s") > 0:
                t = l1_per_sample(out_f["z"], code_f[0]).mean() * self.w("info_z") \
                    + l1_per_sample(out_f["s"], code_f[1]).mean() * self.w("info_s")
                loss_g = loss_g + t
                stats.append(t.detach())
        else:
            real_code = self.e(x)
            enc_f = self.e(x_f)
            loss_g = loss_g + self.encoder_terms(real_code, enc_f, code_f, x, is_target, is_bg,
                                                 n_bg, stats, False)
        if self.w("recon_pixel") > 0 or self.w("recon_features") > 0:
            x_rec = self.g(*self.masked(real_code[0], real_code[1], is_target))
            if self.w("recon_pixel") > 0:
                t = l1_per_sample(x_rec, x).mean()
                loss_g = loss_g + t * self.w("recon_pixel")
                stats.append(t.detach())
            if self.w("recon_features") > 0:
                feats_rec = self.d(x_rec)["features"]
                n = len(real_feats)
                t = sum(l1_per_sample(r, f) * (1.0 / n) for r, f in zip(real_feats, feats_rec))
                t = t.mean()
                loss_g = loss_g + t * self.w("recon_features")
                stats.append(t.detach())
        k = min(n_bg, n_t, max(b // 4, 1))
        if self.w("swap") > 0 and k > 0:
            rz, rs = real_code[0].detach(), real_code[1].detach()
            cz = torch.cat([rz[:k], rz[n_bg:n_bg + k]])
            cs = torch.cat([rs[n_bg:n_bg + k], torch.zeros(k, self.ds, device=dev)])
            x_sw = self.g(cz, cs)
            out_sw = self.d(x_sw)
            pz, ps = (out_sw["z"], out_sw["s"]) if heads else self.e(x_sw)
            expected = torch.cat([torch.ones(k, device=dev), torch.zeros(k, device=dev)])
            t = (class_bce(out_sw["dataset"], expected) + l1_per_sample(pz, cz)
                 + l1_per_sample(ps, cs)).mean()
            loss_g = loss_g + t * self.w("swap")
            stats.append(t.detach())
        region.__exit__(None, None, None)
        if loss_g.requires_grad:
            loss_g.backward()
        self.opt_g.step()
        if self.opt_e is not None:
            self.opt_e.step()
        stats += [loss_d.detach(), loss_g.detach()]
        return stats

    @torch.no_grad()
    def update_ema(self, decay):
        pairs = [(self.g_ema, self.g)] + ([(self.e_ema, self.e)] if self.e is not None else [])
        for ema, live in pairs:
            for pe, p in zip(ema.parameters(), live.parameters()):
                pe.lerp_(p, 1.0 - decay)
            for be, b in zip(ema.buffers(), live.buffers()):
                be.copy_(b)

    def encoder_for_inference(self):
        """What `CaModel::encode` runs: the EMA encoder, or the discriminator's heads."""
        if self.e_ema is not None:
            return "e", self.e_ema.eval()
        return "d", self.d.encode
