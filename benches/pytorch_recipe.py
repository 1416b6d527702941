#!/usr/bin/env python3
"""The Fashion-MNIST pretraining recipe of docs/results.md in PyTorch, for a side-by-side run.

Same data (the four IDX files of Fashion-MNIST), views (crop with `--crop-min`, brightness and
contrast jitter 0.4 p 0.8 in random order, blur sigma in [0.1, 1] with a 3-sigma reflected
kernel p 0.5 / 0.1, solarise p 0 / 0.2, flip, normalisation 0.2860 / 0.3530), model (the
`fmnist-vit` ViT: 128 wide, 4 blocks, 4 heads, 7 px patches, frozen random patch projection,
MoCo v3's initialisation; projector 3 layers and predictor 2 layers of 512, output 128), loss
(symmetric InfoNCE, temperature 0.2), optimizer (AdamW, betas 0.9/0.999, eps 1e-8, weight
decay 0.1 on every parameter), schedule (lr = base_lr * batch / 256 with linear warm-up over a
tenth of the run and cosine decay, per step; momentum 0.99 cosine to 1) and kNN monitor
(weighted kNN, k 20, temperature 0.07, cosine similarity of the CLS features) as
`moco pretrain --steps N --crop-min C`. Prints one JSON line per kNN evaluation and a final line
with the full-memory kNN (60k memory, 10k test) and the wall time.

    python benches/pytorch_recipe.py --steps 4212 --crop-min 0.4 --knn-every 468 --threads 2

Needs torch and torchvision (CPU wheels are enough).
"""

import argparse
import gzip
import json
import math
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2

from pytorch_baseline import MoCo, ViT

MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    """An IDX file (optionally gzipped) as a uint8 tensor."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def find(root, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise SystemExit(f"{root}: no {stem}[.gz] (Debian's dataset-fashion-mnist installs them)")


def load(root):
    split = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find(root, f"{prefix}-images-idx3-ubyte")).float().div(255).unsqueeze(1)
        labels = read_idx(find(root, f"{prefix}-labels-idx1-ubyte")).long()
        split[part] = (images, labels)
    return split


def blur(img, lo=0.1, hi=1.0):
    """Gaussian blur with sigma uniform in [lo, hi], radius ceil(3 sigma), reflected borders."""
    sigma = float(torch.empty(1).uniform_(lo, hi))
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    k = k / k.sum()
    out = F.pad(img.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1))
    out = F.conv2d(out, k.view(1, 1, -1, 1))
    return out.squeeze(0)


class View:
    def __init__(self, crop_min, blur_p, solarize_p):
        self.crop = v2.RandomResizedCrop(28, scale=(crop_min, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
        self.jitter = v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8)
        self.blur_p, self.solarize_p = blur_p, solarize_p

    def __call__(self, img):
        out = self.jitter(self.crop(img)).clamp(0, 1)
        if torch.rand(()) < self.blur_p:
            out = blur(out)
        if torch.rand(()) < self.solarize_p:
            out = torch.where(out >= 128 / 255, 1 - out, out)
        if torch.rand(()) < 0.5:
            out = out.flip(-1)
        return (out - MEAN) / STD


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images, crop_min):
        self.images = images
        self.view1, self.view2 = View(crop_min, 0.5, 0.0), View(crop_min, 0.1, 0.2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        return self.view1(img), self.view2(img)


def moco_v3_init(vit, patch, in_chans, dim):
    """MoCo v3's ViT initialisation: Xavier-uniform linears (q, k, v counted as three [D, D]
    matrices), zero biases, the patch projection uniform with the bound of its linear
    equivalent, the class token N(0, 1e-6)."""
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear):
            if "qkv" in name:
                bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    bound = math.sqrt(6.0 / (in_chans * patch * patch + dim))
    nn.init.uniform_(vit.patch_embed.weight, -bound, bound)
    nn.init.zeros_(vit.patch_embed.bias)
    nn.init.normal_(vit.cls_token, std=1e-6)


@torch.no_grad()
def features(backbone, images, batch=1000):
    backbone.eval()
    out = torch.cat([backbone((images[i:i + batch] - MEAN) / STD) for i in range(0, len(images), batch)])
    backbone.train()
    return F.normalize(out, dim=1)


@torch.no_grad()
def knn(memory, memory_labels, queries, query_labels, k=20, t=0.07, classes=10):
    correct = 0
    for i in range(0, len(queries), 500):
        sim, idx = (queries[i:i + 500] @ memory.t()).topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, memory_labels[idx], (sim / t).exp())
        correct += (votes.argmax(1) == query_labels[i:i + 500]).sum().item()
    return 100.0 * correct / len(queries)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--steps", type=int, default=4212)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--crop-min", type=float, default=0.4)
    ap.add_argument("--base-lr", type=float, default=3e-3)
    ap.add_argument("--knn-every", type=int, default=468)
    ap.add_argument("--knn-memory", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="write the base encoder's state_dict here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load(args.data)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]

    dim, depth, heads, patch = 128, 4, 4, 7

    def backbone():
        vit = ViT(28, patch, 1, dim, depth, heads, True)
        moco_v3_init(vit, patch, 1, dim)
        return vit

    model = MoCo(backbone, True, 512, 128, 0.2)
    params = [p for p in model.parameters() if p.requires_grad]
    peak_lr = args.base_lr * args.batch / 256
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    steps_per_epoch = len(train_x) // args.batch
    epochs = args.steps / steps_per_epoch
    warmup = 0.1 * epochs
    loader = torch.utils.data.DataLoader(
        TwoViews(train_x, args.crop_min), batch_size=args.batch, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed))
    generator = torch.Generator().manual_seed(7)
    memory = torch.randperm(len(train_x), generator=generator)[:args.knn_memory]

    def monitor(step):
        mem = features(model.base, train_x[memory])
        top1 = knn(mem, train_y[memory], features(model.base, test_x), test_y)
        print(json.dumps({"type": "knn", "step": step, "top1": top1, "seconds": time.time() - start}), flush=True)

    start = time.time()
    step = 0
    monitor(0)
    while step < args.steps:
        for x1, x2 in loader:
            e = step / steps_per_epoch
            lr = peak_lr * e / warmup if e < warmup else \
                peak_lr * 0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup)))
            m = 1 - 0.5 * (1 + math.cos(math.pi * e / epochs)) * (1 - 0.99)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = model(x1, x2, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(json.dumps({"type": "step", "step": step, "loss": loss.item(), "lr": lr, "m": m,
                                  "seconds": time.time() - start}), flush=True)
            if args.knn_every and step % args.knn_every == 0:
                monitor(step)
            if step >= args.steps:
                break
    wall = time.time() - start
    full = knn(features(model.base, train_x), train_y, features(model.base, test_x), test_y)
    print(json.dumps({"type": "final", "steps": step, "wall_s": wall, "knn_full_memory_top1": full}), flush=True)
    if args.save:
        torch.save(model.base.state_dict(), args.save)


if __name__ == "__main__":
    main()
