"""tunneld: WireGuard tunnels keyed by a hybrid post-quantum handshake."""
