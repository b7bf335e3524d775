"""`maskshare datasets list | show NAME | add SPEC.yaml | build NAME [--model M] [--variant V]
| import FILE --name NAME [--format auto|clean-patch|prompts|mib|recall] [--column FIELD=PATH ...]
[--counterfactual FIELD] [--held-out-group G ...] [--equal-length-pairs] [--force]`."""

from __future__ import annotations

import argparse
import sys

import polars as pl

from maskshare.config import DatasetRef
from maskshare.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=type(parser))
    sub.add_parser("list", help="list the dataset specs")
    p = sub.add_parser("show", help="show a spec and its source table")
    p.add_argument("name")
    p = sub.add_parser("add", help="validate a spec YAML and its table, then add it")
    p.add_argument("spec", metavar="SPEC.yaml")
    p = sub.add_parser("build", help="build a dataset for a model and print its pass table")
    p.add_argument("name")
    p.add_argument("--model", default="smollm2-135m", help="model name (default: %(default)s)")
    p.add_argument("--variant", choices=["templated", "freeform", "both"], default="both")
    p.add_argument("--max-items", type=positive_int, default=None)
    p.add_argument("--min-items", type=positive_int, default=None,
                   help="fail if fewer items pass (default: DatasetRef's, 20)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("import", help="make a dataset of a file of complete prompts, build it "
                       "and print its pass table per group")
    p.add_argument("file", metavar="FILE", help="JSON array, JSON lines, CSV or parquet")
    p.add_argument("--name", required=True, help="the new dataset's name")
    p.add_argument("--format", default="auto",
                   choices=["auto", "clean-patch", "prompts", "mib", "recall"],
                   help="clean-patch: clean_prefix/clean_answer/patch_answer[/patch_prefix/case];"
                   " prompts: prompt/answer/counterfactual[/counterfactual_prompt/group/entity]; "
                   "mib: the MIB circuit tasks (IOI, multiple choice, arithmetic); recall: "
                   "subject/attribute/prompt/relation, counterfactuals chosen; "
                   "auto: from the keys (default); see docs/formats.md")
    p.add_argument("--column", action="append", default=[], metavar="FIELD=PATH",
                   type=column_arg, help="read FIELD (prompt, answer, counterfactual, "
                   "counterfactual_prompt, group, entity, id) from a column or a field path "
                   "(metadata.subject, choices.label[answerKey]); repeatable")
    p.add_argument("--counterfactual", default=None, metavar="FIELD",
                   help="mib: the counterfactual object to patch from (default: the benchmark "
                   "loader's, e.g. s2_io_flip_counterfactual for IOI)")
    p.add_argument("--held-out-group", action="append", default=[], metavar="G",
                   help="a group (clean-patch: case) never trained on; repeatable")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of entities (or prompts) held out (default: %(default)s)")
    p.add_argument("--equal-length-pairs", action="store_true",
                   help="keep only rows whose counterfactual prompt has the prompt's token "
                   "length (what the `counterfactual` ablation, position-wise patching, needs)")
    p.add_argument("--force", action="store_true", help="replace a dataset of the same name")
    p.add_argument("--model", default="smollm2-135m", help="model name (default: %(default)s)")
    p.add_argument("--min-items", type=int, default=None,
                   help="fail if fewer items pass (default: DatasetRef's, 20)")
    p.add_argument("--no-progress", action="store_true")


def column_arg(text: str) -> tuple[str, str]:
    """FIELD=PATH (argparse turns the ValueError into a one-line usage error)."""
    field, sep, path = text.partition("=")
    if not sep or not field.strip() or not path.strip():
        raise ValueError(text)
    return field.strip(), path.strip()


def positive_int(text: str) -> int:
    """A whole number >= 1 (argparse turns the ValueError into a one-line usage error)."""
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def format_pass_table(table: pl.DataFrame) -> str:
    """A Markdown table: one row per phrasing (prompt datasets: per group, with the rows
    dropped for a shared first token), plus a total."""
    dropped = "n_dropped" in table.columns
    what = "group" if dropped else "phrasing"
    lines = [f"| id | {what} | held out | items | passed |{' dropped |' if dropped else ''}"
             " mean p(answer) | mean logit diff |",
             f"|---:|---|:---:|---:|---:|{'---:|' if dropped else ''}---:|---:|"]
    for r in table.iter_rows(named=True):
        text = r["phrasing"].replace("\n", "\\n").replace("|", "\\|")
        lines.append(f"| {r['phrasing_id']} | `{text}` | {'yes' if r['held_out'] else ''} | "
                     f"{r['n_items']} | {r['n_passed']} | "
                     f"{str(r['n_dropped']) + ' | ' if dropped else ''}"
                     f"{_num(r['mean_answer_prob'], '.3f')} | {_num(r['mean_logit_diff'], '.2f')} |")
    drop_total = f" {table['n_dropped'].sum()} |" if dropped else ""
    lines.append(f"| | **total** | | {table['n_items'].sum()} | {table['n_passed'].sum()} |"
                 f"{drop_total} | |")
    return "\n".join(lines)


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _list() -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.datasets import list_specs

    for s in list_specs():
        print(f"{s.name:24s} {s.describe()}  {s.description}")
    return 0


