"""`TopKSAE`: the TopK sparse autoencoder that CoCoMix uses as its concept extractor (paper §2.1).

The paper writes the SAE as c = TopK(E(h)) and ĥ = D(c). This module computes it exactly as OpenAI's
`sparse_autoencoder` (`model.py`: `LN`, `Autoencoder`, `TopK`), the SAE the official CoCoMix code uses:

    x_n  = (x − mean(x)) / (std_unbiased(x) + 1e-5)          only when `normalize` (OpenAI's `LN`)
    pre  = (x_n − pre_bias) @ W_enc.T + latent_bias          (…, C)
    v, i = torch.topk(pre, k);  v = ReLU(v)                   TopK on the pre-activations, then ReLU on the k values
    ĥ    = (Σ_j v_j · W_dec[:, i_j] + pre_bias) · std + mu

Parameters use OpenAI's shapes: `W_enc` (C, d), `W_dec` (d, C); column j of `W_dec` is latent j's direction.
`W_dec` is stored column-major (its transpose is contiguous) so that `decode_sparse` can gather k columns per
position with `F.embedding_bag` without copying the matrix.

Two switches exist only to represent other formats faithfully (see `saelens.py`, `sparsify.py`):
`encode_pre_bias=False` skips the `pre_bias` subtraction before encoding (SAELens `apply_b_dec_to_input=false`;
`pre_bias` is still added after decoding) and `relu_before_topk=True` takes the top k of ReLU(pre) (sparsify's
order). Both orders give the same dense code; they differ only in which zero-valued latents fill the k slots
when fewer than k pre-activations are positive. `center_input` (without `normalize`) uses x − mean(x) as x_n and
adds the mean back on decode: an SAE trained on TransformerLens's centred residual stream (`saelens.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-5
POSTACTS = ("relu", "identity")


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder in OpenAI's parametrisation (see the module docstring for the equations)."""

    def __init__(
        self,
        d_in: int,
        n_latents: int,
        k: int,
        normalize: bool = True,
        postact: str = "relu",
        *,
        encode_pre_bias: bool = True,
        relu_before_topk: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if d_in < 1 or n_latents < 1:
            raise ValueError(f"TopKSAE: d_in and n_latents must be positive, got {d_in}, {n_latents}")
        if not 1 <= k <= n_latents:
            raise ValueError(f"TopKSAE: k must be in [1, n_latents={n_latents}], got {k}")
        if postact not in POSTACTS:
            raise ValueError(f"TopKSAE: postact must be one of {POSTACTS}, got {postact!r}")
        if relu_before_topk and postact != "relu":
            raise ValueError("TopKSAE: relu_before_topk needs postact='relu'")
        self.k = int(k)
        self.normalize = bool(normalize)
        self.postact = postact
        self.encode_pre_bias = bool(encode_pre_bias)
        self.relu_before_topk = bool(relu_before_topk)
        self.center_input = False
        """Subtract each position's mean over d before encoding (added back on decode), without `normalize`: an
        SAE trained on a TransformerLens model with centred writing weights saw the residual stream minus its
        mean (`saelens.py`)."""
        self.hook_name: str | None = None
        """Where the SAE's file says it reads the model (e.g. `blocks.5.hook_resid_post`), if it says."""
        self.hook_block: int | None = None
        """The teacher block whose output that is (our teacher_layer; -1: the embeddings), when known."""
        self.model_name: str | None = None
        """The model the SAE's config says it was trained on (SAELens `model_name`), if it says; shown, not compared."""
        self.pre_bias = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.W_enc = nn.Parameter(torch.zeros(n_latents, d_in, dtype=dtype))
        self.latent_bias = nn.Parameter(torch.zeros(n_latents, dtype=dtype))
        # (d_in, n_latents) view of a contiguous (n_latents, d_in) buffer: each latent's column is contiguous
        self.W_dec = nn.Parameter(torch.zeros(n_latents, d_in, dtype=dtype).t())

    @property
    def d_in(self) -> int:
        return self.pre_bias.shape[0]

    @property
    def n_latents(self) -> int:
        return self.latent_bias.shape[0]

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, n_latents={self.n_latents}, k={self.k}, normalize={self.normalize}, "
            f"postact={self.postact!r}, encode_pre_bias={self.encode_pre_bias}, "
            f"relu_before_topk={self.relu_before_topk}, center_input={self.center_input}"
        )

    @torch.no_grad()
    def set_weights(self, *, pre_bias: Tensor, W_enc: Tensor, latent_bias: Tensor, W_dec: Tensor) -> TopKSAE:
        """Copy weights in (shapes as the parameters: W_enc (C, d), W_dec (d, C)); keeps W_dec's column layout."""
        for name, value in (("pre_bias", pre_bias), ("W_enc", W_enc), ("latent_bias", latent_bias), ("W_dec", W_dec)):
            param = getattr(self, name)
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"TopKSAE.{name}: expected shape {tuple(param.shape)}, got {tuple(value.shape)}")
            param.copy_(value)
        return self

    # ------------------------------------------------------------------ encode

    def preprocess(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """OpenAI's `LN` when `normalize` (mean, Bessel-corrected std, eps added to the std, no affine), else identity
        (or the mean's removal, `center_input`).

        `x` is cast to the parameters' dtype. Returns (x_n, {"mu": (…, 1), "std": (…, 1)}).
        """
        x = x.to(self.pre_bias.dtype)
        if not self.normalize:
            one = torch.ones((), dtype=x.dtype, device=x.device)
            if self.center_input:
                mu = x.mean(dim=-1, keepdim=True)
                return x - mu, {"mu": mu, "std": one.expand(*x.shape[:-1], 1)}
            return x, {"mu": torch.zeros_like(one).expand(*x.shape[:-1], 1), "std": one.expand(*x.shape[:-1], 1)}
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        return x / (std + LN_EPS), {"mu": mu, "std": std}

    def pre_activation(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(preprocess(x) − pre_bias) @ W_enc.T + latent_bias, shape (…, C)."""
        x, info = self.preprocess(x)
        if self.encode_pre_bias:
            x = x - self.pre_bias
        return F.linear(x, self.W_enc, self.latent_bias), info

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The k active latents: (values (…, k), indices (…, k) int64, info), in `torch.topk` order.

        As OpenAI's `TopK`: top k of the pre-activations, then the post-activation (ReLU) on those k values.
        """
        pre, info = self.pre_activation(x)
        if self.relu_before_topk:
            pre = pre.clamp_min(0)
        values, indices = torch.topk(pre, self.k, dim=-1)
        if self.postact == "relu":
            values = values.clamp_min(0)
        return values, indices, info

    def encode_dense(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The dense code zeros(…, C).scatter(−1, indices, values) and info."""
        values, indices, info = self.encode(x)
        z = values.new_zeros(*values.shape[:-1], self.n_latents).scatter(-1, indices, values)
        return z, info

    # ------------------------------------------------------------------ decode

    def _denormalize(self, y: Tensor, info: dict[str, Tensor]) -> Tensor:
        y = y + self.pre_bias
        if self.normalize:
            return y * info["std"] + info["mu"]
        return y + info["mu"] if self.center_input else y

    def decode_sparse(self, values: Tensor, indices: Tensor, info: dict[str, Tensor]) -> Tensor:
        """(Σ_j values_j · W_dec[:, indices_j] + pre_bias) · std + mu, gathering only the k columns per position."""
        if values.shape != indices.shape:
            raise ValueError(f"decode_sparse: values {tuple(values.shape)} and indices {tuple(indices.shape)} differ")
        lead, k = values.shape[:-1], values.shape[-1]
        rows = F.embedding_bag(
            indices.reshape(-1, k),
            self.W_dec.t(),  # (C, d); contiguous with the column-major storage set up in __init__
            per_sample_weights=values.reshape(-1, k).to(self.W_dec.dtype),
            mode="sum",
        )
        return self._denormalize(rows.reshape(*lead, self.d_in), info)

    def decode(self, z: Tensor, info: dict[str, Tensor]) -> Tensor:
        """Dense equivalent of `decode_sparse`: (z @ W_dec.T + pre_bias) · std + mu for z of shape (…, C)."""
        return self._denormalize(F.linear(z.to(self.W_dec.dtype), self.W_dec), info)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ĥ = D(TopK(E(x)))."""
        values, indices, info = self.encode(x)
        return self.decode_sparse(values, indices, info)
