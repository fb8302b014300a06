"""Tucker compression of 3D convs: factorise once, slice per ranks; rank rules, counts, HOOI, pruning."""
