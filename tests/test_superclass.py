import numpy as np
import pytest
import torch

from vmoe_export.superclass import confusion_matrix, spectral_clusters, superclasses_from_confusion


def test_confusion_matrix_counts():
    labels = torch.tensor([0, 0, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_clusters_recover_known_confusion_blocks():
    # Classes {0,3,5}, {1,4} and {2,6,7} are confused within their group only.
    groups = [[0, 3, 5], [1, 4], [2, 6, 7]]
    rng = np.random.default_rng(0)
    conf = np.diag(rng.integers(800, 900, 8))
    for g in groups:
        for a in g:
            for b in g:
                if a != b:
                    conf[a, b] = rng.integers(20, 60)
    conf[0, 1] = 1  # a little noise across groups
    labels = superclasses_from_confusion(conf, 3, seed=0)
    found = sorted(sorted(np.flatnonzero(np.array(labels) == c).tolist()) for c in set(labels))
    assert found == sorted(groups)
    assert labels[0] == 0  # canonical numbering: class 0's group is super-class 0


def test_clustering_is_deterministic_and_nonempty():
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 50, (10, 10)) + np.diag(np.full(10, 500))
    a = superclasses_from_confusion(conf, 4, seed=3)
    assert a == superclasses_from_confusion(conf, 4, seed=3)
    assert sorted(set(a)) == [0, 1, 2, 3]


def test_more_superclasses_than_classes_is_an_error():
    with pytest.raises(ValueError, match="cannot cluster"):
        spectral_clusters(np.ones((3, 3)), 4)
