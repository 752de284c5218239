#!/usr/bin/env python
"""Arrange clones of the public dental repositories as medgen data folders with the committed split:
`python scripts/prepare_public_data.py --panoramics Instance_seg_teeth --ct niivue-images OUT`.

Same as `medgen prepare-public-data`; all logic lives in medgen.data.public.
"""

import sys

from medgen.cli import script_main

if __name__ == "__main__":
    sys.exit(script_main("prepare-public-data"))
