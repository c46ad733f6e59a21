# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_medl.transforms import (
    UNSEEN_SITE,
    SiteToDesign,
    SiteToDesignD,
    SiteToDesignd,
    SiteToIndex,
    SiteToIndexd,
    SiteToIndexDict,
    SiteVocabulary,
    site_index_to_design,
)


def test_vocabulary_sorted_and_indices():
    vocab = SiteVocabulary(["site_c", "site_a", "site_b", "site_a"])
    assert vocab.sites == ("site_a", "site_b", "site_c")
    assert vocab.num_sites == len(vocab) == 3
    assert [vocab.index(s) for s in ("site_a", "site_b", "site_c")] == [0, 1, 2]
    assert vocab.name(2) == "site_c"
    assert "site_b" in vocab and "site_x" not in vocab


def test_vocabulary_integer_sites_sort_numerically_and_are_canonical():
    vocab = SiteVocabulary([10, 2, np.int64(3)])
    assert vocab.sites == ("2", "3", "10")
    assert vocab.index(10) == vocab.index("10") == vocab.index(torch.tensor(10)) == 2


def test_vocabulary_unseen_marker_and_error():
    vocab = SiteVocabulary(["site_a", "site_b"])
    assert UNSEEN_SITE == -1
    assert vocab.index("site_new") == UNSEEN_SITE
    assert vocab.num_sites == 2  # never grows silently
    with pytest.raises(ValueError, match="site_new.*not in the training vocabulary"):
        vocab.index("site_new", unseen="error")


def test_vocabulary_json_round_trip(tmp_path):
    vocab = SiteVocabulary.from_datalist([{"site": "s2"}, {"site": "s1"}, {"site": "s2"}])
    path = tmp_path / "sites.json"
    vocab.to_json(path)
    loaded = SiteVocabulary.from_json(path)
    assert loaded == vocab and loaded.sites == ("s1", "s2")
    assert SiteToIndex(path)("s2") == 1  # a path is accepted wherever a vocabulary is


def test_vocabulary_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        SiteVocabulary([])
    with pytest.raises(KeyError, match="entry 1 has no site key 'site'"):
        SiteVocabulary.from_datalist([{"site": "a"}, {"image": "x.nii.gz"}])
    bad = tmp_path / "bad.json"
    bad.write_text('{"sites": ["b", "a"]}')
    with pytest.raises(ValueError, match="bad.json.*not unique and sorted"):
        SiteVocabulary.from_json(bad)
    with pytest.raises(TypeError, match="string or an integer"):
        SiteVocabulary([True])


def test_site_index_to_design_one_hot_and_population():
    z = site_index_to_design(torch.tensor([0, 2, -1]), num_sites=3)
    expected = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert z.dtype == torch.float32 and torch.equal(z, expected)
    assert torch.equal(site_index_to_design(np.array([[0], [2], [-1]]), 3), expected)
    assert site_index_to_design(1, 2).shape == (1, 2)


@pytest.mark.parametrize("bad", [[0, 3], [-2], [5, -3]])
def test_site_index_to_design_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="out of range.*num_sites=3"):
        site_index_to_design(torch.tensor(bad), 3)


def test_site_index_to_design_rejects_fractional():
    with pytest.raises(ValueError, match="whole numbers"):
        site_index_to_design(torch.tensor([0.5]), 3)


def test_dictionary_pipeline_seen_and_unseen():
    vocab = SiteVocabulary(["site_a", "site_b", "site_c"])
    to_index = SiteToIndexd(keys="site", vocabulary=vocab, raw_key_postfix="name")
    to_z = SiteToDesignd(keys="site", num_sites=vocab.num_sites, name="z")
    out = to_z(to_index({"image": torch.zeros(1, 2, 2), "site": "site_b"}))
    assert out["site"] == 1 and out["site_name"] == "site_b"
    assert torch.equal(out["z"], torch.tensor([0.0, 1.0, 0.0]))
    unseen = to_z(to_index({"site": "site_q"}))
    assert unseen["site"] == UNSEEN_SITE and torch.equal(unseen["z"], torch.zeros(3))


def test_dictionary_errors_name_the_key():
    vocab = SiteVocabulary(["site_a"])
    with pytest.raises(ValueError, match="key 'site'.*site_q"):
        SiteToIndexd(keys="site", vocabulary=vocab, unseen="error")({"site": "site_q"})
    with pytest.raises(ValueError, match="key 'site'.*out of range"):
        SiteToDesignd(keys="site", num_sites=2)({"site": 2})
    with pytest.raises(KeyError):
        SiteToIndexd(keys="site", vocabulary=vocab)({"image": 0})
    assert SiteToIndexd(keys="site", vocabulary=vocab, allow_missing_keys=True)({"image": 0}) == {"image": 0}


def test_soft_design():
    t = SiteToDesignd(keys="site", num_sites=3, soft_key="z_soft")
    out = t({"site": -1, "z_soft": [0.2, 0.5, 0.3]})
    assert torch.allclose(out["z"], torch.tensor([0.2, 0.5, 0.3]))
    assert torch.equal(t({"site": 0})["z"], torch.tensor([1.0, 0, 0]))  # no soft vector: one-hot
    with pytest.raises(ValueError, match="z_soft.*3 entries"):
        t({"site": 0, "z_soft": [0.5, 0.5]})
    with pytest.raises(ValueError, match="z_soft.*sum to at most 1"):
        t({"site": 0, "z_soft": [0.9, 0.9, 0.0]})


def test_aliases_and_array_forms():
    assert SiteToIndexDict is SiteToIndexd and SiteToDesignD is SiteToDesignd
    assert torch.equal(SiteToDesign(2)(-1), torch.zeros(2))
    with pytest.raises(ValueError, match="positive integer"):
        SiteToDesign(0)
