"""Per-modality embedders: batch entries -> ``(tokens (B, N, width), mask (B, N))``.

Every embedder adds a learned modality-type embedding, applies LayerNorm and dropout, and
accepts ``token_mask (B, N)``: True tokens are replaced by a learned [MASK] embedding before
positions are added (masked patch modelling). Image and audio embedders also expose
``patchify(batch) -> (B, N, patch_dim)``, the regression targets of those tokens.

A new modality's embedder subclasses ``Embedder`` and is named by its ``Modality``
(``omniformer.modalities``; docs/adding-a-modality.md)::

    class DepthEmbedder(Embedder):
        modality = "depth"
        def __init__(self, cfg): super().__init__(cfg); self.proj = ...
        def forward(self, batch, token_mask=None):
            x, mask = self.proj(batch["depth"]), batch["depth_mask"]
            return self.finish(self.apply_token_mask(x, token_mask), mask)
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Dropout, LayerNorm, LearnedPositions, SinusoidalPositions, sinusoidal_positions_2d

Batch = dict[str, Tensor]


def embedder_config(cfg, modality: str):
    """The config an embedder is built from: ``cfg`` itself, or, when the modality has its own
    tower (``cfg.<modality>.tower``, an imported encoder), ``cfg`` at that tower's width and eps."""
    tower = getattr(getattr(cfg, modality, None), "tower", None)
    if tower is None:
        return cfg
    return dataclasses.replace(cfg, width=tower.width, layer_norm_eps=tower.layer_norm_eps)


