"""``catalens eval``: retrieval quality of a collection, and the feedback curve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from catalens.cli.base import (
    Bars,
    CollectionOpt,
    JsonOpt,
    OrderChoice,
    err,
    open_service,
    out,
    parse_pairs,
    progress_bars,
)


@contextmanager
def _progress(shown: bool | None) -> Iterator[Bars | None]:
    """Bars with ETA on stderr, never on stdout (``--json`` keeps it for the report): when
    stderr is a terminal, or when ``--progress`` asks (then drawn as if it were one)."""
    if shown is False or (shown is None and not err.is_terminal):
        yield None
        return
    console = err if err.is_terminal else Console(stderr=True, force_terminal=True)
    with progress_bars(console) as bars:
        yield Bars(bars)


def eval_command(
    collection: CollectionOpt,
    queries: Annotated[
        Path, typer.Option(metavar="CSV", help="CSV with image_path,item_id columns.")
    ],
    where: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN=VALUE", help="Only rows with COLUMN=VALUE."),
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            metavar="COLUMN", help="Per-group breakdown: a queries column or metadata key."
        ),
    ] = None,
    out_of_catalog: Annotated[
        str,
        typer.Option(
            metavar="SHARE|each",
            help="Score false matches: leave this share of products out (seeded), or each: "
            "every query again without its own product.",
        ),
    ] = "0",
    simulate_feedback: Annotated[
        int | None,
        typer.Option(
            min=0, metavar="K", help="First confirm K pool photos per product (on a copy)."
        ),
    ] = None,
    feedback_pool: Annotated[
        Path | None,
        typer.Option(metavar="CSV", help="CSV (image_path,item_id) of photos to confirm."),
    ] = None,
    pool_where: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN=VALUE", help="Only pool rows with COLUMN=VALUE."),
    ] = None,
    curve: Annotated[
        str | None,
        typer.Option(metavar="K,K,...", help="Several K, e.g. 0,1,3,10: one row each."),
    ] = None,
    feedback_trust: Annotated[
        str,
        typer.Option(
            metavar="keyed|keyless",
            help="Send the simulated feedback with a key (trusted) or without (keyless: one "
            "client per verdict, applied only as the trust model allows).",
        ),
    ] = "keyed",
    poison: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="First send N keyless verdicts filing photos under wrong products.",
        ),
    ] = 0,
    poison_target: Annotated[
        str, typer.Option(metavar="random|nearest", help="The wrong product an attack names.")
    ] = "random",
    poison_clients: Annotated[
        int, typer.Option(min=1, metavar="N", help="Clients the attack is spread over.")
    ] = 1,
    poison_keyed: Annotated[
        bool, typer.Option(help="Send the attack with a key (every verdict trusted).")
    ] = False,
    feedback_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="F",
            help="Feed only this share of the products (seeded) and report the queries of "
            "products with and without feedback apart (feedback_split).",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            metavar="N", help="Seed for the query order, photos picked and products left out."
        ),
    ] = 0,
    order: Annotated[
        OrderChoice,
        typer.Option(
            help="Query order: shuffled (seeded; a shop's real stream mixes its products, "
            "which domain centering learns from) or file."
        ),
    ] = OrderChoice.shuffled,
    as_json: JsonOpt = False,
    show_progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bars with ETA on stderr; default: when stderr is a terminal.",
        ),
    ] = None,
) -> None:
    """Measure retrieval quality: recall@1/5/10, precision@k, MRR, mAP, latency, and how
    well the calibrated verdicts separate matches from products not in the catalog."""
    from catalens.cli.report import print_curve, print_eval
    from catalens.eval.evaluate import evaluate, parse_out_of_catalog, read_queries
    from catalens.eval.feedback_curve import feedback_curve, parse_curve
    from catalens.eval.poison import FeedbackPlan

    plan = FeedbackPlan(
        trust=feedback_trust,  # type: ignore[arg-type]  # checked by FeedbackPlan
        poison=poison,
        poison_target=poison_target,  # type: ignore[arg-type]
        poison_clients=poison_clients,
        poison_keyed=poison_keyed,
    )

    looping = simulate_feedback is not None or curve is not None
    if looping and feedback_pool is None:
        raise typer.BadParameter("--simulate-feedback and --curve need a --feedback-pool")
    if feedback_share is not None and not looping:
        raise typer.BadParameter("--feedback-share needs --simulate-feedback or --curve")
    with open_service() as service, _progress(show_progress) as bars:
        leave_out = parse_out_of_catalog(out_of_catalog)
        loaded = read_queries(queries, where=parse_pairs(where, "--where"))
        if not looping:
            report = evaluate(
                service,
                collection,
                loaded,
                group_by=group_by,
                out_of_catalog=leave_out,
                seed=seed,
                order=order.value,
                progress=partial(bars, "queries") if bars else None,
            )
        else:
            assert feedback_pool is not None
            pool = read_queries(feedback_pool, where=parse_pairs(pool_where, "--pool-where"))
            ks = parse_curve(curve) if curve else [simulate_feedback or 0]
            points = feedback_curve(
                service,
                collection,
                loaded,
                pool,
                ks,
                seed=seed,
                out_of_catalog=leave_out,
                group_by=group_by,
                order=order.value,
                progress=bars,
                plan=plan,
                share=feedback_share,
            )
    if not looping:
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
        else:
            print_eval(out, report)
    elif as_json:
        data: Any = [p.to_dict() for p in points] if curve else points[0].to_dict()
        out.print_json(json.dumps(data))
    elif curve:
        print_curve(out, points)
    else:
        print_eval(out, points[0].report)
    if looping and not as_json and feedback_share is not None:
        for point in points:  # the two halves of a --feedback-share run, one line each
            for half, m in (point.report.feedback_split or {}).items():
                out.print(
                    f"K={point.k} {half.replace('_', ' ')}: {m['queries']} queries, "
                    f"recall@1 {m['recall@1'] or 0:.3f}, recall@5 {m['recall@5'] or 0:.3f}"
                )
