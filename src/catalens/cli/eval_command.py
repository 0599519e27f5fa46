"""``catalens eval``: retrieval quality of a collection, and the feedback curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from catalens.cli.base import (
    Bars,
    CollectionOpt,
    JsonOpt,
    OrderChoice,
    open_service,
    out,
    parse_pairs,
    progress_bars,
)


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
    with open_service() as service:
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
            )
        else:
            assert feedback_pool is not None
            pool = read_queries(feedback_pool, where=parse_pairs(pool_where, "--pool-where"))
            ks = parse_curve(curve) if curve else [simulate_feedback or 0]
            with progress_bars() as bars:
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
                    progress=Bars(bars),
                    plan=plan,
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
