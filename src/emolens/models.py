"""Model registry: ``create_model(name, **kw)``, ``list_models()``.

Every image model maps (B, 1, 48, 48) normalised faces to (B, 7) logits and splits into
``forward_features`` (the CNN, (B, C, h, w) feature map) and ``forward_head`` (LSTM or pooled FC), so the
video model can reuse the frame encoder (``forward_head(f, pre_logits=True)`` gives a (B, D) embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("cnn_lstm", widths=(32, 64, 128, 256))``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _REGISTRY[name](**kwargs)
    model.model_name = name
    model.model_kwargs = dict(kwargs)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class VGGBackbone(nn.Module):
    """Blocks of ``convs_per_block`` (conv 3x3 + BN + ReLU), then 2x2 max-pool and dropout.

    (B, in_chans, 48, 48) -> (B, widths[-1], 48 / 2**len(widths), ...): four blocks give a 3x3 map.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), convs_per_block: int = 2,
                 in_chans: int = 1, drop: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for width in widths:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                c_in = width
            layers.append(nn.MaxPool2d(2))
            if drop > 0:
                layers.append(nn.Dropout2d(drop))
        self.body = nn.Sequential(*layers)
        self.out_chans = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CNNClassifier(nn.Module):
    """Baseline: backbone, global average pool, dropout, linear. The head the LSTM is compared with."""

    def __init__(self, num_classes: int = 7, widths: Sequence[int] = (32, 64, 128, 256), convs_per_block: int = 2,
                 drop: float = 0.1, head_drop: float = 0.3, hidden: int = 256):
        super().__init__()
        self.backbone = VGGBackbone(widths, convs_per_block, drop=drop)
        c = self.backbone.out_chans
        self.pre = nn.Sequential(nn.Flatten(), nn.Dropout(head_drop), nn.Linear(c, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Dropout(head_drop), nn.Linear(hidden, num_classes))
        self.embed_dim = hidden

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, C, 3, 3)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.pre(f.mean(dim=(2, 3)))  # (B, hidden)
        return z if pre_logits else self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CNNLSTMClassifier(CNNClassifier):
    """The default: the CNN's h x w feature map is read as a sequence of h*w positions (row-major) by a
    bidirectional LSTM; the final states of both directions, concatenated, go to the classifier."""

    def __init__(self, num_classes: int = 7, widths: Sequence[int] = (32, 64, 128, 256), convs_per_block: int = 2,
                 drop: float = 0.1, head_drop: float = 0.3, lstm_hidden: int = 96, bidirectional: bool = True):
        super().__init__(num_classes, widths, convs_per_block, drop, head_drop)
        c = self.backbone.out_chans
        self.lstm = nn.LSTM(c, lstm_hidden, batch_first=True, bidirectional=bidirectional)
        dim = lstm_hidden * (2 if bidirectional else 1)
        del self.pre
        self.pre = nn.Sequential(nn.LayerNorm(dim))
        self.fc = nn.Sequential(nn.Dropout(head_drop), nn.Linear(dim, num_classes))
        self.embed_dim = dim

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        seq = f.flatten(2).transpose(1, 2)  # (B, h*w, C): one step per spatial position
        _, (h, _) = self.lstm(seq)  # h: (num_directions, B, H)
        z = self.pre(torch.cat(list(h), dim=1))  # (B, H * num_directions)
        return z if pre_logits else self.fc(z)


