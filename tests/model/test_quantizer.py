import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from instrumentgen.model import quantizer as quantizer_module
from instrumentgen.model.quantizer import ResidualVectorQuantizer, code_counts, code_usage_from_counts, kmeans, nearest


def quantizer(bins=8, codebooks=2, decay=0.9, threshold=0.0, dim=16):
    torch.manual_seed(0)
    return ResidualVectorQuantizer(dim, codebooks, bins, decay, kmeans_iters=10, dead_code_threshold=threshold)


def clusters(per_cluster=4, dim=16, seed=1):
    """4 well separated clusters of `per_cluster` points each: [4 * per_cluster, dim]."""
    generator = torch.Generator().manual_seed(seed)
    centres = 5 * torch.eye(dim)[:4]
    return (centres[:, None] + 0.01 * torch.randn(4, per_cluster, dim, generator=generator)).reshape(-1, dim)


def test_quantizes_to_codebook_sums_and_passes_gradients_straight_through():
    rvq = quantizer().eval()
    x = torch.randn(6, 16, requires_grad=True)
    quantized, codes, commitment = rvq(x)
    expected = sum(rvq.codebooks[q][codes[:, q]] for q in range(2))
    torch.testing.assert_close(quantized, expected)
    torch.testing.assert_close(
        commitment,
        torch.nn.functional.mse_loss(
            torch.stack([x.detach(), x.detach() - rvq.codebooks[0][codes[:, 0]]]),
            torch.stack([rvq.codebooks[q][codes[:, q]] for q in range(2)]),
        ),
    )
    quantized.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    assert not any(b.requires_grad for b in rvq.buffers()) and not list(rvq.parameters())


def test_kmeans_initialises_from_the_first_training_batch_and_eval_never_updates():
    rvq = quantizer(bins=4, threshold=0.0)
    x = clusters()
    before = {name: b.clone() for name, b in rvq.eval().named_buffers()}
    rvq(x)
    assert all(torch.equal(before[name], b) for name, b in rvq.state_dict().items())  # eval: read only
    rvq.train()
    _, codes, _ = rvq(x)
    assert rvq.initialized.all()
    assert sorted(codes[::4, 0].tolist()) == [0, 1, 2, 3]  # one entry per cluster
    assert torch.equal(codes[:, 0], codes[:, 0].view(4, 4)[:, :1].expand(4, 4).reshape(-1))
    centres = x.view(4, 4, 16).mean(1)
    torch.testing.assert_close(rvq.codebooks[0][codes[::4, 0]], centres, atol=1e-2, rtol=0)


def test_ema_update_of_cluster_sizes_and_embedding_sums():
    rvq = quantizer(bins=4, decay=0.9, threshold=0.0).train()
    x = clusters()
    rvq(x)  # k-means init, then the first update
    rvq(x)
    sizes, sums = rvq.cluster_sizes[0].clone(), rvq.embedding_sums[0].clone()
    y = x[:4]  # only the first cluster this time
    _, codes, _ = rvq(y)
    entry = codes[0, 0]
    expected = 0.9 * sizes
    expected[entry] += 0.1 * 4
    torch.testing.assert_close(rvq.cluster_sizes[0], expected)
    torch.testing.assert_close(rvq.embedding_sums[0][entry], 0.9 * sums[entry] + 0.1 * y.sum(0))
    total = expected.sum()
    smoothed = (expected + 1e-5) / (total + 4 * 1e-5) * total
    torch.testing.assert_close(rvq.codebooks[0], rvq.embedding_sums[0] / smoothed[:, None])


def test_decay_and_usage_are_per_bins_rows_whatever_the_batch():
    """A step of N rows moves the EMAs by 1 - decay ** (N / bins), towards usage in rows per `bins` rows."""
    rvq = quantizer(bins=8, decay=0.5, threshold=0.0).train()
    x = clusters()  # 16 rows, 4 clusters
    rvq(x)
    sizes, sums = rvq.cluster_sizes[0].clone(), rvq.embedding_sums[0].clone()
    torch.testing.assert_close(sizes.sum(), torch.tensor(8.0))  # 16 rows = 2 x bins: 8 shares in all
    _, codes, _ = rvq(x[:2])  # 2 rows of the first cluster: a quarter of `bins` rows
    weight = 1 - 0.5**0.25
    entry = codes[0, 0]
    expected = (1 - weight) * sizes
    expected[entry] += weight * 8  # both rows: all 8 shares of 8 rows per bins rows
    torch.testing.assert_close(rvq.cluster_sizes[0], expected)
    torch.testing.assert_close(rvq.embedding_sums[0][entry], (1 - weight) * sums[entry] + weight * 4 * x[:2].sum(0))


