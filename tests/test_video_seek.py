"""Video clips decoded by seeking (uniperceiver/data/datasets/video.py): the same frames as decoding from frame 0,
for training clips and every evaluation view, in one open; files without usable timestamps still decode."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from uniperceiver.data.datasets.video import clip_indices, decode_clips

av = pytest.importorskip("av")


def _write(path, frames: int, fps: int = 30, gop: int = 30, codec: str = "libx264"):
    """Frame i is a flat grey of level (7 * i) % 250 with a bar whose position encodes i // 10."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(frames):
            img = np.full((32, 32, 3), (7 * i) % 250, np.uint8)
            img[:, (i // 10) % 32] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("video") / "long.mp4", 320)


def _picks(views, frames_per_clip=8, stride=4):
    return [functools.partial(clip_indices, frames_per_clip=frames_per_clip, stride=stride, view=v, num_views=views)
            for v in range(views)]


def test_seeking_gives_the_frames_of_a_full_decode(long_video):
    picks = _picks(5) + [lambda n: clip_indices(n, 8, 4, offset=0.97), lambda n: [0, 1, 2, 319, 160, 161]]
    seek = decode_clips(long_video, picks)
    full = decode_clips(long_video, picks, seek=False)
    assert len(seek) == len(picks)
    for a, b in zip(seek, full):
        assert a.shape == b.shape and np.array_equal(a, b)
    # the frames are the ones asked for: frame i is grey level 7 * i % 250 (lossy, so approximately)
    last = clip_indices(320, 8, 4, view=4, num_views=5)
    assert last[-1] == 319
    levels = seek[4][:, 5, 20, 0].astype(int)
    assert np.all(np.abs(levels - np.array([(7 * i) % 250 for i in last])) <= 6)


def test_views_share_one_open(long_video, monkeypatch):
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    decode_clips(long_video, _picks(3))
    assert opened == [long_video]


def test_short_and_header_less_videos_still_decode(tmp_path):
    short = _write(tmp_path / "short.mp4", 5, fps=8)
    clip = decode_clips(short, _picks(1))[0]
    assert clip.shape == (8, 32, 32, 3)
    # MPEG-4 Part 2 in AVI: PyAV reports no reliable timestamps for every frame; the result must equal a full decode
    avi = _write(tmp_path / "v.avi", 90, codec="mpeg4")
    assert all(np.array_equal(a, b) for a, b in zip(decode_clips(avi, _picks(2)), decode_clips(avi, _picks(2),
                                                                                              seek=False)))
