"""Topology files: parse, validate and evaluate a plant's zones and conduits."""
