"""k-NN: chunked, batched scores against a brute-force reference."""

import pytest
import torch
import torch.nn.functional as F

from mimkit.finetune import knn_accuracy, knn_scores, topk_accuracy


def brute_force_scores(train, train_labels, queries, num_classes, k, temperature):
    """Full similarity matrix, explicit per-query vote loop."""
    sim = F.normalize(queries, dim=1) @ F.normalize(train, dim=1).T
    scores = torch.zeros(queries.shape[0], num_classes)
    for q in range(queries.shape[0]):
        order = torch.argsort(sim[q], descending=True)[:k].tolist()
        for i in order:
            scores[q, int(train_labels[i])] += float(torch.exp(sim[q, i] / temperature))
    return scores


@pytest.mark.parametrize("train_chunk", [7, 50, 1000])
def test_chunked_scores_match_brute_force(train_chunk):
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(120, 16, generator=gen)
    labels = torch.randint(0, 6, (120,), generator=gen)
    queries = torch.randn(30, 16, generator=gen)
    ref = brute_force_scores(train, labels, queries, 6, k=20, temperature=0.07)
    got = knn_scores(train, labels, queries, 6, k=20, temperature=0.07, train_chunk=train_chunk)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)


def test_fewer_train_samples_than_k():
    train = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3])
    scores = knn_scores(train, labels, torch.eye(4), 4, k=20, temperature=0.1, train_chunk=3)
    # each query votes exp(1/T) for its own class and exp(0) for the 3 others
    expected = torch.full((4, 4), 1.0) + torch.eye(4) * (torch.exp(torch.tensor(10.0)) - 1)
    torch.testing.assert_close(scores, expected)


def test_accuracy_batched_equals_unbatched_and_reference():
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(10, 32, generator=gen) * 3
    train_labels = torch.arange(500) % 10
    test_labels = torch.arange(200) % 10
    train = centers[train_labels] + torch.randn(500, 32, generator=gen) * 4.0
    test = centers[test_labels] + torch.randn(200, 32, generator=gen) * 4.0
    small = knn_accuracy(train, train_labels, test, test_labels, 10, query_batch=13, train_chunk=37)
    big = knn_accuracy(train, train_labels, test, test_labels, 10, query_batch=10_000)
    ref = topk_accuracy(brute_force_scores(train, train_labels, test, 10, 20, 0.07), test_labels)
    assert small == pytest.approx(big)
    assert small == pytest.approx(ref)
    assert 30.0 < ref["top1"] < 100.0  # informative: neither trivial nor broken
    assert ref["top5"] >= ref["top1"]


def test_half_precision_features_on_host():
    gen = torch.Generator().manual_seed(2)
    train = torch.randn(300, 8, generator=gen)
    labels = torch.randint(0, 3, (300,), generator=gen)
    full = knn_accuracy(train, labels, train[:50], labels[:50], 3, k=1)
    half = knn_accuracy(train.half(), labels, train[:50].half(), labels[:50], 3, k=1)
    assert full["top1"] == half["top1"] == 100.0  # nearest neighbour of a train point is itself


def test_each_feature_is_normalized_once(monkeypatch):
    """The training bank is normalized once, not once per query batch."""
    rows = []
    normalize = F.normalize

    def counting(x, *args, **kwargs):
        rows.append(x.shape[0])
        return normalize(x, *args, **kwargs)

    monkeypatch.setattr(F, "normalize", counting)
    gen = torch.Generator().manual_seed(3)
    train, labels = torch.randn(100, 8, generator=gen), torch.randint(0, 4, (100,), generator=gen)
    test = torch.randn(40, 8, generator=gen)
    got = knn_accuracy(train, labels, test, labels[:40], 4, query_batch=10, train_chunk=30)
    assert sum(rows) == 100 + 40  # 4 query batches used to renormalize 4 x 100 rows
    ref = topk_accuracy(brute_force_scores(train, labels, test, 4, 20, 0.07), labels[:40])
    assert got == pytest.approx(ref)


def test_knn_command_options_parse_as_documented():
    from mimkit.finetune_cli import knn_parser

    parser = knn_parser()
    base = ["--init_from", "x.ckpt", "--data.class_path", "mimkit.data.Digits"]
    halves = [parser.parse_args(base + extra).half for extra in
              ([], ["--half"], ["--half", "true"], ["--no_half"])]  # fmt: skip
    assert halves == [False, True, True, False]
    assert parser.parse_args([*base, "--pool", "avg"]).pool == "avg"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--pool", "max"])


def test_top5_with_fewer_than_5_neighbours_counts_only_voted_classes():
    """DINO's eval_knn: top-5 looks at min(5, k) classes, the ones neighbours voted for."""
    gen = torch.Generator().manual_seed(4)
    train = torch.randn(200, 8, generator=gen)
    train_labels = torch.randint(0, 10, (200,), generator=gen)
    test = torch.randn(100, 8, generator=gen)
    test_labels = torch.randint(0, 10, (100,), generator=gen)
    got = knn_accuracy(train, train_labels, test, test_labels, 10, k=2)
    scores = brute_force_scores(train, train_labels, test, 10, 2, 0.07)
    voted = scores.topk(2, dim=1).indices
    expected = 100.0 * (voted == test_labels[:, None]).any(dim=1).float().mean().item()
    assert got["top5"] == pytest.approx(expected)
    assert got["top5"] < topk_accuracy(scores, test_labels)["top5"]  # 5 slots would add zeros


@pytest.mark.parametrize("k, temperature", [(0, 0.07), (-1, 0.07), (20, 0.0), (20, -0.1)])
def test_knn_refuses_no_neighbours_or_a_nonpositive_temperature(k, temperature):
    train, labels = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ValueError, match="k-NN needs"):
        knn_accuracy(train, labels, train, labels, 2, k=k, temperature=temperature)
    with pytest.raises(ValueError, match="k-NN needs"):
        knn_scores(train, labels, train, 2, k=k, temperature=temperature)


def test_knn_command_refuses_bad_votes_before_reading_data(capsys):
    from mimkit.cli import main

    argv = ["knn", "--init_from", "missing.ckpt", "--data.class_path", "mimkit.data.Digits"]
    assert main([*argv, "--temperature", "0"]) == 2
    err = capsys.readouterr().err
    assert "mimkit knn: error: k-NN needs a temperature > 0" in err
    assert main([*argv, "--k", "0"]) == 2
    assert "k-NN needs k >= 1" in capsys.readouterr().err
