"""The regime survey: where might time-varying knowledge selection pay?

    python agents/regimes.py                          # every shipped regime table (runs/regimes/)
    python agents/regimes.py --docs                   # and docs/regimes.md, docs/benchmark.md's generated blocks
                                                      # and docs/history.md's seed-by-seed table
    python agents/regimes.py --regimes stsb_k2_u128   # one regime

Each regime (kdenv/benchmark/regimes.py, built by bench/regime_builds.sh) is a schedule table that
keeps per-example outputs. Per regime: the headroom of the hindsight oracle and of the best open-loop
schedule over the best constant, each chosen on the reward split and scored on GLUE dev; the oracle
cross-fitted on halves of the reward split, and on halves of dev itself; what adapting to the seed
adds over one fixed schedule (the oracle minus the best open-loop schedule, paired), and which of that
schedule's switches from the constant pays on dev; the best open-loop schedule
chosen by teacher_agreement (a reward that reads no label) and scored on dev; all with 95% intervals that
resample seeds and examples, and the number of seeds behind them. Then the constant schedule the
reward picks against its teacher on dev, and the build's cost in hours a seed on one thread (the
least and the median over seeds of its nodes' measured times, which count any pause or contention).
Regimes not built yet are listed as such; regimes.png plots the out-of-sample headrooms with their
intervals. Then every table at a glance (the board's tables and the
built regimes): the oracle's out-of-sample figure for metric_gain and teacher_agreement, and what
adapting to the seed adds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdenv import __version__
from kdenv.benchmark.at_scale import (
    AT_SCALE,
    scale_figures_markdown,
    scale_markdown,
    seed_by_seed,
    seed_by_seed_markdown,
)
from kdenv.benchmark.outofsample import HALVINGS, RESAMPLES
from kdenv.benchmark.regimes import (
    GLANCE_TABLES,
    REGIMES,
    builds_markdown,
    glance,
    glance_markdown,
    regime,
    survey,
    survey_markdown,
    survey_png,
)
from kdenv.benchmark.table import resolve_table
from kdenv.cli import CLEAR_ERRORS, fail, parse_seeds, run_main
from kdenv.io import check_writable, write_all
from kdenv.paths import runs_dir

REPO_DOCS = Path(__file__).resolve().parents[2] / "docs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", default=None,
                        help=f"comma list of regimes (default: all: {','.join(r.name for r in REGIMES)})")
    parser.add_argument("--data-dir", default=None, help="GLUE folder with the labels (default $KDENV_GLUE_DIR)")
    parser.add_argument("--halvings", type=int, default=HALVINGS,
                        help=f"random halvings of the examples for the cross-fitted figures (default {HALVINGS})")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help=f"bootstrap resamples of seeds and examples (default {RESAMPLES})")
    parser.add_argument("--output-dir", default=None, help="where to write regimes.md and regimes.json "
                                                           "(default runs/regimes)")
    parser.add_argument("--docs", action="store_true", help="also write docs/regimes.md, the generated blocks of "
                                                            "docs/benchmark.md (the table at a glance, the builds, the "
                                                            "regime at scale) and docs/history.md's seed-by-seed table "
                                                            "(in a checkout)")
    return parser.parse_args(argv)


# The blocks of the docs that --docs rewrites, each between its two markers: docs/benchmark.md's table at
# a glance, its build table, its paragraph and table on the regime at scale; docs/history.md's seed-by-seed table.
BLOCKS = {name: (f"<!-- {name}: written by agents/regimes.py --docs -->", f"<!-- {name} end -->")
          for name in ("glance", "builds", "scale", "scale-figures", "seed-by-seed")}
GLANCE_START, GLANCE_END = BLOCKS["glance"]


def with_block(page: str, block: str, name: str = "glance", page_name: str = "docs/benchmark.md") -> str:
    """``page`` with what stands between the markers of block ``name`` replaced by ``block``."""
    start_marker, end_marker = BLOCKS[name]
    start, end = page.find(start_marker), page.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{page_name} lacks the markers {start_marker} ... {end_marker} around its {name} block")
    return page[: start + len(start_marker)] + "\n" + block + page[end:]


PAGES = {"glance": "benchmark.md", "builds": "benchmark.md", "scale": "benchmark.md", "scale-figures": "benchmark.md",
         "seed-by-seed": "history.md"}


def check_markers() -> None:
    """Every block --docs writes has its markers in its page, checked before the survey runs."""
    for name, page in PAGES.items():
        with_block((REPO_DOCS / page).read_text(), "", name, f"docs/{page}")


def docs_files(rows: list[dict[str, Any]], text: str, at_a_glance: str, figure: bytes | None,
               data_dir: str | None) -> dict[Path, bytes]:
    """What --docs writes into the checkout's docs/: the survey, and the generated blocks of
    benchmark.md and history.md (the regime at scale's seed by seed, when it is shipped and surveyed)."""
    benchmark = with_block(with_block((REPO_DOCS / "benchmark.md").read_text(), at_a_glance),
                           builds_markdown(rows), "builds")
    files = {REPO_DOCS / "regimes.md": text.encode(), **({REPO_DOCS / "regimes.png": figure} if figure is not None else {})}
    if any(row["table"] == AT_SCALE and row["built"] for row in rows):
        print(f"{AT_SCALE} seed by seed ...", flush=True)
        grown = seed_by_seed(resolve_table(AT_SCALE), data_dir=data_dir)
        planned = len(parse_seeds(regime(AT_SCALE).seeds))
        surveyed = next(row for row in rows if row["table"] == AT_SCALE)
        benchmark = with_block(benchmark, scale_markdown(AT_SCALE, planned, grown, surveyed), "scale")
        benchmark = with_block(benchmark, scale_figures_markdown(surveyed), "scale-figures")
        history = with_block((REPO_DOCS / "history.md").read_text(), seed_by_seed_markdown(grown), "seed-by-seed",
                             "docs/history.md")
        files[REPO_DOCS / "history.md"] = history.encode()
    files[REPO_DOCS / "benchmark.md"] = benchmark.encode()
    return files


@run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = [name.strip() for name in args.regimes.split(",") if name.strip()] if args.regimes else None
        known = {r.name for r in REGIMES}
        unknown = [name for name in names or [] if name not in known]
        if unknown:
            raise ValueError(f"unknown regimes {unknown}; regimes: {', '.join(sorted(known))}")
        if args.halvings < 1 or args.resamples < 10:
            raise ValueError(f"--halvings must be >= 1 and --resamples >= 10, not {args.halvings} and {args.resamples}")
        output = Path(args.output_dir) if args.output_dir else runs_dir() / "regimes"
        check_writable(output)
        if args.docs and not REPO_DOCS.is_dir():
            raise ValueError(f"--docs writes docs/regimes.md of a checkout; {REPO_DOCS} is not there (an installed "
                             "package): leave --docs out")
        if args.docs:
            check_markers()
        rows = survey(names, args.data_dir, args.halvings, args.resamples,
                      progress=lambda name: print(f"surveying {name} ...", flush=True))
    except CLEAR_ERRORS as error:
        return fail(error)
    figure = survey_png(rows)
    at_a_glance = glance_markdown(glance([*GLANCE_TABLES, *(row["table"] for row in rows if row["built"])], rows))
    text = ("# The regime survey\n\nWritten by `python agents/regimes.py` (kdenv/benchmark/regimes.py). Every "
            "headroom is over the best constant, chosen on one set of examples and scored on another, with its "
            "95% interval (seeds and examples resampled) and n = seeds; the reward is metric_gain unless named. See "
            "docs/benchmark.md, *Regimes*, for what each figure means.\n\n"
            + ("![each regime's out-of-sample headrooms](regimes.png)\n\n" if figure is not None else "")
            + survey_markdown(rows)
            + "\n## Every table at a glance\n\nThe hindsight oracle's schedule per seed minus the constant the same "
            "reward picks, both chosen on the reward split and scored on GLUE dev (mean over seeds [bootstrap 95% "
            "interval]), and minus the best open-loop schedule the reward picks instead: what adapting to the seed "
            "adds over one fixed schedule (paired); `--docs` also writes it into docs/benchmark.md, *The answer*.\n\n"
            + at_a_glance)
    print(text)
    record = {"command": " ".join(["python agents/regimes.py", *(argv if argv is not None else sys.argv[1:])]),
              "kdenv": __version__, "halvings": args.halvings, "resamples": args.resamples,
              # what every figure was computed from: each surveyed table's manifest checksum (it covers its seed
              # and outputs files' checksums) and seeds
              "tables": {row["table"]: {"manifest_sha256": row["manifest_sha256"], "seeds": row["seeds"]}
                         for row in rows if row["built"]},
              "rows": rows}
    files = {output / "regimes.md": text.encode(), output / "regimes.json": json.dumps(record, indent=2).encode(),
             **({output / "regimes.png": figure} if figure is not None else {}),
             **(docs_files(rows, text, at_a_glance, figure, args.data_dir) if args.docs else {})}
    write_all(files)
    print(f"written to {output}" + (f" and {REPO_DOCS / 'regimes.md'}" if args.docs else ""))
    return 0
