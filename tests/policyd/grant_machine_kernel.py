"""The grant state machine on real nftables: run inside a fresh network namespace
(`ip netns exec NS python -m tests.policyd.grant_machine_kernel`); exit 0 when every
step kept book == kernel == audit. The daemon's part (compile, apply with grants
carried over, then tell the service) is done here as policyd does it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from hypothesis import settings

from policyd.compiler import CompileOptions, compile_ruleset
from policyd.enforcer import KernelGrants
from policyd.grant_service import GrantService
from policyd.grant_store import GrantStore
from policyd.grants import GrantBook
from policyd.kernel import NftHandle
from policyd.session_end import end_of_source
from tests.policyd.test_grant_machine import GrantMachine
from tests.policyd.test_grant_service import Gateway
from topology.model import Topology


class KernelGateway(Gateway):
    def __init__(self, state_dir: Path | None) -> None:
        self.nft = NftHandle()
        # the daemon's side KernelGrants uses: its policy, nft handle, session ending
        self.daemon = SimpleNamespace(current=None, nft=self.nft, end_flows_from=end_of_source)
        super().__init__(state_dir, kernel=KernelGrants(self.daemon))  # type: ignore[arg-type]
        self.apply()

    def apply(self) -> None:
        rs = compile_ruleset(self.topology, "plant-a", now=self.now, options=CompileOptions())
        self.nft.apply_ruleset(rs, check=False)
        self.daemon.current = rs

    def _service(self) -> GrantService:
        store = GrantStore(self.state_dir / "grants.json") if self.state_dir else None
        return GrantService(
            GrantBook(self.topology), self.kernel, self.audits.append, store, lambda: self.now
        )

    def kernel_view(self) -> dict[tuple[str, str], str | None]:
        return {(el.conduit, el.address): el.tag for el in self.kernel.elements()}

    def set_topology(self, topology: Topology) -> None:
        self.topology = topology
        self.apply()  # what a reload does before the service hears of it

    def foreign_change(self, add: bool) -> None:
        rs = self.daemon.current
        assert rs is not None
        gset = rs.conduits["safety-emergency"].identity_set
        assert gset is not None
        if add:
            self.nft.run(
                [
                    {
                        "add": {
                            "element": {
                                "family": "inet",
                                "table": "zonegate",
                                "name": gset,
                                "elem": [{"elem": {"val": "100.64.1.30", "timeout": 600}}],
                            }
                        }
                    }
                ],
                "foreign add",
            )
        else:
            for el in self.kernel.elements():
                self.nft.delete_elements(rs.conduits[el.conduit].identity_set or "", [el.address])
                break


class KernelMachine(GrantMachine):
    make_gateway = KernelGateway


def main() -> int:
    test = KernelMachine.TestCase
    test.settings = settings(max_examples=int(sys.argv[1]), stateful_step_count=20, deadline=None)
    import unittest

    result = unittest.TextTestRunner(verbosity=0).run(test("runTest"))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
