"""Segmenting a volume as TotalSegmentator does (preprocessing, sliding window, merge), and live refresh."""
