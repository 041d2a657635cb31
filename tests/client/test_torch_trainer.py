import numpy as np
import torch
from torch import nn

from consortia.client.trainers.torch import (
    TorchTrainer,
    module_spec,
    module_to_vector,
    vector_to_module,
)
from consortia.core.messages import TrainSettings


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x.numpy(), y.numpy()


def test_spec_covers_parameters_and_buffers_with_original_keys():
    net = _net()
    spec = module_spec(net)
    assert spec.names == list(net.state_dict().keys())
    assert "1.running_mean" in spec.names and "1.num_batches_tracked" in spec.names
    assert spec.size == sum(t.numel() for t in net.state_dict().values())


def test_vector_round_trip_into_a_fresh_module():
    src = _net()
    src.state_dict()["1.num_batches_tracked"].fill_(42)
    spec, vec = module_to_vector(src)
    torch.manual_seed(99)
    dst = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    vector_to_module(dst, spec, vec)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert dst.state_dict()["1.num_batches_tracked"].item() == 42


def test_fit_is_deterministic_for_a_seed_and_improves_loss():
    trainer = TorchTrainer(_net)
    _, w0 = trainer.initial()
    x, y = _data()
    s = TrainSettings(local_epochs=5, batch_size=16, lr=0.1)
    w1, m1 = trainer.fit(w0, x, y, s, seed=7)
    w2, _ = trainer.fit(w0, x, y, s, seed=7)
    w3, _ = trainer.fit(w0, x, y, s, seed=8)
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, w3)
    assert trainer.evaluate(w1, x, y)["loss"] < trainer.evaluate(w0, x, y)["loss"]
    assert set(m1) == {"loss"}


def test_fit_leaves_global_torch_rng_and_threads_alone():
    trainer = TorchTrainer(_net)
    _, w0 = trainer.initial()
    x, y = _data()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    trainer.fit(w0, x, y, TrainSettings(batch_size=16), seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_proximal_term_keeps_the_update_closer_to_the_global_model():
    trainer = TorchTrainer(_mlp)
    _, w0 = trainer.initial()
    x, y = _data()
    free, _ = trainer.fit(w0, x, y, TrainSettings(local_epochs=5, batch_size=8, lr=0.1), seed=1)
    prox, _ = trainer.fit(
        w0, x, y, TrainSettings(local_epochs=5, batch_size=8, lr=0.1, proximal_mu=5.0), seed=1
    )
    assert np.linalg.norm(prox - w0) < 0.7 * np.linalg.norm(free - w0)


def test_evaluate_reports_accuracy():
    trainer = TorchTrainer(_net)
    _, w0 = trainer.initial()
    x, y = _data()
    m = trainer.evaluate(w0, x, y)
    assert 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0


def test_local_sgd_matches_torch_optim_sgd_step_for_step():
    from consortia.client.trainers.torch import LocalSGD

    x, y = _data()
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    a, b = _mlp(), _mlp()
    ours = LocalSGD(list(a.parameters()), lr=0.1, momentum=0.9, weight_decay=0.01)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for step in range(5):
        idx = slice(step * 8, step * 8 + 8)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)
