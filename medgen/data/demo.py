"""Synthetic demo data: jaw radiographs (2D) and CBCT-like volumes (3D) written as DICOM.

:func:`write_demo_dataset` (``medgen demo-data OUT``) writes ``OUT/edente/`` (jaws without teeth) and ``OUT/dente/`` (jaws with teeth) in
the same layout as real data, so the whole pipeline (discovery, DICOM reading, training, TensorBoard) can be
tried without patient data. Every file is labelled synthetic (PatientName ``SYNTHETIC^DEMO``, ImageType
``DERIVED\\SECONDARY``, ConversionType ``SYN``, ImageComments) and the output is byte-for-byte reproducible
for a given seed: pixels come from a seeded NumPy generator and UIDs are derived from the seed.

The drawing is hand-written with vectorised NumPy because no library draws anatomy; it aims at "looks like
a panoramic radiograph / CBCT of a jaw at thumbnail size", not at anatomical accuracy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from medgen.config import CLASSES
from medgen.errors import InvalidValueError

__all__ = ["CLASSES", "DEFAULT_SIZE", "make_jaw_image", "make_jaw_volume", "write_demo_dataset"]

#: Class folders, in the order they are written (the same names the data discovery looks for).
DEFAULT_SIZE = {2: 128, 3: 32}
MIN_SIZE = 16
SYNTHETIC_NOTE = "medgen synthetic demo data — not a patient"
_README_MARKER = "medgen synthetic demo data"
# Field of view in mm: a panoramic image is ~25 cm wide, a small-FOV dental CBCT ~10 cm.
_FOV_MM = {2: 250.0, 3: 100.0}


# --------------------------------------------------------------------------------------------- drawing helpers
def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow warnings for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over every axis of ``a`` (mirror padding, kernel radius 3 sigma); sigma in pixels."""
    return gaussian_filter(a, sigma, mode="mirror", truncate=3.0) if sigma > 0 else a


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth zero-mean, unit-std noise (trabecular bone pattern, film mottle)."""
    t = _blur(rng.standard_normal(shape).astype(np.float32), sigma)
    return t / (t.std() + 1e-6)


def _tooth_table(rng: np.random.Generator, upper: bool, wisdom: bool) -> dict[str, np.ndarray]:
    """Per-tooth shape parameters from the midline outwards (incisors → molars), one side of one arch.

    Returns arrays (length 7 or 8) of relative width, crown length, root length and number of roots;
    lengths are in the normalised [-1, 1] image frame.
    """
    if upper:
        width = [0.085, 0.068, 0.078, 0.072, 0.070, 0.102, 0.096, 0.088]
        root = [0.15, 0.14, 0.20, 0.14, 0.14, 0.13, 0.12, 0.11]
    else:
        width = [0.058, 0.062, 0.074, 0.074, 0.074, 0.110, 0.104, 0.096]
        root = [0.14, 0.15, 0.19, 0.15, 0.15, 0.14, 0.13, 0.12]
    crown = [0.10, 0.09, 0.105, 0.085, 0.08, 0.075, 0.072, 0.07]
    nroots = [1, 1, 1, 1, 1, 2, 2, 2]
    n = 8 if wisdom else 7
    jitter = rng.uniform(0.93, 1.07, size=(3, n))
    return {
        "width": np.asarray(width[:n]) * jitter[0],
        "crown": np.asarray(crown[:n]) * jitter[1],
        "root": np.asarray(root[:n]) * jitter[2],
        "nroots": np.asarray(nroots[:n]),
    }


def _tooth_profile(u: np.ndarray, v: np.ndarray, crown: np.ndarray, root: np.ndarray, nroots: np.ndarray, edge: float):
    """Soft masks of one tooth drawn in its own frame.

    Args:
        u: depth from the occlusal surface into the jaw (0 = biting edge, grows towards the apex).
        v: offset across the tooth axis in units of the tooth half-width (|v| = 1 is the crown's side).
        crown, root: crown and root lengths (same units as ``u``), broadcastable to ``u``.
        nroots: 1 or 2 (molars show two roots on a panoramic view).
        edge: softness of edges in ``u`` units (about one pixel).

    Returns:
        (tooth, enamel, pulp) soft masks in [0, 1], same shape as ``u``.
    """
    av = np.abs(v)
    half = crown / 2
    # Crown: a rounded rectangle (superellipse) — bulbous, flat-ish biting surface.
    se = (av / 0.95) ** 3 + (np.abs(u - half) / half) ** 3
    crown_m = _sigmoid((1.0 - se) * half / edge * 0.5)
    # Root(s): from the cervical line, nearly parallel sides that round off at the apex.
    t = np.clip((u - 0.75 * crown) / (root + 0.25 * crown), 0.0, 1.0)
    apex = np.sqrt(np.clip(1.0 - t**4, 0.0, 1.0))
    in_len = _sigmoid((u - 0.7 * crown) / edge) * _sigmoid((crown + root - u) / edge)
    single = (0.68 - 0.32 * t) * apex - av
    offset = 0.3 + 0.22 * t  # molar roots diverge towards the apex
    trunk = np.minimum(single, (0.3 - t) * 2.0)
    double = np.maximum((0.3 - 0.1 * t) * apex - np.abs(av - offset), trunk)
    root_m = _sigmoid(np.where(nroots > 1, double, single) * half / edge) * in_len
    tooth = np.maximum(crown_m, root_m)
    enamel = crown_m * _sigmoid((0.8 * crown - u) / edge)
    # Pulp chamber in the crown's core, continuing as a canal down each root.
    canal = np.where(nroots > 1, 0.09 * apex - np.abs(av - offset), 0.13 * apex - av)
    chamber = np.where(u < crown, 0.38 - av, canal)
    pulp_len = _sigmoid((u - 0.4 * crown) / edge) * _sigmoid((crown + 0.92 * root - u) / edge)
    pulp = _sigmoid(chamber * half / edge) * pulp_len
    return tooth, enamel, pulp * tooth


def make_jaw_image(rng: np.random.Generator, size: int, teeth: bool) -> np.ndarray:
    """Draw one synthetic panoramic dental radiograph.

    Upper jaw at the top, lower jaw (mandible with rami) at the bottom, occlusal plane curved as a smile.
    With ``teeth`` two rows of teeth (enamel crowns, roots in the alveolar bone, pulp canals, a few
    missing teeth and fillings); without, smooth resorbed edentulous ridges separated by a soft-tissue gap.

    Args:
        rng: NumPy generator; the image is a pure function of its state.
        size: image side in pixels (>= 16).
        teeth: draw a dentate (True) or edentulous (False) jaw.

    Returns:
        float32 array of shape (size, size), values in [0, 1] (bright = dense), rows top to bottom.
    """
    if size < MIN_SIZE:
        raise InvalidValueError(f"size must be >= {MIN_SIZE} pixels, got {size}")
    lin = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(lin, lin, indexing="ij")  # y grows downwards, like image rows
    edge = 1.2 / size  # about half a pixel of softness in the [-1, 1] frame

    # Per-image anatomy and exposure variation.
    k = rng.uniform(0.12, 0.26)  # smile curvature of the occlusal plane
    y0 = rng.uniform(-0.04, 0.08)
    tilt = rng.uniform(-0.05, 0.05)
    xb = rng.uniform(0.66, 0.74)  # half-width of the dental arch / mandibular body
    body_h = rng.uniform(0.36, 0.48)  # mandible height below the alveolar crest
    gap = rng.uniform(0.005, 0.03) if teeth else rng.uniform(0.07, 0.14)
    bone_gain = rng.uniform(0.28, 0.4)
    gain = rng.uniform(0.85, 1.1)
    gamma = rng.uniform(0.8, 1.25)
    noise_sd = rng.uniform(0.01, 0.035)

    # Coordinates relative to the occlusal curve f(x) = y0 + tilt*x - k*x^2: signed normal distance d
    # (positive towards the mandible) and the foot point xe, so teeth stand perpendicular to the curve.
    slope = tilt - 2 * k * x
    norm = np.sqrt(1 + slope**2)
    d = (y - (y0 + tilt * x - k * x**2)) / norm
    xe = x + slope * d / norm
    ul = d - gap / 2  # depth into the lower jaw
    uu = -d - gap / 2  # depth into the upper jaw

    # Soft tissue: face/neck haze, tongue and lips along the occlusal plane, cervical-spine ghosts at the edges.
    soft = 0.1 + 0.12 * np.exp(-(x**2) / 0.7 - y**2 / 1.2)
    soft += (0.06 if teeth else 0.1) * np.exp(-(d**2) / 0.01) * _sigmoid((0.75 - np.abs(x)) / 0.05)
    soft += 0.07 * np.exp(-(((np.abs(x) - 0.97) / 0.05) ** 2)) * _sigmoid((y + 0.1) / 0.1)

    # Mandible: body between the alveolar crest and the lower border, plus a ramus on each side
    # (gonial angle, coronoid process, sigmoid notch, condyle).
    crest_l = 0.1 if teeth else 0.0
    lower = crest_l + body_h * (1 - 0.3 * xe**2) * (1.0 if teeth else 0.75)
    body = _sigmoid((ul - crest_l) / edge) * _sigmoid((lower - ul) / edge)
    body *= _sigmoid((xb + 0.04 - np.abs(xe)) / (3 * edge))
    f_end = y0 - k * xb**2  # occlusal plane height at the back of the arch (tilt ignored: both sides alike)
    lower_end = f_end + gap / 2 + crest_l + body_h * (1 - 0.3 * xb**2) * (1.0 if teeth else 0.75)
    rami = np.zeros_like(x)
    for side in (-1.0, 1.0):
        # Convex quadrilateral A (front foot) -> K (coronoid) -> C (condyle) -> G (gonion), in image coordinates.
        pts = np.array(
            [
                [side * (xb - 0.14), f_end + gap / 2 + crest_l + 0.06],
                [side * (xb - 0.05), f_end - rng.uniform(0.3, 0.4)],
                [side * (xb + 0.12), f_end - rng.uniform(0.45, 0.55)],
                [side * (xb + 0.1), lower_end - 0.06],
            ]
        )
        if side < 0:
            pts = pts[::-1]  # keep the same winding on both sides
        sd = np.full_like(x, -np.inf)  # > 0 outside: the largest signed distance to the four edge lines
        for (ax_, ay_), (bx_, by_) in zip(pts, np.roll(pts, -1, axis=0)):
            ex, ey = bx_ - ax_, by_ - ay_
            sd = np.maximum(sd, ((x - ax_) * ey - (y - ay_) * ex) / np.hypot(ex, ey))
        kx, ky = (pts[1] if side > 0 else pts[2])
        cxn, cyn = (pts[2] if side > 0 else pts[1])
        r = 0.3 * np.hypot(cxn - kx, cyn - ky)
        notch = np.hypot(x - (kx + cxn) / 2, y - ((ky + cyn) / 2 - r + 0.05)) - r  # sigmoid notch
        rami = np.maximum(rami, _sigmoid(np.minimum(-sd, notch) / edge))
        rami = np.maximum(rami, _sigmoid((1 - np.hypot((x - cxn) / 0.06, (y - cyn) / 0.045)) * 0.045 / edge))
    mandible = np.maximum(body, rami)
    cortex = body * np.exp(-(((lower - ul) / 0.035) ** 2))  # dense lower border
    canal = body * np.exp(-(((ul - crest_l - 0.55 * (lower - crest_l)) / 0.015) ** 2))  # mandibular canal

    # Maxilla and midface: alveolar process, hard palate, sinuses, nasal cavity, zygoma, orbits.
    crest_u = 0.1 if teeth else 0.0
    pal = crest_u + rng.uniform(0.22, 0.3) * (1.0 if teeth else 0.75)
    tuberosity = 2 * np.clip(crest_u + 0.06 - uu, 0, None)  # rounds the back end of the alveolar process
    maxilla = _sigmoid((uu - crest_u) / edge) * _sigmoid((xb - 0.02 - np.abs(xe) - tuberosity) / (2 * edge))
    midface = 0.55 * _sigmoid((uu - crest_u - 0.1) / 0.04) * _sigmoid((0.92 - np.abs(x)) / 0.05)
    maxilla = np.maximum(maxilla * _sigmoid((pal + 0.05 - uu) / 0.03), midface)
    palate = np.exp(-(((uu - pal) / 0.018) ** 2)) * _sigmoid((0.6 - np.abs(x)) / 0.03)
    sinus = np.exp(-(((np.abs(x) - 0.4) / 0.2) ** 4) - ((uu - pal - 0.17) / 0.13) ** 4)
    sinus_floor = np.exp(-((((np.abs(x) - 0.4) / 0.2) ** 2 + ((uu - pal - 0.17) / 0.13) ** 2 - 1) / 0.25) ** 2)
    nasal = np.exp(-((x / 0.13) ** 4) - ((uu - pal - 0.22) / 0.18) ** 4) * (1 - np.exp(-((x / 0.012) ** 2)))
    orbit = np.exp(-(((np.abs(x) - 0.45) / 0.2) ** 2) - ((y + 1.0) / 0.16) ** 2)
    zygoma = np.exp(-(((y - (f_end - pal - 0.28 + 0.15 * (np.abs(x) - 0.6))) / 0.035) ** 2)) * _sigmoid(
        (np.abs(x) - 0.55) / 0.04
    )
    cavities = 0.75 * sinus + 0.8 * nasal + 0.6 * orbit

    trab = _texture(rng, x.shape, sigma=max(0.7, size / 160))
    bone = np.maximum(mandible, maxilla) * (1 + 0.12 * trab)
    bone = bone + 0.5 * cortex + 0.6 * palate + 0.3 * sinus_floor + 0.5 * zygoma - 0.35 * canal
    bone = bone - cavities * np.clip(bone, 0, 1)
    img = soft + bone_gain * bone

    if teeth:
        tooth_img = np.zeros_like(x)
        for depth, upper in ((ul, False), (uu, True)):
            tab = _tooth_table(rng, upper, wisdom=bool(rng.random() < 0.4))
            scale = (xb - 0.03) / tab["width"].sum()
            w = tab["width"] * scale
            # Both sides, mirrored: boundaries from -sum(w) to +sum(w), incisors at the midline.
            widths = np.concatenate([w[::-1], w])
            bounds = np.concatenate([[0.0], np.cumsum(widths)]) - w.sum()
            idx = np.clip(np.searchsorted(bounds, xe) - 1, 0, len(widths) - 1)
            order = np.concatenate([np.arange(len(w))[::-1], np.arange(len(w))])
            present = rng.random(len(widths)) > 0.08  # a few missing teeth
            filling = rng.random(len(widths)) < 0.12
            centre = (bounds[:-1] + bounds[1:]) / 2
            v = (xe - centre[idx]) / (0.5 * widths[idx])
            tid = order[idx]
            crown, root = 1.25 * tab["crown"][tid], 1.2 * tab["root"][tid]
            tooth, enamel, pulp = _tooth_profile(depth, v, crown, root, tab["nroots"][tid], edge)
            inside = _sigmoid((bounds[-1] - np.abs(xe)) / edge) * present[idx]
            fill = filling[idx] * _sigmoid((0.5 - np.abs(v)) * 8) * _sigmoid((0.4 * crown - depth) / edge)
            tooth_img += inside * (0.42 * tooth + 0.2 * enamel - 0.2 * pulp + 0.5 * fill * tooth)
        img = img + tooth_img

    img = np.clip(gain * img, 0, None) ** gamma
    img = _blur(img, sigma=0.5)
    img = img + noise_sd * rng.standard_normal(img.shape) + 0.5 * noise_sd * _texture(rng, img.shape, 2.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def make_jaw_volume(rng: np.random.Generator, size: int, teeth: bool) -> np.ndarray:
    """Draw one synthetic CBCT-like volume of the jaws, in Hounsfield units.

    A horseshoe-shaped mandible (cortical shell, cancellous core, short rami) and maxilla with a palate,
    inside soft tissue with an airway; with ``teeth`` a row of teeth (enamel crowns, dentine roots in the
    sockets, pulp) on each arch, meeting at the occlusal plane; without, low rounded edentulous ridges.

    Args:
        rng: NumPy generator; the volume is a pure function of its state.
        size: volume side in voxels (>= 16).
        teeth: draw a dentate (True) or edentulous (False) jaw.

    Returns:
        float32 array of shape (size, size, size) indexed (z, y, x): axial slices from inferior to superior,
        rows from anterior to posterior, columns from patient right to left (DICOM LPS). Values in HU
        (air -1000 ... enamel ~3000).
    """
    if size < MIN_SIZE:
        raise InvalidValueError(f"size must be >= {MIN_SIZE} voxels, got {size}")
    lin = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(lin, lin, indexing="ij")
    z = lin[:, None, None]
    edge = 0.6 / size  # sharper than 2D: at 32^3 a tooth is only ~3 voxels wide, the blur below smooths it

    front = rng.uniform(-0.75, -0.6)  # most anterior point of the arch
    depth = rng.uniform(1.1, 1.4)  # antero-posterior extent of the arch
    half_w = rng.uniform(0.55, 0.68)
    z_occ = rng.uniform(-0.1, 0.15)
    gap = rng.uniform(0.0, 0.04) if teeth else rng.uniform(0.1, 0.2)
    noise_sd = rng.uniform(20, 60)

    # The arch as a dense polyline (a squashed U); per pixel: distance to it and arc position s (0 at the midline).
    a = np.linspace(-1.0, 1.0, 4 * size + 1)
    cx = half_w * np.sin(a * np.pi / 2 * 0.95)
    cy = front + depth * (1 - np.cos(a * np.pi / 2 * 0.95)) ** 1.3
    seg = np.hypot(np.diff(cx), np.diff(cy))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    arc -= arc[len(arc) // 2]
    d2 = (x[..., None] - cx) ** 2 + (y[..., None] - cy) ** 2
    nearest = d2.argmin(-1)
    dist = np.sqrt(np.take_along_axis(d2, nearest[..., None], -1)[..., 0])
    s = arc[nearest]
    s_end = arc[-1]
    mid = len(a) // 2  # right half of the polyline: x increasing from the midline
    inside_arch = (y > np.interp(np.abs(x), cx[mid:], cy[mid:])) & (np.abs(x) < cx[-1]) & (y < cy[-1] - 0.25)

    vol = np.full((size, size, size), -1000.0, dtype=np.float32)
    # Soft tissue of the lower face (elliptic cylinder) with the pharyngeal airway behind the arch.
    face = ((x / 0.95) ** 2 + ((y - 0.05) / 0.92) ** 2) < 1
    airway = (x / 0.12) ** 2 + ((y - 0.72) / 0.1) ** 2 < 1
    vol[:, face & ~airway] = rng.uniform(20, 60)

    trab = _texture(rng, vol.shape, sigma=max(0.6, size / 40))
    ln = _sigmoid((s_end - 0.05 - np.abs(s)) / edge)  # bone ends just behind the last molar
    ramus = _sigmoid((np.abs(s) - (s_end - 0.35)) / 0.05)  # posterior part rises towards the ramus
    # Mandible: elliptic cross-section (bucco-lingual half-width 0.13) below the occlusal plane.
    crest_l = z_occ - gap / 2 - (0.15 if teeth else 0.0)
    bottom = crest_l - rng.uniform(0.45, 0.6) * (1.0 if teeth else 0.8)
    top_l = crest_l + 0.35 * ramus
    zc, hz = (top_l + bottom) / 2, (top_l - bottom) / 2
    r_m = np.sqrt((dist / 0.13) ** 2 + ((z - zc) / hz) ** 2)
    mand = _sigmoid((1 - r_m) * 0.13 / edge) * ln
    # Maxilla: alveolar process above the occlusal plane and the palate closing the arch.
    crest_u = z_occ + gap / 2 + (0.15 if teeth else 0.0)
    top_u = crest_u + rng.uniform(0.25, 0.35)
    zcu, hzu = (top_u + crest_u) / 2, (top_u - crest_u) / 2
    r_u = np.sqrt((dist / 0.13) ** 2 + ((z - zcu) / hzu) ** 2)
    maxi = _sigmoid((1 - r_u) * 0.13 / edge) * ln
    palate = inside_arch * _sigmoid((0.03 - np.abs(z - (top_u - 0.06))) / edge)
    bone = np.maximum(np.maximum(mand, maxi), palate)
    shell = np.maximum(
        _sigmoid((r_m - 0.75) * 0.13 / edge) * mand, _sigmoid((r_u - 0.75) * 0.13 / edge) * maxi
    )  # cortical rim
    bone_hu = 450 + 120 * trab + 900 * shell
    vol = vol * (1 - bone) + bone_hu * bone

    if teeth:
        tooth_hu = np.zeros_like(vol)
        for upper in (False, True):
            tab = _tooth_table(rng, upper, wisdom=bool(rng.random() < 0.4))
            w = tab["width"] * (s_end - 0.1) / tab["width"].sum()
            widths = np.concatenate([w[::-1], w])
            bounds = np.concatenate([[0.0], np.cumsum(widths)]) - w.sum()
            idx = np.clip(np.searchsorted(bounds, s) - 1, 0, len(widths) - 1)
            tid = np.concatenate([np.arange(len(w))[::-1], np.arange(len(w))])[idx]
            present = rng.random(len(widths)) > 0.08
            centre = (bounds[:-1] + bounds[1:]) / 2
            # In-plane: along the arch in units of half the tooth width, across it in units of the crown radius.
            along = (s - centre[idx]) / (0.46 * widths[idx])
            across = dist / 0.11
            v = np.sqrt(along**2 + across**2)
            v = np.where(tab["nroots"][tid] > 1, np.sign(along) * v, v)  # keep the two roots apart
            u = (z - (z_occ + gap / 2)) if upper else ((z_occ - gap / 2) - z)
            crown = tab["crown"][tid] * 1.8
            root = tab["root"][tid] * 1.5
            tooth, enamel, pulp = _tooth_profile(u, v, crown, root, tab["nroots"][tid], edge)
            keep = present[idx] * _sigmoid((bounds[-1] - np.abs(s)) / edge)
            tooth_hu = np.maximum(tooth_hu, keep * (1800 * tooth + 1000 * enamel - 900 * pulp))
        tooth_m = np.clip(tooth_hu / 1800, 0, 1)
        vol = vol * (1 - tooth_m) + tooth_hu * tooth_m

    vol = _blur(vol, sigma=0.6)
    vol += noise_sd * rng.standard_normal(vol.shape).astype(np.float32)
    return np.clip(vol, -1000, 3000).astype(np.float32)


# --------------------------------------------------------------------------------------------- DICOM writing
def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    # Derived from the seed so that the whole output (not only the pixels) is reproducible.
    return generate_uid(entropy_srcs=["medgen-demo", str(seed), *map(str, parts)])


def _base_dataset(sop_class: str, sop_uid: str, study_uid: str, series_uid: str, modality: str, description: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the comment has an em dash
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = modality
    ds.ConversionType = "SYN"  # DICOM's defined term for "synthetic image"
    ds.BurnedInAnnotation = "NO"
    ds.PatientName = "SYNTHETIC^DEMO"
    ds.PatientID = "MEDGEN-DEMO"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyID = "DEMO"
    ds.SeriesNumber = 1
    ds.SeriesDescription = description  # LO: at most 64 characters
    ds.ImageComments = SYNTHETIC_NOTE
    ds.Manufacturer = "medgen"
    return ds


def _write_image(path: Path, img: np.ndarray, seed: int, cls: str, i: int) -> None:
    from pydicom.uid import SecondaryCaptureImageStorage

    size = img.shape[0]
    ds = _base_dataset(
        SecondaryCaptureImageStorage,
        _uid(seed, 2, size, cls, i, "sop"),
        _uid(seed, 2, size, cls, i, "study"),
        _uid(seed, 2, size, cls, i, "series"),
        "PX",
        f"{SYNTHETIC_NOTE} (panoramic {cls})",
    )
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # displayed as usual: patient's right on the viewer's left, teeth upright
    spacing = _FOV_MM[2] / size
    ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    pixels = np.round(img * 4095).astype(np.uint16)  # 12-bit detector range
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12, generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path, enforce_file_format=True)


def _write_volume(folder: Path, vol: np.ndarray, seed: int, cls: str, i: int) -> None:
    from pydicom.uid import CTImageStorage

    folder.mkdir(parents=True, exist_ok=True)
    size = vol.shape[0]
    spacing = _FOV_MM[3] / size
    study_uid = _uid(seed, 3, size, cls, i, "study")
    series_uid = _uid(seed, 3, size, cls, i, "series")
    frame_uid = _uid(seed, 3, size, cls, i, "frame")
    stored = np.round(vol + 1000).astype(np.int16)  # HU = stored * 1 - 1000
    origin = -_FOV_MM[3] / 2 + spacing / 2
    for k in range(size):
        ds = _base_dataset(
            CTImageStorage, _uid(seed, 3, size, cls, i, "sop", k), study_uid, series_uid, "CT",
            f"{SYNTHETIC_NOTE} (CBCT {cls})",
        )
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        z_mm = origin + k * spacing
        ds.ImagePositionPatient = [f"{origin:.6g}", f"{origin:.6g}", f"{z_mm:.6g}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{z_mm:.6g}"
        ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
        ds.SliceThickness = f"{spacing:.6g}"
        ds.KVP = 90
        ds.set_pixel_data(stored[k], "MONOCHROME2", bits_stored=16, generate_instance_uid=False)
        ds.RescaleIntercept = -1000
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 1000, 4000
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)


def _prepare_out_dir(out: Path) -> None:
    """Create ``out``; clear a previous demo data set there, but never touch a folder that is not one."""
    if out.exists() and not out.is_dir():
        raise InvalidValueError(f"{out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and readme.read_text(encoding="utf-8").startswith(_README_MARKER)):
            raise InvalidValueError(
                f"{out} is not empty and is not a medgen demo data folder (no README.txt from `medgen demo-data`); "
                "choose an empty or new folder so no real data is overwritten"
            )
        for cls in CLASSES:  # a previous demo run: replace it, so stale images of another size/count go away
            shutil.rmtree(out / cls, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def write_demo_dataset(
    out_dir: str | Path, spatial_dims: int = 2, count: int = 16, size: int | None = None, seed: int = 0
) -> Path:
    """Write a synthetic demo data set: ``out_dir/edente/`` and ``out_dir/dente/`` with ``count`` images each.

    2D: ``<class>/<class>_NNNN.dcm``, one panoramic-like image per file (uint16, 12 bits stored, MONOCHROME2).
    3D: ``<class>/vol_NNNN/slice_KKK.dcm``, one CBCT-like axial series per folder (int16 stored, HU = stored - 1000).
    A README.txt in ``out_dir`` says the data are synthetic. Re-running into the same folder replaces the previous
    demo data; a non-empty folder that is not a demo folder is refused.

    Args:
        out_dir: output folder (created).
        spatial_dims: 2 for images, 3 for volumes.
        count: images (or volumes) per class.
        size: image side in pixels (2D: size x size, default 128; 3D: size^3, default 32).
        seed: everything written (pixels and UIDs) is a function of the seed and the other arguments.

    Returns:
        ``out_dir`` as a Path.
    """
    if spatial_dims not in (2, 3):
        raise InvalidValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    size = DEFAULT_SIZE[spatial_dims] if size is None else int(size)
    if size < MIN_SIZE:
        raise InvalidValueError(f"size must be >= {MIN_SIZE}, got {size}")
    if count < 1:
        raise InvalidValueError(f"count must be >= 1, got {count}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    # README first: it marks the folder as demo data, so an interrupted run can be re-run into it.
    shape = f"{size}x{size}" if spatial_dims == 2 else f"{size}^3"
    (out / "README.txt").write_text(
        f"{_README_MARKER}: SYNTHETIC images drawn by `medgen demo-data`, not from any patient.\n"
        "edente/ = jaws without teeth, dente/ = jaws with teeth; "
        f"{count} per class, {spatial_dims}D, {shape}, seed {seed}.\n"
        "Use them to try the pipeline only; they carry no clinical information.\n",
        encoding="utf-8",
    )
    for c, cls in enumerate(CLASSES):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            # One independent stream per (class, index): an image does not depend on count or on other images.
            rng = np.random.default_rng([seed, spatial_dims, c, i])
            if spatial_dims == 2:
                _write_image(out / cls / f"{cls}_{i:04d}.dcm", make_jaw_image(rng, size, cls == "dente"), seed, cls, i)
            else:
                _write_volume(out / cls / f"vol_{i:04d}", make_jaw_volume(rng, size, cls == "dente"), seed, cls, i)
    return out
