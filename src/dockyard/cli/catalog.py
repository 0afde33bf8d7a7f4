"""`dockyard idcs` and `dockyard products`: where containers can run, and on what."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from dockyard.cli.config import target
from dockyard.cli.options import JsonOption
from dockyard.cli.output import handle_errors, print_json, print_table


def _spec(spec: Any) -> str:
    if isinstance(spec, dict):
        return ", ".join(f"{key} {value}" for key, value in spec.items())
    return str(spec or "")


@handle_errors
def idcs(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the IDCs (data centers) you can run containers in."""
    with target(ctx).client() as client:
        answer = client.list_idcs()
    if as_json:
        print_json(answer)
        return
    rows = [
        [escape(str(i.get(key, ""))) for key in ("idcId", "name", "country", "countrySubdivision", "status")]
        for i in answer
    ]
    print_table(("IDC", "NAME", "COUNTRY", "REGION", "STATUS"), rows, empty="No IDCs; the operator adds them.")


@handle_errors
def products(
    ctx: typer.Context,
    idc: Annotated[str | None, typer.Option("--idc", help="only the products of this IDC")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the products (GPU model and count, CPU, memory, price) containers run on."""
    with target(ctx).client() as client:
        answer = client.list_products(idc=idc)
    if as_json:
        print_json(answer)
        return
    rows = [
        [
            escape(str(p.get("name", ""))),
            escape(str(p.get("idc", ""))),
            escape(str(p.get("gpuModel", "") or "-")),
            escape(_spec(p.get("spec"))),
            escape(str(p.get("price", ""))),
            "yes" if p.get("valid", True) else "no",
        ]
        for p in answer
    ]
    print_table(("PRODUCT", "IDC", "GPU", "SPEC", "PRICE", "AVAILABLE"), rows, empty="No products in this IDC.")
