"""The data path's shortcuts give the same samples: decoded-image cache, fused to-tensor + normalise, tokenised-text
cache, batched fetch with per-sample seeding."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from uniperceiver.data.datasets import base
from uniperceiver.data.multitask import _SeededBatches
from uniperceiver.data.transforms import CropFlipNormalize, ToNormalizedTensor, build_image_transform
from uniperceiver.modeling.tokenization import get_tokenizer
from uniperceiver.utils.env import RngStream, derive_seed, derive_seeds, seeded_rng


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
    test = build_image_transform(16, False)
    assert any(isinstance(t, ToNormalizedTensor) for t in test.transforms)


def _timm_train(size, scale, hflip):
    """timm's own train transform, unfused (ToTensor, Normalize): the reference."""
    from timm.data import create_transform

    return create_transform(input_size=size, is_training=True, scale=scale, hflip=hflip, color_jitter=None,
                            interpolation="bicubic")


@pytest.mark.parametrize("size,scale,hflip", [(28, (1.0, 1.0), 0.5), (16, (0.08, 1.0), 0.5), (24, (0.5, 0.9), 0.0),
                                               (28, (0.3, 1.0), 1.0), (20, (0.08, 1.0), 0.3)])
def test_crop_flip_normalize_draws_and_returns_what_timm_does(size, scale, hflip):
    fast = build_image_transform(size, True, scale=scale, hflip=hflip)
    assert isinstance(fast, CropFlipNormalize)
    reference = _timm_train(size, scale, hflip)
    rng = np.random.default_rng(size)
    shapes = [(28, 28), (20, 41), (47, 19), (12, 12), (64, 50), (size, size)]
    for n, (h, w) in enumerate(shapes * 4):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        outs, states = [], []
        for transform, source in ((reference, image), (fast, image), (fast, np.asarray(image))):
            random.seed(n)
            torch.manual_seed(n)
            outs.append(transform(source))
            states.append((random.random(), torch.rand(1).item()))  # where each generator was left
        assert outs[0].shape == (3, size, size)
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2]), (h, w)
        assert states[0] == states[1] == states[2]


def test_crop_flip_normalize_only_replaces_crop_and_flip():
    assert not isinstance(build_image_transform(28, True, rand_augment="rand-m9-mstd0.5-inc1"), CropFlipNormalize)
    fast = build_image_transform(8, True, scale=(1.0, 1.0), hflip=0.0)
    modes = []
    fast.fallback = lambda image: modes.append(image.mode) or "timm's steps"
    assert fast(Image.fromarray(np.full((8, 8), 7, dtype=np.uint8))) == "timm's steps"  # not RGB
    assert fast(np.full((8, 8, 4), 7, dtype=np.uint8)) == "timm's steps"
    assert isinstance(fast(np.full((8, 8, 3), 7, dtype=np.uint8)), torch.Tensor) and modes == ["L", "RGBA"]


def test_image_cache_hands_arrays_only_to_transforms_that_take_them(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 40, dtype=np.uint8)).save(tmp_path / "0.png")
    seen = []
    ds = _Images([{"image": "0.png"}], image_root=str(tmp_path), transform=lambda im: seen.append(im) or im)
    ds.enable_image_cache(1)
    ds[0], ds[0]
    assert all(isinstance(im, Image.Image) for im in seen) and seen[0] is not seen[1]
    fast = build_image_transform(8, True, scale=(1.0, 1.0), hflip=0.0)
    ds.transform = lambda im: seen.append(im) or fast(im)
    ds.transform.accepts_arrays = True
    first, second = ds[0]["image"], ds[0]["image"]
    assert isinstance(seen[-1], np.ndarray) and not seen[-1].flags.writeable and torch.equal(first, second)


def test_derive_seed_is_numpys_seed_sequence():
    rng = random.Random(1)
    values = [0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 3, 2**63 - 1, 2**63, 2**64 + 5, -1, -2**40]
    for length in range(0, 22):  # up to 21 parts of up to 2 words each: past the 16 precomputed constants
        for _ in range(50):
            row = [rng.choice(values + [rng.randrange(2**32), rng.randrange(2**64)]) for _ in range(length)]
            expected = np.random.SeedSequence([p % 2**63 for p in row]).generate_state(1)[0] % 2**31
            assert derive_seed(*row) == int(expected), row


