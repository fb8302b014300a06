"""Segmenting a volume as TotalSegmentator does (preprocessing, sliding window), one expert at one setting
(expert_run, shared by the CLI and the window), and live refresh."""
