"""Backbones shared by the baseline encoders, pure torch, original key names: SAM v1 image encoder (``sam_vit``),
SAM v1 neck / prompt encoder / mask decoder (``sam_decoder``), SAM 2.1 image path (``sam2``)."""
