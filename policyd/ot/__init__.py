"""The OT transaction tier: protocol-aware enforcement of industrial conduits.

One asyncio service in policyd (`tier.OtTier`) that the kernel steers conduit flows to
(policyd/compile_ot.py). Modbus/TCP is implemented; a later protocol (DNP3, S7comm,
EtherNet/IP) plugs in as a framer + decoder producing the protocol's request model and
a pure `decide` in topology, see docs/policyd.md, "Adding a protocol".
"""
