"""Namespace fixtures for remote-access tests (see netns_plant.py)."""

from tests.remote.netns_plant import joined_plant, plant

__all__ = ["joined_plant", "plant"]
