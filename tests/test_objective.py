"""Multi-token prediction (llm/training/objective.py): its loss, its schedule, its keys."""

import pytest
import torch
import torch.nn.functional as F

from llm.errors import ConfigError
from llm.tokenizer import IGNORE
from llm.training.objective import mtp_weights_at, multi_token_losses, token_cross_entropy
from llm.training.optim import optim_preset


def test_the_farthest_token_loses_its_weight_first_and_the_run_ends_on_next_token_prediction():
    at = [mtp_weights_at((0.5, 0.25), step, 30, 2 / 3) for step in range(31)]
    assert at[0] == pytest.approx([1, 0.5, 0.25])  # phases of 10 steps: [1, .5, .25 -> 0], [1, .5 -> 0], [1]
    assert at[5] == pytest.approx([1, 0.5, 0.125])
    assert at[10] == pytest.approx([1, 0.5, 0.0])
    assert at[15] == pytest.approx([1, 0.25, 0.0])
    assert all(w == pytest.approx([1, 0, 0]) for w in at[20:])
    assert mtp_weights_at((), 3, 30, 2 / 3) == [1.0]
    assert mtp_weights_at((0.3,), 0, 10, 1.0) == [1.0, 0.3] and mtp_weights_at((0.3,), 5, 10, 1.0) == [1.0, 0.15]


def test_the_objective_averages_the_losses_of_later_targets_with_their_weights():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 13, generator=g, requires_grad=True)
    y = torch.randint(0, 13, (2, 6), generator=g)
    y[1, 4:] = IGNORE  # the padding of a short window stays out at every offset
    ce = [token_cross_entropy(logits[:, : 6 - k], y[:, k:]) for k in range(3)]
    nxt, objective = multi_token_losses(logits, y, [1.0, 0.5, 0.25])
    assert torch.equal(nxt, ce[0])
    assert objective.item() == pytest.approx(((ce[0] + 0.5 * ce[1] + 0.25 * ce[2]) / 1.75).item(), rel=1e-6)
    keep = y[:, 2:] != IGNORE
    assert ce[2].item() == pytest.approx(F.cross_entropy(logits[:, :4][keep], y[:, 2:][keep]).item(), rel=1e-6)
    nxt, plain = multi_token_losses(logits, y, [1.0, 0.0, 0.0])  # decayed: exactly the next-token loss
    assert torch.equal(plain, nxt)
    objective.backward()
    assert logits.grad[:, -1].abs().sum() > 0 and logits.grad[:, 0].abs().sum() > 0
    # one shared log-softmax gives the gradient of the three separate cross-entropies
    shared = logits.grad.clone()
    logits.grad = None
    ((ce[0] + 0.5 * ce[1] + 0.25 * ce[2]) / 1.75).backward()
    torch.testing.assert_close(shared, logits.grad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mtp_weights": [0.5, -0.1]}, "optim.mtp_weights=[0.5, -0.1] must be a list of weights >= 0"),
        ({"mtp_weights": 0.5}, "optim.mtp_weights=0.5 must be a list of weights >= 0"),
        ({"mtp_decay_frac": 0}, "optim.mtp_decay_frac=0 must be in (0, 1]"),
    ],
)
def test_bad_multi_token_keys_are_named(change, message):
    with pytest.raises(ConfigError) as e:
        optim_preset("muon", **change)
    assert str(e.value).startswith(message)


def test_multi_token_prediction_is_off_by_default():
    assert optim_preset("muon").mtp_weights == () and optim_preset("adamw").mtp_weights == ()
