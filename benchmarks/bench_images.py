"""Training throughput and memory of image backbones: the full loss stack against plain BCE, side by
side in one run (ratios; these machines are noisy).

    python benchmarks/bench_images.py [--backbones cnn,torchvision:resnet18] [--sizes 28,64]
                                      [--batch 128] [--images 1024] [--repeats 3] [--device cpu|cuda]
                                      [--threads N]

For each backbone and image size: images per second of a training epoch (augmentation included,
the training step as ``fit`` runs it) with the full stack (focal + asymmetric aux head + EMA teacher
+ distillation + consistency + SoftAdapt) and with plain BCE on one head, and the peak resident
memory of each (every case runs in a process of its own, so each peak is its own). Arms alternate
within each repeat and the median is kept. On a GPU (``--device cuda``) the images live on the
device and the networks run in bf16 with channels-last, as in a trial. The ratios come last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import checkout  # noqa: F401  (first: this checkout's code, not the one installed in the venv)

FULL = {"main_loss.type": "focal", "aux_loss.type": "asymmetric", "teacher.enabled": True, "distill.weight": 0.5,
        "consistency.weight": 0.3, "weighting.strategy": "softadapt"}
PLAIN = {"main_loss.type": "bce", "aux_loss.type": "none", "teacher.enabled": False, "distill.weight": 0.0,
         "consistency.weight": 0.0, "weighting.strategy": "static"}


def one_case(backbone: str, size: int, arm: str, *, batch: int, images: int, repeats: int, device: str) -> dict:
    """Runs in its own process: the arm's images per second and the process's peak RSS."""
    import torch

    from trainables.config import Config
    from trainables.data import prepare_data
    from trainables.model import DualHeadModel
    from trainables.trainer import TrainStep

    data = prepare_data(f"synthetic-images:screening?n={images}&size={size}&labels=2&prevalence=0.2")
    cfg = Config().with_overrides({**(FULL if arm == "full" else PLAIN), "model.backbone": backbone,
                                   "optim.batch_size": batch})
    dev = torch.device(device)
    torch.manual_seed(0)
    model = DualHeadModel.from_config(cfg.model, input_shape=data.input_shape, n_labels=data.n_labels,
                                      aux_head=arm == "full", image_stats=data.image_stats).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pos, neg = data.label_counts()
    step = TrainStep.from_config(cfg, model, pos=pos, neg=neg)
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    gen = torch.Generator().manual_seed(0)
    times = []
    for r in range(repeats + 1):  # the first epoch warms up (allocations, the kernels' first calls)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step.run_epoch(x, y, batch_size=batch, shuffle=gen)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"images_per_s": len(x) / statistics.median(times), "peak_rss_mib": peak_kib / 1024}
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="cnn,torchvision:resnet18")
    ap.add_argument("--sizes", default="28,64")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=1024, help="training images per epoch (60%% of the set)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # a child process's one case (JSON)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        c = json.loads(args.case)
        print(json.dumps(one_case(c["backbone"], c["size"], c["arm"], batch=args.batch, images=c["images"],
                                  repeats=args.repeats, device=args.device)))
        return
    n = int(args.images / 0.6)  # the set, of which the training split is 60%
    results = {}
    print(f"{'backbone':24} {'size':>4}  {'full img/s':>10} {'plain img/s':>11}  {'full RSS':>9} {'plain RSS':>9}")
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            got = {}
            for arm in ("full", "plain"):
                case = json.dumps({"backbone": backbone, "size": size, "arm": arm, "images": n})
                cmd = [sys.executable, __file__, "--case", case, "--batch", str(args.batch), "--repeats",
                       str(args.repeats), "--device", args.device]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=True)
                got[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[(backbone, size)] = got
            f, p = got["full"], got["plain"]
            print(f"{backbone:24} {size:>4}  {f['images_per_s']:10.1f} {p['images_per_s']:11.1f}  "
                  f"{f['peak_rss_mib']:7.0f} M {p['peak_rss_mib']:7.0f} M", flush=True)
    print(f"\nratios, full stack ÷ plain BCE (batch {args.batch}, {args.device}; time per image, peak memory):")
    for (backbone, size), got in results.items():
        f, p = got["full"], got["plain"]
        gpu = (f", GPU memory {f['peak_gpu_mib'] / p['peak_gpu_mib']:.2f}" if "peak_gpu_mib" in f else "")
        print(f"  {backbone:24} {size:>3} px: time {p['images_per_s'] / f['images_per_s']:.2f}, "
              f"RSS {f['peak_rss_mib'] / p['peak_rss_mib']:.2f}{gpu}")


if __name__ == "__main__":
    main()
