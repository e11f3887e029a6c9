"""Mixer layers (E1, E16, E88, minGRU, minLSTM, Mamba2, Gated DeltaNet, attention), one contract:
see base.py."""
