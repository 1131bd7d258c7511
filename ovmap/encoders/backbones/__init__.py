"""Backbones shared by the baseline encoders (SAM v1 image encoder, ...), pure torch, original key names."""
