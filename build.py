#!/usr/bin/env python3
"""Build a llamapyz archive from a GGUF model: `python build.py --help`."""
from llamapyz.bundler.builder import main

main()
