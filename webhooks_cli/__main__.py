"""`python -m webhooks_cli`: the same as the `webhooks` command."""

from webhooks_cli.main import app

app(prog_name="webhooks")
