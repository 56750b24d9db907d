"""The regime survey (kdenv.benchmark.regimes, agents/regimes.py): one registry of regimes that the
build script reads, and a survey that reports each regime's headroom out of sample."""

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdenv.benchmark.regimes import REGIMES, builds_markdown, regime, survey, survey_markdown, survey_table
from kdenv.cli import parse_seeds
from tests.conftest import REPO, command
from tests.test_outputs import noise_table


@pytest.mark.parametrize("entry", REGIMES, ids=lambda entry: entry.name)
def test_every_regimes_flags_are_build_tree_flags(entry):
    """bench/regime_builds.sh passes these to build_tree: a typo would fail only hours into a session."""
    args = command("build_tree").parse_args([*shlex.split(entry.build_flags()), "--seeds", entry.seeds])
    assert args.output == f"kdenv/tables/{entry.name}" and parse_seeds(entry.seeds)


def test_the_long_horizon_regime_keeps_its_work_folder(capsys):
    """stsb_k2_u128's seeds are built across sessions in runs/trees/stsb/61e679428dfe: the registry's
    flags must give that key, whatever moved in the code around them (build_tree --work-dir prints it,
    as bench/regime_builds.sh carry asks it)."""
    flags = shlex.split(regime("stsb_k2_u128").build_flags())
    assert command("build_tree").main([*flags, "--seeds", "1", "--work-dir"]) == 0
    assert Path(capsys.readouterr().out.strip()).parts[-3:] == ("trees", "stsb", "61e679428dfe")
    assert command("build_tree").main([*flags, "--seeds", "1", "--threads", "2", "--work-dir"]) == 0
    assert Path(capsys.readouterr().out.strip()).name != "61e679428dfe"  # another thread count, other records


def test_the_build_script_reads_the_registry():
    out = subprocess.run([sys.executable, "-m", "kdenv.benchmark.regimes", "flags", "rte_u8"], capture_output=True,
                         text=True, cwd=REPO, check=True).stdout.strip()
    assert out == regime("rte_u8").build_flags()
    refused = subprocess.run([sys.executable, "-m", "kdenv.benchmark.regimes", "flags", "nope"], capture_output=True,
                             text=True, cwd=REPO)
    assert refused.returncode == 2 and refused.stderr.startswith("error: no regime 'nope'; regimes: stsb_u8_o")


@pytest.mark.parametrize("signal, pays", [(1.5, True), (0.0, False)])
def test_the_survey_reports_headroom_out_of_sample_with_intervals(tmp_path, signal, pays):
    """A regime where one schedule is really better shows it out of sample, interval above 0; where
    schedules differ by noise only, the out-of-sample interval holds 0."""
    table, labels = noise_table(tmp_path, signal=signal)
    row = survey_table(table, halvings=10, resamples=60, labels=labels)
    to_dev = row["out_of_sample"]["reward_to_dev"]["open_loop"]
    assert (to_dev["ci"][0] > 0) == pays, to_dev
    assert row["seeds"] == [0, 1, 2, 3] and row["schedules"] == 16
    # dev itself prefers the planted schedule (logits, then hidden) on every seed where it is better
    prefers = row["dev_prefers"]
    assert (prefers["schedule"] == [0, 1] and prefers["seeds"] == 4 and not prefers["constant"]) == pays, prefers
    if pays:
        assert prefers["named"] == "- → logits"
    assert -1 <= row["reward_dev_spearman"]["metric_gain"] <= 1
    # this synthetic table records no agreement with the teacher: every return ties, no ranking to compare
    assert row["reward_dev_spearman"]["teacher_agreement"] is None
    # what agents learn from: the reward's own open-loop choice over its constant, on the reward split; the
    # planted schedule stands out on every seed, noise alone does not (its "best" is noise, weakly)
    signal = row["open_loop_signal"]["metric_gain"]
    assert (signal["open_loop"] == [0, 1] and signal["seeds_above"] == 4 and signal["effect"] > 2) == pays, signal
    assert signal["effect"] == pytest.approx(signal["mean"] / signal["std"])
    assert row["open_loop_signal"]["teacher_agreement"]["effect"] is None  # every return ties: nothing to learn
    text = survey_markdown([{**row, "question": "q", "built": True, "seeds_planned": [0, 1, 2, 3]}])
    assert "(n=4)" in text and "4 of 4" in text
    assert f"{signal['mean']:+.4f} ({signal['effect']:.1f}; {signal['seeds_above']} of 4) / +0.0000 (n/a; 0 of 4)" in text
    # what a seed weighs in the repository: its seed file and its outputs file, as they lie on disk
    sizes = {name: (table.directory / name).stat().st_size / 1000
             for name in [*table.manifest["files"], *table.manifest["outputs_files"]]}
    assert row["kb_per_seed"]["total"] == pytest.approx(sum(sizes.values()) / 4, abs=0.06)
    assert row["kb_per_seed"]["outputs"] > 0
    builds = builds_markdown([{**row, "question": "q", "built": True, "seeds_planned": list(range(16))}])
    assert f"| `{row['table']}` | q | 4 of 16 (seeds 0-3) |" in builds
    assert ("- → logits (4 of 4; time-varying)" in text) == pays


