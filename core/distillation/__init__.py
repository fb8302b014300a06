"""Label-free recovery of compressed experts: distil the original network (teacher) into its compressed copy."""
