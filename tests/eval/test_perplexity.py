"""Perplexity protocol: sparsekit's eval equals an independent computation of the protocol."""

import pytest
import torch

from conftest import ARCHS, independent_ppl, tiny_model
from sparsekit.data import windows
from sparsekit.eval.perplexity import perplexity


@pytest.mark.parametrize("arch", ARCHS)
def test_perplexity_matches_independent_protocol(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, 512, (5 * 40 + 17,), generator=torch.Generator().manual_seed(1))
    result = perplexity(model, windows(ids, 40), batch_size=2)
    assert result.windows == 5 and result.tokens == 5 * 39
    assert result.ppl == pytest.approx(independent_ppl(model, ids, 40), rel=1e-5)
    # a random model is near uniform over the vocabulary, but not exactly
    assert 100 < result.ppl < 5000
