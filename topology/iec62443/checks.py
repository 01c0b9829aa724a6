"""Which check reads the topology for which requirement id."""

from __future__ import annotations

from collections.abc import Callable

from topology.iec62443 import access_checks as a
from topology.iec62443 import boundary_checks as b
from topology.iec62443.view import Found, ZoneView

Check = Callable[[ZoneView, Found], None]
CHECKS: dict[str, Check] = {
    "SR 1.1": a.sr_1_1,
    "SR 1.1 RE1": a.sr_1_1_re1,
    "SR 1.1 RE2": a.sr_1_1_re2,
    "SR 1.1 RE3": a.sr_1_1_re3,
    "SR 1.13": a.sr_1_13,
    "SR 1.13 RE1": a.sr_1_13_re1,
    "SR 2.1": a.sr_2_1,
    "SR 2.1 RE1": a.sr_2_1_re1,
    "SR 2.1 RE2": a.sr_2_1_re2,
    "SR 2.1 RE3": a.sr_2_1_re3,
    "SR 2.1 RE4": a.sr_2_1_re4,
    "SR 2.6": a.sr_2_6,
    "SR 2.8": b.sr_2_8,
    "SR 2.8 RE1": b.sr_2_8_re1,
    "SR 3.9": b.sr_3_9,
    "SR 3.9 RE1": b.sr_3_9_re1,
    "SR 5.1": b.sr_5_1,
    "SR 5.1 RE1": b.sr_5_1_re1,
    "SR 5.1 RE2": b.sr_5_1_re2,
    "SR 5.1 RE3": b.sr_5_1_re3,
    "SR 5.2": b.sr_5_2,
    "SR 5.2 RE1": b.sr_5_2_re1,
    "SR 5.2 RE2": b.sr_5_2_re2,
    "SR 5.2 RE3": b.sr_5_2_re3,
    "SR 6.1": b.sr_6_1,
    "SR 6.1 RE1": b.sr_6_1_re1,
    "SR 6.2": b.sr_6_2,
    "SR 7.6": b.sr_7_6,
    "SR 7.6 RE1": b.sr_7_6_re1,
}
