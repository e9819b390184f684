"""face2hbe.loadtest.bench: the benchmarks (`face2hbe bench` is server.py; the others run as `python -m
face2hbe.loadtest.bench.<name>`). They may import the stages they measure and load testing's crops; nothing
imports a benchmark but another benchmark and the `face2hbe bench` command (tests/test_layers.py).
"""
