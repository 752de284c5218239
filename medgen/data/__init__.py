"""Images as training sees them: transform chains, cached datasets and loaders, data checks, demo data.

- ``transforms``: the MONAI dict transform chains (read, window, pad/resize, crop, augment), defined once, and
  their crop-at-read form for cached images.
- ``cache``: the disk cache of decoded images (stored integers, memory-mapped, shared by ranks).
- ``window``: the per-image intensity window, exact percentiles from value counts.
- ``datasets``: datasets over the caches, per-item seeded loaders whose workers persist, skipping files that
  break mid-run.
- ``whole``: a whole image as a model takes it (training's preprocessing, padded to the downsampling) and
  back to the image's own shape: the input of tiled inference and whole-image validation.
- ``latents``: the latent file format (what ``medgen encode`` writes and latent diffusion caches, keyed on
  the autoencoder and the image), its loader, the mean/std of many latents, and random latent crops.
- ``check``: reading every item before training and the report ``medgen check-data`` prints.
- ``demo``: synthetic panoramic-like radiographs and CBCT-like series in the edente/ dente/ layout.
- ``public``: clones of the public panoramic and CT repositories arranged as train/val data folders by the
  committed split lists (``medgen prepare-public-data``).

Reading and finding files is :mod:`medgen.io`'s job.
"""

from medgen.data.check import FileReport, format_report, scan_files, write_report_json
