"""CT volumes in and out of the pipeline: NIfTI/DICOM loading, the display grid, the procedural phantom."""
