"""The data plane: the sync gateway that proxies an endpoint's requests to its workers, from a routing table the
control plane keeps; it imports nothing of Dockyard beyond core/, errors and the metrics registry."""
