"""What the subcommands of ``shufflenet-bench`` share: list options, the device choice, the
precisions of the kernel-level subcommands, the progress bar."""

from __future__ import annotations

import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# A precision of the kernel-level subcommands: the dtype and the layout of the inputs.
_PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_PRECISION_LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
# The GPU defaults: what a user of the fused op trains in, and the exact-fp32 baseline.
DEFAULT_PRECISIONS = ("bf16-cl", "fp32-nchw")


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def float_list(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def precision(name: str) -> tuple[torch.dtype, torch.memory_format]:
    """``bf16-cl`` -> (bfloat16, channels_last): a dtype (fp32, bf16, fp16) and a layout
    (nchw, cl)."""
    dtype, _, layout = name.partition("-")
    if dtype not in _PRECISION_DTYPES or layout not in _PRECISION_LAYOUTS:
        raise ValueError(f"unknown precision {name!r}: <{'|'.join(_PRECISION_DTYPES)}>-<{'|'.join(_PRECISION_LAYOUTS)}>, "
                         "e.g. bf16-cl")
    return _PRECISION_DTYPES[dtype], _PRECISION_LAYOUTS[layout]


def precision_list(text: str) -> list[str]:
    names = str_list(text)
    for name in names:
        precision(name)
    return names


def add_device_option(parser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda if present, else cpu")


def add_shape_options(parser, batch_default: int | None = None,
                      batch_help: str = "layer and unit batch (default: 16 on CPU, 128 on CUDA)") -> None:
    """--groups, --width, --batch, --input-size: which ShuffleNet V1 the layers come from."""
    parser.add_argument("--groups", type=int_list, default=(3, 8), help="ShuffleNet g values (default 3,8)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    parser.add_argument("--batch", type=int, default=batch_default, help=batch_help)
    parser.add_argument("--input-size", type=int, default=224, help="image size the shapes derive from (default 224)")


def add_layer_run_options(parser, modes: tuple[str, ...], default_modes: tuple[str, ...]) -> None:
    """--modes, --providers, --no-compile, --compile-mode: what the layer level times."""
    parser.add_argument("--modes", type=str_list, default=list(default_modes),
                        help="any of " + ",".join(modes) + " (default " + ",".join(default_modes) + ")")
    parser.add_argument("--providers", type=str_list, help="layer providers to run (default: all present)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile peers")
    parser.add_argument("--compile-mode", help="torch.compile mode (default: max-autotune on CUDA, default on "
                        "CPU and in the main run's --quick)")


def check_choices(parser, what: str, values, allowed) -> None:
    for value in values:
        if value not in allowed:
            parser.error(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA if present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("shufflenet-bench: --device cuda, but no CUDA device is available")
    return torch.device(name)


class Progress:
    """Called with a label as each measurement starts: counts the one before as done and
    shows what runs now (a compile can take a while)."""

    LABEL_CHARS = 34  # with the fixed-width bar, fits an 80-column terminal

    def __init__(self, bar) -> None:
        self.bar, self.running = bar, False

    def __call__(self, label: str) -> None:
        self.finish()
        if len(label) > self.LABEL_CHARS:
            label = "..." + label[-(self.LABEL_CHARS - 3):]
        self.bar.set_postfix_str(label, refresh=True)
        self.running = True

    def finish(self) -> None:
        if self.running:
            self.bar.update(1)
        self.running = False


def progress_bar(total: int, disable: bool):
    """The run's tqdm bar on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc="shufflenet-bench", unit="run", file=sys.stderr, disable=disable,
                bar_format="{percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt} {elapsed}<{remaining} {postfix}")
