"""The table protocol: k-fold over seeds, scores against the oracle and the train folds' best
constant, and two-level bootstrap intervals; known answers on synthetic tables."""

import numpy as np
import pytest

from kdenv.benchmark.protocol import FoldView, baseline_returns, fold_splits, folds, score_policy
from kdenv.stats import bootstrap_interval, bootstrap_ratio, improvement, iqm, summarise
from tests.tables import synthetic_table

# Four seeds. Constant "logits" (1, 1) is best on average; seed 3 prefers (0, 1).
RETURNS = {
    0: {(0, 0): 0.0, (0, 1): 0.1, (1, 0): 0.1, (1, 1): 0.3},
    1: {(0, 0): 0.0, (0, 1): 0.2, (1, 0): 0.0, (1, 1): 0.2},
    2: {(0, 0): 0.1, (0, 1): 0.0, (1, 0): 0.2, (1, 1): 0.25},
    3: {(0, 0): 0.0, (0, 1): 0.4, (1, 0): 0.0, (1, 1): 0.1},
}


@pytest.fixture
def view(tmp_path):
    return FoldView(synthetic_table(tmp_path, RETURNS), "metric_gain")


def test_every_seed_is_held_out_exactly_once():
    assert folds(list(range(16)), 4) == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]
    splits = fold_splits([0, 1, 2, 3], 4)
    assert sorted(s for _, test in splits for s in test) == [0, 1, 2, 3]
    assert all(not set(train) & set(test) for train, test in splits)
    with pytest.raises(ValueError, match="2 <= k <= 4"):
        folds([0, 1, 2, 3], 5)


def test_the_best_constant_is_chosen_on_the_train_folds_only(view):
    # Held out 3: the train seeds 0-2 choose (1, 1); a policy playing (0, 1) on seed 3 gets 0.4.
    column = view.best_constant([0, 1, 2])
    assert view.sequences[column] == (1, 1) and view.value(3, column) == pytest.approx(0.1)
    scores = score_policy(view, [([0, 1, 2], [3])], {3: np.array([0.4, 0.1])})
    assert scores["regret"]["mean"] == pytest.approx((0.0 + 0.3) / 2)
    assert scores["normalised_regret"]["mean"] == pytest.approx((0.0 + 1.0) / 2)  # 0 at the oracle, 1 at the constant
    assert scores["gain"]["mean"] == pytest.approx((0.3 + 0.0) / 2)
    assert scores["improvement"]["value"] == pytest.approx((1 + 0.5) / 2)  # a tie counts one half
    assert scores["seeds"] == 1 and scores["agent_seeds"] == 2


def test_baselines_are_exact(view):
    rows = baseline_returns(view, fold_splits([0, 1, 2, 3], 4), ["all", "none"])
    assert rows["oracle"] == {0: 0.3, 1: 0.2, 2: 0.25, 3: 0.4}
    assert rows["random schedule (exact mean)"][3] == pytest.approx((0.0 + 0.4 + 0.0 + 0.1) / 4)
    assert rows["all"] == rows["constant logits"] and rows["none"] == rows["constant -"]
    assert rows["best constant (train folds)"][3] == pytest.approx(0.1)  # chosen without seed 3


def test_the_closed_loop_bound_opens_with_one_action_for_every_seed_and_scores_the_share_of_its_headroom(tmp_path):
    # As RETURNS, but seeds 1 and 3 gain from switching logits off after opening with it.
    view = FoldView(synthetic_table(tmp_path, {**RETURNS, 1: {**RETURNS[1], (1, 0): 0.3}, 3: {**RETURNS[3], (1, 0): 0.2}}),
                    "metric_gain")
    splits = fold_splits([0, 1, 2, 3], 4)
    rows = baseline_returns(view, splits, [])
    # Opening with logits: 0.3, 0.3, 0.25, 0.2 (mean 0.2625); opening with none: 0.1, 0.2, 0.1, 0.4 (0.2).
    # Held out alone, a seed would let a per-fold bound open with its own best action: seed 3's 0.4.
    assert rows["closed-loop bound"] == pytest.approx({0: 0.3, 1: 0.3, 2: 0.25, 3: 0.2})
    assert rows["oracle"][3] == pytest.approx(0.4)
    closed, constant = rows["closed-loop bound"], rows["best constant (train folds)"]
    assert constant == pytest.approx({0: 0.3, 1: 0.2, 2: 0.25, 3: 0.1})  # logits throughout, on every fold
    assert score_policy(view, splits, closed, closed)["closed_loop_share"]["value"] == pytest.approx(1.0)
    assert score_policy(view, splits, constant, closed)["closed_loop_share"]["value"] == pytest.approx(0.0, abs=1e-12)
    # An agent that reaches the bound on seeds 0 and 1 with one agent seed of two, the constant otherwise:
    # a mean gain of 0.1 / 8 against the bound's 0.2 / 4.
    agent = {s: np.array([closed[s] if s < 2 else constant[s], constant[s]]) for s in range(4)}
    share = score_policy(view, splits, agent, closed)["closed_loop_share"]
    assert share["value"] == pytest.approx((0.1 / 8) / (0.2 / 4)) and share["n"] == 8
    assert share["ci"] is None  # 1 resample in 16 draws only seeds 0 and 2, which have no headroom
    assert "closed_loop_share" not in score_policy(view, splits, agent)  # only when the bound is given


