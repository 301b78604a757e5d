"""`webhooks`: the command line for operators and backoffice work."""
