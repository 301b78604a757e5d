"""The subscription service: gRPC CRUD and a change stream over webhook subscriptions."""
