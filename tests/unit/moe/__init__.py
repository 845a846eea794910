"""Unit tests of the MoE domain core."""
