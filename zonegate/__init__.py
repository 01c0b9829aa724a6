"""Zonegate's application layer: the umbrella `zonegate` command and the lab.

Layers, bottom up: `topology` (the pure model) <- `policyd`, `tunneld` (the daemons and
their client tools) <- `zonegate` (the CLI that ties them together, and `zonegate.lab`:
Mininet emulation, scenarios, the demo, probes and asset simulators). No module imports
a layer above its own; `tests/test_layers.py` holds the line.
"""