def test_the_chosen_agent_row_is_picked_on_the_other_folds_never_on_the_seeds_it_is_scored_on(view):
    from kdenv.benchmark.board import chosen_row
    from kdenv.benchmark.board_report import chosen_text

    splits = fold_splits([0, 1, 2, 3], 4)
    # Row "a" is best on seed 3 alone, row "b" on every other seed: held out, seed 3 gets b's
    # return (chosen on seeds 0-2), each other seed a's or b's as the other three seeds decide.
    a = {0: np.array([0.0]), 1: np.array([0.0]), 2: np.array([0.0]), 3: np.array([0.4])}
    b = {0: np.array([0.3]), 1: np.array([0.2]), 2: np.array([0.25]), 3: np.array([0.0])}
    scores = chosen_row(view, splits, {"a": a, "b": b})
    # Seed 0's fold sees seeds 1-3: a 0.4/3, b 0.45/3 -> b. Seeds 1 and 2 alike -> b. Seed 3 -> b.
    assert scores["chosen"] == {"0": "b", "1": "b", "2": "b", "3": "b"}
    assert scores["return"]["mean"] == pytest.approx((0.3 + 0.2 + 0.25 + 0.0) / 4)
    # Were a better on the other seeds, a would be chosen for that fold only.
    a[0] = np.array([0.3])
    assert chosen_row(view, splits, {"a": a, "b": b})["chosen"] == {"0": "b", "1": "a", "2": "a", "3": "b"}
    assert chosen_text({"0": "b", "1": "a", "2": "a", "3": "b"}) == "b: folds 1, 4; a: folds 2, 3"


def test_average_ranks_cover_the_rows_of_every_table_and_share_ties():
    from kdenv.benchmark.board import average_ranks

    def table(**returns):
        return {"rows": {row: {"return": {"mean": value}} for row, value in returns.items()}}

    board = {"tables": {"a": table(x=0.3, y=0.1, z=0.2, only_a=0.9), "b": table(x=0.1, y=0.2, z=0.1)}}
    # a: x 1, z 2, y 3 (only_a is not on b); b: y 1, x and z tied for 2-3 -> 2.5 each.
    assert average_ranks(board) == {"x": pytest.approx(1.75), "y": pytest.approx(2.0), "z": pytest.approx(2.25)}
    assert list(average_ranks(board)) == ["x", "y", "z"]


def test_the_share_of_a_headroom_is_a_ratio_of_means_drawn_on_the_same_seeds():
    # Gains exactly half of each seed's headroom: every resample gives 0.5, whatever it draws.
    headroom = [0.1, 0.4, 0.2, 0.3]
    half = [np.full(3, h / 2) for h in headroom]
    share = bootstrap_ratio(half, headroom)
    assert share["value"] == pytest.approx(0.5) and share["ci"] == pytest.approx((0.5, 0.5)) and share["n"] == 12
    # Seeds weigh by their number of values, as the pooled mean gain does.
    weighted = bootstrap_ratio([np.array([0.1]), np.array([0.0, 0.0, 0.0])], [0.1, 0.2])
    assert weighted["value"] == pytest.approx((0.1 / 4) / ((0.1 + 3 * 0.2) / 4))
    # Noisy gains: the interval holds the estimate and widens with fewer seeds.
    rng = np.random.default_rng(0)
    few = bootstrap_ratio([rng.normal(0.05, 0.05, 5) for _ in range(4)], [0.1] * 4)
    many = bootstrap_ratio([rng.normal(0.05, 0.05, 5) for _ in range(40)], [0.1] * 40)
    assert few["ci"][0] < few["value"] < few["ci"][1]
    assert many["ci"][1] - many["ci"][0] < few["ci"][1] - few["ci"][0]
    # No headroom: no share. Many resamples drawing only seeds without headroom: unbounded.
    assert bootstrap_ratio([np.array([0.0])] * 3, [0.0] * 3)["value"] is None
    sparse = bootstrap_ratio([np.array([0.01]), np.array([0.0])], [0.02, 0.0])
    assert sparse["value"] == pytest.approx(0.5) and sparse["ci"] is None
    with pytest.raises(ValueError):
        bootstrap_ratio([np.array([0.1])], [0.1, 0.2])  # one headroom per seed


def test_intervals_cover_the_estimate_narrow_with_more_data_and_count_seeds_and_agents():
    rng = np.random.default_rng(0)
    few = [rng.normal(1.0, 1.0, 2) for _ in range(3)]
    many = [rng.normal(1.0, 1.0, 10) for _ in range(30)]
    low, high = bootstrap_interval(few, "mean")
    assert low < np.mean(np.concatenate(few)) < high
    width_many = np.subtract(*bootstrap_interval(many, "mean")[::-1])
    assert width_many < high - low
    summary = summarise(many)
    assert summary["n"] == 300 and summary["iqm_ci"][0] < summary["iqm"] < summary["iqm_ci"][1]
    # Seeds are resampled, not held fixed: between-seed spread widens the interval even when
    # every agent seed agrees within its seed.
    spread = [np.full(5, value) for value in (0.0, 1.0, 2.0, 3.0)]
    low, high = bootstrap_interval(spread, "mean")
    assert high - low > 1.0


