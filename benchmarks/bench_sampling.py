"""Latent diffusion sampling side by side: samplers (time per sample and quality) and classifier-free guidance.

Two modes, on latent diffusion checkpoints of ``medgen train-ldm`` (see benchmarks/README.md for the commands
that train the small demo models used for the recorded figures):

``samplers``: DDPM with 1000 steps, DDIM with 50 (both on a model trained with the DDPM objective) and
rectified flow with 30 steps (on a model trained with ``ldm_train.scheduler=rflow``: a DDPM-trained model
predicts noise, not the velocity a flow sampler integrates, and medgen refuses that combination; the JSON
records the refusal). All contenders start from the same noise and are timed batch by batch in interleaved
rounds; time per sample and every quality measure are also given as ratios to DDPM 1000.

``guidance``: one class-conditional model sampled per class at several guidance scales (0: unconditional,
1: plain conditional, > 1: stronger class traits) from the same noise; how well the generated edente and
dente images are told apart by a classifier trained on an independent set of real images.

Quality measures, each against the model's training images (read and windowed as it was trained):

- FID and KID when ``--feature-network`` names a local feature network (a file, or a network of
  ``medgen weights list``; nothing is downloaded);
- weight-free: intensity-histogram Wasserstein distance, power-spectrum distance (mean |log10| ratio of the
  radial power spectra), SSIM diversity of the samples (mean pairwise 1 - SSIM; the real images' value is
  recorded beside it), median copy-check distance to the nearest training image (1 - NCC of thumbnails), and
  class accuracy: the share of samples that a classifier trained on ``--holdout`` real images assigns to
  the class they were generated for.

The classifier is a logistic regression on standardised 8x8 area thumbnails (hand-written, a dozen lines:
medgen does not depend on scikit-learn). On the synthetic demo data it separates the classes of real images
perfectly (recorded as ``real_class_accuracy``), so it measures whether samples carry their class's traits.

    python benchmarks/bench_sampling.py samplers --ddpm-checkpoint DDPM.pt --rflow-checkpoint RFLOW.pt \\
        --holdout HOLDOUT_DIR --json benchmarks/results/sampling_cpu.json
    python benchmarks/bench_sampling.py guidance --ddpm-checkpoint DDPM.pt --holdout HOLDOUT_DIR \\
        --scales 0 1 3 --json benchmarks/results/guidance_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CLASSES = ("edente", "dente")  # label 0, 1 (medgen.models.diffusion.CLASS_INDEX)
# (name, model, sampler, steps): the model is the DDPM-trained or the rectified-flow-trained checkpoint
SAMPLERS = [("ddpm_1000", "ddpm", "ddpm", 1000), ("ddim_50", "ddpm", "ddim", 50), ("rflow_30", "rflow", "rflow", 30)]


def read_images(paths, percentiles, size) -> torch.Tensor:
    """Images windowed to [0, 1] as training reads them, area-resized to ``size`` where they differ."""
    from medgen.data.transforms import read_windowed

    out = []
    for p in paths:
        x = read_windowed(p, percentiles)[:1]
        if tuple(x.shape[1:]) != tuple(size):
            x = F.interpolate(x[None], size=tuple(size), mode="area")[0]
        out.append(x)
    return torch.stack(out)


class ThumbnailClassifier:
    """Logistic regression edente (0) / dente (1) on standardised 8x8 area thumbnails, L2-regularised."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, size: int = 8, l2: float = 1e-2):
        self.size = size
        x = self._thumbs(images)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        x = (x - self.mean) / self.std
        self.w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ self.w + self.b, labels.double()) + l2 * self.w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w, self.b = self.w.detach(), self.b.detach()

    def _thumbs(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images.double(), size=(self.size, self.size), mode="area").flatten(1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """> 0: dente."""
        return ((self._thumbs(images) - self.mean) / self.std) @ self.w + self.b

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return ((self.logits(images) > 0).long() == labels).double().mean().item()


def cohens_d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Effect size of mean(a) - mean(b) in pooled standard deviations."""
    a, b = a.double(), b.double()
    return ((a.mean() - b.mean()) / torch.sqrt((a.var() + b.var()) / 2).clamp_min(1e-12)).item()


def holdout_classifier(folder: str, percentiles, size) -> ThumbnailClassifier:
    from medgen.io import find_images

    images, labels = [], []
    for label, name in enumerate(CLASSES):
        paths = find_images(Path(folder) / name)
        if not paths:
            raise SystemExit(f"--holdout {folder}: no images in {name}/; write an independent set with "
                             f"`medgen demo-data {folder} --seed 1` (a seed other than the training set's)")
        images.append(read_images(paths, percentiles, size))
        labels += [label] * len(paths)
    return ThumbnailClassifier(torch.cat(images), torch.tensor(labels))


class Measures:
    """Sample-quality measures of generated sets against one set of real (training) images."""

    def __init__(self, real: torch.Tensor, classifier: ThumbnailClassifier, feature_network: str | None, device):
        from medgen.metrics import FeatureExtractor, ssim_diversity
        from medgen.metrics.copies import thumbnail

        self.real, self.classifier = real, classifier
        self.real_thumbs = torch.stack([thumbnail(x) for x in real])
        self.real_diversity = ssim_diversity(real).item()
        self.features = FeatureExtractor(feature_network, device=device) if feature_network else None
        self.real_features = self.features(real) if self.features else None

    def __call__(self, samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from medgen.metrics import fid, histogram_wasserstein, kid, spectrum_distance, ssim_diversity
        from medgen.metrics.copies import nearest, thumbnail

        logits = self.classifier.logits(samples)
        out = {
            "hist_wasserstein": histogram_wasserstein(self.real, samples).item(),
            "spectrum_distance": spectrum_distance(self.real, samples).item(),
            "ssim_diversity": ssim_diversity(samples).item(),
            "ssim_diversity_real": self.real_diversity,
            "nearest_train_median": nearest(torch.stack([thumbnail(x) for x in samples]), self.real_thumbs)[0].median().item(),
            "class_accuracy": ((logits > 0).long() == labels).double().mean().item(),
            "class_logit_d": cohens_d(logits[labels == 1], logits[labels == 0]),
        }
        if self.features is not None:
            fake = self.features(samples)
            out["fid"] = float(fid(self.real_features, fake))
            out["kid"] = float(kid(self.real_features, fake, subset_size=min(len(fake), len(self.real_features)),
                                   generator=torch.Generator().manual_seed(0))[0])
        return out


def _setup(args):
    from medgen.inference.sample import load_ldm
    from medgen.io.discovery import discover_items

    torch.set_num_threads(args.threads)
    ldm = load_ldm(args.ddpm_checkpoint, args.device)
    cfg, stats = ldm[2], ldm[4]
    if not cfg.conditional:
        raise SystemExit(f"{args.ddpm_checkpoint} is not class-conditional; train with data_source=both")
    size = stats["image_shape"]
    train = discover_items(cfg)[0]  # the model's training images, as training split them
    real = read_images([it["image"] for it in train], cfg.intensity_percentiles, size)
    real_labels = torch.tensor([CLASSES.index(it["label"]) for it in train])
    classifier = holdout_classifier(args.holdout, cfg.intensity_percentiles, size)
    measures = Measures(real, classifier, args.feature_network, args.device)
    real_logits = classifier.logits(real)
    return ldm, measures, {"real_class_accuracy": classifier.accuracy(real, real_labels),
                           "real_class_logit_d": cohens_d(real_logits[real_labels == 1], real_logits[real_labels == 0]),
                           "train_images": len(real), "image_shape": size}


def _versions() -> dict:
    import monai

    return {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def samplers(args) -> dict:
    from medgen.errors import InvalidValueError
    from medgen.inference.sample import generate_ldm, load_ldm

    ldm, measures, reference = _setup(args)
    models = {"ddpm": ldm, "rflow": load_ldm(args.rflow_checkpoint, args.device) if args.rflow_checkpoint else None}
    if models["rflow"] is not None and models["rflow"][2].ldm_train.scheduler != "rflow":
        raise SystemExit(f"--rflow-checkpoint {args.rflow_checkpoint} was trained with "
                         f"scheduler={models['rflow'][2].ldm_train.scheduler}; train one with --set ldm_train.scheduler=rflow")
    notes = {}
    try:  # what a flow sampler on a noise-predicting model would be: medgen refuses it
        generate_ldm(ldm, 1, class_name="dente", scheduler="rflow", steps=30)
    except InvalidValueError as e:
        notes["rflow_on_ddpm_model"] = f"refused: {e}"
    contenders = [c for c in SAMPLERS if models[c[1]] is not None]
    seconds = {c[0]: 0.0 for c in contenders}
    images = {c[0]: [] for c in contenders}
    labels = []
    for label, name in enumerate(CLASSES):
        batches = {c[0]: generate_ldm(models[c[1]], args.count, args.seed, name, None, c[3], c[2], args.guidance,
                                      args.batch_size) for c in contenders}
        for _ in range(0, args.count, args.batch_size):  # interleaved rounds: one batch of each contender
            for key, it in batches.items():
                start = time.perf_counter()
                batch = next(it)
                seconds[key] += time.perf_counter() - start
                images[key].append(batch)
            labels += [label] * batch.shape[0]
    labels = torch.tensor(labels)
    rows = {}
    for name, model, sampler, steps in contenders:
        t = models[model][2].ldm_train
        guidance = t.guidance_scale if args.guidance is None else args.guidance
        rows[name] = {"model": models[model][2].ldm_train.scheduler, "sampler": sampler, "steps": steps,
                      "unet_evaluations_per_sample": steps * (2 if guidance != 1 else 1),
                      "seconds_per_sample": seconds[name] / len(labels),
                      **measures(torch.cat(images[name]), labels)}
    base = rows["ddpm_1000"]
    for row in rows.values():
        row["ratio_to_ddpm_1000"] = {k: (row[k] / base[k] if base[k] else None) for k in
                                     ("seconds_per_sample", "hist_wasserstein", "spectrum_distance", "ssim_diversity",
                                      "nearest_train_median", "class_accuracy", "fid", "kid") if k in row}
    return {"reference": reference, "notes": notes, "results": rows}


def guidance(args) -> dict:
    from medgen.inference.sample import generate_ldm

    ldm, measures, reference = _setup(args)
    rows = {}
    for scale in args.scales:
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            for batch in generate_ldm(ldm, args.count, args.seed, name, None, args.steps, args.scheduler, scale,
                                      args.batch_size):
                images.append(batch)
                labels += [label] * batch.shape[0]
        labels = torch.tensor(labels)
        samples = torch.cat(images)
        logits = measures.classifier.logits(samples)
        rows[str(scale)] = {**measures(samples, labels),
                            "p_dente_given_dente": torch.sigmoid(logits[labels == 1]).mean().item(),
                            "p_dente_given_edente": torch.sigmoid(logits[labels == 0]).mean().item()}
    return {"reference": reference, "results": rows}


class TwoSampleCNN(torch.nn.Module):
    """The classifier two-sample test's judge: four 3x3 conv blocks (16-64 channels) with max-pooling, global
    average pooling, one logit (> 0: the second set)."""

    def __init__(self):
        super().__init__()
        layers, c = [], 1
        for width in (16, 32, 64, 64):
            layers += [torch.nn.Conv2d(c, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            c = width
        self.net = torch.nn.Sequential(*layers[:-1], torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c, 1))

    def forward(self, x):
        return self.net(x)[:, 0]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``correct / n``."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def two_sample_test(a: torch.Tensor, b: torch.Tensor, size: int = 128, epochs: int = 40, seed: int = 0) -> dict:
    """Classifier two-sample test: a small CNN (:class:`TwoSampleCNN`) learns to tell ``a`` from ``b`` (each
    area-resized to ``size``) on a random half of each, with left-right mirroring; its accuracy on the other
    halves, with the 95% Wilson interval. 0.5: the sets cannot be told apart; 1.0: always."""
    g = torch.Generator().manual_seed(seed)
    sets = [F.interpolate(x.float(), size=(size, size), mode="area") for x in (a, b)]
    halves = [x[torch.randperm(len(x), generator=g)] for x in sets]
    train = [x[: len(x) // 2] for x in halves]
    test = [x[len(x) // 2:] for x in halves]
    x_tr, y_tr = torch.cat(train), torch.cat([torch.zeros(len(train[0])), torch.ones(len(train[1]))])
    x_te, y_te = torch.cat(test), torch.cat([torch.zeros(len(test[0])), torch.ones(len(test[1]))])
    torch.manual_seed(seed)
    net = TwoSampleCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    weight = torch.tensor(len(train[0]) / max(len(train[1]), 1))  # balance the classes' losses
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(order), 16):
            idx = order[i:i + 16]
            x = x_tr[idx].flip(-1) if torch.rand(1, generator=g).item() < 0.5 else x_tr[idx]
            loss = F.binary_cross_entropy_with_logits(net(x), y_tr[idx], pos_weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        correct = int(((net(x_te) > 0).float() == y_te).sum())
    lo, hi = wilson_interval(correct, len(y_te))
    return {"c2st_accuracy": correct / len(y_te), "c2st_ci95": [lo, hi], "c2st_test_images": len(y_te)}


def realism_measures(real: torch.Tensor, images: torch.Tensor, features=None, real_features=None) -> dict:
    """``images`` against the held-out ``real`` images: histogram W1, power-spectrum distance, the set's SSIM
    diversity, the classifier two-sample test, and FID/KID when a feature network is given."""
    from medgen.metrics import fid, histogram_wasserstein, kid, spectrum_distance, ssim_diversity

    out = {"images": len(images), "hist_wasserstein": histogram_wasserstein(real, images).item(),
           "spectrum_distance": spectrum_distance(real, images).item(), "ssim_diversity": ssim_diversity(images).item(),
           **two_sample_test(real, images)}
    if features is not None:
        fake = features(images)
        out["fid"] = float(fid(real_features, fake))
        out["kid"] = float(kid(real_features, fake, subset_size=min(len(fake), len(real_features)),
                               generator=torch.Generator().manual_seed(0))[0])
    return out


def realism(args) -> dict:
    """Samples of each class at each guidance scale against held-out real images, beside two references:
    training images against the held-out ones (the floor: real against real) and the autoencoder's
    reconstructions of the held-out images (the best the diffusion stage can reach); class fidelity by a
    classifier trained on the held-out images; every sample's nearest training image (copy check)."""
    from medgen.data.transforms import deterministic_transforms
    from medgen.inference.autoencoder import reconstruct_item
    from medgen.inference.sample import generate_ldm
    from medgen.io import find_images
    from medgen.metrics import FeatureExtractor, ssim_diversity
    from medgen.metrics.copies import calibrate, nearest
    from medgen.models.tiled import tiling_for

    ldm, measures, reference = _setup(args)
    cfg, vae_cfg = ldm[2], ldm[3]
    size = reference["image_shape"]
    held_paths = {name: find_images(Path(args.holdout) / name) for name in CLASSES}
    held = torch.cat([read_images(held_paths[n], cfg.intensity_percentiles, size) for n in CLASSES])
    held_labels = torch.tensor([k for k, n in enumerate(CLASSES) for _ in held_paths[n]])
    train = measures.real
    features = FeatureExtractor(args.feature_network, device=args.device) if args.feature_network else None
    held_features = features(held) if features else None
    g = torch.Generator().manual_seed(args.seed)
    floor = train[torch.randperm(len(train), generator=g)[: len(held)]]
    tiling, chain = tiling_for(vae_cfg), deterministic_transforms(vae_cfg, vae_cfg.autoencoder_train.patch_size)
    with torch.no_grad():
        recon = torch.stack([reconstruct_item(ldm[1], vae_cfg, p, tiling, chain).output[:1] for n in CLASSES
                             for p in held_paths[n]])
    if tuple(recon.shape[2:]) != tuple(size):
        recon = F.interpolate(recon, size=tuple(size), mode="area")
    thresholds = calibrate(measures.real_thumbs, images=list(train[:256]))
    rows = {"held-out real (its own SSIM diversity)": {"images": len(held), "ssim_diversity": ssim_diversity(held).item()},
            "reference: training real": realism_measures(held, floor, features, held_features),
            "reference: autoencoder reconstructions": realism_measures(held, recon, features, held_features)}
    samples_by_scale = {}
    for scale in args.scales:
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            for batch in generate_ldm(ldm, args.count, args.seed, name, None, args.steps, args.scheduler, scale, args.batch_size):
                images.append(batch)
                labels += [label] * batch.shape[0]
        samples, labels = torch.cat(images), torch.tensor(labels)
        samples_by_scale[scale] = (samples, labels)
        dist = nearest(list(samples), measures.real_thumbs)[0]  # as check-copies measures a sample (its probes)
        logits = measures.classifier.logits(samples)
        rows[f"samples, guidance {scale:g}"] = {
            **realism_measures(held, samples, features, held_features),
            "class_accuracy": ((logits > 0).long() == labels).double().mean().item(),
            **{f"class_accuracy_{n}": ((logits[labels == k] > 0).long() == k).double().mean().item() for k, n in enumerate(CLASSES)},
            "nearest_train_median": dist.median().item(), "nearest_train_min": dist.min().item(),
            "copy_share": (dist < thresholds["threshold"]).float().mean().item()}
        print(f"guidance {scale:g}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[f"samples, guidance {scale:g}"].items()
                                                 if isinstance(v, float)), flush=True)
    reference.update(holdout_images=len(held), holdout_class_accuracy_of_classifier=measures.classifier.accuracy(held, held_labels),
                     copy_threshold=thresholds["threshold"])
    if args.figure:
        realism_figure(held, held_labels, samples_by_scale, measures, Path(args.figure))
    return {"reference": reference, "results": rows}


