"""Run configs: defaults round-trip, and bad configs are one clear line with exit 2."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskshare.cli import main
from maskshare.config import RunConfig, dump_config, load_config, parse_config
from maskshare.errors import UserError


def test_default_config_round_trips_through_yaml():
    cfg = RunConfig()
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg


def test_shipped_default_config_is_valid():
    from maskshare.runtime import PROJECT_ROOT

    cfg = load_config(PROJECT_ROOT / "configs" / "default.yaml")
    assert cfg.model == "smollm2-135m" and cfg.dataset.variant == "freeform"


def _run_cli(tmp_path, text, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    before = sorted(tmp_path.rglob("*"))
    code = main(["run", "--config", str(p), "--no-prefect"])
    err = capsys.readouterr().err.strip().splitlines()
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    return code, err


def test_unknown_field_is_rejected_with_its_name(tmp_path, capsys):
    code, err = _run_cli(tmp_path, "masks:\n  lambdass: [0.1]\n", capsys)
    assert code == 2 and len(err) == 1 and "masks.lambdass" in err[0]


def test_wrong_type_is_rejected(tmp_path, capsys):
    code, err = _run_cli(tmp_path, "masks:\n  steps: many\n", capsys)
    assert code == 2 and len(err) == 1 and "masks.steps" in err[0]


def test_unknown_grouping_is_rejected(tmp_path, capsys):
    code, err = _run_cli(tmp_path, "grouping:\n  kind: telepathy\n", capsys)
    assert code == 2 and len(err) == 1 and "grouping.kind" in err[0]


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    code, err = _run_cli(tmp_path, "name: x\nmasks: [unclosed\n", capsys)
    assert code == 2 and len(err) == 1 and "malformed YAML" in err[0]


def test_missing_config_file(tmp_path, capsys):
    code = main(["run", "--config", str(tmp_path / "nope.yaml"), "--no-prefect"])
    assert code == 2 and "cannot read config" in capsys.readouterr().err


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     st.text(max_size=8))
_values = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                     st.dictionaries(st.text(max_size=8), c, max_size=3)),
                       max_leaves=8)
_keys = st.sampled_from(["name", "seed", "model", "saes", "dataset", "grouping", "masks",
                         "evaluate", "bogus", "threads"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(_values, st.dictionaries(_keys, _values, max_size=4)))
def test_generated_configs_are_accepted_or_rejected_with_a_message(data):
    try:
        cfg = parse_config(data, "generated")
    except UserError as e:
        msg = str(e)
        assert msg.startswith("generated") and "\n" not in msg
    else:
        assert isinstance(cfg, RunConfig)


def test_every_shipped_config_is_valid_and_has_a_nightly_deployment():
    from flows.deployments import deployment_specs, prefect_yaml
    from maskshare.runtime import PROJECT_ROOT

    configs = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))
    assert configs
    for p in configs:
        load_config(p)
    specs = deployment_specs()
    assert [s.config for s in specs] == configs
    # prefect.yaml is generated from the same registry that `maskshare serve` serves
    text = (PROJECT_ROOT / "prefect.yaml").read_text()
    assert text == prefect_yaml(specs), "prefect.yaml is stale: run `python -m flows.deployments`"
    decl = yaml.safe_load(text)["deployments"]
    assert {d["parameters"]["config_path"] for d in decl} == {f"configs/{p.name}" for p in configs}
    assert all(d["entrypoint"] == "flows/pipeline.py:pipeline_flow" for d in decl)
