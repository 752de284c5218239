"""``medgen fit-decoder``: reconstruct one radiograph with a ProgressiveDecoder fitted to it.

The decoder's learnable latent and weights are optimised so that its output matches the observed image
(a deep-image-prior reconstruction: the network reproduces image structure long before it reproduces
noise). Two uses:

* denoising (no mask): fit all pixels and stop once the fit error reaches the image's noise level
  (Morozov's discrepancy principle; the noise level is estimated from the image unless given);
* inpainting (``--mask``): pixels where the mask is non-zero (e.g. metal artefacts) are left out of the
  loss, so the decoder fills them from the surrounding anatomy.

Example::

    medgen fit-decoder --input pano.dcm --mask metal.png --steps 2000 --output pano_inpainted.dcm
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medgen.models.device import default_device
from medgen.models.layers import CropPad
from medgen.models.progressive_decoder import ProgressiveDecoder
from medgen.errors import InvalidValueError

__all__ = ["FitResult", "estimate_noise_std", "fit_decoder", "write_like_input"]

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Outcome of :func:`fit_decoder`.

    Attributes:
        reconstruction: ``(1, *spatial)`` float32, in the input's intensity units.
        losses: masked MSE (on [0, 1]-normalised intensities) of every step.
        best_step: step whose output is returned (lowest loss).
        stop_reason: ``"noise_level"``, ``"patience"`` or ``"max_steps"``.
        noise_std: noise level used for stopping, in normalised units (0 when disabled).
    """

    reconstruction: np.ndarray
    losses: list[float] = field(default_factory=list)
    best_step: int = 0
    stop_reason: str = "max_steps"
    noise_std: float = 0.0


def estimate_noise_std(image: np.ndarray, observed: np.ndarray | None = None) -> float:
    """Standard deviation of white noise in ``image`` from the finest Haar diagonal detail (Donoho's MAD).

    Hand-written because the estimator is four lines and scikit-image is not a dependency.

    Args:
        image: ``(*, H, W)`` array; detail is taken over the last two axes.
        observed: optional boolean array of the same shape; only fully observed 2x2 blocks count.

    Returns:
        the estimated noise standard deviation (0 when the image is too small).
    """
    h, w = image.shape[-2] // 2 * 2, image.shape[-1] // 2 * 2
    a = image[..., :h, :w].astype(np.float64)
    hh = (a[..., 0::2, 0::2] - a[..., 0::2, 1::2] - a[..., 1::2, 0::2] + a[..., 1::2, 1::2]) / 2.0
    if observed is not None:
        o = observed[..., :h, :w]
        hh = hh[o[..., 0::2, 0::2] & o[..., 0::2, 1::2] & o[..., 1::2, 0::2] & o[..., 1::2, 1::2]]
    if hh.size == 0:
        return 0.0
    # 0.6745 = median of |N(0, 1)|
    return float(np.median(np.abs(hh)) / 0.6745)


