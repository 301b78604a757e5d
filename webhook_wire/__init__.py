"""The wire format of a delivery, shared by the platform that sends it and the receivers
that check it (DESIGN.md section 2).

``canonical`` makes ``payloadAsString``, ``strict_json`` reads what either end may send,
``keys`` makes, loads and names the signing keys, and ``signing`` signs ``payloadAsString``
and re-encodes the signature for WebCrypto and JOSE. The dispatcher and the receiver kit
both import them from here, so they agree by construction and neither depends on the other.
"""