def test_regimes_not_built_are_listed_as_such(tmp_path, monkeypatch):
    import kdenv.benchmark.regimes as regimes

    monkeypatch.setattr(regimes, "tables_dir", lambda: tmp_path)
    rows = survey()
    assert [row["table"] for row in rows] == [entry.name for entry in REGIMES] and not any(r["built"] for r in rows)
    assert "not built yet" in survey_markdown(rows)
    assert f"| `{REGIMES[0].name}` | {REGIMES[0].question} | 0 of {len(parse_seeds(REGIMES[0].seeds))} | not built yet" \
        in builds_markdown(rows)
    assert command("regimes").main(["--regimes", "nope"]) == 2


def test_a_live_check_on_a_regime_table_starts_after_its_planned_seeds():
    """A regime's table grows to its planned seeds, so a live check's new seeds start after them (seeds 4-15
    of stsb_k2_u128 are not new while it holds 0-3); other tables start after the seeds they hold."""
    from kdenv.commands.live_check import planned_seeds

    assert planned_seeds("stsb_k2_u128") == parse_seeds(regime("stsb_k2_u128").seeds) == list(range(16))
    assert planned_seeds("kdenv/tables/stsb_k2_u128") == list(range(16))
    assert planned_seeds("stsb_u8") == []


def test_the_at_a_glance_table_is_the_oracle_s_out_of_sample_figure_and_lands_between_the_markers():
    from kdenv.benchmark.oracle import solve
    from kdenv.benchmark.regimes import glance, glance_markdown
    from kdenv.benchmark.table import resolve_table
    from kdenv.commands.regimes import BLOCKS, GLANCE_END, GLANCE_START, with_block

    rows = glance(["stsb_u8"])
    expected = solve(resolve_table("stsb_u8"), "teacher_agreement")["reward_to_dev"]["oracle"]
    assert rows[0]["teacher_agreement"]["mean"] == expected["mean"] and rows[0]["resamples"] == "seeds"
    # what adapting adds: metric_gain's oracle minus its best open-loop schedule, both scored on dev, paired
    solved = solve(resolve_table("stsb_u8"), "metric_gain")["reward_to_dev"]
    assert rows[0]["adapting"]["mean"] == pytest.approx(solved["oracle"]["mean"] - solved["open_loop"]["mean"])
    text = glance_markdown([{**rows[0], "device": "cuda (NVIDIA H100 80GB HBM3), fp32"}])
    assert "| `stsb_u8` | 16 | 3 x 3 x 8, 3-layer student, NVIDIA H100 80GB HBM3 |" in text
    page = f"intro\n{GLANCE_START}\nold table\n{GLANCE_END}\nrest\n"
    assert with_block(page, "new table\n") == f"intro\n{GLANCE_START}\nnew table\n{GLANCE_END}\nrest\n"
    with pytest.raises(ValueError, match="lacks the markers"):
        with_block("no markers here", "new table\n")
    # the builds block has markers of its own: rewriting it leaves the glance as it stands
    both = f"{page}{BLOCKS['builds'][0]}\nold builds\n{BLOCKS['builds'][1]}\n"
    assert with_block(both, "new builds\n", "builds") == f"{page}{BLOCKS['builds'][0]}\nnew builds\n{BLOCKS['builds'][1]}\n"


