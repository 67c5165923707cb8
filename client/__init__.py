"""The Flower ClientApp (local data, training, encryption) and the `flower-client` launcher."""
