"""validation.py: the strict base, the one-line validation message, the YAML file loader
(shared by run configs and dataset specs)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError, model_validator

from maskshare.errors import UserError
from maskshare.validation import Strict, read_yaml_file, validation_message


class Inner(Strict):
    n: int = 1


class Outer(Strict):
    inner: Inner = Inner()
    name: str = "x"

    @model_validator(mode="after")
    def _check(self):
        if self.name == "bad":
            raise ValueError("name must not be 'bad'")
        return self


def _message(data) -> str:
    with pytest.raises(ValidationError) as e:
        Outer.model_validate(data)
    return validation_message(e.value, "f.yaml")


def test_unknown_fields_are_rejected_with_their_path():
    assert _message({"inner": {"m": 1}}).startswith("f.yaml: inner.m: Extra inputs")


def test_message_counts_further_errors_and_drops_the_value_error_prefix():
    msg = _message({"inner": {"n": "x"}, "nme": 1})
    assert msg.startswith("f.yaml: inner.n: ") and msg.endswith(" (and 1 more)")
    assert _message({"name": "bad"}) == "f.yaml: name must not be 'bad'"
    # an unknown key with a line break stays on one line, quoted
    assert _message({"a\nb": 1}) == "f.yaml: 'a\\nb': Extra inputs are not permitted"


def test_yaml_loader_errors_are_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    with pytest.raises(UserError, match=f"cannot read config {p}"):
        read_yaml_file(p, "config")
    p.write_bytes(b"a: 1\n\xff\xfe")
    with pytest.raises(UserError, match=r"not UTF-8 text \(byte 5\)"):
        read_yaml_file(p)
    p.write_text("a: 1\nb: [unclosed\nc: 2\n")
    with pytest.raises(UserError) as e:
        read_yaml_file(p)
    assert "malformed YAML at line" in str(e.value) and "\n" not in str(e.value)
    p.write_text("a: [1, 2]\n")
    assert read_yaml_file(p) == {"a": [1, 2]}
    p.write_text("")
    assert read_yaml_file(p) is None
