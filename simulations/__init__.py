"""N-client simulations of the UAAP Flower app on Ray."""