def test_the_glance_takes_the_survey_s_figures_and_reads_a_table_s_outputs_once(tmp_path, monkeypatch):
    """agents/regimes.py --docs surveys each regime, then writes the glance over the same tables: the
    glance takes the survey's reward → dev figures as they stand, and where it computes (tables not
    surveyed) it reads a table's outputs once for both rewards."""
    from kdenv.benchmark import outofsample
    from kdenv.benchmark.regimes import GLANCE_REWARDS, glance

    table, labels = noise_table(tmp_path, signal=1.5)
    name = str(tmp_path)
    row = {**survey_table(table, halvings=10, resamples=60, labels=labels), "table": name, "built": True}
    reads = []
    monkeypatch.setattr(outofsample, "table_labels", lambda manifest, data_dir=None: reads.append(1) or labels)
    taken = glance([name], [row])[0]
    assert reads == [] and taken["resamples"] == "seeds, examples"
    assert taken["metric_gain"] == row["out_of_sample"]["reward_to_dev"]["oracle"]
    assert taken["teacher_agreement"] == row["out_of_sample_teacher_agreement"]["reward_to_dev"]["oracle"]
    assert taken["adapting"] == row["out_of_sample"]["over_open_loop"]["reward_to_dev"]["oracle"]
    computed = glance([name])[0]
    assert len(reads) == 1 and computed["resamples"] == "seeds, examples"
    for reward in GLANCE_REWARDS:  # the same choice on the same examples: the same mean; the interval has its own draws
        assert computed[reward]["mean"] == pytest.approx(taken[reward]["mean"])
        assert computed[reward]["ci"][0] > 0


def test_the_survey_figure_plots_each_built_regime_s_intervals(tmp_path):
    """regimes.png: one point with its interval per built regime and figure; nothing to plot, no figure."""
    from kdenv.benchmark.regimes import FIGURE_ENTRIES, figure_at, survey_png

    table, labels = noise_table(tmp_path, signal=1.5)
    row = {**survey_table(table, halvings=5, resamples=20, labels=labels), "built": True}
    png = survey_png([row, {"table": "later", "built": False}])
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert survey_png([{"table": "later", "built": False}]) is None
    # every entry of the figure names a figure survey_table computes, for both rewards
    for _, path in FIGURE_ENTRIES:
        assert "ci" in figure_at(row, path), path
    assert figure_at(row, ("out_of_sample", "nope", "oracle")) is None


def test_a_seed_s_cost_is_its_nodes_measured_times_least_and_median_over_seeds():
    from types import SimpleNamespace

    from kdenv.benchmark.regimes import seed_hours

    def seed(hours):  # a root, and a leaf with its dev scoring
        return {(): {"depth": 0}, (1,): {"wall_time_s": 3600 * hours, "dev_wall_time_s": 1800}}

    table = SimpleNamespace(seeds=[0, 1, 2], nodes={0: seed(1.0), 1: seed(3.0), 2: seed(1.5)})
    assert seed_hours(table) == {"least": 1.5, "median": 2.0}  # a paused seed (3 h + 0.5) does not move the least


def test_seed_by_seed_rows_are_the_figures_of_a_table_that_held_only_those_seeds(tmp_path, monkeypatch):
    """docs/history.md's seed-by-seed table recomputes each row on the first n seeds of the table
    (Table.with_seeds): a row must be what a table built with those seeds alone reports."""
    from kdenv.benchmark import outofsample
    from kdenv.benchmark.at_scale import scale_markdown, seed_by_seed, seed_by_seed_markdown
    from kdenv.benchmark.outofsample import reward_to_dev
    from kdenv.benchmark.regimes import GLANCE_REWARDS
    from kdenv.benchmark.table import TableError

    table, labels = noise_table(tmp_path / "whole", signal=1.5)
    alone, _ = noise_table(tmp_path / "alone", signal=1.5, seeds=(0, 1, 2))
    monkeypatch.setattr(outofsample, "table_labels", lambda manifest, data_dir=None: labels)
    rows = seed_by_seed(table, first=3, k=3)
    assert [row["seeds"] for row in rows] == [3, 4] and rows[0]["resamples"] == "seeds, examples"
    for reward in GLANCE_REWARDS:
        assert rows[0][reward] == reward_to_dev(alone, reward)[0]["oracle"]
        assert rows[1][reward] == reward_to_dev(table, reward)[0]["oracle"]
    # the planted schedule (logits, then hidden) is what metric_gain's folds choose, better on every held-out
    # seed; teacher_agreement's returns all tie in this synthetic table (no agreement recorded): it takes the first
    assert rows[-1]["fixed_choices"] == ["- → -", "- → logits"]
    fixed = rows[-1]["fixed"]
    assert fixed["mean_ci"][0] > 0 and fixed["better"] == 1.0 and fixed["seeds"] == 4
    text = seed_by_seed_markdown(rows)
    assert [line[:5] for line in text.splitlines() if line.startswith("| ")] == ["| see", "| 3 |", "| 4 |"]
    assert text.splitlines()[3].endswith("(4 of 4) |")
    paragraph = scale_markdown("x", 16, rows)
    assert paragraph.startswith("At 4 of its 16 planned seeds") and "at 3–4 both" in paragraph
    assert "picks beats the constant it picks on dev, +" in paragraph and "(better on 4 of 4 held-out seeds' dev)" in paragraph
    # the verbs follow the intervals: a figure whose interval holds 0 does not "beat" anything
    held = [{**row, "metric_gain": {**row["metric_gain"], "ci": (-0.001, 0.01)},
             "fixed": {**row["fixed"], "mean_ci": (-0.002, 0.003)}} for row in rows]
    paragraph = scale_markdown("x", 16, held)
    assert "`metric_gain`'s pick does not measurably beat the constant it picks" in paragraph
    assert "does not measurably beat the constant (better on" in paragraph and "at 3–4 only `teacher_agreement`'s" in paragraph
    assert "(the folds chose - → - or - → logits)" in paragraph
    with pytest.raises(TableError, match="not a non-empty part"):
        table.with_seeds([0, 9])
    # the table itself is left whole
    assert table.seeds == [0, 1, 2, 3] and table.with_seeds([2, 0]).seeds == [0, 2]