def test_the_vectorised_iqm_is_scipys_trimmed_mean_row_by_row():
    from scipy import stats

    from kdenv.stats import _row_iqm

    rng = np.random.default_rng(1)
    values = rng.normal(size=(50, 13))
    values[rng.random(values.shape) < 0.2] = np.nan
    expected = [stats.trim_mean(row[~np.isnan(row)], 0.25) for row in values]
    assert _row_iqm(values) == pytest.approx(expected)


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert improvement([np.array([0.1, -0.1, 0.0, 0.0])])["value"] == pytest.approx(0.5)


def test_the_leaderboard_retrains_resumes_and_writes_its_files(tmp_path, capsys):
    import json

    from kdenv.benchmark.oracle import episode_return
    from kdenv.benchmark.table import Table
    from kdenv.stats import ci_text
    from tests.conftest import command

    synthetic_table(tmp_path / "table", RETURNS)
    args = ["--tables", str(tmp_path / "table"), "--k", "2", "--agent-seeds", "2", "--episodes", "30", "--agents", "a2c",
            "--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "board"), "--no-progress"]
    assert command("leaderboard").main([*args, "--retrain", "--dry-run"]) == 0
    assert "projected" in capsys.readouterr().out and not (tmp_path / "results").exists()
    assert command("leaderboard").main([*args, "--retrain"]) == 0
    result = json.loads((tmp_path / "results" / "table" / "a2c.json").read_text())
    assert sorted(result["returns"]) == ["0", "1", "2", "3"] and all(len(v) == 2 for v in result["returns"].values())
    board = json.loads((tmp_path / "board.json").read_text())
    rows = board["tables"][str(tmp_path / "table")]["rows"]
    assert {"oracle", "best constant (train folds)", "random schedule (exact mean)", "kd", "A2C"} <= set(rows)
    assert rows["oracle"]["regret"]["mean"] == 0.0 and rows["A2C"]["seeds"] == 4 and rows["A2C"]["agent_seeds"] == 2
    text = (tmp_path / "board.md").read_text()
    assert "| A2C |" in text and "Not yet trained on this table: PPO" in text
    assert (f"Made by `python agents/leaderboard.py --tables {tmp_path / 'table'} --k 2 --results-dir "
            f"{tmp_path / 'results'} --output {tmp_path / 'board'}` from") in text
    # The summary answers for the one trained row: headroom, then A2C's gain with its interval.
    summary = next(line for line in text.splitlines() if line.startswith(f"| {tmp_path / 'table'} | 4 |"))
    assert f"| A2C | {ci_text(rows['A2C']['gain'])} |" in summary
    # It leads with the out-of-sample headroom: the reward's choices scored on dev (here dev = the return):
    # only seed 3's oracle (0, 1) beats the constant (1, 1) picked by the reward, by 0.3.
    on_dev = board["tables"][str(tmp_path / "table")]["reward_to_dev"]["oracle"]
    assert on_dev["mean"] == pytest.approx(0.3 / 4) and on_dev["n"] == 4
    assert summary.startswith(f"| {tmp_path / 'table'} | 4 | +0.0750 [")
    # and says what adapting to the seed adds over the reward's best open-loop schedule, on dev, paired
    adapting = board["tables"][str(tmp_path / "table")]["reward_to_dev"]["adapting"]
    open_loop = board["tables"][str(tmp_path / "table")]["reward_to_dev"]["open_loop"]
    assert adapting["mean"] == pytest.approx(on_dev["mean"] - open_loop["mean"])
    from kdenv.benchmark.board_report import dev_text

    assert f"| {dev_text(adapting)} | seeds |" in summary
    assert (tmp_path / "board.png").stat().st_size > 1000
    # Every row is also scored out of sample, from its schedules: here dev is the return, so each row's
    # gain on dev is its gain over the train folds' constant, agents included (from their stored schedules).
    scored = board["tables"][str(tmp_path / "table")]["on_dev"]
    for row in ("oracle", "closed-loop bound", "best open-loop (train folds)", "constant logits", "A2C"):
        assert scored[row]["gain"]["mean"] == pytest.approx(rows[row]["gain"]["mean"]), row
    assert scored["A2C"]["seeds"] == 4 and scored["A2C"]["agent_seeds"] == 2
    assert "random schedule (exact mean)" not in scored  # it plays no one schedule per seed
    assert f"| {ci_text(scored['A2C']['gain'])} |" in summary and "scored out of sample" in text
    # A rerun trains nothing new: every (held-out seed, agent seed) is in the result file.
    capsys.readouterr()
    assert command("leaderboard").main([*args, "--retrain", "--dry-run"]) == 0
    assert "0 agents still to train" in capsys.readouterr().out
    before = (tmp_path / "results" / "table" / "a2c.json").read_text()
    assert command("leaderboard").main([*args, "--retrain"]) == 0
    assert (tmp_path / "results" / "table" / "a2c.json").read_text() == before

    # The result file stores every agent's schedule beside its return (format 2): --verify replays
    # each on the table and agrees, writing nothing.
    path = tmp_path / "results" / "table" / "a2c.json"
    assert result["format"] == 2 and all(len(result["schedules"][seed]) == 2 for seed in result["returns"])
    capsys.readouterr()
    assert command("leaderboard").main([*args, "--verify"]) == 0
    assert "verified 8 stored agent returns on 1 tables" in capsys.readouterr().out
    # An edited schedule (another path of the table, a return in range) is found...
    table = Table.load(tmp_path / "table")
    edited = json.loads(before)
    schedule = edited["schedules"]["0"][0]
    other = next(s for s in ([0, 0], [0, 1], [1, 0], [1, 1]) if s != schedule
                 and episode_return(table, 0, tuple(s), "metric_gain") != edited["returns"]["0"][0])
    edited["schedules"]["0"][0] = other
    path.write_text(json.dumps(edited))
    assert command("leaderboard").main([*args, "--verify"]) == 1
    assert f"seed 0, agent seed 0: schedule {other} returns" in capsys.readouterr().err
    # ...and a file of the old format (returns only) cannot be replayed: said, with the way on.
    del edited["schedules"], edited["format"]
    path.write_text(json.dumps(edited))
    assert command("leaderboard").main([*args, "--verify"]) == 1
    assert "format 1, returns without schedules" in capsys.readouterr().err
    # --retrain --dry-run counts such a file's agents as still to train (it is trained again for its
    # schedules), not as done because its returns are there.
    assert command("leaderboard").main([*args, "--retrain", "--dry-run"]) == 0
    assert "4 agents still to train" in capsys.readouterr().out  # 2 folds x 2 agent seeds
    path.write_text(before)


def test_a_tuned_row_searches_inside_each_fold_and_never_sees_its_held_out_seeds(tmp_path, capsys, monkeypatch):
    import json

    from kdenv.benchmark import tuning
    from tests.conftest import command

    searched = []
    real_tune = tuning.tune

    def spy(study, defaults, algo, trials, trial_agents, **kwargs):
        searched.append((list(study.train_seeds), list(study.test_seeds), trials, trial_agents))
        return real_tune(study, defaults, algo, trials, trial_agents, **kwargs)

    monkeypatch.setattr(tuning, "tune", spy)
    synthetic_table(tmp_path / "table", RETURNS)
    args = ["--tables", str(tmp_path / "table"), "--k", "2", "--agent-seeds", "1", "--episodes", "20", "--agents",
            "a2c-tuned", "--tune-trials", "2", "--tune-agents", "1", "--results-dir", str(tmp_path / "results"),
            "--output", str(tmp_path / "board"), "--no-progress", "--retrain"]
    assert command("leaderboard").main([*args, "--dry-run"]) == 0
    # 2 folds x (1 final agent + 2 trials x 1 agent)
    assert "6 agents still to train (a2c-tuned 6" in capsys.readouterr().out
    assert command("leaderboard").main(args) == 0
    folds = [(sorted(train), sorted(test)) for train, test in fold_splits(list(range(4)), 2)]
    assert [(sorted(train), sorted(test)) for train, test, *_ in searched] == folds
    assert all(not set(train) & set(test) for train, test, *_ in searched)
    assert all(trials == 2 and agents == 1 for *_, trials, agents in searched)
    result = json.loads((tmp_path / "results" / "table" / "a2c_tuned.json").read_text())
    assert sorted(result["tuned"]) == sorted(",".join(map(str, test)) for _, test in folds)
    assert result["config"]["tuning"]["trials"] == 2
    for fold in result["tuned"].values():
        assert fold["trials"] == 2 and "learning_rate" in fold["params"]
        assert fold["hyperparams"]["learning_rate"] == fold["params"]["learning_rate"]
    rows = json.loads((tmp_path / "board.json").read_text())["tables"][str(tmp_path / "table")]["rows"]
    assert rows["A2C, tuned in each fold"]["seeds"] == 4 and "tuned" in rows["A2C, tuned in each fold"]
    # A rerun neither searches nor trains again.
    searched.clear()
    assert command("leaderboard").main(args) == 0
    assert searched == []


def test_the_leaderboard_plays_agents_of_one_task_on_another(tmp_path):
    import json

    from kdenv.benchmark.table import write_manifest
    from kdenv.stats import ci_text
    from tests.conftest import command

    synthetic_table(tmp_path / "rte", RETURNS)
    # mrpc: rte's returns halved, with logits on and off swapped, so the two tables' best constants differ.
    flipped = {seed: {tuple(1 - a for a in h): v / 2 for h, v in r.items()} for seed, r in RETURNS.items()}
    other = synthetic_table(tmp_path / "mrpc", flipped)
    manifest = dict(other.manifest, task="mrpc")
    write_manifest(tmp_path / "mrpc", {k: v for k, v in manifest.items() if k not in ("files", "format")})
    args = ["--tables", f"{tmp_path / 'rte'},{tmp_path / 'mrpc'}", "--k", "2", "--agent-seeds", "2", "--episodes", "30",
            "--agents", "a2c", "--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "board"),
            "--no-progress", "--retrain"]
    assert command("leaderboard").main(args) == 0
    board = json.loads((tmp_path / "board.json").read_text())
    pair = f"{tmp_path / 'rte'} -> {tmp_path / 'mrpc'}"
    rows = board["cross"][pair]
    assert rows["A2C"]["seeds"] == 4 and rows["A2C"]["agent_seeds"] == 2
    assert rows["oracle of the target table"]["regret"]["mean"] == 0.0
    # The constant chosen on rte is (1, 1), which mrpc scores as rte's (0, 0), halved; mrpc's own best
    # constant is (0, 0), rte's (1, 1) halved: the bar of the last column.
    chosen, own = [RETURNS[s][(0, 0)] / 2 for s in range(4)], [RETURNS[s][(1, 1)] / 2 for s in range(4)]
    assert rows["best constant chosen on rte"]["return"]["mean"] == pytest.approx(np.mean(chosen))
    assert rows["best constant chosen on rte"]["gain_target"]["mean"] == pytest.approx(np.mean(chosen) - np.mean(own))
    assert rows["best constant of mrpc (chosen on its own seeds)"]["return"]["mean"] == pytest.approx(np.mean(own))
    agent = rows["A2C"]
    assert agent["gain_target"]["mean"] == pytest.approx(agent["return"]["mean"] - np.mean(own))
    assert agent["gain"]["mean"] == pytest.approx(agent["return"]["mean"] - np.mean(chosen))
    text = (tmp_path / "board.md").read_text()
    assert "Across tasks: trained on every seed of" in text
    assert f"| {pair} | A2C (best of 1) | {ci_text(agent['gain'])} |" in text  # the summary's across-tasks line


def test_returns_above_the_oracle_are_refused_as_a_unit_mix_up(view):
    with pytest.raises(ValueError, match="beats the oracle.*not in metric_gain"):
        score_policy(view, [([0, 1, 2], [3])], {3: np.array([0.9])})


def retrained_then_edited(tmp_path, edit) -> list[str]:
    """An A2C row retrained on the synthetic table (2 folds x 2 agent seeds), its result file then
    edited by ``edit``; returns the leaderboard's arguments."""
    import json

    from tests.conftest import command

    synthetic_table(tmp_path / "table", RETURNS)
    args = ["--tables", str(tmp_path / "table"), "--k", "2", "--agent-seeds", "2", "--episodes", "30", "--agents", "a2c",
            "--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "board"), "--no-progress"]
    assert command("leaderboard").main([*args, "--retrain"]) == 0
    path = tmp_path / "results" / "table" / "a2c.json"
    result = json.loads(path.read_text())
    edit(result)
    path.write_text(json.dumps(result))
    return args


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r["returns"]["1"].__setitem__(0, "0.2"), "are not a list of finite numbers"),
    (lambda r: r["returns"]["1"].__setitem__(0, float("nan")), "are not a list of finite numbers"),
    (lambda r: r["returns"]["1"].__setitem__(0, True), "are not a list of finite numbers"),
    (lambda r: r["returns"]["2"].__setitem__(0, 0.9), "leave the range of its schedules' returns"),
    (lambda r: r["returns"]["0"].extend([0.1, 0.1]), "has 4 returns for 2 agent seeds"),
    (lambda r: r["returns"].__setitem__("7", [0.1]), "returns for seed '7', which the table does not have"),
])
def test_an_edited_result_file_is_refused_naming_the_problem(tmp_path, capsys, edit, problem):
    from tests.conftest import command

    args = retrained_then_edited(tmp_path, edit)
    capsys.readouterr()
    assert command("leaderboard").main(args) == 2
    assert problem in capsys.readouterr().err


