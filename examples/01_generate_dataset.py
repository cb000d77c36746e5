"""Grammars and datasets: sample a PCFG, check sentences, look at ground-truth features, and
save a Hugging Face dataset that opens with plain `datasets` / `transformers`.

    python examples/01_generate_dataset.py --out runs/examples/01
    python examples/01_generate_dataset.py --grammar expr --n-train 50000 --out runs/examples/01-expr
    python examples/01_generate_dataset.py --tiny --out /tmp/ex01   # seconds, for tests

Writes `OUT/<grammar>/` (the registry grammar's dataset) and `OUT/toy-english/` (a dataset of a
grammar defined below from a string). Both are `datasets.DatasetDict`s on disk with a
`tokenizer/` and a dataset card (`README.md`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
from transformers import AutoTokenizer

import formal_sae

# A grammar of your own, in NLTK's PCFG syntax: terminals in quotes, one probability per
# alternative (the alternatives of each left-hand side sum to 1). The first left-hand side is the
# start symbol. Terminals become the tokenizer's vocabulary, so they must not contain spaces.
TOY_ENGLISH = """
S -> NP VP [1.0]
NP -> Det N [0.6] | Det Adj N [0.3] | NP 'and' NP [0.1]
VP -> V NP [0.5] | V [0.3] | VP 'and' VP [0.2]
Det -> 'the' [0.6] | 'a' [0.4]
Adj -> 'small' [0.5] | 'green' [0.5]
N -> 'cat' [0.4] | 'dog' [0.4] | 'idea' [0.2]
V -> 'sees' [0.5] | 'sleeps' [0.3] | 'likes' [0.2]
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grammar", default="dyck2", help=f"a registry grammar: {', '.join(formal_sae.list_grammars())}")
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-validation", type=int, default=2_000)
    p.add_argument("--n-test", type=int, default=2_000)
    p.add_argument("--prompt-format", choices=["bos", "paper"], default="bos", help="paper = the 7-token task prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/examples/01"))
    p.add_argument("--tiny", action="store_true", help="a few dozen sentences: finishes in seconds")
    args = p.parse_args()
    if args.tiny:
        args.n_train, args.n_validation, args.n_test = 60, 10, 10
    return args


def main() -> None:
    args = parse_args()

    # --- 1. A built-in grammar ------------------------------------------------------------
    print("built-in grammars:", ", ".join(formal_sae.list_grammars()))
    grammar = formal_sae.load_grammar(args.grammar)  # max_length=110 tokens, as in the paper
    print(f"\n{grammar!r}: {grammar.description}")
    print(f"terminals: {grammar.terminals}")
    print(f"expected sentence length: {grammar.expected_length:.1f} tokens (before the length limit)")
    print(grammar.to_string())  # the rules, as NLTK PCFG text (Grammar.from_string reads it back)

    # Sampling is seeded with a private generator: same seed, same sentences.
    sentences = grammar.sample(5, seed=args.seed)
    for s in sentences:
        print("  sample:", " ".join(s))
    assert sentences == grammar.sample(5, seed=args.seed)

    # Membership is exact (same verdict as nltk.ViterbiParser, much faster).
    assert all(grammar.is_grammatical(s) for s in sentences)
    broken = sentences[0][:-1] if len(sentences[0]) > 1 else [*sentences[0], *sentences[0][:1]]
    print(f"is_grammatical({' '.join(broken)!r}) = {grammar.is_grammatical(broken)}")

    # Ground-truth features: one integer per token, declared by grammar.feature_specs.
    print("\nfeatures:")
    for spec in grammar.feature_specs:
        cats = f" categories={list(spec.categories)}" if spec.categories else ""
        print(f"  {spec.name:<16} {spec.kind:<11} {spec.description}{cats}")
    example = sentences[0]
    feats = grammar.features(example)
    print(f"\nfeatures of {' '.join(example)!r}:")
    for name, values in feats.items():
        print(f"  {name:<16} {values}")
    print("most probable parse tree:", grammar.parse(example))

    # --- 2. A grammar of your own, from a string --------------------------------------------
    toy = formal_sae.Grammar.from_string(TOY_ENGLISH, name="toy-english", max_length=40)
    print(f"\n{toy!r}, expected length {toy.expected_length:.1f}")
    categories = toy.feature_spec("preterminal").categories  # categorical values index these names
    for s in toy.sample(3, seed=args.seed):
        print("  sample:", " ".join(s), "| preterminals:", " ".join(categories[v] for v in toy.features(s)["preterminal"]))
    print("grammatical?", toy.is_grammatical(["the", "cat", "sleeps"]), toy.is_grammatical(["cat", "the", "sleeps"]))

    # --- 3. Datasets: token ids + one aligned column per feature ------------------------------
    for g in (grammar, toy):
        ds = formal_sae.build_dataset(
            g,
            n_train=args.n_train,
            n_validation=args.n_validation,
            n_test=args.n_test,
            seed=args.seed,
            prompt_format=args.prompt_format,
        )
        out = formal_sae.save_dataset(ds, args.out / g.name, overwrite=True)
        print(f"\nsaved {g.name}: {ds}\n -> {out}")

    # --- 4. Reload with the plain Hugging Face libraries -------------------------------------
    path = args.out / grammar.name
    ds = datasets.load_from_disk(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    row = ds["train"][0]
    print(f"\nreloaded {path}: columns {ds['train'].column_names}")
    print("text:          ", row["text"])
    print("input_ids:     ", row["input_ids"])
    print("tokens:        ", tokenizer.convert_ids_to_tokens(row["input_ids"]))
    first = grammar.feature_specs[0].name
    print(f"{first + ':':<15}", row[first], f"(prompt and <eos> hold {formal_sae.IGNORE_VALUE})")
    # Encoding text gives the same ids (<bos> is prepended, as TransformerLens expects).
    assert tokenizer(row["text"])["input_ids"] == row["input_ids"][:-1]

    # Everything needed to interpret the columns travels with the dataset.
    meta = formal_sae.dataset_metadata(ds)
    print(f"metadata: grammar={meta.grammar} seed={meta.seed} prompt={meta.prompt} splits={meta.splits}")
    assert formal_sae.grammar_of(meta).to_string() == grammar.to_string()
    print(f"\ndataset card: {path / 'README.md'}")


if __name__ == "__main__":
    main()
