"""The commands around a collection: ``doctor``, ``demo``, ``serve`` and ``models export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from catalens.cli.base import open_service, out, print_error, settings
from catalens.errors import missing_extra


def doctor(
    model: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Model to try loading.")
    ] = None,
) -> None:
    """Check the installation (versions, model loadable, store writable) and each collection
    (calibrated, failed images, source reachable). One line each; exit 1 on a failure."""
    from catalens.cli.doctor import run_checks

    failed = False
    for check in run_checks(settings(), model=model):
        out.print(f"{check.mark} {check.name}: {escape(check.detail)}", highlight=False)
        failed = failed or not check.ok
    if failed:
        raise typer.Exit(1)


def demo(
    directory: Annotated[
        Path, typer.Option(metavar="DIR", help="Where to write the sample catalog.")
    ] = Path("demo-data"),
    collection: Annotated[
        str, typer.Option("--collection", "-c", metavar="NAME", help="Collection name.")
    ] = "demo",
    model: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Model (default: CLIP, else built-in).")
    ] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve", metavar="", help="Then serve the API and web UI.")
    ] = False,
    port: Annotated[int, typer.Option(metavar="PORT", help="Port for --serve.")] = 8000,
) -> None:
    """Generate a sample catalog, ingest it, and search its shopper photos."""
    from catalens.cli.demo import run_demo

    with open_service() as service:
        ok = run_demo(service, directory, collection=collection, model=model, console=out)
    if not ok:
        raise typer.Exit(1)
    if serve_after:
        import os

        os.environ.setdefault("CATALENS_DEFAULT_COLLECTION", collection)
        out.print(f"web UI: http://127.0.0.1:{port}/  (API docs at /docs; Ctrl-C stops)")
        serve(host="127.0.0.1", port=port, workers=1)


def serve(
    host: Annotated[
        str | None, typer.Option(metavar="HOST", help="Address to listen on (CATALENS_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Port (CATALENS_PORT).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Worker processes (CATALENS_WORKERS)."),
    ] = None,
) -> None:
    """Serve the HTTP API and web UI with uvicorn (API docs at /docs)."""
    try:
        import uvicorn

        from catalens.api.app import create_app
        from catalens.api.legacy_env import settings_from_env
        from catalens.api.logs import log_config
    except ImportError as exc:
        print_error(missing_extra("serve", "serving", exc.name))
        raise typer.Exit(1) from None
    settings = settings_from_env(host=host, port=port, workers=workers)
    if settings.workers > 1:
        # Each worker process builds its own app (and service) from the environment.
        uvicorn.run(
            "catalens.api.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=log_config(settings),
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=log_config(settings),
        )


def models_export(
    model: Annotated[
        str | None,
        typer.Argument(metavar="MODEL", help="Hub id or CLIP directory (default: CATALENS_MODEL)."),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            metavar="int8", help="int8: also write a dynamic int8 variant (use it as MODEL:int8)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(metavar="", help="Export again even if it exists.")
    ] = False,
) -> None:
    """Export a CLIP model's image and text towers to ONNX under CATALENS_HOME/models.

    Collections use the export on CPU automatically (CATALENS_CLIP_RUNTIME=auto). The fp32
    export gives the same vectors as torch; int8 is faster and differs slightly, so it is a
    model of its own (its agreement with fp32 is printed here).
    """
    with open_service() as service:
        result = service.export_model(model, quantize=quantize, force=force)
    identity = result.identity
    done = ", ".join(result.created) if result.created else "nothing new (already exported)"
    out.print(f"{identity.name} @ {identity.revision}: {done} in {result.seconds:.1f}s")
    out.print(f"folder: {result.directory}", highlight=False, soft_wrap=True)
    table = Table("variant", "check", "image mean", "image min", "text mean", "text min")
    labels = {"fp32_vs_torch": ("fp32", "vs torch"), "int8_vs_fp32": ("int8", "vs fp32")}
    for key, values in result.agreement.items():
        variant, check = labels.get(key, (key, ""))
        table.add_row(
            variant,
            check,
            *(
                f"{values.get(f'{tower}_{stat}_cosine', float('nan')):.6f}"
                for tower in ("image", "text")
                for stat in ("mean", "min")
            ),
        )
    out.print(table)
    if "int8_vs_fp32" in result.agreement:
        spec = (model or service.settings.model).removesuffix(":int8")
        out.print(f"int8: use it as --model {spec}:int8", highlight=False, soft_wrap=True)
