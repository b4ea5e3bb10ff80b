"""Sample-video writing and the demo's synthetic videos, read back with the pipeline's decoder (decord)."""

import decord
import numpy as np
import pytest

from experiments.synthetic import render_sprite_video, write_sprite_videos
from experiments.video_io import mark_context, side_by_side, upscale, write_gif, write_mp4


def test_sprite_video_is_deterministic_and_moves():
    a, b = render_sprite_video(3, num_frames=12, size=32), render_sprite_video(3, num_frames=12, size=32)
    assert a.dtype == np.uint8 and a.shape == (12, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[-1]), "sprites must move"
    assert not np.array_equal(a, render_sprite_video(4, num_frames=12, size=32))


def test_mp4_round_trip_through_decord(tmp_path):
    frames = render_sprite_video(0, num_frames=10, size=64)
    path = write_mp4(frames, tmp_path / "v.mp4", fps=8)
    vr = decord.VideoReader(str(path), num_threads=1)
    assert len(vr) == 10
    back = vr.get_batch(list(range(10))).asnumpy()
    assert back.shape == frames.shape
    psnr = 10 * np.log10(255**2 / np.mean((back.astype(float) - frames) ** 2))
    assert psnr > 30, psnr


def test_odd_sizes_are_padded_and_bad_input_refused(tmp_path):
    write_mp4(np.zeros((3, 15, 17, 3), np.uint8), tmp_path / "odd.mp4")
    assert len(decord.VideoReader(str(tmp_path / "odd.mp4"))) == 3
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(np.zeros((3, 16, 16, 3), np.float32), tmp_path / "f.mp4")
    with pytest.raises(ValueError, match="0 frames"):
        write_gif(np.zeros((0, 16, 16, 3), np.uint8), tmp_path / "e.gif")


def test_gif_and_helpers(tmp_path):
    import imageio.v3 as iio

    v = render_sprite_video(1, num_frames=4, size=16)
    marked = mark_context(v, 2)
    assert (marked[0, 0, 0] == [255, 0, 0]).all() and np.array_equal(marked[2:], v[2:])
    both = side_by_side(v, v, gap=2)
    assert both.shape == (4, 16, 34, 3)
    big = upscale(v, 4)
    assert big.shape == (4, 64, 64, 3) and np.array_equal(big[:, ::4, ::4], v)
    big[:, -1, -1] = np.arange(4)[:, None] * 60  # make every frame distinct (GIF writers merge repeated frames)
    path = write_gif(big, tmp_path / "x.gif")
    assert iio.imread(path).shape[0] == 4


def test_write_sprite_videos_keeps_existing_files(tmp_path):
    paths = write_sprite_videos(tmp_path, num_videos=2, num_frames=6, size=32)
    mtime = paths[0].stat().st_mtime_ns
    again = write_sprite_videos(tmp_path, num_videos=2, num_frames=6, size=32)
    assert again == paths and paths[0].stat().st_mtime_ns == mtime
