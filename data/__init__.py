"""Datasets: converters from the benchmarks' original releases, and the annotation checker."""
