"""Text sampled from the model: left-padded batches, seeded shards, resume, the fast
activation path of the HF form of the model."""

from __future__ import annotations

import pytest
import torch

from maskshare.errors import UserError
from maskshare.saes.corpus import CorpusConfig, build_corpus
from maskshare.saes.corpus_sampling import (
    HELDOUT_OPENINGS,
    TRAIN_OPENINGS,
    SamplingConfig,
    openings,
    sample_batch,
    sampled_rows,
)
from maskshare.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def hf():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_openings_are_seeded_and_split_by_template():
    assert openings("train", 50, 0) == openings("train", 50, 0)
    assert openings("train", 50, 0) != openings("train", 50, 1)
    assert set(TRAIN_OPENINGS).isdisjoint(HELDOUT_OPENINGS)


def test_a_left_padded_batch_continues_each_prompt_as_it_would_alone(hf):
    greedy = SamplingConfig(top_k=1, start_token=None)  # deterministic: the batch must not change any row
    prompts = [[1, 5, 6, 7, 8, 9], [1, 10], [1, 11, 12, 13]]
    batch = sample_batch(hf, prompts, 16, greedy, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 16)
    for p, row in zip(prompts, batch, strict=True):
        assert row[:len(p)].tolist() == p
        alone = sample_batch(hf, [p], 16, greedy, torch.Generator().manual_seed(0))
        assert torch.equal(alone[0], row)


def test_sampled_shards_are_seeded_and_resume(hf, tmp_path):
    tok = tiny_tokenizer()
    cfg = SamplingConfig(batch_rows=4, start_token=None)
    rows = sampled_rows(hf, tok, "train", 10, 24, 0, cfg, tmp_path)
    assert rows.shape == (10, 24) and (rows[:, 0] == tok.bos_token_id).all()
    shards = sorted(tmp_path.glob("train-*.safetensors"))
    assert len(shards) == 3
    again = sampled_rows(hf, tok, "train", 10, 24, 0, cfg, tmp_path / "again")
    assert torch.equal(rows, again)  # same seed, same rows
    other = sampled_rows(hf, tok, "train", 10, 24, 1, cfg, tmp_path / "other")
    assert not torch.equal(rows, other)
    shards[1].unlink()  # a killed collection: only the missing shard is sampled again
    before = {p.name: p.stat().st_mtime_ns for p in shards if p.exists()}
    resumed = sampled_rows(hf, tok, "train", 10, 24, 0, cfg, tmp_path)
    assert torch.equal(rows, resumed)
    assert all(shards[i].stat().st_mtime_ns == before[shards[i].name] for i in (0, 2))
    # workers split the shards; only the last one to finish sees every shard
    split = tmp_path / "split"
    assert sampled_rows(hf, tok, "train", 10, 24, 0, cfg, split, worker=0, workers=2) is None
    done = sampled_rows(hf, tok, "train", 10, 24, 0, cfg, split, worker=1, workers=2)
    assert torch.equal(done, rows)


def test_corpus_with_sampled_text_needs_a_sampler_and_records_the_recipe(hf, tmp_path):
    tok = tiny_tokenizer()
    cfg = CorpusConfig(context_size=24, train_tokens=24 * 20, heldout_tokens=24 * 8,
                       mix={"sampled": 0.5, "elements": 0.5},
                       sampling=SamplingConfig(batch_rows=8, start_token=None))
    with pytest.raises(UserError, match="sampled"):
        build_corpus(tok, cfg)

    def sampler(split, n):
        return sampled_rows(hf, tok, split, n, 24, 0, cfg.sampling, tmp_path)
    corpus = build_corpus(tok, cfg, sampler)
    assert corpus.train.shape == (20, 24) and corpus.heldout.shape == (8, 24)
    assert corpus.description["sampling"]["train_openings"] == list(TRAIN_OPENINGS)
    assert any(s.startswith("sampled:train") for s in corpus.description["train_sources"])


def test_fast_activation_path_reads_the_decoder_layer_outputs(hf):
    from maskshare.saes.activation_store import hf_resid_forward

    rows = torch.randint(3, 50, (2, 12))
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    got = hf_resid_forward(hf, hooks)(rows)
    with torch.inference_mode():
        want = hf(rows, output_hidden_states=True).hidden_states
    for layer, h in enumerate(hooks):
        torch.testing.assert_close(got[h], want[layer + 1])
    with pytest.raises(UserError, match="residual"):
        hf_resid_forward(hf, ["blocks.0.attn.hook_z"])


def test_a_start_token_the_tokenizer_lacks_is_refused(hf, tmp_path):
    with pytest.raises(UserError, match="start_token"):
        sampled_rows(hf, tiny_tokenizer(), "train", 2, 16, 0,
                     SamplingConfig(batch_rows=2), tmp_path)
