#!/usr/bin/env python3
"""PyTorch baseline of `moco bench`: the same MoCo v3 training step on synthetic data.

Same model (ViT with fixed sin-cos position embedding and a frozen patch projection, or a
torchvision ResNet), same heads (projector / predictor with BN, last BN without affine), same
step: both views through the base encoder and predictor, the momentum update, both views
through the momentum encoder, the symmetric InfoNCE, backward, the gradient norm of every
parameter (what `moco` monitors each step), the optimizer step (AdamW or MoCo v3's LARS).
Prints one JSON line with the fields `moco bench` prints.

    python benches/pytorch_baseline.py --arch vit_tiny --img-size 32 --patch-size 4 --batch 64
    python benches/pytorch_baseline.py --arch resnet50 --img-size 32 --batch 32 --optimizer lars

Needs torch (CPU wheels are enough) and, for ResNets, torchvision.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine  # noqa: E402

VITS = {  # width, depth, heads
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 12),
    "vit_base": (768, 12, 12),
}


def sincos_2d(grid, dim):
    """Fixed 2-D sin-cos position embedding with a zero CLS slot, [1, 1 + grid², dim]."""
    gh = torch.arange(grid, dtype=torch.float32)
    gw = torch.arange(grid, dtype=torch.float32)
    gw, gh = torch.meshgrid(gw, gh, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ow = gw.flatten()[:, None] * omega[None]
    oh = gh.flatten()[:, None] * omega[None]
    pe = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim), pe], dim=1)


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)
        h = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(h)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, img_size, patch, in_chans, dim, depth, heads, freeze_patch_embed):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        if freeze_patch_embed:
            self.patch_embed.weight.requires_grad = False
            self.patch_embed.bias.requires_grad = False
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.register_buffer("pos_embed", sincos_2d(img_size // patch, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.num_features = dim

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def mlp(layers, d_in, hidden, d_out, last_bn):
    mods = []
    for i in range(layers):
        a = d_in if i == 0 else hidden
        b = d_out if i == layers - 1 else hidden
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


class MoCo(nn.Module):
    def __init__(self, backbone_fn, is_vit, mlp_dim, out_dim, temperature):
        super().__init__()
        self.t = temperature
        self.base = backbone_fn()
        self.momentum = backbone_fn()
        d = self.base.num_features
        proj_layers = 3 if is_vit else 2
        self.base_head = mlp(proj_layers, d, mlp_dim, out_dim, True)
        self.momentum_head = mlp(proj_layers, d, mlp_dim, out_dim, True)
        self.predictor = mlp(2, out_dim, mlp_dim, out_dim, is_vit)
        for p_b, p_m in zip(self.base_params(), self.momentum_params()):
            p_m.data.copy_(p_b.data)
            p_m.requires_grad = False

    def base_params(self):
        return list(self.base.parameters()) + list(self.base_head.parameters())

    def momentum_params(self):
        return list(self.momentum.parameters()) + list(self.momentum_head.parameters())

    def contrastive(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.t() / self.t
        labels = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, labels) * 2 * self.t

    def forward(self, x1, x2, m):
        q1 = self.predictor(self.base_head(self.base(x1)))
        q2 = self.predictor(self.base_head(self.base(x2)))
        with torch.no_grad():
            for p_b, p_m in zip(self.base_params(), self.momentum_params()):
                p_m.mul_(m).add_(p_b.detach(), alpha=1 - m)
            k1 = self.momentum_head(self.momentum(x1))
            k2 = self.momentum_head(self.momentum(x2))
        return self.contrastive(q1, k2) + self.contrastive(q2, k1)


class LARS(torch.optim.Optimizer):
    """MoCo v3's LARS: for tensors of rank > 1, dp = g + wd·p scaled by trust·‖p‖/‖dp‖."""

    def __init__(self, params, lr, weight_decay, momentum=0.9, trust=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust=trust))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where(pn > 0.0, torch.where(un > 0, g["trust"] * pn / un, 1.0), 1.0)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_tiny")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--stem", choices=["imagenet", "small"], default="imagenet",
                    help="ResNet stem: torchvision's 7x7/2 + max-pool, or 3x3/1 without max-pool")
    ap.add_argument("--mlp-dim", type=int, default=1024)
    ap.add_argument("--out-dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--optimizer", default=None, help="adamw (ViT default) or lars (ResNet default)")
    ap.add_argument("--lr", type=float, default=3e-3 * 64 / 256)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["bf16", "f16"], default=None, help="autocast on CUDA")
    ap.add_argument("--no-grad-norms", action="store_true", help="skip the per-parameter norms")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    is_vit = args.arch.startswith("vit")
    if is_vit:
        dim, depth, heads = VITS[args.arch]
        backbone_fn = lambda: ViT(args.img_size, args.patch_size, args.in_chans, dim, depth, heads, True)
    else:
        import torchvision

        def backbone_fn():
            net = getattr(torchvision.models, args.arch)(zero_init_residual=True)
            if args.stem == "small":
                net.conv1 = nn.Conv2d(args.in_chans, 64, 3, 1, 1, bias=False)
                net.maxpool = nn.Identity()
            elif args.in_chans != 3:
                net.conv1 = nn.Conv2d(args.in_chans, 64, 7, 2, 3, bias=False)
            net.num_features = net.fc.in_features
            net.fc = nn.Identity()
            return net

    device = torch.device(args.device)
    model = MoCo(backbone_fn, is_vit, args.mlp_dim, args.out_dim, 0.2).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_name = args.optimizer or ("adamw" if is_vit else "lars")
    if opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, eps=1e-8)
    else:
        opt = LARS(params, lr=args.lr, weight_decay=args.weight_decay)
    shape = (args.batch, args.in_chans, args.img_size, args.img_size)
    x1, x2 = torch.randn(shape, device=device), torch.randn(shape, device=device)
    amp = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(x1, x2, 0.99)
        opt.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        value = loss.item()
        if not args.no_grad_norms:
            torch.stack([p.grad.norm() for p in params if p.grad is not None]).tolist()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            losses.append(value)
    seconds = sum(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({
        "backend": "pytorch", "torch": torch.__version__, "device": args.device,
        "arch": args.arch, "method": "mocov3", "optimizer": opt_name, "batch": args.batch,
        "img_size": args.img_size, "mlp_dim": args.mlp_dim, "out_dim": args.out_dim,
        "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "precision": args.amp or "f32", "steps": len(times), "seconds": seconds,
        "images_per_sec": args.batch * len(times) / seconds, "step_ms": 1e3 * seconds / len(times),
        "step_ms_median": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
        "peak_rss_mb": peak, "loss": [losses[0], losses[-1]],
        "machine": machine(torch.get_num_threads(), torch=torch.__version__,
                           gpu=torch.cuda.get_device_name() if device.type == "cuda" else None),
    }))


if __name__ == "__main__":
    main()
