"""StepView's logit lens: stacked lenses equal per-layer ones and read the head once."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from mllm_refine.engine.step_view import StepView


class CountingHead(nn.Linear):
    def __init__(self, d: int, v: int):
        super().__init__(d, v, bias=False)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def _view(B: int = 3, D: int = 4, V: int = 7, layers: int = 4) -> StepView:
    torch.manual_seed(0)
    head, norm = CountingHead(D, V), nn.LayerNorm(D)
    adapter = SimpleNamespace(info=lambda: SimpleNamespace(num_layers=layers), final_norm=norm, lm_head=head)
    capture = SimpleNamespace(hidden={l: torch.randn(B, D) for l in range(layers + 1)}, state={}, tables={})
    return StepView(0, torch.zeros(B, 1, dtype=torch.long), torch.randn(B, V), capture, adapter)


def test_lenses_equal_lens_per_layer_with_one_head_call():
    view = _view()
    stacked = view.lenses([1, 3, 2], final_norm=True)  # (B, 3, V)
    assert stacked.shape == (3, 3, 7) and view.adapter.lm_head.calls == 1
    with torch.no_grad():
        for i, l in enumerate([1, 3, 2]):
            by_hand = view.adapter.lm_head(view.adapter.final_norm(view.capture.hidden[l]))  # (B, V)
            torch.testing.assert_close(stacked[:, i], by_hand)
    calls = view.adapter.lm_head.calls
    view.lens(3)
    view.lenses([2, 1])
    assert view.adapter.lm_head.calls == calls  # cached: no further head call
    view.lenses([0], final_norm=False)
    assert view.adapter.lm_head.calls == calls + 1


def test_lens_at_picks_each_samples_layer():
    view = _view()
    layers = torch.tensor([2, -1, 4])
    got = view.lens_at(layers)
    torch.testing.assert_close(got[0], view.lens(2)[0])
    torch.testing.assert_close(got[1], view.logits[1])
    torch.testing.assert_close(got[2], view.lens(4)[2])
    view.lenses(list(range(5)))
    torch.testing.assert_close(view.lens_at(layers), got)  # from the cached lenses: the same rows


def test_lens_at_rows_without_a_layer_when_layer_0_was_not_kept():
    view = _view()
    del view.capture.hidden[0]
    got = view.lens_at(torch.tensor([-1, 3, -1]))
    torch.testing.assert_close(got[0], view.logits[0])
    torch.testing.assert_close(got[1], view.lens(3)[1])
    torch.testing.assert_close(got[2], view.logits[2])


def test_lens_at_without_fill_leaves_rows_without_a_layer_finite():
    view = _view()
    layers = torch.tensor([2, -1, 4])
    got = view.lens_at(layers, fill=False)
    torch.testing.assert_close(got[[0, 2]], view.lens_at(layers)[[0, 2]])  # rows with a layer: the same lens
    assert torch.isfinite(got[1]).all()


def test_lens_at_makes_one_head_call_for_a_batch_of_layers():
    view = _view()
    view.lens_at(torch.tensor([2, 0, 4]))
    assert view.adapter.lm_head.calls == 1


def test_lens_at_an_undeclared_layer_fails():
    view = _view()
    del view.capture.hidden[3]
    try:
        view.lens_at(torch.tensor([1, 3, 2]))
    except (IndexError, RuntimeError) as e:
        assert "out of range" in str(e)
    else:
        raise AssertionError("a layer without a kept state was read")


def test_lens_at_picks_from_one_lenses_product_without_stacking_it_again():
    from benchmarks.measure import OpCount

    view = _view()
    layers = torch.tensor([2, -1, 4])
    expected = view.lens_at(layers)  # from the hidden states: one head call for the picked rows
    view.lenses([3, 0, 4, 1, 2])  # every kept layer, in one product (B, 5, V), not in layer order
    with OpCount() as count:
        got = view.lens_at(layers)
    assert torch.equal(got, expected)
    assert count.ops["aten.stack"] == 0  # the (B, N, V) product is read in place


def test_lens_at_from_a_lenses_product_refuses_a_layer_that_was_not_kept():
    view = _view()
    del view.capture.hidden[3]
    view.lenses([0, 4, 1, 2])  # (B, 4, V): sample b's rows are 4 b .. 4 b + 3
    torch.testing.assert_close(view.lens_at(torch.tensor([4, 1, -1]))[:2], torch.stack([view.lens(4)[0], view.lens(1)[1]]))
    try:
        view.lens_at(torch.tensor([2, 3, 4]))  # sample 1 at block 3, whose state was not kept
    except (IndexError, RuntimeError) as e:
        assert "out of range" in str(e)
    else:
        raise AssertionError("a layer without a kept state was read")
