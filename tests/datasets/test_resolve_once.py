"""A run parses its dataset spec and reads and hashes its source table once (its input
checks, its directory's name and its dataset stage all ask for them), and a changed table
is read again."""

from __future__ import annotations

from collections import Counter

import maskshare.datasets.registry as registry
import maskshare.datasets.sources as sources
from maskshare.config import load_config
from maskshare.run.resources import dataset_fingerprint, prepare_run
from maskshare.stages import dataset
from maskshare.testing import write_tiny_run_setup


def _counting(monkeypatch) -> Counter:
    calls = Counter()
    parse, load = registry.read_spec_file, sources._load_source

    def counted_parse(path):
        calls["spec"] += 1
        return parse(path)

    def counted_load(spec, spec_dir):
        calls["source"] += 1
        return load(spec, spec_dir)

    monkeypatch.setattr(registry, "read_spec_file", counted_parse)
    monkeypatch.setattr(sources, "_load_source", counted_load)
    registry._parsed_spec.cache_clear()
    monkeypatch.setattr(sources, "_LOADED", {})
    return calls


def test_a_run_resolves_its_spec_and_source_once(dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKSHARE_THREADS", "1")
    cfg = load_config(write_tiny_run_setup(tmp_path))
    calls = _counting(monkeypatch)
    run = prepare_run(cfg)
    dataset.build(run)
    assert calls == {"spec": 1, "source": 1}


def test_a_changed_table_is_read_again(dirs, tmp_path, monkeypatch):
    data, _ = dirs
    (data / "datasets").mkdir()
    (data / "sources").mkdir()
    table = data / "sources" / "metals.csv"
    table.write_text("name,symbol\ngold,Au\nsilver,Ag\ncopper,Cu\n")
    (data / "datasets" / "metals.yaml").write_text(
        f"name: metals\nsource: {{table: {table}}}\nentity: name\nanswer: symbol\n"
        "answer_prefix: ' '\ntemplated: {id: 0, text: 'The symbol for {name} is'}\n"
        "freeform: [{id: 0, text: 'The symbol for {name} is'},\n"
        "           {id: 1, text: 'Symbol of {name}:', held_out: true}]\n")
    cfg = load_config(write_tiny_run_setup(tmp_path, dataset="metals"))
    calls = _counting(monkeypatch)
    first = dataset_fingerprint(cfg)
    assert dataset_fingerprint(cfg) == first and calls["source"] == 1
    table.write_text("name,symbol\ngold,Au\nsilver,Ag\ntin,Sn\nlead,Pb\n")
    assert dataset_fingerprint(cfg) != first and calls["source"] == 2