def test_clean_text_fast_path_agrees_with_ftfy():
    import html
    import string

    import ftfy

    from uniperceiver.tokenization.clip_bpe import _clean

    def full(text):
        return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()

    rng = random.Random(0)
    pieces = ["&amp;", "&lt;b&gt;", "<b>", "\x1b[31m", "\r\n", "\n", "\t", "caf\u00e9", "\u00c3\u00a9",
              "\u201chi\u201d", "\ufb01", "\uff21", "\x85", "\x7f", "\x00", "it's", "A", "7", " "]
    for _ in range(3000):
        text = "".join(rng.choice(pieces + [rng.choice(string.printable)]) for _ in range(rng.randrange(1, 10)))
        assert _clean(text) == full(text), repr(text)
    for _ in range(3000):  # printable ASCII: the fast path unless there is a "&"
        text = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(0, 30)))
        assert _clean(text) == full(text), repr(text)


def test_derive_seeds_is_derive_seed_per_row():
    rng = random.Random(0)
    values = [0, 1, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 3, 2**63 - 1, -1]
    for length in range(0, 20):  # up to 16 parts hashed vectorised, more one by one
        small = [[rng.randrange(2**32) for _ in range(length)] for _ in range(20)]  # the vectorised path
        anything = [[rng.choice(values + [rng.randrange(2**32)]) for _ in range(length)] for _ in range(20)]
        for rows in (small, anything):
            assert derive_seeds(rows) == [derive_seed(*row) for row in rows]
    mixed = [(5, 0, 3, RngStream.SAMPLE), (5, 0, 3)]
    assert derive_seeds(mixed) == [derive_seed(*row) for row in mixed] and derive_seeds([]) == []


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


def test_batch_fetch_seeds_each_sample_and_the_collate_from_their_positions():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(2) + i + float(np.random.rand()) + random.random()

    def collate(samples):
        return torch.stack(samples), torch.rand(1)

    ds = _SeededBatches(Noisy(), collate, seed=3, rank=0, batch_size=4)
    ds.SEED_BLOCK = 6  # seeds are derived for 6 positions at a time: the calls below move the block
    items = [(p, p % 10) for p in range(4, 8)]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    samples, collated = ds[items]
    assert torch.equal(torch.rand(1), before)  # the global RNG is where it was
    for row, (position, index) in zip(samples, items):
        with seeded_rng(derive_seed(3, 0, position, RngStream.SAMPLE)):
            assert torch.equal(row, Noisy()[index])
    with seeded_rng(derive_seed(3, 0, 1, RngStream.COLLATE)):  # batch position 4 // 4
        assert torch.equal(collated, torch.rand(1))
    for positions in ([9, 12], [2], [30, 31, 32, 33, 34, 35, 36, 37]):  # past the block, before it, longer
        assert ds.sample_seeds(positions) == [derive_seed(3, 0, p, RngStream.SAMPLE) for p in positions]


def test_image_cache_prefill_decodes_up_to_the_budget_before_any_read(tmp_path, monkeypatch):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    ds = _Images([{"image": n} for n in ("bad.png", "0.png", "1.png", "2.png")], image_root=str(tmp_path),
                 transform=build_image_transform(8, False, crop_pct=1.0))
    decoded = []
    original = base.load_rgb
    monkeypatch.setattr(base, "load_rgb",
                        lambda path, **kw: decoded.append(os.path.basename(path)) or original(path, **kw))
    assert ds.enable_image_cache(2 * 8 * 8 * 3 / 2**20, prefill=range(4)) == 2  # room for two; the bad one skipped
    assert decoded == ["bad.png", "0.png", "1.png", "2.png"] and ds.num_read == ds.num_bad == 0
    decoded.clear()
    [ds[i] for i in (1, 2, 3)]
    assert decoded == ["2.png"]  # over the budget: read when used
