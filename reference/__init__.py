"""The PyTorch side of every comparison: timm's CoaT, seeded checkpoints, and the parity harness.

This package needs torch and timm (``pip install -e .[reference]``).
"""
