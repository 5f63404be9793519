"""Every command the tables and plots tell a reader to run to fill their measured cells (``fill`` and
``fill_by_dataset`` in reports/published.yaml, reports.plots.DDIM_FILL) names a grid that exists, validates
(``python -m bench.run --grid G --dry-run``, in process) and produces the rows it is offered for.

The paper-scale grids read their data sets through ``$WAVEBENCH_DATA``: the module points it at a temporary
folder of minimal fake data sets (a few tiny PNGs per image folder, CIFAR-10 python batches made with pickle),
one per data set preset, so validation checks the paths for real."""
import shlex

import pytest

from bench import registry
from bench.config import ConfigError
from bench.data import DATA_ENV
from bench.run import load_grid, validate
from bench.run import main as run_main
from reports import plots, table
from conftest import fake_datasets

PUB = table.load_published()


def _fill_commands() -> list[tuple[str, str, str | None, str]]:
    """(id, table, data set or None for the table's own, command) of every fill command."""
    out = [(f"{name}-{dataset or 'fill'}", name, dataset, cmd) for name, spec in PUB["tables"].items()
           for dataset, cmd in table.fill_commands(spec).items()]
    return out + [("plots-DDIM_FILL", "ddim", None, plots.DDIM_FILL)]


COMMANDS = _fill_commands()


@pytest.fixture(scope="module")
def data_env(tmp_path_factory):
    root = fake_datasets(tmp_path_factory.mktemp("datasets"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(root))
        yield root


def _has_configuration(variant: str, dataset: str, scale: str) -> bool:
    try:
        registry.default_config(variant, dataset, scale)
    except ConfigError:
        return False
    return True


def test_every_table_and_plot_names_its_fill_command():
    assert {name for _, name, _, _ in COMMANDS} == set(PUB["tables"])
    assert all(cmd.strip() for *_, cmd in COMMANDS)
    # The grids the tables need at paper scale, one per published data set.
    grids = {shlex.split(cmd)[4] for *_, cmd in COMMANDS}
    for name in ("stl10", "celebahq256", "celebahq512", "celebahq1024", "lsun_church"):
        assert f"experiments/{name}.yaml" in grids


@pytest.mark.parametrize("name,dataset,command", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_fill_command_is_a_valid_grid_for_its_rows(data_env, name, dataset, command, capsys):
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "bench.run", "--grid"] and len(argv) == 5, command
    assert run_main(argv[3:] + ["--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    configs = validate(load_grid(argv[4]))
    assert f"{len(configs)} jobs" in out
    spec = PUB["tables"][name]
    # Its runs land in the table: on the data set it is offered for, or one the table shows.
    produced = {(c.dataset, c.scale) for c in configs}
    for ds, _ in produced:
        assert ds == dataset if dataset else (spec.get("datasets") is None or ds in spec["datasets"]), (ds, command)
    # It fills every row a variant with a configuration for that data set reproduces.
    variants = {c.variant for c in configs}
    for ds, scale in produced:
        rows = {v for r in spec["rows"] for v in r.get("variants") or [] if _has_configuration(v, ds, scale)}
        assert rows, (name, ds)
        assert rows <= variants, (command, sorted(rows - variants))


def test_an_invalid_fill_command_fails(data_env, capsys, monkeypatch):
    """The check above catches a wrong grid name (published.yaml used to say experiments/ddim.yaml) and a
    missing data set (WAVEBENCH_DATA not set)."""
    assert run_main(["--grid", "experiments/ddim.yaml", "--dry-run"]) == 2
    assert "grid 'experiments/ddim.yaml' not found" in capsys.readouterr().err
    monkeypatch.delenv(DATA_ENV)
    assert run_main(["--grid", "experiments/stl10.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.root=$WAVEBENCH_DATA/stl10 uses $WAVEBENCH_DATA, which is not set" in err
    assert "$WAVEBENCH_DATA/cifar10 = the folder containing cifar-10-batches-py" in err


def test_job_hashes_do_not_depend_on_where_the_data_is(tmp_path, monkeypatch):
    """The config keeps ``$WAVEBENCH_DATA/<preset>``; the path is expanded only to check and load the data."""
    hashes = []
    for where in ("a", "b"):
        monkeypatch.setenv(DATA_ENV, str(fake_datasets(tmp_path / where)))
        configs = validate(load_grid("experiments/celebahq256.yaml"))
        assert {c.data.root for c in configs} == {"$WAVEBENCH_DATA/celebahq256"}
        hashes.append([(registry.job_hash(c), registry.train_hash(c)) for c in configs])
    assert hashes[0] == hashes[1]
