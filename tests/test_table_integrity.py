"""A table is all or nothing: a manifest that disagrees with itself or with its seed files, or a
seed file that does not hold a whole tree, is refused in one line naming the file; nothing of it
is used."""

import gzip
import json

import pytest

from kdenv.benchmark.table import Table, TableError, manifest_checksum, seed_file, write_seed
from kdenv.io import file_sha256
from tests.tables import synthetic_table

RETURNS = {(0, 0): 0.1, (0, 1): 0.3, (1, 0): 0.0, (1, 1): 0.2}


@pytest.fixture
def table_dir(tmp_path):
    synthetic_table(tmp_path / "t", {0: RETURNS, 1: RETURNS})
    return tmp_path / "t"


def edit_manifest(directory, change, reseal=False):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if reseal:  # a careful forger also fixes the checksum of the manifest itself
        manifest["manifest_sha256"] = manifest_checksum(manifest)
    path.write_text(json.dumps(manifest))


def test_the_shipped_tables_and_new_ones_carry_a_checksum_of_their_manifest(table_dir):
    from kdenv.benchmark.table import available_tables, resolve_table

    assert all(resolve_table(name).manifest["manifest_sha256"] for name in available_tables())
    assert Table.load(table_dir).manifest["manifest_sha256"]


def test_an_edited_phase_count_is_refused_however_carefully_it_is_edited(table_dir):
    edit_manifest(table_dir, lambda m: m.update(phases=3) or m["env"].update(phases=3))
    with pytest.raises(TableError, match="its own checksum does not match"):
        Table.load(table_dir)
    edit_manifest(table_dir, lambda m: None, reseal=True)  # checksum fixed: the node count now disagrees
    with pytest.raises(TableError, match="nodes_per_seed 7 is not the size of a 3-phase tree"):
        Table.load(table_dir)
    edit_manifest(table_dir, lambda m: m.update(nodes_per_seed=15), reseal=True)  # that too: the records disagree
    with pytest.raises(TableError, match="does not hold the tree its manifest describes"):
        Table.load(table_dir)


def test_phases_stated_differently_in_two_places_are_refused(table_dir):
    edit_manifest(table_dir, lambda m: m["env"].update(phases=3), reseal=True)
    with pytest.raises(TableError, match="phases 2 / knowledge .* differ from its env section's 3"):
        Table.load(table_dir)


def test_a_seed_without_a_checksummed_file_is_refused(table_dir):
    write_seed(table_dir, 2, [])  # a forged seed file, listed under seeds but not under files
    edit_manifest(table_dir, lambda m: m["seeds"].append(2), reseal=True)
    with pytest.raises(TableError, match="not one checksummed file per seed"):
        Table.load(table_dir)


def test_a_manifest_without_its_own_checksum_is_refused(table_dir):
    edit_manifest(table_dir, lambda m: m.pop("manifest_sha256"))
    with pytest.raises(TableError, match="no checksum of itself"):
        Table.load(table_dir)


def test_a_seed_file_missing_a_subtree_is_refused_even_with_matching_checksums(table_dir):
    path = table_dir / seed_file(1)
    with gzip.open(path, "rt") as handle:
        records = [json.loads(line) for line in handle if json.loads(line)["history"][:1] != [1]]
    write_seed(table_dir, 1, records)
    edit_manifest(table_dir, lambda m: m["files"].update({seed_file(1): file_sha256(path)}), reseal=True)
    with pytest.raises(TableError, match=r"seed1.jsonl.gz does not hold the tree .*node \[1\] is missing"):
        Table.load(table_dir)


def test_an_unreadable_seed_file_is_refused_in_one_line(table_dir):
    path = table_dir / seed_file(0)
    path.write_bytes(gzip.compress(b"{not json\n"))
    edit_manifest(table_dir, lambda m: m["files"].update({seed_file(0): file_sha256(path)}), reseal=True)
    with pytest.raises(TableError, match="cannot be read as a table's seed file"):
        Table.load(table_dir)


def test_the_oracle_refuses_an_edited_table_instead_of_answering(table_dir, capsys, tmp_path):
    from tests.conftest import command

    edit_manifest(table_dir, lambda m: m.update(phases=4) or m["env"].update(phases=4))
    assert command("oracle").main(["--table", str(table_dir), "--output-dir", str(tmp_path / "o")]) == 2
    assert "inconsistent" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("seeds", [[0, 0, 0, 1], [0, 1.5], ["0"], [True], [], "0-0,0", "x", [-1]])
def test_the_table_env_refuses_seed_lists_that_repeat_or_are_not_whole_numbers(table_dir, seeds):
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.config import ConfigError

    with pytest.raises(ConfigError, match="distinct whole numbers"):
        KnowledgeSelectionTableEnv(Table.load(table_dir), seeds=seeds)


def test_one_seed_syntax_everywhere(table_dir):
    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.cli import parse_seeds

    assert parse_seeds("0-3,8") == [0, 1, 2, 3, 8] and parse_seeds([2, 0]) == [2, 0]
    env = KnowledgeSelectionTableEnv(Table.load(table_dir), seeds="1")
    assert env.seeds == [1] and env.reset(seed=0)[1]["table_seed"] == 1
    with pytest.raises(TableError, match="table_seed 1.0 is not among"):
        env.reset(options={"table_seed": 1.0})


def test_the_fast_action_path_agrees_with_the_one_action_check(tmp_path):
    """Agents' arrays take a fast path in the table env (bench/table_env.py: every space at CartPole's
    speed or more); it must give the subset the one action check gives, and everything it does not
    take (wrong dtype, shape, values, bools) still meets that check and its errors."""
    import itertools

    import numpy as np

    from kdenv.benchmark.table_env import KnowledgeSelectionTableEnv
    from kdenv.decision.env import action_weights

    table = synthetic_table(tmp_path, {0: {(a, b): 0.1 * (a + b) for a in range(2) for b in range(2)}})
    for space in ("discrete", "multibinary", "box"):
        env = KnowledgeSelectionTableEnv(table, action_space=space)
        if space == "discrete":
            actions = [0, 1, np.int64(1), np.int32(0), np.array(1), np.array([1])]
        elif space == "multibinary":
            actions = [np.array(bits, dtype=dtype) for bits in itertools.product((0, 1), repeat=1)
                       for dtype in (np.int8, np.int64, np.float32, bool)]
        else:
            actions = [np.array([value], dtype=dtype) for value in (-0.5, 0.0, 0.49, 0.5, 0.7, 3.0)
                       for dtype in (np.float32, np.float64)]
        for action in actions:
            weights = action_weights(action, env.knowledge, space)
            assert env.action_index(action) == sum(int(weights[n] >= 0.5) << k for k, n in enumerate(env.knowledge))
        bad = {"discrete": [2, -1, True, 0.0], "multibinary": [np.array([2]), np.array([0, 1]), np.array([0.5])],
               "box": [np.array([np.nan]), np.array([np.inf], dtype=np.float32), np.array([0.5, 0.5])]}[space]
        for action in bad:
            with pytest.raises(ValueError):
                env.action_index(action)