def fit_decoder(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    steps: int = 2000,
    lr: float = 1e-2,
    patience: int = 200,
    min_delta: float = 1e-3,
    noise_std: float | None = None,
    latent_channels: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    keep_observed: bool = False,
    progress: bool | None = None,
) -> FitResult:
    """Fit a :class:`ProgressiveDecoder` to one image and return its reconstruction.

    Args:
        image: ``(H, W)``, ``(C, H, W)`` or ``(C, D, H, W)`` array; several channels are averaged.
        mask: same spatial shape (an optional channel dim of 1 is allowed); non-zero marks pixels to
            inpaint, which are excluded from the loss. ``None`` fits every pixel (denoising).
        steps: maximum optimisation steps.
        lr: Adam learning rate.
        patience: stop after this many steps without a relative loss improvement of ``min_delta``.
        min_delta: relative improvement that resets the patience counter.
        noise_std: noise standard deviation in units of the observed intensity range (max - min). Fitting
            stops when the loss reaches ``noise_std**2``. ``None`` estimates it from the image; 0 disables.
        latent_channels: decoder capacity; ``None`` means half the grid size, clipped to [16, 64].
        seed: seed for the latent and weight initialisation.
        device: ``"cpu"``, ``"cuda"``, ...; ``None`` picks CUDA when available. On CUDA the fit runs with
            automatic mixed precision.
        keep_observed: return the observed pixels unchanged and the reconstruction only inside the mask.
        progress: show a tqdm progress bar (``None``: only on a terminal).

    Returns:
        a :class:`FitResult`.
    """
    if steps < 0 or patience < 1 or lr < 0:
        raise InvalidValueError(f"fit_decoder: need steps >= 0, patience >= 1 and lr >= 0; got {steps}, {patience}, {lr}.")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim not in (3, 4):
        raise InvalidValueError(f"fit_decoder: expected (H, W), (C, H, W) or (C, D, H, W), got shape {img.shape}.")
    img = img.mean(axis=0) if img.shape[0] > 1 else img[0]  # the decoder makes one channel
    spatial_shape = img.shape
    spatial_dims = img.ndim
    if not np.isfinite(img).all():
        raise InvalidValueError("fit_decoder: the image contains NaN or infinite values; clean it first.")

    observed = np.ones(spatial_shape, dtype=bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == spatial_dims + 1:
            m = m.any(axis=0) if m.shape[0] > 1 else m[0]
        if m.shape != spatial_shape:
            raise InvalidValueError(
                f"fit_decoder: mask shape {m.shape} does not match the image's spatial shape {spatial_shape}; "
                f"give a mask of the same size."
            )
        observed = m == 0
        if not observed.any():
            raise InvalidValueError("fit_decoder: the mask covers the whole image; nothing is left to fit.")

    # normalise the observed intensities to [0, 1], the range of the decoder's sigmoid output
    lo, hi = float(img[observed].min()), float(img[observed].max())
    scale = hi - lo if hi > lo else 1.0
    target_np = (img - lo) / scale
    if noise_std is None:
        noise_std = estimate_noise_std(target_np, observed)
    noise_var = float(noise_std) ** 2

    dev = torch.device(device) if device is not None else default_device()
    use_amp = dev.type == "cuda"
    size = max(spatial_shape)
    grid = 1 << max(2, (size - 1).bit_length())  # next power of two (ProgressiveDecoder needs one), >= 4
    torch.manual_seed(seed)
    if latent_channels is None:
        # A small decoder reproduces image structure before it reproduces noise (the deep-image-prior effect);
        # on noisy phantoms of 32-128 px this capacity denoised better than the ProgressiveDecoder default.
        latent_channels = min(max(grid // 2, 16), 64)
    model = ProgressiveDecoder(
        grid, output_size=size, latent_channels=latent_channels, use_amp=use_amp, spatial_dims=spatial_dims
    )
    # channels-last runs the transposed convolutions faster and with far less scratch memory
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    model = model.to(dev, memory_format=fmt).train()

    # the decoder makes a square (cube) of edge `size` centred in its grid: pad the image to that square,
    # with zero loss weight on the padding, and crop the decoder output to it
    square = CropPad(size, spatial_dims)
    target = square(torch.from_numpy(np.ascontiguousarray(target_np))[None, None]).to(dev)
    weight = square(torch.from_numpy(observed.astype(np.float32))[None, None]).to(dev)
    weight_sum = weight.sum()

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_amp)
    result = FitResult(reconstruction=np.empty(0, np.float32), noise_std=float(noise_std))
    best, since_best, best_pred = math.inf, 0, None
    bar = tqdm(range(steps), desc="fit-decoder", unit="step", disable=(not progress) if progress is not None else None)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        pred = square(model()).float()
        loss = ((pred - target) ** 2 * weight).sum() / weight_sum
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        value = loss.item()
        result.losses.append(value)
        if value < best * (1.0 - min_delta):
            best, since_best, best_pred, result.best_step = value, 0, pred.detach(), step
        else:
            since_best += 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.2e}", best=f"{best:.2e}")
        if noise_var > 0 and value <= noise_var:
            result.stop_reason = "noise_level"
            break
        if since_best >= patience:
            result.stop_reason = "patience"
            break
    bar.close()
    if best_pred is None:  # steps == 0
        with torch.no_grad():
            best_pred = square(model.generate_fp32())

    recon = CropPad(spatial_shape, spatial_dims)(best_pred)[0, 0].cpu().numpy() * scale + lo
    if keep_observed:
        recon = np.where(observed, img, recon)
    result.reconstruction = recon[None].astype(np.float32)
    logger.info(
        "fit-decoder: %d steps, best loss %.3e at step %d, stopped: %s",
        len(result.losses),
        best,
        result.best_step,
        result.stop_reason,
    )
    return result


# ------------------------------------------------------------------------------------------------ CLI
def write_like_input(recon: np.ndarray, out: Path, spacing: tuple, info, source: Path) -> None:
    """Write ``recon`` so that it reads back in the input's units (and geometry for DICOM)."""
    from medgen.io import write_image

    array = recon
    if out.name.lower().endswith(".png") and np.issubdtype(np.dtype(info.dtype), np.integer):
        # integer PNG input: write the same integer codes (the writer would otherwise stretch floats
        # to the full bit range)
        limits = np.iinfo(np.dtype(info.dtype))
        array = np.clip(np.rint(recon), max(limits.min, 0), min(limits.max, 65535)).astype(
            np.uint8 if limits.max <= 255 else np.uint16
        )
    # only geometry attributes are copied from a reference (the writer's allow-list), nothing identifying
    reference = source if info.kind == "dicom" and out.name.lower().endswith(".dcm") else None
    write_image(array, out, spacing=spacing, reference=reference)
