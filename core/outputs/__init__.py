"""What a user takes away: segmentation files and tables, HTML reports, label surfaces, export bundles."""
