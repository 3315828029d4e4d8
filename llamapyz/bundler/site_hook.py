"""Shipped in a `--gpu` archive as site-packages/_llamapyz_site_hook.py (llamapyz/bundler/cuda_wheels.py), with a .pth
file that calls `add_this_site_dir()` when shiv's bootstrap adds the extracted site-packages/ (site.addsitedir runs
.pth files). Standard library only; importing it changes nothing.

cuda-pathfinder, which numba-cuda asks for NVVM, NVRTC and nvJitLink, searches the folders of
`site.getsitepackages()` for NVIDIA's wheels, not sys.path; that list names the interpreter's own folders only,
not a folder added later with site.addsitedir. So the archive's libraries would not be found, or worse, another
CUDA's would be (a toolkit in /usr/local/cuda, another Python's wheels). This puts the folder holding this file
first in that list, for this process.
"""

from __future__ import annotations

import os
import site


def add_this_site_dir() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    original = site.getsitepackages

    def getsitepackages(prefixes: list[str] | None = None) -> list[str]:
        return [here, *(folder for folder in original(prefixes) if folder != here)]

    site.getsitepackages = getsitepackages
