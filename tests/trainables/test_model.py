"""The dual-head model and pretrained backbone checkpoints (weights_only, shape checks)."""

from __future__ import annotations

import pytest
import torch

from trainables.errors import UserError
from trainables.model import DualHeadModel, backbone_state, load_backbone, load_pretrained, read_checkpoint


class Payload:  # an arbitrary object: weights_only loading must refuse it
    def __init__(self):
        self.w = torch.zeros(2)


def test_heads_and_shapes():
    m = DualHeadModel(in_features=7, n_labels=3, hidden=(16, 8)).eval()
    main, aux = m(torch.randn(5, 7))
    assert main.shape == (5, 3) and aux.shape == (5, 3)
    base = DualHeadModel(in_features=7, n_labels=1, hidden=(16,), aux_head=False)
    main, aux = base(torch.randn(5, 7))
    assert main.shape == (5, 1) and aux is None
    assert torch.equal(m.main_path()(torch.ones(2, 7)), m(torch.ones(2, 7))[0])


@pytest.mark.parametrize("wrap", [
    lambda m: m.backbone.state_dict(),
    lambda m: {"backbone": m.backbone.state_dict()},
    lambda m: m.state_dict(),
    lambda m: {"model": m.state_dict(), "temperature": 1.3},
])
def test_pretrained_backbone_loads_from_common_layouts(tmp_path, wrap):
    src = DualHeadModel(in_features=7, n_labels=1, hidden=(16, 8))
    torch.save(wrap(src), tmp_path / "b.pt")
    dst = DualHeadModel(in_features=7, n_labels=1, hidden=(16, 8))
    load_backbone(dst.backbone, backbone_state(read_checkpoint(tmp_path / "b.pt")))
    for a, b in zip(src.backbone.parameters(), dst.backbone.parameters()):
        assert torch.equal(a, b)


def test_mismatched_shapes_list_the_keys(tmp_path):
    torch.save(DualHeadModel(in_features=9, n_labels=1, hidden=(16, 8)).state_dict(), tmp_path / "b.pt")
    dst = DualHeadModel(in_features=7, n_labels=1, hidden=(16, 8))
    with pytest.raises(UserError, match=r"shape mismatch: net\.0\.weight \(16, 9\) in the checkpoint vs \(16, 7\)"):
        load_backbone(dst.backbone, backbone_state(read_checkpoint(tmp_path / "b.pt")))
    torch.save(DualHeadModel(in_features=7, n_labels=1, hidden=(16,)).state_dict(), tmp_path / "c.pt")
    with pytest.raises(UserError, match=r"missing keys: net\.\d\.bias, net\.\d\.weight"):
        load_backbone(dst.backbone, backbone_state(read_checkpoint(tmp_path / "c.pt")))


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"backbone": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights_only=True refuses"):
        read_checkpoint(tmp_path / "evil.pt")


def test_missing_and_garbage_checkpoints(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_checkpoint(tmp_path / "none.pt")
    (tmp_path / "g.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot be read"):
        read_checkpoint(tmp_path / "g.pt")


def test_load_pretrained_reads_a_file_or_a_state_dict_and_names_the_file(tmp_path):
    src = DualHeadModel(in_features=7, n_labels=1, hidden=(16, 8))
    torch.save({"model": src.state_dict()}, tmp_path / "p.pt")
    from_file, from_dict = load_pretrained(tmp_path / "p.pt"), load_pretrained(src.state_dict())
    assert set(from_file) == set(from_dict) == set(src.backbone.state_dict())
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(from_file[k], v) and torch.equal(from_dict[k], v)
    bad = src.state_dict()
    bad["backbone.net.0.weight"] = torch.full_like(bad["backbone.net.0.weight"], float("nan"))
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"pretrained checkpoint '.*nan\.pt' holds NaN"):
        load_pretrained(tmp_path / "nan.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(tmp_path / "none.pt")
