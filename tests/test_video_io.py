"""Sample-video writing and the demo's synthetic videos, read back with the pipeline's decoder (decord)."""

import decord
import numpy as np
import pytest

from experiments.synthetic import KIND_VELOCITIES, PALETTE, render_sprite_video, write_sprite_videos
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
    # other render settings would silently reuse these videos: refused, naming the setting, nothing written
    with pytest.raises(ValueError, match="motion: 'smooth' there, 'kinds' asked"):
        write_sprite_videos(tmp_path, num_videos=3, num_frames=6, size=32, motion="kinds", grid_cells=8)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [p.name for p in paths]
    assert paths[0].stat().st_mtime_ns == mtime
    # videos whose settings were never recorded cannot be vouched for either
    (tmp_path / "render.json").unlink()
    with pytest.raises(ValueError, match="no record of their render settings"):
        write_sprite_videos(tmp_path, num_videos=2, num_frames=6, size=32)
    assert not (tmp_path / "render.json").exists() and paths[0].stat().st_mtime_ns == mtime


def test_grid_sprites_move_by_whole_cells_and_bounce():
    cells, size = 8, 64
    cell = size // cells
    for seed in range(6):
        v = render_sprite_video(seed, num_frames=20, size=size, motion="grid", grid_cells=cells)
        background = np.median(v[0].reshape(-1, 3), axis=0)  # sprites cover at most 3 x 4 of 64 cells
        sprite = (v != background).any(-1)  # [T, H, W]
        for f in range(20):
            rows, cols = np.nonzero(sprite[f].any(1))[0], np.nonzero(sprite[f].any(0))[0]
            # sprites sit on cells: their bounding box starts and ends on cell boundaries
            assert rows.min() % cell == 0 and (rows.max() + 1) % cell == 0, (seed, f)
            assert cols.min() % cell == 0 and (cols.max() + 1) % cell == 0, (seed, f)
        assert all((v[f] != v[f + 1]).any() for f in range(19)), "a sprite moves every frame"
        assert np.array_equal(v, render_sprite_video(seed, num_frames=20, size=size, motion="grid", grid_cells=cells))
    # one sprite: frame f+1 is frame f with the sprite shifted by whole cells, the velocity flipping at a border
    one = next(s for s in range(100) if len(_colours(render_sprite_video(s, 2, size, motion="grid"))) == 2)
    v = render_sprite_video(one, num_frames=30, size=size, motion="grid", grid_cells=cells)
    background = v[0, 0, 0] if (v[0, 0, 0] == v[0, -1, -1]).all() else v[0, -1, 0]
    centres = np.array([np.argwhere((x != background).any(-1)).mean(0) for x in v])  # [T, 2] pixels
    steps = np.diff(centres, axis=0) / cell
    assert np.allclose(steps, np.round(steps)) and set(np.abs(np.round(steps)).ravel()) <= {0, 1}
    assert (np.abs(steps).sum(1) > 0).all() and (np.sign(steps[:-1]) != np.sign(steps[1:])).any(), "bounces"
    with pytest.raises(ValueError, match="motion"):
        render_sprite_video(0, motion="teleport")
    with pytest.raises(ValueError, match="grid_cells"):
        render_sprite_video(0, size=64, motion="grid", grid_cells=7)


def test_kinds_sprites_move_by_the_velocity_of_their_colour_and_wrap():
    cells, size = 8, 64
    cell = size // cells
    seen = set()
    for seed in range(40):
        v = render_sprite_video(seed, num_frames=12, size=size, motion="kinds", grid_cells=cells)
        values, counts = np.unique(v[0].reshape(-1, 3), axis=0, return_counts=True)
        colours = _colours(v) - {tuple(values[counts.argmax()])}  # every colour but the background's
        if len(colours) != 1:  # one sprite: nothing drawn over it
            continue
        (colour,) = colours
        kind = int(np.nonzero((PALETTE == np.array(colour)).all(1))[0][0])
        vx, vy = KIND_VELOCITIES[kind]
        mask = (v == np.array(colour, np.uint8)).all(-1)  # [T, H, W]
        for f in range(11):  # the next frame is this one shifted by the colour's velocity, wrapping around
            assert np.array_equal(mask[f + 1], np.roll(mask[f], (vy * cell, vx * cell), axis=(0, 1))), (seed, f)
        seen.add(kind)
    assert len(seen) >= 4, "one-sprite videos of several colours were checked"
    assert KIND_VELOCITIES.shape == PALETTE.shape[:1] + (2,) and (np.abs(KIND_VELOCITIES).sum(1) == 1).all()


def _colours(frames: np.ndarray) -> set:
    return set(map(tuple, frames.reshape(-1, 3)))


def test_lossless_444_round_trip_and_pix_fmt_refused(tmp_path):
    frames = render_sprite_video(2, num_frames=6, size=64, motion="grid", grid_cells=8)
    back = decord.VideoReader(str(write_mp4(frames, tmp_path / "l.mp4", crf=0, pix_fmt="yuv444p"))).get_batch(range(6))
    assert np.abs(back.asnumpy().astype(int) - frames).max() <= 1
    lossy = decord.VideoReader(str(write_mp4(frames, tmp_path / "c.mp4"))).get_batch(range(6))
    assert np.abs(lossy.asnumpy().astype(int) - frames).max() > 1, "4:2:0 must not be lossless at sprite edges"
    with pytest.raises(ValueError, match="pix_fmt"):
        write_mp4(frames, tmp_path / "x.mp4", pix_fmt="rgb24")
