"""The model: config-driven Flax modules (layers, attention kernels and their accelerator
forms, patching, hash n-grams), the BLT and its parameters, the mesh and its rules.

docs/architecture.md, "Package layout"."""