def test_only_entries_below_the_threshold_share_are_reseeded_with_an_even_share():
    rvq = quantizer(bins=8, decay=0.5, threshold=0.6).train()
    x = clusters()
    rvq(x)  # 16 residuals, 8 entries
    sizes = rvq.cluster_sizes[0].clone()
    _, codes, _ = rvq(x[:8])  # 8 rows = `bins` rows: the EMAs halve
    unused = torch.ones(8, dtype=torch.bool)
    unused[codes[:, 0]] = False
    dead = unused & (0.5 * sizes < 0.6)
    alive = ~unused | (0.5 * sizes >= 0.6)
    assert dead.any() and alive.any()
    assert rvq.reseeds[0] == dead.sum()
    assert (rvq.cluster_sizes[0][dead] == 1.0).all()  # an even share: a window to be chosen
    assert (rvq.cluster_sizes[0][alive] >= 0.6).all() and not (rvq.cluster_sizes[0][alive] == 1.0).all()
    for entry in dead.nonzero().flatten():
        # the entry is now one of the batch's residuals, and its sum agrees with it
        assert (rvq.codebooks[0][entry] - x[:8]).abs().max(dim=1).values.min() < 1e-6
        torch.testing.assert_close(rvq.embedding_sums[0][entry], rvq.codebooks[0][entry])


