"""Where experts come from and how they are built: nnU-Net results folders, TS homes, the demo, saved compressed folders."""
