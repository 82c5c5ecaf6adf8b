"""Concept sets of the pairs (CUIs + parsed modality) and the targets they give on the default synthetic data."""

import numpy as np

from tinyclip.data.synthetic import make_synthetic
from tinyclip.losses import concept_sets, concept_targets


def test_synthetic_pairs_have_concepts_and_shared_ones_soften_targets():
    frame, _ = make_synthetic(num_samples=40, image_size=16, seed=0)
    sets = concept_sets(frame)
    assert len(sets) == 40
    for concepts, cuis in zip(sets, frame["cuis"]):
        assert concepts[:len(cuis)] == list(cuis) and len(cuis) == 3
    assert any(c.startswith("modality:") for c in sets[0] + sets[1] + sets[2])
    assert concept_sets(frame, with_modality=False) == [list(c) for c in frame["cuis"]]
    t = concept_targets(sets, alpha=0.5)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert (t > 0).sum() > 40  # pairs sharing a modality, region or finding credit each other
    assert (np.diag(t) == t.max(axis=1)).all()