def test_an_interval_clears_zero_as_printed():
    from kdenv.benchmark.at_scale import clears_zero

    assert clears_zero({"mean": 0.005, "ci": (0.0001, 0.01)})
    assert not clears_zero({"mean": 0.005, "ci": (0.00004, 0.01)})  # printed +0.0000
    assert not clears_zero({"mean": 0.005, "ci": None}) and not clears_zero(None)


def test_docs_blocks_are_checked_before_the_survey_runs(monkeypatch, tmp_path):
    """--docs rewrites blocks of docs/benchmark.md and docs/history.md: a page that lost its markers is
    refused before the survey's minutes of work, naming the page and the block."""
    import kdenv.commands.regimes as regimes_command

    (tmp_path / "benchmark.md").write_text("".join(f"{a}\n{b}\n" for name, (a, b) in regimes_command.BLOCKS.items()
                                                   if regimes_command.PAGES[name] == "benchmark.md"))
    (tmp_path / "history.md").write_text("no markers\n")
    monkeypatch.setattr(regimes_command, "REPO_DOCS", tmp_path)
    monkeypatch.setattr(regimes_command, "survey", lambda *a, **k: pytest.fail("the survey ran"))
    assert regimes_command.main(["--docs", "--output-dir", str(tmp_path / "out")]) == 2
    for page in ("benchmark.md", "history.md"):
        assert regimes_command.REPO_DOCS.joinpath(page).is_file()
    with pytest.raises(ValueError, match="docs/history.md lacks the markers .*seed-by-seed"):
        regimes_command.check_markers()


def test_the_scale_paragraph_says_what_adapting_to_the_seed_adds_as_its_intervals_say():
    from kdenv.benchmark.at_scale import adaptive_sentence

    def row(low, high):
        figure = {"mean": (low + high) / 2, "ci": (low, high), "n": 11}
        return {"out_of_sample": {"over_open_loop": {"reward_to_dev": {"oracle": figure},
                                                     "dev_halves": {"oracle": figure}}}}

    assert "adds nothing measurable over one fixed schedule" in adaptive_sentence(row(-0.004, 0.003))
    assert "seed adds over one fixed schedule" in adaptive_sentence(row(0.001, 0.003))
    assert "seed loses over one fixed schedule" in adaptive_sentence(row(-0.003, -0.001))
    assert "(paired; 11 seeds)" in adaptive_sentence(row(-0.004, 0.003))
    assert adaptive_sentence({}) == ""  # a table without outputs: nothing to say


