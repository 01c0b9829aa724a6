"""policyd's control API (aiohttp): grants, emergency access, status, metrics, flows.

Served on a unix socket for local administration and on the gateway's overlay
address for remote identities, whose identity is their tunnel source address.
"""
