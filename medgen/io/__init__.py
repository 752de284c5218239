"""Files in and out: reading images, writing images, finding the images a config or folder names,
checkpoint files, atomic writes, pretrained networks.

- ``reader``: :func:`read_image` for DICOM (files, series, multi-frame), NIfTI and PNG/JPEG, :func:`read_pixels` (the
  same before the float conversion: stored values and their map), dispatching by kind to
  ``dicom`` (DICOM files and series folders, presentation form) and ``formats`` (NIfTI, PNG/JPEG/TIFF);
  ``image``: what they return and raise (:class:`Pixels`, :class:`ImageInfo`, :class:`ImageReadError`).
- ``writer``: :func:`write_image`, which never copies identifying DICOM attributes.
- ``discovery``: the image items under a folder (:func:`find_images`), the one way from a config or a
  command-line path to image items, and the change stamp of an item.
- ``checkpoint``: atomic ``torch.save``, ``weights_only`` loading, RNG states, DDP prefixes.
- ``files``: atomic writes for every other file.
- ``weights``: the pretrained networks medgen can use (registry with SHA-256s), the one weights directory
  (``$MEDGEN_HOME``), and fetch / export / import / verify.
"""

from medgen.io.discovery import find_images
from medgen.io.image import ImageInfo, ImageReadError, Pixels
from medgen.io.reader import inspect_image, read_image, read_image_and_info, read_pixels
from medgen.io.writer import write_image
