"""The dual-head model and pretrained backbone checkpoints (weights_only, shape checks)."""

from __future__ import annotations

import pytest
import torch

from trainables.errors import UserError
from trainables.model import DualHeadModel, backbone_state, load_backbone, read_checkpoint


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
