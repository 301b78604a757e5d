"""What both services share: authentication, error mapping and gRPC server plumbing."""
