"""Decoding: the cached engine, the loop every method shares, sampling, one module per
method (ar, blts, bltd, bltdv), `generation.generate`, the decode.py command line.

docs/architecture.md, "Package layout"."""
