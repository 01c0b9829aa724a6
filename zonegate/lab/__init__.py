"""The lab: a topology file as an emulated plant (Mininet), the scenario runner, the demo,
and the probe and device simulators that tests, scenarios and the demo share.

Needs the `[lab]` extra (pymodbus) and Debian's Mininet; nothing outside the lab and the
tests imports it.
"""
