"""The data path's shortcuts give the same samples: decoded-image cache, fused to-tensor + normalise, tokenised-text
cache, batched fetch with per-sample seeding."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from uniperceiver.data.datasets import base
from uniperceiver.data.multitask import _SeededSamples
from uniperceiver.data.transforms import ToNormalizedTensor, build_image_transform
from uniperceiver.modeling.tokenization import get_tokenizer


class _Images(base.ImageRecordsDataset):
    def make_sample(self, index, record, image):
        return {"image": image, "index": index}


def test_image_cache_decodes_each_file_once(tmp_path, monkeypatch):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ds = _Images([{"image": f"{i}.png"} for i in range(3)], image_root=str(tmp_path),
                 transform=build_image_transform(8, False, crop_pct=1.0))
    reference = [ds[i]["image"] for i in range(3)]
    decoded = []
    original = base.load_rgb
    monkeypatch.setattr(base, "load_rgb", lambda path, **kw: decoded.append(path) or original(path, **kw))
    ds.enable_image_cache(1)
    for _ in range(3):
        assert all(torch.equal(ds[i]["image"], reference[i]) for i in range(3))
    assert len(decoded) == 3  # each file once
    ds.enable_image_cache(8 * 8 * 3 / 2**20)  # room for one image: the others decode every time
    for _ in range(2):
        [ds[i] for i in range(3)]
    assert len(decoded) == 3 + 1 + 2 * 2


def test_fused_to_tensor_normalize_is_bit_identical():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = T.Normalize(mean, std)(T.ToTensor()(image))
    assert torch.equal(ToNormalizedTensor(mean, std)(image), expected)
    train = build_image_transform(16, True, scale=(1.0, 1.0), hflip=0.0)
    assert any(isinstance(t, ToNormalizedTensor) for t in train.transforms)


def test_tokenizer_cache_and_packing():
    tok = get_tokenizer()
    first = tok.encode("A photo of the digit 7.")
    first.append(-1)  # callers may modify what they get
    assert tok.encode("A photo of the digit 7.") == first[:-1]
    ids, mask = tok.tokenize(["a b c", "", "the digit seven in red"], 5, add_sot=True, add_eot=True)
    assert ids.shape == (3, 5) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 2, 5] and ids[1, :2].tolist() == [tok.sot_id, tok.eot_id]
    assert (ids[~mask] == 0).all() and ids[0, -1] == tok.eot_id
    empty_ids, empty_mask = tok.tokenize([], 4)
    assert empty_ids.shape == (0, 4) and empty_mask.shape == (0, 4)


def test_batched_fetch_seeds_each_sample_like_single_fetch():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(2) + i + float(np.random.rand())

    ds = _SeededSamples(Noisy(), seed=3, rank=0)
    items = [(p, p % 10) for p in range(5, 9)]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    batched = ds.__getitems__(items)
    assert torch.equal(torch.rand(1), before)  # the global RNG is where it was
    for (pos, sample), item in zip(batched, items):
        assert pos == item[0] and torch.equal(sample, ds[item][1])