def _show(name: str) -> int:
    import yaml

    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.datasets.registry import find_spec
    from maskshare.datasets.sources import check_source, load_source

    spec, path = find_spec(name)
    df, h = load_source(spec, path.parent)
    check_source(spec, df)
    print(f"# {path}")
    print(yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False,
                         allow_unicode=True).rstrip())
    print(f"# source: {df.height} rows, columns {df.columns}, content hash {h}")
    with pl.Config(tbl_rows=5, fmt_str_lengths=40):
        print(df.head(5))
    return 0


def _print_built(built, model: str) -> None:
    st = built.stats
    print(f"\n## {built.spec.name} ({built.variant}) on {model}"
          f"{' (cached)' if built.cached else ''}\n")
    print(format_pass_table(built.pass_table))
    filt = st.get("filter", "top1")
    extra = [f"behaviour filter: {filt}"
             + (f" (logit diff > {st.get('margin', 0.0):g})" if filt == "logit-diff" else "")]
    if st.get("n_dropped_ambiguous"):
        extra.append(f"{st['n_dropped_ambiguous']} entities dropped for an ambiguous first "
                     f"answer token ({', '.join(st['dropped_ambiguous'][:8])}"
                     f"{', ...' if st['n_dropped_ambiguous'] > 8 else ''})")
    if "n_dropped_length" in st:
        extra.append(f"{st['n_dropped_length']} prompts dropped for a token length other "
                     f"than the modal {st['modal_length']}")
    if st.get("n_duplicates"):
        extra.append(f"{st['n_duplicates']} repeated rows (same prompt, answer, "
                     "counterfactual) kept once")
    for why, n in st.get("dropped", {}).items():
        extra.append(f"{n} rows dropped: {why}")
    extra.append(f"{built.items.height} items kept; splits {st.get('splits')}")
    print("\n" + "\n".join(f"- {e}" for e in extra), flush=True)


def _build(args) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.datasets import build_dataset, load_spec
    from maskshare.datasets.build import TooFewItems
    from maskshare.model.models import load_model

    spec = load_spec(args.name)
    variants = spec.variants() if args.variant == "both" else [args.variant]
    for v in variants:  # fail on a missing variant before loading the model
        if v not in spec.variants():
            raise UserError(f"{spec.name} has no {v} variant (it has {spec.variants()})")
    model = load_model(args.model)
    for v in variants:
        kw = {} if args.min_items is None else {"min_items": args.min_items}
        ref = DatasetRef(name=args.name, variant=v, max_items=args.max_items, **kw)
        try:
            built = build_dataset(ref, model, progress=not args.no_progress)
        except TooFewItems as e:
            _print_built(e.built, args.model)  # show why before the one-line error
            raise
        _print_built(built, args.model)
        print(f"\n{built.path}")
    return 0


def _import(args) -> int:
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.datasets.build import TooFewItems, build_from_table
    from maskshare.datasets.importing import describe_ignored, plan_import, write_plan
    from maskshare.model.models import load_model

    loaded: list = []

    def get_model():
        if not loaded:
            loaded.append(load_model(args.model))
        return loaded[0]

    def first_token(text: str):  # the recall format only: loads the model once rows check out
        ids = get_model().tokenizer(text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else None

    plan = plan_import(args.file, args.name, fmt=args.format,
                       held_out_groups=args.held_out_group, force=args.force,
                       test_fraction=args.test_fraction,
                       equal_length_pairs=args.equal_length_pairs,
                       columns=dict(args.column), counterfactual=args.counterfactual,
                       first_token=first_token)
    note = describe_ignored(plan.ignored)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if plan.detected and plan.format in ("mib", "recall"):
        print(f"detected format: {plan.format} (from the keys of the first row)")
    for n in plan.notes:
        print(f"{plan.format}: {n}")
    model = get_model()
    kw = {} if args.min_items is None else {"min_items": args.min_items}
    ref = DatasetRef(name=args.name, variant="freeform", **kw)
    try:
        built = build_from_table(plan.spec, plan.spec_path, plan.table, plan.source_hash, ref,
                                 model, progress=not args.no_progress)
    except TooFewItems as e:
        _print_built(e.built, args.model)  # show why before the one-line error; nothing written
        raise
    spec_path = write_plan(plan)
    print(f"imported {plan.table.height} rows ({plan.format} format) as {plan.name!r}: "
          f"{spec_path}, {spec_path.parent.parent / 'sources' / plan.table_name}")
    _print_built(built, args.model)
    # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
    from maskshare.datasets import roles_note

    print(f"- note: {roles_note(plan.spec, ['roles'])}")  # the default baselines include roles
    print(f"\n{built.path}")
    return 0


def run(args) -> int:
    if args.action == "list":
        return _list()
    if args.action == "show":
        return _show(args.name)
    if args.action == "add":
        # heavy (torch, polars): imported when the command runs, not for `maskshare --help`
        from maskshare.datasets import add_spec

        print(add_spec(args.spec))
        return 0
    if args.action == "build":
        return _build(args)
    if args.action == "import":
        return _import(args)
    print(f"unknown action {args.action}", file=sys.stderr)
    return 1
