"""``webhooks-contracts`` (also ``python -m webhook_contracts``).

check      compare the contracts with the last released set; exit 1 on a breaking change
release    record the current contracts as the released set
openapi    print or write the OpenAPI 3.1 document
validate   validate webhook bodies, payloads or details read from files
list       the messageTypes, optionally those matching a pattern
schema     the self-contained contract of one messageType
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .compatibility import check_compatibility
from .directory import contracts_dir
from .errors import ContractError
from .openapi import KEY_ID_HEADER, build_openapi
from .parts import Part
from .registry import Registry, load_registry
from .released import read_release, released_path, write_release

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    directory: Path = arguments.contracts or contracts_dir()
    try:
        registry = load_registry(directory)
        result: int = arguments.command(arguments, registry, sys.stdout)
    except (ContractError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return result


def _check(arguments: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    released = arguments.released or released_path(registry.directory)
    changes = check_compatibility(released, registry)
    for change in changes:
        print(change, file=out)
    if changes:
        print(
            f"{len(changes)} breaking change(s): publish them under a new messageType "
            "version (.v2) and keep the old one until receivers have moved.",
            file=out,
        )
        return EXIT_FAILED
    added = registry.message_types - read_release(released).events.keys()
    print(f"compatible: {len(registry)} contracts, {len(added)} new since the release", file=out)
    return EXIT_OK


def _release(arguments: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    released = arguments.released or released_path(registry.directory)
    if released.exists() and not arguments.allow_breaking:
        changes = check_compatibility(released, registry)
        if changes:
            for change in changes:
                print(change, file=out)
            print("not released: breaking changes (use --allow-breaking to force)", file=out)
            return EXIT_FAILED
    write_release(registry.documents, released)
    print(f"released {len(registry)} contracts to {released}", file=out)
    return EXIT_OK


def _openapi(arguments: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    document = build_openapi(
        registry, server_url=arguments.server_url, key_id_header=arguments.key_id_header
    )
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if arguments.output:
        arguments.output.write_text(text, encoding="utf-8")
    else:
        out.write(text)
    return EXIT_OK


def _validate(arguments: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    failed = False
    for path in arguments.files:
        try:
            instance = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            print(f"{path}: not JSON: {error}", file=out)
            failed = True
            continue
        part = Part(arguments.part) if arguments.part != "auto" else _guess_part(instance)
        try:
            contract = registry.contract_for(instance, part=part)
        except ContractError as error:
            print(f"{path}: {error}", file=out)
            failed = True
            continue
        violations = contract.violations(instance, part=part)
        for violation in violations:
            print(f"{path}: {violation}", file=out)
        if not violations:
            print(f"{path}: valid {part} of {contract.message_type}", file=out)
        failed = failed or bool(violations)
    return EXIT_FAILED if failed else EXIT_OK


def _list(arguments: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    for contract in registry.matching(arguments.pattern):
        print(contract.message_type, file=out)
    return EXIT_OK


def _schema(arguments: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    print(json.dumps(registry.bundle(arguments.message_type), indent=2), file=out)
    return EXIT_OK


def _guess_part(instance: Any) -> Part:
    if isinstance(instance, dict) and "payload" in instance:
        return Part.WEBHOOK
    if isinstance(instance, dict) and "details" in instance:
        return Part.PAYLOAD
    return Part.DETAILS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhooks-contracts", description="JSON Schema contracts of the webhooks."
    )
    parser.add_argument("--contracts", type=Path, help="contracts directory (default: built in)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="fail on changes that break the released set")
    check.add_argument("--released", type=Path, help="release snapshot to compare with")
    check.set_defaults(command=_check)

    release = commands.add_parser("release", help="record the contracts as released")
    release.add_argument("--released", type=Path, help="release snapshot to write")
    release.add_argument("--allow-breaking", action="store_true")
    release.set_defaults(command=_release)

    openapi = commands.add_parser("openapi", help="the OpenAPI 3.1 document")
    openapi.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    openapi.add_argument("--server-url", help="the dispatcher's base URL")
    openapi.add_argument(
        "--key-id-header", default=KEY_ID_HEADER, help="delivery header carrying the key id"
    )
    openapi.set_defaults(command=_openapi)

    validate = commands.add_parser("validate", help="validate JSON files")
    validate.add_argument("files", type=Path, nargs="+", metavar="FILE")
    validate.add_argument(
        "--part", choices=["auto", *(part.value for part in Part)], default="auto"
    )
    validate.set_defaults(command=_validate)

    listing = commands.add_parser("list", help="messageTypes matching a pattern")
    listing.add_argument("pattern", nargs="?", default="*")
    listing.set_defaults(command=_list)

    schema = commands.add_parser("schema", help="the self-contained contract of a type")
    schema.add_argument("message_type")
    schema.set_defaults(command=_schema)
    return parser
