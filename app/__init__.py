"""face2hbe.app: the commands on top of the stages (the CLI, evaluate, thresholds, slices, review, promote, demo).

They may import every layer; nothing below imports them (tests/test_layers.py).
"""
