"""End-to-end smoke test of the foundation: grammar -> dataset, checked against hand values."""

import formal_sae


def test_dyck_dataset_rows_match_hand_derived_features():
    grammar = formal_sae.load_grammar("dyck2")
    assert grammar.features(["o0", "o1", "c1", "c0"])["depth"] == [1, 2, 2, 1]
    ds = formal_sae.build_dataset(grammar, n_train=20, n_validation=5, n_test=5, seed=0)
    row = ds["train"][0]
    tokens = row["text"].split()
    assert grammar.is_grammatical(tokens)
    assert row["depth"][0] == formal_sae.IGNORE_VALUE and row["depth"][-1] == formal_sae.IGNORE_VALUE
    stack_depth, expected = 0, []
    for tok in tokens:  # depth by hand: an opener counts itself, a closer shares its opener's depth
        stack_depth += tok.startswith("o")
        expected.append(stack_depth)
        stack_depth -= tok.startswith("c")
    assert row["depth"][1:-1] == expected