def realism_figure(held, held_labels, samples_by_scale, measures, path: Path, per_class: int = 4) -> None:
    """Rows per class: held-out real images, then samples at each guidance scale; and the closest
    sample/training pairs of the largest scale (sample left, its nearest training image right)."""
    from PIL import Image, ImageDraw

    from medgen.metrics.copies import nearest

    tile = 192

    def im(x):
        a = (x[0].clamp(0, 1).numpy() * 255).astype("uint8")
        return Image.fromarray(a).resize((tile, tile), Image.BILINEAR)

    rows = []
    for k, name in enumerate(CLASSES):
        rows.append((f"held-out real, {name}", held[held_labels == k][:per_class]))
        for scale, (samples, labels) in samples_by_scale.items():
            rows.append((f"synthetic {name}, guidance {scale:g}", samples[labels == k][:per_class]))
    samples, _ = samples_by_scale[max(samples_by_scale)]
    dist, idx = nearest(list(samples), measures.real_thumbs)
    order = dist.argsort()[: per_class // 2]
    pairs = [t for i in order for t in (samples[i], measures.real[idx[i]])]
    rows.append((f"closest pairs at guidance {max(samples_by_scale):g}: sample | nearest training image "
                 f"(distances {', '.join(f'{dist[i]:.2f}' for i in order)})", torch.stack(pairs)))
    sheet = Image.new("L", (per_class * tile, len(rows) * (tile + 16)), 255)
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * (tile + 16) + 2), label, fill=0)
        for c, x in enumerate(images[:per_class]):
            sheet.paste(im(x), (c * tile, r * (tile + 16) + 16))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def _table(result: dict, mode: str) -> str:
    keys = ["c2st_accuracy", "hist_wasserstein", "spectrum_distance", "ssim_diversity", "nearest_train_median",
            "class_accuracy", "class_logit_d", "copy_share", "fid", "kid"]
    keys = [k for k in keys if any(k in row for row in result["results"].values())]
    head = ["case", "s/sample"] if mode == "samplers" else ["guidance" if mode == "guidance" else "set"]
    lines = [" | ".join(head + keys)]
    for name, row in result["results"].items():
        cells = [name] + ([f"{row['seconds_per_sample']:.3f}"] if mode == "samplers" else [])
        lines.append(" | ".join(cells + [f"{row[k]:.4g}" if k in row else "-" for k in keys]))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("samplers", "guidance", "realism"))
    p.add_argument("--ddpm-checkpoint", required=True, help="a class-conditional LDM trained with ldm_train.scheduler=ddpm")
    p.add_argument("--rflow-checkpoint", help="samplers: the same model trained with ldm_train.scheduler=rflow")
    p.add_argument("--holdout", required=True, help="real images (edente/, dente/) independent of the training set, for the classifier")
    p.add_argument("--count", type=int, default=16, help="samples per class and case")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="samplers: guidance scale (default: the training's guidance_scale)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 3.0], help="guidance: the scales compared")
    p.add_argument("--scheduler", default="ddim", help="guidance: the sampler")
    p.add_argument("--steps", type=int, default=50, help="guidance: sampling steps")
    p.add_argument("--figure", help="realism: write the picture (real vs synthetic per class, closest pairs) here")
    p.add_argument("--feature-network", help="FID/KID features: a local file or a network of `medgen weights list`")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    result = {"samplers": samplers, "guidance": guidance, "realism": realism}[args.mode](args)
    result = {"benchmark": f"bench_sampling {args.mode}", "device": args.device, "threads": args.threads,
              "settings": {k: v for k, v in vars(args).items() if k not in ("json", "mode")}, **_versions(), **result}
    print(_table(result, args.mode))
    print(json.dumps(result["reference"]), json.dumps(result.get("notes", {})))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
