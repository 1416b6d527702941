#!/usr/bin/env python3
"""Baseline for `moco bench data`: MoCo v3's two-view augmentation in Python, per thread.

Uses torchvision's transforms when torchvision is importable (the pipeline of MoCo v3's
main_moco.py), otherwise the same operations called on Pillow directly, as torchvision's PIL
backend calls them (RandomResizedCrop -> crop + resize(BILINEAR), ColorJitter ->
ImageEnhance, RandomGrayscale -> convert('L'), GaussianBlur -> ImageFilter.GaussianBlur,
Solarize -> ImageOps.solarize, flip -> transpose), followed by conversion to a normalised
float array. Prints one JSON line per pipeline.

    python3 benches/data_baseline.py --jpeg-dir /tmp/moco-bench-jpegs
"""
import argparse
import glob
import json
import math
import os
import random
import sys
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def crop_params(w, h, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    area = w * h
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
    return (h - min(w, h)) // 2, (w - min(w, h)) // 2, min(w, h), min(w, h)


def pil_view(img, size, blur_p, solarize_p, gray_ok=True):
    i, j, h, w = crop_params(*img.size)
    img = img.crop((j, i, j + w, i + h)).resize((size, size), Image.BILINEAR)
    if random.random() < 0.8:
        ops = [
            lambda x: ImageEnhance.Brightness(x).enhance(random.uniform(0.6, 1.4)),
            lambda x: ImageEnhance.Contrast(x).enhance(random.uniform(0.6, 1.4)),
            lambda x: ImageEnhance.Color(x).enhance(random.uniform(0.8, 1.2)),
            lambda x: hue(x, random.uniform(-0.1, 0.1)),
        ]
        random.shuffle(ops)
        for op in ops:
            img = op(img)
    if gray_ok and random.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if random.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    if random.random() < solarize_p:
        img = ImageOps.solarize(img, 128)
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1)


def hue(img, shift):
    # torchvision's adjust_hue on PIL images: shift the H channel in HSV.
    h, s, v = img.convert("HSV").split()
    h = np.asarray(h, dtype=np.uint8)
    h = Image.fromarray((h.astype(np.int16) + int(shift * 255)).astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def torchvision_pipelines(size):
    import torchvision.transforms as T

    class Blur:
        def __init__(self, p):
            self.p = p

        def __call__(self, x):
            if random.random() < self.p:
                return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
            return x

    class Solarize:
        def __init__(self, p):
            self.p = p

        def __call__(self, x):
            return ImageOps.solarize(x) if random.random() < self.p else x

    norm = T.Normalize(mean=MEAN.tolist(), std=STD.tolist())
    common = [T.RandomResizedCrop(size, scale=(0.08, 1.0)),
              T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
              T.RandomGrayscale(p=0.2)]
    v1 = T.Compose(common + [Blur(1.0), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    v2 = T.Compose(common + [Blur(0.1), Solarize(0.2), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return v1, v2


def run(name, images, two_views, backend):
    for img in images[:8]:
        two_views(img)
    start = time.perf_counter()
    for img in images:
        two_views(img)
    secs = time.perf_counter() - start
    print(json.dumps({"pipeline": name, "backend": backend, "threads": 1, "images": len(images),
                      "seconds": secs, "images_per_sec": len(images) / secs, "machine": machine(1)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jpeg-dir", default="/tmp/moco-bench-jpegs")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
        torch.set_num_threads(1)
        v1, v2 = torchvision_pipelines(224)
        cv1, cv2 = torchvision_pipelines(32)
        backend = "torchvision"
    except ImportError:
        v1 = lambda x: pil_view(x, 224, 1.0, 0.0)
        v2 = lambda x: pil_view(x, 224, 0.1, 0.2)
        cv1 = lambda x: pil_view(x, 32, 0.0, 0.0)
        cv2 = lambda x: pil_view(x, 32, 0.0, 0.2)
        backend = "pillow (torchvision's PIL operations)"
    files = sorted(glob.glob(os.path.join(args.jpeg_dir, "*", "*.JPEG")))[: args.images]
    if not files:
        raise SystemExit(f"no JPEGs in {args.jpeg_dir}: run `moco bench data` first, it writes them")
    start = time.perf_counter()
    for f in files:
        Image.open(f).convert("RGB")
    secs = time.perf_counter() - start
    print(json.dumps({"pipeline": "jpeg 500x375 decode only", "backend": "pillow", "threads": 1,
                      "images": len(files), "seconds": secs, "images_per_sec": len(files) / secs,
                      "machine": machine(1)}))
    run("jpeg 500x375 -> two views 224 (MoCo v3 ImageNet)", files,
        lambda f: (lambda im: (v1(im), v2(im)))(Image.open(f).convert("RGB")), backend)
    rng = np.random.default_rng(7)
    cifar = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4096)]
    run("cifar 32 -> two views 32 (CIFAR preset)", cifar, lambda im: (cv1(im), cv2(im)), backend)


if __name__ == "__main__":
    main()
