"""Names and unique id prefixes wherever the CLI takes an id: `resolve` turns what a user typed into the one id it
names, for every kind of object the commands take (`CONTAINER`, `ENDPOINT`, ...).

What is typed matches, in order: an id (a full one is used as it is, unlisted: the server says when there is
none), a name, the start of an id. More than one object by name or prefix is an error listing them; none is an
error naming the command that lists them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from dockyard.cli.output import fail
from dockyard.client import Client, Json

FULL_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SHOWN_CANDIDATES = 10
_PAGE = 1000  # the most the paged lists answer at once


def _pages(fetch: Callable[[int], Json]) -> Iterator[Json]:
    """Every item of a GMI paged list (`{items, total}`), `_PAGE` at a time."""
    page = 1
    while True:
        answer = fetch(page)
        items: list[Json] = answer.get("items") or []
        yield from items
        if not items or page * _PAGE >= int(answer.get("total", 0)):
            return
        page += 1


@dataclass(frozen=True)
class Kind:
    """One kind of object: its noun in messages, the command that lists it, and how to list every one."""

    noun: str
    list_command: str
    listing: Callable[[Client], Iterable[Json]]


CONTAINER = Kind(
    "container",
    "dockyard containers list",
    lambda client: _pages(lambda page: client.list_containers(page=page, page_size=_PAGE)),
)
TEMPLATE = Kind(
    "template",
    "dockyard templates list",
    lambda client: _pages(lambda page: client.list_templates(page=page, page_size=_PAGE)),
)
ENDPOINT = Kind("endpoint", "dockyard endpoints list", lambda client: client.list_endpoints())
SSH_KEY = Kind("SSH key", "dockyard ssh-keys list", lambda client: client.list_ssh_keys())
NETWORK_STORAGE = Kind(
    "network storage", "dockyard network-storages list", lambda client: client.list_network_storages()
)
REGISTRY_AUTH = Kind("registry auth", "dockyard registry-auths list", lambda client: client.list_registry_auths())


def _label(item: Json) -> str:
    name = str(item.get("name") or "")
    return f"{item['id']} ({name})" if name else str(item["id"])


def _one(kind: Kind, given: str, matches: list[Json], how: str) -> str:
    if len(matches) == 1:
        return str(matches[0]["id"])
    shown = ", ".join(_label(item) for item in matches[:SHOWN_CANDIDATES])
    more = f" and {len(matches) - SHOWN_CANDIDATES} more" if len(matches) > SHOWN_CANDIDATES else ""
    fail(f"{given!r} is {how} of {len(matches)} {kind.noun}s: {shown}{more}; give more of the id")


def resolve_all(client: Client, kind: Kind, given: list[str]) -> list[str]:
    """The id each of `given` names (one listing for all of them); exits with an error for one that names none or
    several."""
    if all(FULL_ID.match(value) for value in given):
        return list(given)
    items = list(kind.listing(client))
    ids = []
    for value in given:
        if FULL_ID.match(value) or any(item["id"] == value for item in items):
            ids.append(value)
        elif named := [item for item in items if item.get("name") == value]:
            ids.append(_one(kind, value, named, "the name"))
        elif prefixed := [item for item in items if str(item["id"]).startswith(value.lower())]:
            ids.append(_one(kind, value, prefixed, "the start of the id"))
        else:
            fail(f"no {kind.noun} has the id, name or id prefix {value!r}; `{kind.list_command}` lists yours")
    return ids


def resolve(client: Client, kind: Kind, given: str) -> str:
    """The id `given` names: an id, a name, or the start of an id; exits with an error when it names none or
    several."""
    return resolve_all(client, kind, [given])[0]
