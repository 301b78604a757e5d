"""Entry point of the `webhooks` command."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage subscriptions, publish events and follow deliveries.")
