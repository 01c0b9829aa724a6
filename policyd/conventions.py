"""Names and numbers shared by the compiler, the flow recorder and the tests.

Kept in one place so the rules policyd writes and the records it reads back agree.
"""

from __future__ import annotations

from pathlib import Path

from topology.model import MARK_TAG, MARK_TAG_MASK, conduit_mark

# The control API: a unix socket per gateway here, and this port on the overlay address.
RUN_DIR = Path("/run/zonegate")
STATE_DIR = Path("/var/lib/zonegate")  # grants, TOTP secrets
LOG_DIR = Path("/var/log/zonegate")  # flow and audit log, session recordings
API_PORT = 9780

TABLE_FAMILY = "inet"
TABLE_NAME = "zonegate"  # policyd owns this table and never touches any other

# Denied packets are copied to this NFLOG group (rate-limited) for the flow log.
NFLOG_GROUP = 7
NFLOG_DENY_PREFIX = "zg deny "  # followed by a short reason, e.g. "zg deny default"

# Every packet of a `record: true` conduit's flows is copied to this group for session
# recording (policyd/flowlog/sessions.py). The prefix carries the conduit's ct mark in
# hex ("zg record 0x5a123456"): the kernel here has no NFLOG conntrack glue, so the
# prefix is how a copied packet names its conduit.
NFLOG_RECORD_GROUP = 8
NFLOG_RECORD_PREFIX = "zg record "
RECORD_SNAPLEN = 1600  # a full packet at MTU 1500 plus headroom; larger ones are cut
RECORD_QTHRESH = 16  # packets the kernel batches per netlink message (flushed on timeout)


__all__ = [
    "API_PORT",
    "LOG_DIR",
    "MARK_TAG",
    "MARK_TAG_MASK",
    "NFLOG_DENY_PREFIX",
    "NFLOG_GROUP",
    "NFLOG_RECORD_GROUP",
    "NFLOG_RECORD_PREFIX",
    "RECORD_QTHRESH",
    "RECORD_SNAPLEN",
    "RUN_DIR",
    "STATE_DIR",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "conduit_mark",
]
