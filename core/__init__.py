"""Everything without Qt: volumes, models, Tucker compression, segmentation, metrics, CLI."""
