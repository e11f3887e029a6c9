"""Mixer layers (E1, E16, minGRU, minLSTM, Mamba2, attention), one contract: see base.py."""