class ReferenceCNNRNNLSTM(nn.Module):
    """The original design, as in its Keras source: four conv blocks (64 3x3, 128 5x5, 512 3x3, 512 3x3;
    each BN, ReLU, 2x2 max-pool, dropout 0.25) -> 3x3x512 map read as 9 steps -> SimpleRNN 64 ->
    LSTM 64 -> Dense 256 and 512 (BN, ReLU, dropout 0.25) -> 7. Keras counts 3,385,415 parameters:
    see :func:`keras_parameter_count` for why PyTorch's own count differs."""

    def __init__(self, num_classes: int = 7, drop: float = 0.25):
        super().__init__()
        blocks = []
        c_in = 1
        for width, k in ((64, 3), (128, 5), (512, 3), (512, 3)):
            blocks += [nn.Conv2d(c_in, width, k, padding=k // 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2), nn.Dropout(drop)]
            c_in = width
        self.features = nn.Sequential(*blocks)
        self.rnn = nn.RNN(512, 64, batch_first=True)  # tanh SimpleRNN, returns the sequence
        self.lstm = nn.LSTM(64, 64, batch_first=True)
        self.pre = nn.Sequential(
            nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(drop),
            nn.Linear(256, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(drop))
        self.fc = nn.Linear(512, num_classes)
        self.embed_dim = 512

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 512, 3, 3)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        seq, _ = self.rnn(f.flatten(2).transpose(1, 2))  # (B, 9, 64)
        _, (h, _) = self.lstm(seq)
        z = self.pre(h[-1])
        return z if pre_logits else self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def keras_parameter_count(model: nn.Module) -> int:
    """Parameter count as Keras reports it: Keras counts BN moving mean/variance as (non-trainable)
    parameters where PyTorch keeps them as buffers, and its RNN/LSTM layers have one bias vector where
    PyTorch has two (``bias_ih`` and ``bias_hh``)."""
    n = count_parameters(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n += m.running_mean.numel() + m.running_var.numel()
        if isinstance(m, nn.RNNBase):
            n -= sum(p.numel() for name, p in m.named_parameters() if name.startswith("bias_hh"))
    return n


def example_input(model: nn.Module, batch_size: int = 1, input_size: int = 48) -> torch.Tensor:
    """A zero input of the shape ``model`` takes: (B, 1, S, S) for image models; a model whose
    ``input_kind`` is "sequence" (or "video") takes (B, T, 1, S, S) with T = its ``num_frames``/``seq_len``
    (default 8). A model may also define ``example_input(batch_size, input_size)`` itself."""
    own = getattr(model, "example_input", None)
    if callable(own):
        return own(batch_size, input_size)
    if getattr(model, "input_kind", "image") in ("sequence", "video"):
        t = int(getattr(model, "num_frames", getattr(model, "seq_len", 8)))
        return torch.zeros(batch_size, t, 1, input_size, input_size)
    return torch.zeros(batch_size, 1, input_size, input_size)


_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn_matmul_flops(m: nn.RNNBase, x: torch.Tensor | nn.utils.rnn.PackedSequence) -> int:
    """Matmul FLOPs (2 per multiply-add, as FlopCounterMode counts) of one RNN/LSTM/GRU call: per step,
    layer and direction, gates * hidden * (input + hidden) multiply-adds, plus the projection if any."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.data.shape[0])  # sum of the sequence lengths over the batch
    else:
        steps = int(x.numel() // x.shape[-1])  # batch * time, batched or not
    gates = _RNN_GATES[m.mode]
    dirs = 2 if m.bidirectional else 1
    h_out = m.proj_size or m.hidden_size
    macs = 0
    for layer in range(m.num_layers):
        in_size = m.input_size if layer == 0 else h_out * dirs
        per_step = gates * m.hidden_size * (in_size + h_out) + m.proj_size * m.hidden_size
        macs += dirs * steps * per_step
    return 2 * macs


def count_flops(model: nn.Module, input_size: int = 48, x: torch.Tensor | None = None) -> int:
    """Forward FLOPs for one input (batch 1, see :func:`example_input`), counting 2 per multiply-add of
    convolutions and matrix products as ``torch.utils.flop_counter.FlopCounterMode`` does.

    FlopCounterMode sees only the ops the dispatcher runs; the fused LSTM kernels (``mkldnn_rnn_layer``
    on CPU, ``_cudnn_rnn`` on CUDA) are not among the ops it counts, so every RNN module that it
    credited with nothing is counted here from its sizes (gates x hidden x (input + hidden) per step).
    Elementwise work (activations, norms, gate nonlinearities) is not counted, by either.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if x is None:
        x = example_input(model, 1, input_size)
    x = x.to(next(model.parameters()).device)
    rnn_calls: list[tuple[str, int]] = []
    names = {m: name for name, m in model.named_modules()}

    def hook(m: nn.Module, args: tuple) -> None:
        rnn_calls.append((names[m], _rnn_matmul_flops(m, args[0])))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    root = type(model).__name__
    for name, flops in rnn_calls:
        if sum(counts.get(f"{root}.{name}", {}).values()) == 0:
            total += flops
    return int(total)


@register_model
def cnn_lstm(**kw) -> nn.Module:
    return CNNLSTMClassifier(**kw)


@register_model
def cnn(**kw) -> nn.Module:
    return CNNClassifier(**kw)


@register_model
def reference(**kw) -> nn.Module:
    return ReferenceCNNRNNLSTM(**kw)


# ---------------------------------------------------------------------------------------------- temporal


class TemporalLSTM(nn.Module):
    """Per-frame emotions of a face track: the image model's frame encoder turns each frame into a (D,)
    embedding, a causal LSTM reads them in order and a head gives one (7,) logit vector per frame.

    (B, T, 1, 48, 48) frames -> (B, T, 7) logits. Unidirectional, so a live video is labelled as it plays.
    Each step the LSTM reads the encoder's per-frame log-probabilities (``encoder.fc``; ``feed_logits``) and,
    when ``proj`` > 0, a dropout-regularised projection of the embedding. ``proj`` is 0 by default: the head is
    trained on FER's Training faces, which the encoder has seen, and with the embedding in view it learns to
    recognise those faces rather than how labels move (measured on PublicTest sequences: 59.3 % with proj 64
    vs 61.0 % with proj 0; per-frame argmax 60.2 %). The per-frame logits are also a skip path and the LSTM
    branch starts near zero, so training starts from the per-frame answer and learns the temporal correction.
    Only :meth:`head_state_dict` is shipped; the encoder's weights (its classifier included) come from the
    image checkpoint the head was trained on.
    """

    input_kind = "sequence"

    def __init__(self, num_classes: int = 7, encoder: str = "cnn_lstm", encoder_kwargs: dict | None = None,
                 proj: int = 0, hidden: int = 96, num_layers: int = 1, drop: float = 0.4, feed_logits: bool = True,
                 num_frames: int = 32):
        super().__init__()
        if encoder == "temporal_lstm":
            raise ValueError("the encoder of temporal_lstm must be an image model")
        self.encoder = create_model(encoder, **(encoder_kwargs or {}))
        d = self.encoder.embed_dim
        self.frame_dim = d
        self.num_frames = num_frames  # the window the head is trained on and run over
        self.feed_logits = feed_logits
        if proj < 0 or (proj == 0 and not feed_logits):
            raise ValueError("temporal_lstm: proj must be >= 0, and > 0 unless feed_logits")
        self.in_norm = nn.LayerNorm(d) if proj else None
        self.proj = nn.Sequential(nn.Dropout(drop), nn.Linear(d, proj), nn.GELU()) if proj else None
        n_in = proj + (num_classes if feed_logits else 0)
        self.lstm = nn.LSTM(n_in, hidden, num_layers, batch_first=True, dropout=drop if num_layers > 1 else 0.0)
        self.fc = nn.Sequential(nn.Dropout(drop), nn.Linear(hidden, num_classes))
        nn.init.normal_(self.fc[-1].weight, std=0.01)  # small, not zero: every parameter gets a gradient
        nn.init.zeros_(self.fc[-1].bias)
        self.embed_dim = hidden

    def embed_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 1, S, S) -> (B, T, D) per-frame embeddings of the encoder."""
        b, t = x.shape[:2]
        z = self.encoder.forward_head(self.encoder.forward_features(x.flatten(0, 1)), pre_logits=True)
        return z.reshape(b, t, -1)

    def forward_sequence(self, emb: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                         pre_logits: bool = False, noise: float = 0.0):
        """(B, T, D) embeddings -> (B, T, 7) logits (or the (B, T, hidden) LSTM outputs when ``pre_logits``).
        ``noise``: std of Gaussian noise on the normalised embedding the LSTM reads (``proj`` > 0), a training
        regulariser; the per-frame skip path and the log-probabilities fed to the LSTM stay clean, as at inference."""
        frame_logits = self.encoder.fc(emb)  # (B, T, 7): the image model's own answer per frame
        parts = [frame_logits.log_softmax(-1)] if self.feed_logits else []
        if self.proj is not None:
            z = self.in_norm(emb)
            if noise > 0:
                z = z + noise * torch.randn_like(z)
            parts.append(self.proj(z))  # (B, T, proj)
        x = torch.cat(parts, -1)  # (B, T, 7 + proj)
        seq, _ = self.lstm(x, state)  # (B, T, hidden)
        return seq if pre_logits else frame_logits + self.fc(seq)  # per-frame logits + temporal correction

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Single frames (B, 1, S, S) -> the encoder's (B, C, h, w) map."""
        return self.encoder.forward_features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """A (B, C, h, w) map read as B one-frame sequences -> (B, 7) (or (B, hidden))."""
        emb = self.encoder.forward_head(f, pre_logits=True)[:, None]  # (B, 1, D)
        return self.forward_sequence(emb, pre_logits=pre_logits)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:
            return self.forward_sequence(self.embed_frames(x))  # (B, T, 7)
        return self.forward_head(self.forward_features(x))  # (B, 7): single frames

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that are not the encoder's: what the shipped temporal model stores."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


@register_model
def temporal_lstm(**kw) -> nn.Module:
    return TemporalLSTM(**kw)
