"""The Flower ServerApp (round loop) and the `flower-server` launcher."""
