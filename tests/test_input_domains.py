"""Bad input at the boundary (issue 15): generated out-of-domain configs, dataset specs and
prompt files, run through the CLI in this process.

Every value is out of its field's domain by construction (a wrong type, a negative count,
NaN or infinity, a number too large for int32, a path where a plain name belongs, an unknown
key, malformed YAML, a top level that is not a mapping). Each must be refused with exit 2,
exactly one line on stderr, no traceback, and nothing written under the runs root, the
cache or the data dir (trees snapshotted before and after). Each test prints its counts.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import traceback
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from maskshare.cli import main
from maskshare.config import RunConfig, parse_config

NAN, INF = float("nan"), float("inf")
SETTINGS = dict(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ------------------------------------------------------------------ value generators
_junk_text = st.text(alphabet=st.characters(blacklist_categories=("Nd", "No", "Cs")),
                     max_size=12).filter(lambda s: s.strip().lower() not in
                                         {"inf", "infinity", "nan", "-inf", "+inf"})
_not_scalar = st.one_of(st.just({"x": 1}), st.lists(st.integers(), min_size=1, max_size=2)
                        .map(lambda xs: [xs]))
_bools = st.booleans()
_nonfinite = st.sampled_from([NAN, INF, -INF])


def _count(hi: int = 2**31 - 1):
    return st.one_of(st.integers(max_value=0), st.integers(min_value=hi + 1, max_value=2**70),
                     _bools, _junk_text, _nonfinite,
                     st.floats(0.01, 1e6).filter(lambda x: not x.is_integer()), _not_scalar)


_seed = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32, max_value=2**70),
                  _bools, _junk_text, _nonfinite, st.just(0.5), _not_scalar)
_nonneg = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31, max_value=2**70),
                    _bools, _junk_text, _nonfinite, _not_scalar)
_positive = st.one_of(st.floats(max_value=0.0), st.integers(max_value=0), _nonfinite, _bools,
                      _junk_text, _not_scalar)
_negative = st.one_of(st.floats(max_value=-1e-300), st.integers(max_value=-1), _nonfinite,
                      _bools, _junk_text, _not_scalar)
_finite = st.one_of(_nonfinite, _bools, _junk_text, _not_scalar)
_fraction = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), _nonfinite, _bools,
                      _junk_text, _not_scalar)
_flag = st.one_of(st.integers().filter(lambda i: i not in (0, 1)),
                  st.text(max_size=8).filter(lambda s: s.strip().lower() not in {
                      "0", "1", "off", "on", "f", "t", "false", "true", "n", "y", "no", "yes"}),
                  st.floats().filter(lambda x: x not in (0.0, 1.0)), _not_scalar)


def _enum(*allowed: str):
    return st.one_of(st.text(max_size=12).filter(lambda s: s not in allowed), st.integers(),
                     _nonfinite, _not_scalar)


_path_names = st.one_of(
    st.sampled_from(["../../evil", "..", "a/b", "/etc/x", ".hidden", "", " ", "a b", "a\nb",
                     "x" * 129, "runs/../..", "a\\b", "a..b"]),
    st.tuples(st.text(max_size=6), st.sampled_from(["/", "..", "\n", "\0", " "]),
              st.text(max_size=6)).map("".join),
    st.integers(), _not_scalar)
_one_line = st.one_of(st.sampled_from(["", " ", "a\nb", "x\0y"]), st.integers(), _not_scalar)
_hooks = st.one_of(st.just([]), st.just("blocks.0.hook_resid_post"),
                   st.lists(st.sampled_from(["x", "blocks.x.hook", "hook_embed", "", "blocks.0"]),
                            min_size=1, max_size=2), st.integers())


def _list_of(bad_item, *, empty_ok: bool = False):
    opts = [st.lists(bad_item, min_size=1, max_size=3), _junk_text, st.integers()]
    if not empty_ok:
        opts.append(st.just([]))
    return st.one_of(*opts)


# every leaf of RunConfig -> values outside its domain
CONFIG_FIELDS = {
    "name": _path_names, "seed": _seed, "model": _one_line,
    "device": st.one_of(st.sampled_from(["gpu", "", "cuda:x", "cpu\n", "CPU", "cuda:"]),
                        st.integers(), _not_scalar),
    "threads": _count(4096), "runs_dir": _one_line,
    "saes.source": _enum("embedded", "local", "pretrained"),
    "saes.paths": st.one_of(st.just([]), st.just([""]), st.just(["a\nb"]), st.integers(),
                            _not_scalar.map(lambda v: [v])),
    "saes.release": _one_line, "saes.sae_ids": st.one_of(st.just([""]), st.integers()),
    "saes.hooks": _hooks,
    # names with a '/' or a .yaml suffix are spec paths (refused later if no such file)
    "dataset.name": _path_names.filter(
        lambda v: not isinstance(v, str) or (v != "x" * 129 and "/" not in v and "\\" not in v)
    ) | st.just("Elements"),
    "dataset.variant": _enum("templated", "freeform"),
    "dataset.max_items": _count(), "dataset.min_items": _count(),
    "dataset.behaviour_filter": _flag,
    "dataset.validation.by": _enum("auto", "phrasing", "entity", "none"),
    "dataset.validation.fraction": _fraction | st.just(0.0),
    "dataset.validation.seed": _seed,
    "grouping.kind": _enum("attention", "template", "single", "from-end", "roles"),
    "grouping.n_slots": st.one_of(st.integers(max_value=2), st.integers(min_value=4097),
                                  _bools, _junk_text.filter(lambda s: s != "auto"), _nonfinite,
                                  st.just(2.5), _not_scalar),
    "grouping.n_slots_range": st.one_of(
        st.tuples(st.integers(5, 50), st.integers(1, 4)).map(list),  # low > high
        st.tuples(st.integers(max_value=0), st.integers(5, 9)).map(list),
        st.lists(st.integers(1, 9), max_size=1), st.lists(st.integers(1, 9), min_size=3),
        st.just([4, True]), _junk_text, st.just({"lo": 4})),
    "grouping.score": _enum("silhouette", "bic"),
    "grouping.clusterer": _enum("kmeans", "agglomerative", "gmm", "hdbscan"),
    "grouping.pca_components": st.one_of(st.integers(max_value=0), st.integers(min_value=4097),
                                         st.floats(min_value=1.0001), st.floats(max_value=0.0),
                                         _nonfinite, _bools, _junk_text, _not_scalar),
    "grouping.pin_bos": st.one_of(st.just(False), _flag),
    "grouping.pin_final": _flag, "grouping.from_end_k": _count(),
    "grouping.batch_size": _count(),
    **{f"grouping.features.{k}": _flag for k in ("from_final", "to_bos", "to_self", "to_prev",
                                                  "position_from_end", "log_scale")},
    "grouping.features.layers": _list_of(st.one_of(st.integers(max_value=-1), _bools,
                                                   _junk_text, st.just(0.5))),
    "grouping.features.layer_start_fraction": _fraction,
    "grouping.features.dtype": _enum("float32", "bfloat16"),
    "grouping.features.normalize": _enum("none", "uniform"),
    "grouping.features.position_weight": _positive | st.just(101.0),
    "grouping.pin_last": _count(),
    "grouping.ood_fallback": _enum("nearest", "position"),
    "masks.objective": _enum("logit-diff", "kl", "ce"),
    "masks.ablation": _enum("slot-mean", "global-mean", "zero", "counterfactual"),
    "masks.error": _enum("clean", "mean", "drop"),
    "masks.relaxation": _enum("sigmoid", "hard-concrete"),
    "masks.scale": _enum("task", "none"),
    "masks.lambdas": st.one_of(_list_of(_negative.filter(lambda v: not isinstance(v, list))),
                               st.floats(0.001, 1).map(lambda x: [x, x]),
                               st.just([0.01, 0.0100000001])),
    "masks.steps": _count(), "masks.lr": _positive, "masks.batch_size": _count(),
    "masks.temperature_start": _positive, "masks.temperature_end": _positive,
    "masks.init_logit": _finite, "masks.checkpoint_every": _count(),
    "masks.max_train_prompts": _count(), "masks.early_stop_patience": _count(),
    "masks.early_stop_min_steps": _nonneg, "masks.init": _enum("cold", "attribution"),
    "masks.init_open_ratio": _positive, "masks.continue_sweep": _flag,
    "masks.warm_steps": _count(),
    "masks.sweep.refine": _flag, "masks.sweep.budget": _nonneg | st.just(65),
    "masks.sweep.max_ratio": _positive | st.just(1.0), "masks.sweep.dense_f": _finite,
    "masks.sweep.sparse_size": _negative, "masks.sweep.extend": _positive | st.just(0.5),
    "masks.sweep.sizes": _list_of(_positive.filter(lambda v: not isinstance(v, list)),
                                  empty_ok=True),
    "masks.sweep.size_tolerance": _positive | st.just(1.0),
    "masks.validation_stop.every": _count(), "masks.validation_stop.patience": _count(),
    "masks.validation_stop.prompts": _count(), "masks.validation_stop.min_gain": _negative,
    "evaluate.seeds": st.one_of(_list_of(_seed.filter(lambda v: not isinstance(v, list))),
                                st.integers(0, 9).map(lambda s: [s, s])),
    "evaluate.baselines": _list_of(_enum("attention", "template", "single", "from-end",
                                         "roles"), empty_ok=True),
    "evaluate.ablations": _list_of(_enum("slot-mean", "global-mean", "zero", "counterfactual"),
                                   empty_ok=True),
    "evaluate.matched_latents_per_token": _positive,
    "evaluate.select_split": _enum("validation", "train", "test_phrasing", "test_entity",
                                   "test_both"),
    "evaluate.select_limit": _count(), "evaluate.target_f": _positive,
    "evaluate.train_floor": _finite,
    "evaluate.own_latents.k": st.one_of(st.integers(max_value=-1),
                                        st.integers(min_value=4097, max_value=2**70), _bools,
                                        _junk_text, _nonfinite, st.just(0.5), _not_scalar),
    "evaluate.own_latents.by": _enum("activation", "deviation"),
    "evaluate.own_latents.roles": st.one_of(st.just([]), st.just([""]), st.just(["a\nb"]),
                                            st.integers(), _not_scalar.map(lambda v: [v])),
    "attribution.methods": st.one_of(_list_of(_enum("atp", "ig"), empty_ok=True),
                                     st.just(["ig", "ig"])),
    "attribution.ig_steps": _count(1000), "attribution.variants": _enum("main", "all"),
}
# out of domain only together: annealing downwards; every attention feature off
CONFIG_COMBOS = [
    {"masks.temperature_start": 5.0, "masks.temperature_end": 1.0},
    {"grouping.n_slots": "auto", "grouping.n_slots_range": [2, 3]},
    {"grouping.n_slots": "auto", "grouping.pin_final": False, "grouping.n_slots_range": [1, 2]},
    {f"grouping.features.{k}": False for k in ("from_final", "to_bos", "to_self", "to_prev",
                                               "position_from_end")},
    {"saes.source": "local", "saes.paths": []},
    {"saes.source": "pretrained", "saes.release": None},
]
MALFORMED_YAML = ["name: x\nmasks: [unclosed\n", "a: b: c\n", "masks:\n\t- 1\n", "name: 'open\n",
                  "{", "- [\n", "name: x\n  bad: indent\n", "!!python/object:os.system x\n",
                  "&a [*a, *b]\n", "? [a\n", "%YAML 9.9\n---\nx: 1\n"]
NOT_A_MAPPING = ["- a\n- b\n", "just text\n", "42\n", "[1, 2]\n", "3.5\n", "true\n", "'x'\n"]
UNKNOWN_KEYS = ["", "saes", "dataset", "grouping", "grouping.features", "masks", "evaluate"]


def schema_leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= schema_leaves(ann, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def set_path(data: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    d = data
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


@st.composite
def bad_config_texts(draw, base: dict) -> tuple[str, str]:
    """(kind, YAML text) of a config that is out of domain."""
    kind = draw(st.sampled_from(["field", "field", "field", "fields", "combo", "unknown",
                                 "section", "yaml", "top"]))
    if kind == "yaml":
        return kind, draw(st.sampled_from(MALFORMED_YAML))
    if kind == "top":
        return kind, draw(st.sampled_from(NOT_A_MAPPING))
    data = copy.deepcopy(base)
    if kind in ("field", "fields"):
        paths = draw(st.lists(st.sampled_from(sorted(CONFIG_FIELDS)), min_size=1,
                              max_size=1 if kind == "field" else 3, unique=True))
        for p in paths:
            set_path(data, p, draw(CONFIG_FIELDS[p]))
        kind = f"field {paths[0]}"
    elif kind == "combo":
        for p, v in draw(st.sampled_from(CONFIG_COMBOS)).items():
            set_path(data, p, v)
    elif kind == "unknown":
        where = draw(st.sampled_from(UNKNOWN_KEYS))
        set_path(data, f"{where}.{draw(st.sampled_from(['bogus', 'lambda', 'Name', '']))}"
                 .lstrip("."), 1)
    else:  # a whole section of the wrong type
        sec = draw(st.sampled_from(["saes", "dataset", "grouping", "masks", "evaluate"]))
        data[sec] = draw(st.one_of(st.none(), st.integers(), _junk_text, st.just([1])))
    return kind, yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def tree(*roots: Path) -> set[tuple[str, int, int]]:
    """Every path under `roots` with its size and mtime."""
    out = set()
    for r in roots:
        for p in [r, *r.rglob("*")] if r.exists() else []:
            s = p.lstat()
            out.add((str(p), s.st_size, s.st_mtime_ns))
    return out


def run_cli(argv: list[str]) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, traceback text or "") of the CLI run in this process."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:
        return -1, err.getvalue().splitlines(), traceback.format_exc()
    text = err.getvalue()
    return code, [ln for ln in text.splitlines() if ln.strip()], \
        text if "Traceback" in text else ""


class Tally(Counter):
    """Counts of generated bad inputs: cases, refused in one line, tracebacks, files written;
    `kinds` counts the cases by kind of mutation."""

    def __init__(self):
        super().__init__()
        self.kinds = Counter()

    def record(self, code, lines, tb, written) -> None:
        self["cases"] += 1
        self["refused"] += code == 2 and len(lines) == 1
        self["tracebacks"] += bool(tb)
        self["written"] += bool(written)

    def refused_in_one_line(self, argv: list[str], watched, kind: str, text: str) -> list[str]:
        """Run the CLI on one bad input: it must exit 2 with one line and write nothing
        under `watched`; returns the line(s)."""
        before = tree(*watched)
        code, lines, tb = run_cli(argv)
        written = tree(*watched) ^ before
        self.record(code, lines, tb, written)
        self.kinds[kind.split()[0]] += 1
        assert not tb, tb
        assert code == 2 and len(lines) == 1, (kind, text, code, lines)
        assert not written
        return lines

    def check_all_refused(self, what: str, at_least: int) -> None:
        print(f"\nrefused {self['refused']}/{self['cases']} generated {what} with one line "
              f"and exit 2 ({dict(self.kinds)}); {self['written']} wrote files, "
              f"{self['tracebacks']} tracebacks")
        assert self["cases"] >= at_least and self["refused"] == self["cases"]
        assert self["written"] == self["tracebacks"] == 0


# ------------------------------------------------------------------ configs
@pytest.fixture
def config_env(tmp_path, monkeypatch):
    from maskshare.testing import write_tiny_run_setup

    base = yaml.safe_load(write_tiny_run_setup(tmp_path / "setup").read_text())
    base["runs_dir"] = str(tmp_path / "runs")
    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MASKSHARE_DATA", str(tmp_path / "data"))
    (tmp_path / "cache").mkdir()
    parse_config(base)  # the base is valid: every refusal is the mutation's doing

    import maskshare.stages.pipeline

    def accepted(cfg):  # a config that gets this far was not refused at the boundary
        raise AssertionError(f"accepted: {cfg.model_dump(mode='json')}")

    monkeypatch.setattr(maskshare.stages.pipeline, "run_pipeline", accepted)
    return tmp_path, base


def test_generator_covers_every_config_field():
    assert set(CONFIG_FIELDS) == schema_leaves(RunConfig)


def test_generated_bad_configs_are_refused_in_one_line_and_write_nothing(config_env):
    root, base = config_env
    watched = (root / "runs", root / "cache", root / "data")
    tally = Tally()

    @settings(max_examples=600, **SETTINGS)
    @given(case=bad_config_texts(base))
    def check(case):
        kind, text = case
        p = root / "bad.yaml"
        p.write_text(text, encoding="utf-8")
        lines = tally.refused_in_one_line(["run", "--config", str(p), "--no-prefect"],
                                          watched, kind, text)
        assert lines[0].startswith("maskshare run: ") and str(p) in lines[0]

    check()
    tally.check_all_refused("configs", at_least=300)


def test_config_not_utf8_or_missing_is_one_line(config_env):
    root, _ = config_env
    p = root / "bin.yaml"
    p.write_bytes(b"name: x\n\xff\xfe\x00")
    for argv in (["run", "--config", str(p), "--no-prefect"],
                 ["run", "--config", str(root / "nope.yaml"), "--no-prefect"],
                 ["run", "--config", str(root), "--no-prefect"]):
        code, lines, tb = run_cli(argv)
        assert code == 2 and len(lines) == 1 and not tb, lines


def test_messages_name_the_field_and_what_is_allowed():
    from maskshare.errors import UserError

    cases = [("name", "../../evil", "plain name"),
             ("masks.lambdas", [-1], "greater than or equal to 0"),
             ("masks.lr", NAN, "greater than 0"), ("masks.init_logit", NAN, "finite"),
             ("masks.steps", True, "not true/false"),
             ("evaluate.seeds", [], "at least 1"), ("runs_dir", "", "non-empty"),
             ("grouping.n_slots_range", [9, 4], "low must be <= high"),
             ("seed", -1, "greater than or equal to 0"), ("threads", 10**12, "less than")]
    for path, value, says in cases:
        data: dict = {}
        set_path(data, path, value)
        with pytest.raises(UserError) as e:
            parse_config(data, "c.yaml")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("c.yaml: ") and says in msg, msg
        assert path.split(".")[0] in msg, msg


def test_valid_configs_keep_their_dumped_form_and_run_directory():
    from maskshare.config import dump_config, load_config
    from maskshare.runtime import PROJECT_ROOT

    for p in sorted((PROJECT_ROOT / "configs").glob("*.yaml")):
        cfg = load_config(p)
        assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg
    # float fields given as ints dump as floats, as before the domains were added
    cfg = parse_config({"masks": {"lr": 1, "lambdas": [1, 0.5]}, "seed": 3,
                        "grouping": {"pca_components": 0.9, "n_slots": 5}})
    assert cfg.model_dump(mode="json")["masks"]["lr"] == 1.0
    assert isinstance(cfg.masks.lr, float) and cfg.grouping.n_slots == 5


# ------------------------------------------------------------------ dataset specs
BASE_SPEC = {"name": "metals", "source": {"table": "metals.csv"}, "entity": "element",
             "answer": "sym",
             "freeform": [{"id": 0, "text": "The chemical symbol for {element} is"},
                          {"id": 1, "text": "Which symbol stands for {element}? Answer:",
                           "held_out": True}]}
SPEC_FIELDS = {
    "name": st.one_of(_path_names, st.sampled_from(["Metals", "my metals", "metals!"])),
    "description": st.one_of(st.integers(), _not_scalar),
    "source": st.one_of(st.just({}), st.just({"table": "metals.csv", "generator": "x"}),
                        st.just({"table": "metals.csv", "params": {"a": 1}}), st.integers(),
                        st.just({"table": ""}), st.just({"table": "a\nb.csv"}),
                        st.just({"generator": ""}), st.just({"table": "metals.csv", "x": 1})),
    "entity": st.one_of(_one_line, st.just("no_such_column")),
    "answer": st.one_of(_one_line, st.just("no_such_column")),
    "answer_prefix": st.one_of(st.integers(), _not_scalar),
    "answer_mode": _enum("full", "first_token"),
    "roles": st.one_of(st.just({"element": "final"}), st.just({"element": "Bad Role"}),
                       st.just({"": "subject"}), st.just({"element": "bos"}), st.integers(),
                       st.just(["element"])),
    "templated": st.one_of(st.just({"id": 0, "text": ""}), st.just({"id": -1, "text": "x"}),
                           st.just({"id": 0, "text": "{element} is", "held_out": True}),
                           st.just({"id": True, "text": "x"}), st.integers()),
    "freeform": st.one_of(
        st.just([]),
        st.sampled_from([{"id": 0, "text": "a {element}"}, {"id": 0, "text": "b {element}"}])
        .map(lambda p: [p, {**p, "held_out": True}]),  # repeated ids
        st.just([{"id": 0, "text": "a {element}"}]),  # nothing held out
        st.just([{"id": 0, "text": "a {element}", "held_out": True}]),  # all held out
        st.sampled_from(["[[open {element}", "{element:shout}", "{", "x }", "[[a|final]] {element}",
                         ""]).map(lambda t: [{"id": 0, "text": t},
                                             {"id": 1, "text": "{element}", "held_out": True}]),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31), _bools, _junk_text)
        .map(lambda i: [{"id": i, "text": "{element}"},
                        {"id": 1, "text": "{element} ?", "held_out": True}]),
        st.just([{"id": 0, "text": "{element}", "where": {"": "x"}},
                 {"id": 1, "text": "{element}", "held_out": True}]),
        st.integers(), _junk_text),
    "split.test_fraction": _fraction, "split.seed": _seed, "counterfactual_seed": _seed,
}


@st.composite
def bad_spec_texts(draw) -> tuple[str, str]:
    kind = draw(st.sampled_from(["field", "field", "field", "unknown", "yaml", "top"]))
    if kind == "yaml":
        return kind, draw(st.sampled_from(MALFORMED_YAML))
    if kind == "top":
        return kind, draw(st.sampled_from(NOT_A_MAPPING))
    data = copy.deepcopy(BASE_SPEC)
    if kind == "unknown":
        where = draw(st.sampled_from(["", "source", "split", "phrasing"]))
        if where == "phrasing":
            data["freeform"][0]["colour"] = 1
        else:
            set_path(data, f"{where}.bogus".lstrip("."), 1)
        return kind, yaml.safe_dump(data, sort_keys=False)
    path = draw(st.sampled_from(sorted(SPEC_FIELDS)))
    set_path(data, path, draw(SPEC_FIELDS[path]))
    return f"field {path}", yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def test_generated_bad_dataset_specs_are_refused_by_datasets_add(tmp_path, monkeypatch):
    data_dir, src = tmp_path / "data", tmp_path / "in"
    src.mkdir()
    (src / "metals.csv").write_text("element,sym\ngold,Au\nsilver,Ag\ncopper,Cu\niron,Fe\n")
    monkeypatch.setenv("MASKSHARE_DATA", str(data_dir))
    monkeypatch.setenv("MASKSHARE_CACHE", str(tmp_path / "cache"))
    tally = Tally()

    @settings(max_examples=300, **SETTINGS)
    @given(case=bad_spec_texts())
    def check(case):
        kind, text = case
        p = src / "spec.yaml"
        p.write_text(text, encoding="utf-8")
        tally.refused_in_one_line(["datasets", "add", str(p)], (data_dir, tmp_path / "cache"),
                                  kind, text)

    check()
    tally.check_all_refused("dataset specs", at_least=150)
    # the unmutated spec is accepted: the refusals were the mutations' doing
    (src / "spec.yaml").write_text(yaml.safe_dump(BASE_SPEC))
    code, lines, tb = run_cli(["datasets", "add", str(src / "spec.yaml")])
    assert code == 0 and not tb, lines


def test_generator_covers_every_dataset_spec_field():
    from maskshare.datasets.spec import DatasetSpec

    leaves = schema_leaves(DatasetSpec)
    # phrasing fields are mutated inside `templated` / `freeform`; source's as a whole
    covered = set(SPEC_FIELDS) | {"source.table", "source.generator", "source.params"}
    assert leaves <= covered, leaves - covered


# ------------------------------------------------------------------ prompt files
GOOD = [{"prompt": "The chemical symbol for gold is", "answer": " Au", "counterfactual": " Ag"},
        {"prompt": "The chemical symbol for copper is", "answer": " Cu"},
        {"prompt": "Element: Silver\nSymbol:", "answer": " Ag", "counterfactual": " Au"}]
_bad_line = st.one_of(
    st.sampled_from(["{", "[1, 2]", "5", '"text"', "null", "{}", '{"answer": " Au"}',
                     '{"prompt": 5, "answer": " Au"}', '{"prompt": "", "answer": " Au"}',
                     '{"prompt": "   ", "answer": " Au"}', '{"prompt": "gold is"}',
                     '{"prompt": "gold is", "answer": ""}',
                     '{"prompt": "gold is", "answer": " Goldilocks", "counterfactual": " Gold"}',
                     '{"prompt": "gold is", "answer": " Au", "counterfactual": " Au"}',
                     '{"prompt": "gold is", "answer": " Au", "counterfactual": ""}',
                     json.dumps({"prompt": "gold " * 100, "answer": " Au"}),
                     '{"prompt": "gold is", "answer": [" Au"]}']),
    st.text(max_size=30).filter(lambda s: s.strip() and len(s.splitlines()) == 1
                                and not _is_prompt_object(s)))


def _is_prompt_object(s: str) -> bool:
    try:
        x = json.loads(s)
    except ValueError:
        return False
    return isinstance(x, dict) and "prompt" in x


def test_generated_prompt_files_skip_bad_lines_one_line_each(finished_tiny_run, monkeypatch):
    import re

    _, run, cache = finished_tiny_run
    monkeypatch.setenv("MASKSHARE_CACHE", str(cache))
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    tally = Counter()
    prompts = run.parent.parent / "prompts.jsonl"

    @settings(max_examples=40, **SETTINGS)
    @given(lines=st.lists(st.one_of(st.tuples(st.just("good"), st.sampled_from(GOOD)
                                              .map(json.dumps)),
                                    st.tuples(st.just("bad"), _bad_line)), max_size=6))
    def check(lines):
        prompts.write_text("\n".join(t for _, t in lines), encoding="utf-8")
        n_bad = sum(k == "bad" for k, _ in lines)
        before = tree(run, cache)
        code, err, tb = run_cli(["eval", "--run", str(run), "--prompts", str(prompts)])
        tally["files"] += 1
        tally["bad lines"] += n_bad
        assert not tb, tb
        assert tree(run, cache) == before
        if any(k == "good" for k, _ in lines):
            assert code == 0, err
            skipped = [ln for ln in err if ln.startswith("skipped line ")]
            assert len(skipped) == n_bad, (lines, err)
            rest = [ln for ln in err if ln not in skipped]
            assert all(re.match(r"^(\d+ of \d+ prompts skipped|note: .*)$", ln) for ln in rest), \
                err
            tally["skipped, one line each"] += len(skipped)
        else:  # nothing usable: refused whole, one line
            assert code == 2 and len(err) == 1, err
            tally["refused whole"] += 1

    check()
    print(f"\nprompt files: {dict(tally)}; 0 tracebacks, 0 files written")
    assert tally["skipped, one line each"] + 0 >= 1 and tally["refused whole"] >= 1
    assert tally["skipped, one line each"] <= tally["bad lines"]


def test_nan_is_not_a_valid_yaml_float_anywhere():
    # YAML's .nan / .inf load as floats: the float fields must refuse them
    for field in ("masks.lr", "masks.init_logit", "masks.temperature_start",
                  "grouping.features.layer_start_fraction",
                  "evaluate.matched_latents_per_token"):
        for v in (".nan", ".inf", "-.inf"):
            *parents, leaf = field.split(".")
            text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + \
                f"{'  ' * len(parents)}{leaf}: {v}\n"
            data = yaml.safe_load(text)
            assert math.isnan(_get(data, field)) or math.isinf(_get(data, field))
            with pytest.raises(Exception) as e:
                parse_config(data)
            assert type(e.value).__name__ == "UserError"


def _get(data: dict, path: str):
    for p in path.split("."):
        data = data[p]
    return data


def test_sweep_overrides_are_checked_against_the_domains():
    from flows.sweep import sweep_configs
    from maskshare.errors import UserError

    with pytest.raises(UserError, match=r"masks\.lambdas: item 0: Input should be greater than or"):
        sweep_configs(RunConfig(), lambdas=[-1.0])
    with pytest.raises(UserError, match="name: must be a plain name"):
        sweep_configs(RunConfig(), datasets=["../x"])
    assert [c.masks.lambdas for c in sweep_configs(RunConfig(), lambdas=[0.1, 0.2])] == \
        [[0.1, 0.2]]
