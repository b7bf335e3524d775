"""`maskshare train-saes`: train the embedded model's SAE set offline (sae_lens trainer)."""

from __future__ import annotations

import argparse

from maskshare.errors import UserError
from maskshare.runtime import configure_threads
from maskshare.validation import read_yaml_file, validation_message


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of SAETrainingConfig fields (optional)")
    parser.add_argument("--model", help="model name (default: smollm2-135m)")
    parser.add_argument("--hooks", nargs="+", metavar="HOOK",
                        help="hook points, e.g. blocks.6.hook_resid_post blocks.8.hook_mlp_out")
    parser.add_argument("--d-sae", type=int, help="SAE width")
    parser.add_argument("-k", type=int, help="active latents per token (topk)")
    parser.add_argument("--epochs", type=float, help="passes over the cached activations")
    parser.add_argument("--train-tokens", type=int, help="training tokens in the corpus")
    parser.add_argument("--seed", type=int, help="seed for the corpus, order and init")
    parser.add_argument("--threads", type=int, help="torch threads (default: cores available)")
    parser.add_argument("--out", help="output folder (default: data/saes/<model>/)")
    parser.add_argument("--sample-worker", metavar="I/N",
                        help="only sample this worker's share of the model-written text, then "
                        "exit (run N of these at once, one thread each, then train-saes)")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the quality table (run `maskshare sae-quality` later)")


def load_training_config(args: argparse.Namespace):
    from pydantic import ValidationError

    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.saes.training import SAETrainingConfig

    data: dict = {}
    if args.config:
        data = read_yaml_file(args.config, "SAE training config") or {}
        if not isinstance(data, dict):
            raise UserError(f"{args.config}: expected a mapping of settings")
    for key, val in (("model", args.model), ("hooks", args.hooks), ("d_sae", args.d_sae),
                     ("k", args.k), ("epochs", args.epochs), ("seed", args.seed),
                     ("threads", args.threads)):
        if val is not None:
            data[key] = val
    if args.train_tokens is not None:
        data.setdefault("corpus", {})["train_tokens"] = args.train_tokens
    if args.seed is not None:
        data.setdefault("corpus", {})["seed"] = args.seed
    try:
        return SAETrainingConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, "SAE training config")) from None


def run(args: argparse.Namespace) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.saes.training import train_saes

    cfg = load_training_config(args)
    if args.sample_worker:
        return sample_worker(cfg, args.sample_worker)
    out = train_saes(cfg, out_dir=args.out, quality=not args.no_quality)
    print(out)
    return 0


def sample_worker(cfg, spec: str) -> int:
    """Sample worker I of N's shards of the corpus's model-written text."""
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.model.models import load_tokenizer
    from maskshare.saes.corpus import build_corpus
    from maskshare.saes.corpus_sampling import model_sampler

    try:
        worker, workers = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--sample-worker {spec!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= worker < workers:
        raise UserError(f"--sample-worker {spec!r}: I must be in 0..N-1")
    configure_threads(cfg.threads or 1)
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.model.models import EMBEDDED, embedded_hf_dir

    tok = load_tokenizer(embedded_hf_dir() if cfg.model == EMBEDDED else cfg.model)
    build_corpus(tok, cfg.corpus, model_sampler(cfg.model, cfg.corpus, tok, None, worker,
                                                 workers))
    return 0
