"""The backoffice console: subscriptions and the delivery log in a browser.

A server-rendered web app (aiohttp and Jinja2 templates) that talks to the two services
only through their generated gRPC stubs, with the signed-in operator's bearer token on
every call: it has no database of its own and never reads theirs. Start it with
`python -m console`.
"""
