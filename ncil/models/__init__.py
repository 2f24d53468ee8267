"""Backbones (returning the [CLS] embedding and patch tokens) and the growing classifier head."""
