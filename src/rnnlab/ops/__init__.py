"""Recurrence kernels: naive.py (PyTorch reference) beside triton.py (GPU) for each op."""