def noise_kmeans(split: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means of 64 means over 2048 rows of isotropic 256-d noise (what a deep codebook sees) ->
    (means, counts, held-out rows' counts per mean)."""
    generator = torch.Generator().manual_seed(0)
    samples, held_out = torch.randn(2048, 256, generator=generator), torch.randn(2048, 256, generator=generator)
    start = torch.randperm(2048, generator=generator)[:64]
    means, counts = kmeans(samples, start, 10, generator, split=split)
    return means, counts, torch.bincount(nearest(held_out, means), minlength=64)


def test_kmeans_on_noise_leaves_no_start_alone_and_every_mean_takes_held_out_rows():
    means, counts, held_out = noise_kmeans(split=True)
    assert counts.min() >= quantizer_module.min_cluster(2048, 64) == 8 and len(torch.unique(means, dim=0)) == 64
    assert (held_out > 0).float().mean() > 0.9
    # Without the split a third of the starts keep under a quarter of an even share and held-out rows
    # leave ~40% of the means unused (at 12 x 1024 over 32768 CLAP-like rows, 808 of a deep codebook's
    # 1024 starts kept only themselves): the failure the split exists for, so the check above bites.
    _, plain_counts, plain_held_out = noise_kmeans(split=False)
    assert (plain_counts < 8).float().mean() > 0.25 and (plain_held_out > 0).float().mean() < 0.75


def test_more_dead_entries_than_rows_take_distinct_rows_and_the_rest_wait():
    rvq = quantizer(bins=64, codebooks=1, decay=0.5, threshold=0.5).train()
    rvq(torch.randn(256, 16, generator=torch.Generator().manual_seed(4)))
    rvq.usage[0, :40] = 0.0  # 40 dead entries, a batch of 8 rows
    batch = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    rvq(batch)
    assert rvq.reseeds[0] == 8
    reseeded = [e for e in range(64) if (rvq.codebooks[0][e] - batch).abs().max(dim=1).values.min() < 1e-6]
    assert len(reseeded) == 8 and len(torch.unique(rvq.codebooks[0][reseeded], dim=0)) == 8
    assert (rvq.usage[0] < 0.5).sum() >= 32 - 8  # the others wait for the next batches


def test_usage_is_counted_over_its_own_window_while_the_codebooks_stay_put():
    """Codebooks frozen (decay 1), usage over a short window (decay 0.5 per `bins` rows): the entries
    the second batch leaves unused are re-seeded, the used ones keep their k-means values."""
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(16, 1, 8, 1.0, kmeans_iters=10, dead_code_threshold=0.6, usage_decay=0.5).train()
    x = clusters()
    rvq(x)
    before = rvq.codebooks[0].clone()
    _, codes, _ = rvq(x[:8])
    used = torch.zeros(8, dtype=torch.bool)
    used[codes[:, 0]] = True
    assert rvq.reseeds[0] == (~used).sum() > 0
    torch.testing.assert_close(rvq.codebooks[0][used], before[used])
    assert (rvq.codebooks[0][~used] - before[~used]).abs().amax(dim=1).min() > 0.01


def test_initialize_fits_kmeans_on_a_sample_larger_than_a_batch_with_distinct_starts():
    rvq = quantizer(bins=8, codebooks=2, threshold=0.05)
    centres = 5 * torch.eye(16)[:8]
    sample = (centres[:, None] + 0.01 * torch.randn(8, 50, 16, generator=torch.Generator().manual_seed(3))).reshape(
        -1, 16
    )
    rvq.initialize(sample)
    assert rvq.initialized.all() and rvq.updates == 0
    codes = rvq.encode(sample).view(8, 50, 2)
    assert len(codes[:, 0, 0].unique()) == 8 and (codes[..., 0] == codes[:, :1, 0]).all()  # one entry per cluster
    torch.testing.assert_close(rvq.codebooks[0][codes[:, 0, 0]], sample.view(8, 50, 16).mean(1), atol=1e-3, rtol=0)
    torch.testing.assert_close(rvq.cluster_sizes[0], torch.ones(8))  # 50 of 400 rows each: an even share
    torch.testing.assert_close(rvq.embedding_sums[0], rvq.codebooks[0] * rvq.cluster_sizes[0][:, None])
    # Training goes on from there with its own batches, which never re-initialise the codebooks.
    before = rvq.codebooks[0].clone()
    rvq.train()(sample[::50])
    assert (rvq.codebooks[0] - before).abs().max() < 0.1


def test_code_usage_perplexity_and_live_entries():
    usage = code_usage_from_counts(torch.tensor([[4.0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 0, 0]]))
    torch.testing.assert_close(usage.perplexity, torch.tensor([1.0, 4.0, 2.0]))
    assert usage.live.tolist() == [1, 4, 2]
    assert code_counts(torch.tensor([[0, 3], [0, 1]]), 4).tolist() == [[2, 0, 0, 0], [0, 1, 0, 1]]
    rvq = quantizer(bins=4).train()
    rvq(clusters())
    usage = rvq.code_usage(clusters(seed=2))
    assert usage.live[0] == 4 and usage.perplexity[0] == pytest.approx(4.0)


def test_statistics_stay_float32_in_a_bf16_model():
    rvq = quantizer().bfloat16()
    assert all(b.dtype in (torch.float32, torch.bool, torch.long) for b in rvq.buffers())
    quantized, _, _ = rvq.train()(torch.randn(4, 16, dtype=torch.bfloat16))
    assert quantized.dtype == torch.bfloat16


def _two_workers(rank, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rvq = quantizer(threshold=0.3).train()
    torch.manual_seed(100 + rank)  # each worker its own random stream, as in training: not used by the quantizer
    x = clusters(seed=7)
    for step in range(5):
        rvq(x[rank * 8 : (rank + 1) * 8] + 0.001 * step)  # each worker its half of the global batch
    torch.save(rvq.state_dict(), os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_workers_keep_identical_codebooks_equal_to_one_worker_on_the_global_batch(tmp_path):
    os.environ["TEST_PORT"] = str(29_400 + os.getpid() % 500)
    mp.spawn(_two_workers, args=(str(tmp_path),), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    one = quantizer(threshold=0.3).train()
    torch.manual_seed(5)
    x = clusters(seed=7)
    for step in range(5):
        one(x + 0.001 * step)
    for name, buffer in one.state_dict().items():
        torch.testing.assert_close(rank0[name], buffer, msg=name)