def test_the_scale_table_lists_both_rewards_choices_on_dev_and_what_adapting_adds(tmp_path):
    from kdenv.benchmark.at_scale import scale_figures_markdown
    from kdenv.stats import with_interval

    table, labels = noise_table(tmp_path, signal=1.5)
    row = survey_table(table, halvings=5, resamples=20, labels=labels)
    text = scale_figures_markdown(row)
    oos = row["out_of_sample"]
    assert text.startswith("| reward (64 examples) → dev (200) | oracle (per seed) |")
    over = oos["over_open_loop"]["reward_to_dev"]["oracle"]
    assert (f"| `metric_gain` | {with_interval(oos['reward_to_dev']['oracle']['mean'], oos['reward_to_dev']['oracle']['ci'])}"
            in text) and f"| {with_interval(over['mean'], over['ci'])} |" in text
    assert "| `teacher_agreement` |" in text and "n = 4 seeds" in text
    assert "Dev's own best schedule is - → logits on 4 of 4 seeds" in text
    # the planted schedule's departure from the constant explained phase by phase, dev examples resampled
    assert row["switches"]["schedule"] == "- → logits" and row["switches"]["resamples"] == "seeds, dev examples"
    assert "Which switch pays, on dev (the best open-loop schedule, - → logits, against" in text
    assert "nothing to score on dev" in scale_figures_markdown({"table": "t", "out_of_sample": {"crossfit": {}}})


def test_the_survey_s_json_records_its_command_and_the_tables_it_read(tmp_path, monkeypatch):
    """runs/regimes/regimes.json: every figure traceable to the command, kdenv and each table's manifest
    checksum (which covers its seed and outputs files) and seeds."""
    import json

    import kdenv.commands.regimes as regimes_command

    table, labels = noise_table(tmp_path / "t", signal=1.5)
    row = {**survey_table(table, halvings=2, resamples=10, labels=labels), "table": str(table.directory),
           "question": "q", "built": True, "seeds_planned": [0, 1, 2, 3]}
    monkeypatch.setattr(regimes_command, "survey", lambda *a, **k: [row])
    monkeypatch.setattr(regimes_command, "GLANCE_TABLES", ())
    from kdenv.benchmark import outofsample

    monkeypatch.setattr(outofsample, "table_labels", lambda manifest, data_dir=None: labels)
    out = tmp_path / "out"
    assert regimes_command.main(["--output-dir", str(out), "--halvings", "2", "--resamples", "10"]) == 0
    record = json.loads((out / "regimes.json").read_text())
    assert record["command"] == f"python agents/regimes.py --output-dir {out} --halvings 2 --resamples 10"
    assert record["tables"] == {str(table.directory): {"manifest_sha256": table.manifest["manifest_sha256"],
                                                       "seeds": [0, 1, 2, 3]}}
    assert record["rows"][0]["out_of_sample"]["reward_to_dev"]["oracle"]["n"] == 4
    assert (out / "regimes.md").read_text().startswith("# The regime survey")


def test_which_switch_pays_is_the_schedule_against_itself_with_one_phase_set_back(tmp_path):
    """switch_effects: the best open-loop schedule (logits off, then on) against the best constant (on,
    on) differs in phase 1 only; what that switch adds, given the rest and alone, is the same pair here,
    paired by seed on dev (here dev = the return)."""
    from kdenv.benchmark.regimes import switch_effects, switch_sentence
    from tests.tables import synthetic_table

    bumps = [0.0, 0.02, -0.01, 0.03]
    table = synthetic_table(tmp_path / "t", {seed: {(0, 0): 0.0, (0, 1): 0.3 + bump, (1, 0): 0.05, (1, 1): 0.1}
                                             for seed, bump in enumerate(bumps)})
    effects = switch_effects(table)
    assert effects["schedule"] == "- → logits" and effects["constant"] == "logits → logits"
    assert [entry["phase"] for entry in effects["phases"]] == [1]
    expected = 0.2 + np.mean(bumps)
    entry = effects["phases"][0]
    assert entry["switch"] == "logits → -"
    for figure in (effects["whole"], entry["given_the_rest"], entry["alone"]):
        assert figure["mean"] == pytest.approx(expected) and figure["n"] == 4
        assert figure["ci"][0] <= expected <= figure["ci"][1]
    assert effects["resamples"] == "seeds"
    text = switch_sentence(effects)
    assert "phase 1's logits → - adds +0.2100 [" in text and "n = 4" in text
    # a table whose best open-loop schedule is a constant has no switch to explain
    flat = synthetic_table(tmp_path / "flat", {0: {(0, 0): 0.0, (0, 1): 0.1, (1, 0): 0.1, (1, 1): 0.3}})
    assert switch_effects(flat)["phases"] == [] and switch_sentence(switch_effects(flat)) == ""
