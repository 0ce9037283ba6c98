"""Measure what a training step really allocates (trace on CPU, or run on CUDA) and compare.

Runs from a checkout (not installed with the ``vramcalc`` package); needs torch and
transformers (the ``validation`` extra).
"""
