"""policyd: compiles conduits into nftables and enforces them."""