class Embedder(nn.Module):
    """Shared parts: type embedding, [MASK] embedding, positions, LayerNorm, dropout."""

    modality: str = ""

    def __init__(self, cfg):
        super().__init__()
        self.width = cfg.width
        self.type_embedding = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.mask_embedding = nn.Parameter(torch.randn(cfg.width) * 0.02)
        self.positions: nn.Module = nn.Identity()
        tower = getattr(getattr(cfg, self.modality, None), "tower", None)
        self.ln = LayerNorm(cfg.width, eps=cfg.layer_norm_eps) if tower is None or tower.embed_ln else nn.Identity()
        self.drop = Dropout(cfg.dropout)

    def apply_token_mask(self, x: Tensor, token_mask: Tensor | None) -> Tensor:
        if token_mask is None:
            return x
        return torch.where(token_mask[..., None], self.mask_embedding.to(x.dtype), x)

    def finish(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Positions + type embedding, LayerNorm, dropout."""
        x = self.positions(x) + self.type_embedding
        return self.drop(self.ln(x)), mask.bool()


class TextEmbedder(Embedder):
    """Token ids -> word embedding (+ [MASK] replacement) + positions + type."""

    modality = "text"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (from the tokenizer) before building the text embedder")
        self.pad_id = getattr(cfg.text, "pad_id", 0)
        self.token = nn.Embedding(cfg.vocab_size, cfg.width, padding_idx=self.pad_id)
        n = cfg.text.max_len
        self.positions = LearnedPositions(n, cfg.width) if cfg.text.positions == "learned" else SinusoidalPositions(n, cfg.width)

    def word_vectors(self) -> Tensor:
        """Every vocabulary word as the embedder outputs it, less its position: (vocab, width).
        A bag of words over these is where a question's tokens land before any layer reads them."""
        return self.ln(self.token.weight + self.type_embedding)

    def forward(self, batch: Batch, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ids = batch["text"]
        mask = batch.get("text_mask")
        mask = ids != self.pad_id if mask is None else mask
        return self.finish(self.apply_token_mask(self.token(ids), token_mask), mask)


def _conv_stem(channels: int, width: int, patch: int, full_res_convs: int = 0) -> nn.Sequential:
    """3x3 stride-2 convs (GELU between) doubling channels up to ``width``, then a 1x1 projection.

    Ends on the same (size/patch)^2 grid as the ViT patch stem; an odd leftover factor of
    ``patch`` becomes one kernel=stride convolution. ``full_res_convs`` 3x3 stride-1 convs come
    first, at the first halving's width, for strokes finer than one stride-2 kernel sees.
    """
    halvings, rest = 0, patch
    while rest % 2 == 0:
        halvings, rest = halvings + 1, rest // 2
    layers: list[nn.Module] = []
    ch = channels
    for _ in range(full_res_convs):
        out = max(width // 2 ** max(halvings, 1), 8)
        layers += [nn.Conv2d(ch, out, 3, padding=1), nn.GELU()]
        ch = out
    for i in range(1, halvings + 1):
        out = max(width // 2 ** (halvings - i), 8)
        layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1), nn.GELU()]
        ch = out
    if rest > 1:
        layers += [nn.Conv2d(ch, width, rest, stride=rest), nn.GELU()]
        ch = width
    if not layers:  # patch_size 1: still one 3x3 layer of spatial context
        layers += [nn.Conv2d(ch, width, 3, padding=1), nn.GELU()]
        ch = width
    layers.append(nn.Conv2d(ch, width, 1))
    return nn.Sequential(*layers)


class ImageEmbedder(Embedder):
    """Image (B, C, H, W) -> (size/p)^2 patch tokens; mask = image_mask on every patch.

    With ``cfg.image.cls_token`` a learned [CLS] token comes first (ViT, CLIP): 1 + (size/p)^2
    tokens, positions over all of them; ``token_mask`` still covers the patches only.
    """

    modality = "image"

    def __init__(self, cfg):
        super().__init__(cfg)
        c = cfg.image
        self.patch, self.channels, self.grid = c.patch_size, c.channels, c.size // c.patch_size
        self.drop_flat = getattr(c, "drop_flat_patches", False)
        if c.stem == "patch":
            self.stem = nn.Conv2d(c.channels, cfg.width, c.patch_size, stride=c.patch_size,
                                  bias=getattr(c, "patch_bias", True))
            self.coordinates = False
        else:
            self.coordinates = getattr(c, "coordinates", False)
            self.stem = _conv_stem(c.channels + 2 * self.coordinates, cfg.width, c.patch_size,
                                   getattr(c, "stem_convs", 0))
        n = self.grid * self.grid
        self.patch_dim = c.patch_size * c.patch_size * c.channels  # width of patchify's targets
        self.cls = nn.Parameter(torch.randn(cfg.width) * 0.02) if getattr(c, "cls_token", False) else None
        # Each token's (x, y) centre in [0, 1], in forward's order; [CLS] at the image's centre.
        centres = (torch.arange(self.grid) + 0.5) / self.grid
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        xy = torch.stack([x.flatten(), y.flatten()], -1)
        if self.cls is not None:
            xy = torch.cat([torch.full((1, 2), 0.5), xy])
        self.register_buffer("token_xy", xy, persistent=False)
        extra = 0 if self.cls is None else 1
        if c.positions == "learned":
            self.positions = LearnedPositions(n + extra, cfg.width)
        else:
            table = sinusoidal_positions_2d(self.grid, self.grid, cfg.width)
            table = torch.cat([torch.zeros(extra, cfg.width), table])  # [CLS] gets no position
            self.positions = SinusoidalPositions(n + extra, cfg.width, table)

    def _check(self, image: Tensor) -> None:
        H, W = image.shape[-2:]
        if H != self.grid * self.patch or W != self.grid * self.patch:
            raise ValueError(f"image is {H}x{W}; the model was built for {self.grid * self.patch} pixels square")

    def forward(self, batch: Batch, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        image = batch["image"]
        self._check(image)
        if self.coordinates:
            image = torch.cat([image, self._coordinate_channels(image)], dim=1)
        x = self.stem(image).flatten(2).transpose(1, 2)  # (B, N, W), patches in row-major order
        present = batch.get("image_mask")
        present = torch.ones(image.size(0), dtype=torch.bool, device=image.device) if present is None else present
        x = self.apply_token_mask(x, token_mask)
        if self.cls is not None:
            x = torch.cat([self.cls.to(x.dtype).expand(x.size(0), 1, -1), x], dim=1)
        mask = present.bool()[:, None].expand(-1, x.size(1))
        if self.drop_flat:
            mask = mask & ~self.flat_patches(batch)
        return self.finish(x, mask)

    def flat_patches(self, batch: Batch) -> Tensor:
        """(B, (size/p)^2) True where every pixel of the patch has the same colour."""
        pixels = self.patchify(batch).unflatten(-1, (self.patch * self.patch, self.channels))
        spread = (pixels.amax(2) - pixels.amin(2)).amax(-1)  # (B, N): the widest channel range
        flat = spread <= 1e-6
        if self.cls is not None:
            flat = torch.cat([flat.new_zeros(flat.size(0), 1), flat], dim=1)
        return flat

    @staticmethod
    def _coordinate_channels(image: Tensor) -> Tensor:
        B, _, H, W = image.shape
        ys = torch.linspace(-1, 1, H, device=image.device, dtype=image.dtype)
        xs = torch.linspace(-1, 1, W, device=image.device, dtype=image.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y]).expand(B, -1, -1, -1)

    def patchify(self, batch: Batch) -> Tensor:
        """(B, N, p*p*C): the pixels of each patch, (row, col, channel) order as in MAE."""
        image = batch["image"]
        self._check(image)
        B, C, p, g = image.size(0), self.channels, self.patch, self.grid
        x = image.reshape(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
        return x.reshape(B, g * g, p * p * C)


class AudioEmbedder(Embedder):
    """Log-mel (B, n_mels, T) -> ceil(T/s) tokens through stride-2 Conv1d layers (s = cfg.audio.subsample).

    Token j starts at frame j*s and is valid iff that frame is. Invalid frames are zeroed before
    each convolution, so padding values and padding length never change a valid token.

    ``cfg.audio.stem == "whisper"``: Whisper's stem, conv(k3, s1) -> GELU -> conv(k3, s2) -> GELU
    and no projection. Invalid frames are zeroed once, before the first convolution, so the
    tokens equal Whisper's on zero-padded features (and still never depend on the padding).

    ``cfg.audio.stem == "conv2d"``: the log-mel as a one-channel image, a 3x3 conv (stride 1) to
    ``stem_channels`` maps, then one 3x3 conv of stride 2 in mel and time per halving, each with
    GELU; a token is its frame's maps over the remaining mel bands, projected to the width.
    """

    modality = "audio"

    def __init__(self, cfg):
        super().__init__(cfg)
        a = cfg.audio
        self.subsample, self.n_mels = int(a.subsample), a.n_mels
        self.patch_dim = self.subsample * self.n_mels  # width of patchify's targets
        stem = getattr(a, "stem", "conv")
        self.whisper, self.conv2d = stem == "whisper", stem == "conv2d"
        steps = self.subsample.bit_length() - 1  # 1, 2, 4, 8 -> 0, 1, 2, 3 halvings
        convs, ch = [], a.n_mels
        if self.whisper:
            convs = [nn.Conv1d(a.n_mels, cfg.width, 3, padding=1),
                     nn.Conv1d(cfg.width, cfg.width, 3, stride=2, padding=1)]
        elif self.conv2d:
            maps, bands = a.stem_channels, a.n_mels
            convs = [nn.Conv2d(1, maps, 3, padding=1)]
            for _ in range(steps):
                convs.append(nn.Conv2d(maps, maps, 3, stride=2, padding=1))
                bands = (bands + 1) // 2
            ch = maps * bands
        else:
            for _ in range(max(steps, 1)):
                convs.append(nn.Conv1d(ch, cfg.width, 3, stride=2 if steps else 1, padding=1))
                ch = cfg.width
        self.convs = nn.ModuleList(convs)
        self.act = nn.GELU()
        self.proj = nn.Identity() if self.whisper else nn.Linear(ch, cfg.width)
        n = a.max_frames // self.subsample + 1
        self.positions = {"learned": lambda: LearnedPositions(n, cfg.width), "none": nn.Identity,
                          "sinusoidal": lambda: SinusoidalPositions(n, cfg.width)}[a.positions]()

    def forward(self, batch: Batch, token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = batch["audio"]
        mask = batch.get("audio_mask")
        mask = torch.ones(x.size(0), x.size(-1), dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        if self.conv2d:
            x = x.unsqueeze(1)  # (B, 1, n_mels, T)
        for i, conv in enumerate(self.convs):
            if i == 0 or not self.whisper:
                x = x * mask.view(mask.size(0), *[1] * (x.dim() - 2), -1).to(x.dtype)
            x = self.act(conv(x))
            mask = mask[:, :: conv.stride[-1]]
        if self.conv2d:  # (B, maps, bands, N) -> (B, N, maps * bands)
            x = x.permute(0, 3, 1, 2).flatten(2)
        else:
            x = x.transpose(1, 2)
        x = self.proj(x)  # (B, N, W)
        return self.finish(self.apply_token_mask(x, token_mask), mask)

    def token_mask_from_frames(self, frame_mask: Tensor) -> Tensor:
        """(B, T) frame validity -> (B, ceil(T/s)) token validity."""
        return frame_mask.bool()[:, :: self.subsample]

    def patchify(self, batch: Batch) -> Tensor:
        """(B, N, s*n_mels): the s mel frames of each token (zero-padded at the end), frame-major."""
        x = batch["audio"]
        s, T = self.subsample, x.size(-1)
        n = -(-T // s)
        x = F.pad(x, (0, n * s - T))
        return x.reshape(x.size(0), self.n_mels, n, s).permute(0, 2, 3, 1).reshape(x.size(0), n, s * self.n_mels)
