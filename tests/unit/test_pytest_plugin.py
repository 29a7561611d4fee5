# The pytest plugin, exercised with pytester: options, markers, deselection, seeds.
from __future__ import annotations

import re

import pytest

from cyncsim.replay.seeds import SeedTree

PROBABILISTIC = """
import pytest

@pytest.mark.chaos_probabilistic
def test_statistical():
    pass

@pytest.mark.soak
def test_long():
    pass

@pytest.mark.chaos
def test_deterministic():
    pass

def test_plain():
    pass
"""


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    out = result.stdout.str()
    for marker in ("chaos:", "chaos_probabilistic:", "soak:"):
        assert f"@pytest.mark.{marker}" in out


def test_probabilistic_and_soak_do_not_run_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBABILISTIC)
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(passed=2, deselected=2)


def test_marker_expression_asks_for_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBABILISTIC)
    pytester.runpytest("-m", "chaos_probabilistic").assert_outcomes(passed=1, deselected=3)
    pytester.runpytest("-m", "soak").assert_outcomes(passed=1, deselected=3)
    pytester.runpytest("-m", "not chaos_probabilistic").assert_outcomes(passed=2, deselected=2)


def test_nightly_runs_everything(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PROBABILISTIC)
    pytester.runpytest("--cync-nightly").assert_outcomes(passed=4)


def test_seed_in_header_and_failure_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_uses_seed(cync_seed, cync_test_seed):
            print("SEEDS", cync_seed, cync_test_seed)
            assert False
        """
    )
    result = pytester.runpytest("--cync-seed=4242", "-s")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "cyncsim: seed 4242 (reproduce with --cync-seed=4242)" in out
    m = re.search(r"SEEDS 4242 (\d+)", out)
    assert m is not None
    test_seed = int(m.group(1))
    assert test_seed == SeedTree(4242).seed(
        "test_seed_in_header_and_failure_report.py::test_uses_seed"
    )
    assert f"this test's seed {test_seed}; reproduce with --cync-seed=4242" in out


def test_random_seed_is_drawn_and_printed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok(cync_seed):\n    print('ROOT', cync_seed)\n")
    result = pytester.runpytest("-s")
    out = result.stdout.str()
    header = re.search(r"cyncsim: seed (\d+) ", out)
    used = re.search(r"ROOT (\d+)", out)
    assert header and used and header.group(1) == used.group(1)


def test_seed_is_shared_by_xdist_workers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_seed(cync_seed, i, record_property):
            with open(f"seed-{i}.txt", "w") as f:
                f.write(str(cync_seed))
        """
    )
    result = pytester.runpytest("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=6)
    seeds = {(pytester.path / f"seed-{i}.txt").read_text() for i in range(6)}
    assert len(seeds) == 1


def test_chaos_factory_validates(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from cyncsim.replay.errors import ChaosConfigError

        def test_factory(cync_chaos):
            cfg = cync_chaos(packet_loss_rate=0.2, drop_pattern=[1, 3])
            assert cfg.packet_loss_rate == 0.2 and list(cfg.drop_pattern) == [1, 3]
            with pytest.raises(ChaosConfigError, match="packet_loss_rate"):
                cync_chaos(packet_loss_rate=1.5)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_model_fixture_default_and_override(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from cyncsim.captures import load_default_model

    model = load_default_model()
    small = tmp_path_factory.mktemp("m") / "small.msgpack"
    model.exchanges = model.exchanges[:1]
    model.save(small)
    pytester.makepyfile(
        """
        def test_model(cync_model):
            print("EXCHANGES", len(cync_model.exchanges))
        """
    )
    default = pytester.runpytest("-s").stdout.str()
    override = pytester.runpytest("-s", f"--cync-model={small}").stdout.str()
    n_default = int(re.search(r"EXCHANGES (\d+)", default).group(1))  # type: ignore[union-attr]
    n_override = int(re.search(r"EXCHANGES (\d+)", override).group(1))  # type: ignore[union-attr]
    assert n_default == len(load_default_model().exchanges) > 1
    assert n_override == 1


def test_derive_seed_is_stable_and_spread() -> None:
    assert SeedTree(1).seed("a") == SeedTree(1).seed("a")
    assert SeedTree(1).seed("a") != SeedTree(1).seed("b") != SeedTree(2).seed("a")
    assert 0 <= SeedTree(123).seed("x") < 1 << 63