def test_a_result_file_with_too_few_returns_is_not_a_finished_row(tmp_path, capsys):
    import json

    from tests.conftest import command

    args = retrained_then_edited(tmp_path, lambda result: result["returns"].__setitem__("3", result["returns"]["3"][:1]))
    assert command("leaderboard").main(args) == 0
    assert "seeds [3] hold fewer than 2 agents' returns" in capsys.readouterr().out
    board = json.loads((tmp_path / "board.json").read_text())
    assert "A2C" not in board["tables"][str(tmp_path / "table")]["rows"]  # not labelled "4 x 2" with a seed short


def test_a_full_disk_while_the_board_is_written_leaves_the_old_set_whole(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    from kdenv import io as kio
    from tests.conftest import command

    synthetic_table(tmp_path / "table", RETURNS)
    args = ["--tables", str(tmp_path / "table"), "--k", "2", "--results-dir", str(tmp_path / "results"),
            "--output", str(tmp_path / "board"), "--no-progress"]
    assert command("leaderboard").main(args) == 0
    before = {suffix: (tmp_path / f"board{suffix}").read_bytes() for suffix in (".md", ".json", ".png")}
    real = tempfile.mkstemp

    def full_at_the_figure(*a, **kw):
        if str(kw.get("prefix", "")).startswith(".board.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(kio.tempfile, "mkstemp", full_at_the_figure)
    capsys.readouterr()
    assert command("leaderboard").main([*args[:2], "--k", "4", *args[4:]]) == 2  # another board: 4 folds
    assert "No space left on device" in capsys.readouterr().err
    assert {suffix: (tmp_path / f"board{suffix}").read_bytes() for suffix in before} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_crash_costs_one_return_in_one_unit_everywhere(tmp_path):
    """A schedule whose last phase crashed: the oracle's episode return, the table environment
    played by a policy (as the leaderboard and table studies score agents) and the environment's
    own reward all count the crash as kdenv.config.crash_return() in task-reward units, at any
    reward scale."""
    from kdenv.benchmark.oracle import episode_return
    from kdenv.benchmark.study import play
    from kdenv.benchmark.table import Table, write_manifest, write_seed
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.config import EnvConfig, crash_return

    records = [{"history": [], "depth": 0, "observation": [0.0] * 11, "metric": 0.0, "loss": 1.0}]
    for a in range(2):
        records.append({"history": [a], "depth": 1, "observation": [0.5] + [0.0] * 10, "metric": 0.1, "loss": 1.0,
                        "status": "ok", "terminal": False, "weights": {"logits": float(a)},
                        "rewards": {"metric_gain": 0.1}})
        for b in range(2):
            leaf = {"history": [a, b], "depth": 2, "observation": [1.0] + [0.0] * 10, "metric": 0.2, "loss": 1.0,
                    "status": "ok", "terminal": True, "weights": {"logits": float(b)}, "rewards": {"metric_gain": 0.1}}
            if (a, b) == (1, 1):
                leaf.update(status="non_finite", crash="hidden loss is nan", rewards={"metric_gain": 0.0})
            records.append(leaf)
    write_seed(tmp_path, 0, records)
    write_manifest(tmp_path, {"task": "rte", "seeds": [0], "knowledge": ["logits"], "phases": 2, "nodes_per_seed": 7,
                              "env": {"knowledge": ["logits"], "phases": 2, "updates_per_phase": 1}})
    table = Table.load(tmp_path)
    expected = 0.1 + crash_return()
    assert crash_return() == EnvConfig().crash_penalty / EnvConfig().reward_scale
    assert episode_return(table, 0, (1, 1), "metric_gain") == pytest.approx(expected)

    class Always:  # a policy that switches logits on in every phase
        def predict(self, observation, state=None, episode_start=None, deterministic=True):
            return 1, None

    for scale in (10.0, 3.0):
        env = KnowledgeSelectionTableEnv(table, reward_scale=scale)
        assert play(Always(), env, env, 0)[0] == pytest.approx(expected)
        env.reset(options={"table_seed": 0})
        env.step(1)
        _, reward, terminated, _, info = env.step(1)
        assert terminated and info["status"] == "non_finite" and reward == pytest.approx(crash_return() * scale)


def test_a_headroom_has_one_interval_in_the_oracle_report_and_on_the_leaderboard(tmp_path):
    """The closed-loop bound's gain over the best constant, where every fold picks the same
    constant, is one figure: the oracle report (solve) and the leaderboard's protocol
    (score_policy, fold by fold) resample the same seeds in the same order, so they print one interval."""
    from kdenv.benchmark.oracle import solve

    rng = np.random.default_rng(3)
    returns = {seed: {(a, b): float(v) for (a, b), v in zip([(0, 0), (0, 1), (1, 0), (1, 1)], rng.normal(0.1, 0.05, 4))}
               for seed in range(8)}
    for seed in returns:  # the constant (1, 1) best on every fold's train seeds
        returns[seed][(1, 1)] = 0.3
    table = synthetic_table(tmp_path, returns)
    view, splits = FoldView(table, "metric_gain"), fold_splits(table.seeds, 4)
    assert {view.best_constant(train) for train, _ in splits} == {view.constants[1]}
    bound = baseline_returns(view, splits, [])["closed-loop bound"]
    board = score_policy(view, splits, bound)["gain"]
    report = solve(table, "metric_gain")["closed_loop_headroom"]
    assert board["mean"] == pytest.approx(report["mean"]) and board["mean_ci"] == report["ci"]


def test_the_live_checks_advice_never_loops(tmp_path, capsys):
    """Its advice leads somewhere: a one-seed table (no leaderboard row can exist) and --k 1 are
    refused for what they are, and the retrain command it names carries a non-default --k."""
    from tests.conftest import command

    synthetic_table(tmp_path / "one", {0: RETURNS[0]})
    assert command("live_check").main(["--table", str(tmp_path / "one"), "--row", "a2c", "--dry-run"]) == 2
    assert "no row exists to check here; build more seeds first" in capsys.readouterr().err
    synthetic_table(tmp_path / "four", RETURNS)
    with pytest.raises(SystemExit):
        command("live_check").main(["--table", str(tmp_path / "four"), "--row", "a2c", "--k", "1", "--dry-run"])
    assert "--k >= 2" in capsys.readouterr().err
    assert command("live_check").main(["--table", str(tmp_path / "four"), "--row", "a2c", "--k", "3",
                                       "--results-dir", str(tmp_path / "results"), "--dry-run"]) == 2
    assert "--retrain --tables" in (err := capsys.readouterr().err) and err.rstrip().endswith("--agents a2c --k 3")


def test_rows_on_dev_score_the_reward_s_choices_on_dev_not_on_the_reward(tmp_path):
    """Where dev disagrees with the reward (here dev = 1 - return), each row is scored by the dev metric
    of the schedule the reward chose, against the constant the reward chose on the train folds."""
    from kdenv.benchmark.board import rows_on_dev

    view = FoldView(synthetic_table(tmp_path, RETURNS, dev=lambda value: 1.0 - value), "metric_gain")
    splits = fold_splits([0, 1, 2, 3], 4)
    scored = rows_on_dev(view, splits, [], {}, None)
    # The reward's oracle on seed 3 is (0, 1) (return 0.4, dev 0.6); the train folds' constant is (1, 1)
    # (return 0.1, dev 0.9): -0.3 on dev where the reward saw +0.3. Seeds 0-2's oracle is that constant.
    assert scored["oracle"]["gain"]["mean"] == pytest.approx(-0.3 / 4)
    assert scored["constant logits"]["gain"]["mean"] == pytest.approx(0.0)
    assert scored["constant -"]["dev"]["mean"] == pytest.approx(np.mean([1.0, 1.0, 0.9, 1.0]))


def test_train_reward_retrains_the_rows_on_another_reward_and_the_board_names_it(tmp_path, capsys):
    """--train-reward: the rows that train on metric_gain train on the named reward (recorded in the result
    file's config, so a file trained on another reward is retrained, not mixed), are still scored in
    metric_gain, and the board names the reward beside the row; the live check trains on the recorded one."""
    import json

    from kdenv.benchmark.live import train_agents
    from tests.conftest import command

    synthetic_table(tmp_path / "table", RETURNS)
    args = ["--tables", str(tmp_path / "table"), "--k", "2", "--agent-seeds", "1", "--episodes", "20", "--agents", "a2c",
            "--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "board"), "--no-progress", "--retrain"]
    assert command("leaderboard").main([*args, "--train-reward", "loss_decrease"]) == 0
    path = tmp_path / "results" / "table" / "a2c.json"
    result = json.loads(path.read_text())
    assert result["config"]["reward"] == "loss_decrease" and result["config"]["scored_in"] == "metric_gain"
    board = json.loads((tmp_path / "board.json").read_text())
    rows = board["tables"][str(tmp_path / "table")]["rows"]
    assert "A2C, trained on loss_decrease" in rows and "A2C" not in rows
    text = (tmp_path / "board.md").read_text()
    assert "| A2C, trained on loss_decrease |" in text and "Not yet trained on this table: A2C," not in text
    summary = next(line for line in text.splitlines() if line.startswith(f"| {tmp_path / 'table'} | 4 |"))
    assert "| A2C, trained on loss_decrease |" in summary  # the summary's agent row
    # The dry run without the flag counts the row as still to train (its file holds another reward).
    capsys.readouterr()
    assert command("leaderboard").main([*args, "--dry-run"]) == 0
    assert "2 agents still to train" in capsys.readouterr().out
    # The live check's agents train on the reward recorded in the file.
    from kdenv.benchmark.table import Table

    study, _ = train_agents(Table.load(tmp_path / "table"), "a2c", result, 1, path, tmp_path / "live", progress=False)
    assert study.reward == "loss_decrease"


def test_a_regime_s_table_trains_its_agents_on_the_reward_measured_for_it(tmp_path, monkeypatch, capsys):
    """Without --train-reward, a regime whose survey measured a faithful reward (Regime.train_reward)
    trains its rows on it, so that retraining a board that holds it leaves the other tables' files alone;
    the flag still overrides it, and the paper row keeps its own reward."""
    import json

    from kdenv.benchmark import regimes
    from kdenv.benchmark.board import BoardSettings, row_config, row_spec
    from tests.conftest import command

    settings = BoardSettings(results_dir=tmp_path)
    # the long horizon's agents train on metric_gain, the rows' own reward (its signal on the reward split
    # is the larger: docs/benchmark.md); the mechanism is checked on a regime measured otherwise
    assert regimes.measured_train_reward("stsb_k2_u128") == "metric_gain"
    assert row_spec("dqn", settings, "stsb_k2_u128").reward == "metric_gain"
    monkeypatch.setattr(regimes, "REGIMES", (regimes.Regime("table", "q", "--task wnli", "0-3",
                                                            train_reward="loss_decrease"),))
    assert row_spec("dqn", settings, "table").reward == "loss_decrease"
    assert row_spec("dqn", settings, str(tmp_path / "table")).reward == "loss_decrease"
    assert row_spec("dqn", settings, "stsb_u8").reward == "metric_gain" == row_spec("dqn", settings).reward
    assert row_spec("a2c-paper", settings, "table").reward == "loss_decrease"
    override = BoardSettings(results_dir=tmp_path, train_reward="log_loss")
    assert row_spec("dqn", override, "table").reward == "log_loss"
    assert row_config("dqn", settings, "table") != row_config("dqn", settings, "stsb_u8")
    # A table named as a regime with a measured reward: its result file records that reward.
    synthetic_table(tmp_path / "table", RETURNS)
    args = ["--tables", str(tmp_path / "table"), "--k", "2", "--agent-seeds", "1", "--episodes", "20", "--agents", "a2c",
            "--results-dir", str(tmp_path / "results"), "--output", str(tmp_path / "board"), "--no-progress", "--retrain"]
    assert command("leaderboard").main(args) == 0
    assert json.loads((tmp_path / "results" / "table" / "a2c.json").read_text())["config"]["reward"] == "loss_decrease"
    capsys.readouterr()
    assert command("leaderboard").main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 agents still to train" in out
    assert (f"on {tmp_path / 'table'} the rows that train on metric_gain train on loss_decrease (the reward measured "
            "for its regime)") in out


def test_the_board_s_out_of_sample_headroom_resamples_examples_where_the_table_keeps_outputs(tmp_path, monkeypatch,
                                                                                             capsys):
    from kdenv.benchmark import outofsample
    from kdenv.benchmark.board import reward_to_dev
    from tests.test_outputs import noise_table

    table, labels = noise_table(tmp_path, signal=1.5)
    monkeypatch.setattr(outofsample, "table_labels", lambda manifest, data_dir=None: labels)
    figures, resamples = reward_to_dev(table)
    assert resamples == "seeds, examples" and figures["oracle"]["ci"][0] > 0 and figures["oracle"]["n"] == 4
    # Without its labels (no GLUE files of the table's fingerprints), seeds only, and why.
    from kdenv.benchmark.outputs import OutputsError

    def no_labels(manifest, data_dir=None):
        raise OutputsError("the reward labels read from the GLUE files are not those the table was built with")

    monkeypatch.setattr(outofsample, "table_labels", no_labels)
    # The program writes the board all the same, and says why its intervals resample seeds only.
    from tests.conftest import command

    assert command("leaderboard").main(["--tables", str(tmp_path), "--results-dir", str(tmp_path / "results"),
                                        "--output", str(tmp_path / "board"), "--no-progress"]) == 0
    assert (f"note: {tmp_path} keeps per-example outputs, but its intervals resample seeds only: the reward labels "
            "read from the GLUE files are not those") in capsys.readouterr().err
    figures, resamples = reward_to_dev(table)
    assert resamples == ("seeds (examples not: the reward labels read from the GLUE files are not those the table "
                         "was built with)") and figures["oracle"]["n"] == 4
    assert reward_to_dev(synthetic_table(tmp_path / "plain", RETURNS))[1] == "seeds"


def test_the_three_level_bootstrap_adds_the_examples_noise_and_nothing_else():
    from kdenv.stats import bootstrap_interval_with_examples

    rng = np.random.default_rng(3)
    per_seed = [rng.normal(0.01, 0.01, size=5) for _ in range(8)]  # 8 seeds x 5 agent seeds
    # Where every example draw gives the same values, it is the two-level bootstrap exactly (the same draws).
    same = bootstrap_interval_with_examples([per_seed] * 300)
    assert same == pytest.approx(bootstrap_interval(per_seed, "mean", resamples=300))
    # Noise between example draws widens the interval around the same centre.
    noisy = bootstrap_interval_with_examples([[values + rng.normal(0, 0.02) for values in per_seed] for _ in range(300)])
    assert noisy[1] - noisy[0] > 1.5 * (same[1] - same[0])
    with pytest.raises(ValueError, match="same seeds and agent seeds"):
        bootstrap_interval_with_examples([per_seed, per_seed[:-1]])


def test_rows_on_dev_resample_the_dev_examples_where_the_table_keeps_outputs(tmp_path, monkeypatch):
    from kdenv.benchmark import outofsample
    from kdenv.benchmark.board import rows_on_dev
    from tests.test_outputs import noise_table

    table, labels = noise_table(tmp_path, signal=0.0)
    view, splits = FoldView(table, "metric_gain"), fold_splits(table.seeds, 4)
    from kdenv.benchmark.outputs import OutputsError

    def no_labels(manifest, data_dir=None):
        raise OutputsError("not the labels the table was built with")

    monkeypatch.setattr(outofsample, "table_labels", no_labels)
    plain = rows_on_dev(view, splits, [], {}, None)  # the labels cannot be read: seeds only
    monkeypatch.setattr(outofsample, "table_labels", lambda manifest, data_dir=None: labels)
    resampled = rows_on_dev(view, splits, [], {}, None)
    assert plain["oracle"]["resamples"] == "seeds, agent seeds"
    assert resampled["oracle"]["resamples"] == "seeds, agent seeds, dev examples"
    assert resampled["oracle"]["gain"]["mean"] == plain["oracle"]["gain"]["mean"]
    low, high = resampled["oracle"]["gain"]["mean_ci"]
    plain_low, plain_high = plain["oracle"]["gain"]["mean_ci"]
    assert high - low > plain_high - plain_low  # 200 dev examples' noise, which seeds alone miss
