"""The training job's configuration: one dataclass, the source of every `dcign_tf.train` flag.

A run's resolved configuration is written to `{workdir}/flags.txt` as `--name=value` lines, so
it can be read back here (by evaluation, rendering, resuming) or passed as a `--flagfile`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from dcign_tf import latents


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


def option(default, help, choices=None, runtime=False):  # noqa: A002 - mirrors absl's argument name
    """A config field that is also a flag. `runtime` fields may change when a run is resumed."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "runtime": runtime})


@dataclasses.dataclass
class TrainConfig:
    # Where things are.
    workdir: str = option("runs/default", "Run directory: flags.txt, checkpoints/, TensorBoard logs, export/.",
                          runtime=True)
    data_dir: str = option("data/faces_small", "Dataset directory (dataset.json and {split}/ shards).", runtime=True)
    dataset: str = option("faces", "faces: the procedural faces set, built in --data_dir when missing; "
                          "prebuilt: --data_dir must already hold a dataset (chairs, smallNORB, BFM).",
                          choices=["faces", "prebuilt"])
    face_model: str = option("procedural", "Face model for --dataset=faces: procedural, or bfm:PATH.")
    # The faces set built on demand. An existing dataset must agree with these.
    image_size: int = option(64, "Image side in pixels (square, grayscale).")
    group_size: int = option(20, "Images per group; one factor varies within a group (paper: 20).")
    dataset_groups_per_factor: int = option(600, "Training groups per factor when building the faces set.")
    dataset_test_groups_per_factor: int = option(50, "Test groups per factor when building the faces set.")
    dataset_num_shards: int = option(4, "Shards per (split, factor) when building the faces set.")
    dataset_seed: int = option(0, "Seed of the faces set.")
    dataset_group_spread: float = option(1.0, "Fraction of a factor's range one group of the faces set spans "
                                         "(1: the whole range).")
    # Model.
    num_latents: int = option(200, "Size of the graphics code z (paper: 200).")
    encoder_filters: str = option("96,48,24", "Widths of the three 5x5 encoder convolutions (paper: 96,48,24).")
    decoder_filters: str = option("48,96,96", "Widths of the first three 7x7 decoder convolutions (paper: 48,96,96).")
    encoder_padding: str = option("auto", "valid (paper), same, or auto (valid unless the image is too small).",
                                  choices=["auto", "valid", "same"])
    latent_layout: str = option(latents.FACES_LAYOUT, "Factor -> latents, e.g. azimuth=0,elevation=1,light=2,"
                                "identity=rest. Must name exactly the dataset's factors.")
    # Training.
    mode: str = option("dcign", "dcign: clamp inactive latents (the paper); baseline: plain SGVB, no clamping.",
                       choices=["dcign", "baseline"])
    invariance_weight: float = option(0.01, "Scale of the pull of clamped latents toward their group mean (paper: 1/100).")
    kl_weight: float = option(1.0, "Weight of the KL term (1 = the variational lower bound).")
    likelihood: str = option("bernoulli", "The decoder's pixel distribution: bernoulli (the paper) or gaussian "
                             "(N(x; mean, --pixel_sigma^2): every grey level's error weighs the same).",
                             choices=["bernoulli", "gaussian"])
    pixel_sigma: float = option(0.0, "The gaussian likelihood's standard deviation on [0, 1]; 0 calibrates it to "
                                "each batch's mean squared error (sigma-VAE).")
    unclamped_steps: int = option(0, "In dcign mode, first train this many steps without clamping, then clamp: "
                                  "the paper's pretrain-then-clamp schedule within one run.")
    mirror_factors: str = option("", "Factors that change sign when an image is mirrored left-right (faces: "
                                 "azimuth,light). Their latents (by --latent_layout) are asked to be odd under the "
                                 "mirror, which rules out the paper's azimuth 'switch node'. Not in the paper. "
                                 "Works in both modes (baseline + mirror is the control) and at every step, the "
                                 "--unclamped_steps included: the fold forms early and does not unfold.")
    mirror_weight: float = option(1.0, "Scale of the --mirror_factors penalty (mu(x) + mu(mirror(x)))^2.")
    mirror_images: int = option(0, "Images of each group given the --mirror_factors penalty (0: all); each costs "
                                "one extra encoder pass.")
    groups_per_batch: int = option(1, "Groups per batch; each group has its own active factor (paper: 1).")
    factor_weights: str = option("", "Factor sampling weights, e.g. identity=2 (the released code's shape bias); "
                                 "unnamed factors weigh 1.")
    steps: int = option(12000, "Total training steps (the paper trained ~12,000 batches).", runtime=True)
    learning_rate: float = option(5e-4, "The paper's 'meta learning rate' (the peak, with a schedule).")
    learning_rate_schedule: str = option("constant", "constant (the paper), or cosine: linear warm-up over "
                                         "--warmup_steps, then cosine decay to 0 at --steps.",
                                         choices=["constant", "cosine"])
    warmup_steps: int = option(0, "Steps of linear learning-rate warm-up (cosine schedule only).")
    momentum_decay: float = option(0.1, "The paper's 'momentum decay' (1 - Adam beta_1).")
    update_decay: float = option(0.01, "The paper's 'weight decay' 0.01, really the update decay (1 - Adam beta_2).")
    epsilon: float = option(1e-8, "Added to the second-moment estimate inside the square root.")
    seed: int = option(0, "Seed of initialisation, data order and reparameterisation noise. The same seed draws "
                       "the same groups in the same order, across kills and resumes too; weights are "
                       "bit-identical between two runs only with --deterministic.")
    init_from: str = option("", "Start from the weights of another run (its workdir): the paper's "
                            "pretrain-without-clamping-then-clamp schedule.")
    # Running.
    strategy: str = option("auto", "auto: MirroredStrategy over all GPUs when there are several, else default; "
                           "default; mirrored; multi_worker (TF_CONFIG).",
                           choices=["auto", "default", "mirrored", "multi_worker"], runtime=True)
    jit_compile: bool = option(False, "Compile the train step with XLA (measured slower on CPU; try it on GPU).",
                               runtime=True)
    deterministic: bool = option(False, "Deterministic TensorFlow ops (tf.config.experimental."
                                 "enable_op_determinism): the same flags and seed give bit-identical weights on the "
                                 "same hardware and software, across kills and resumes too.", runtime=True)
    precision: str = option("float32", "float32, mixed_float16 (GPU), mixed_bfloat16, or auto: mixed_bfloat16 on "
                            "CPUs with AVX-512 BF16/AMX and GPUs of compute capability >= 8.0, float32 elsewhere.",
                            choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"], runtime=True)
    log_every: int = option(20, "Steps between scalar summaries and progress lines.", runtime=True)
    image_every: int = option(500, "Steps between image panels (reconstructions, sweeps) in TensorBoard.",
                              runtime=True)
    checkpoint_every: int = option(200, "Steps between checkpoints; a resume loses at most this many.", runtime=True)
    eval_every: int = option(1000, "Steps between test-set evaluations (lower bound, MSE); 0 = never.", runtime=True)
    eval_batches: int = option(10, "Test batches per evaluation.", runtime=True)
    keep_checkpoints: int = option(3, "Checkpoints kept.", runtime=True)
    shuffle_buffer: int = option(256, "Groups in the shuffle buffer.", runtime=True)
    progress: str = option("auto", "auto: a progress bar on a terminal, log lines otherwise; bar; log; none.",
                           choices=["auto", "bar", "log", "none"], runtime=True)
    overwrite: bool = option(False, "Start afresh in a workdir that holds a run with another config "
                             "(the old run is moved aside, not deleted).", runtime=True)

    def __post_init__(self):
        self.validate()

    # Derived values.
    @property
    def encoder_widths(self) -> tuple[int, ...]:
        return _int_tuple(self.encoder_filters, "encoder_filters")

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return _int_tuple(self.decoder_filters, "decoder_filters")

    @property
    def factor_weight_map(self) -> dict[str, float]:
        weights = {}
        for entry in filter(None, (e.strip() for e in self.factor_weights.split(","))):
            match = re.fullmatch(r"([\w-]+)=([0-9.eE+-]+)", entry)
            if not match:
                raise ConfigError(f"--factor_weights entry {entry!r} is not FACTOR=WEIGHT (e.g. identity=2)")
            weights[match.group(1)] = float(match.group(2))
        if any(w < 0 or not math.isfinite(w) for w in weights.values()):
            raise ConfigError("--factor_weights must be finite and non-negative")
        return weights

    @property
    def mirror_factor_list(self) -> list[str]:
        return [name.strip() for name in self.mirror_factors.split(",") if name.strip()]

    def model_kwargs(self, factor_names) -> dict:
        """Arguments of `dcign_tf.model.DCIGN` for data with these factors."""
        return dict(factor_names=list(factor_names), latent_layout=self.latent_layout, image_size=self.image_size,
                    num_latents=self.num_latents, encoder_filters=self.encoder_widths,
                    decoder_filters=self.decoder_widths, encoder_padding=self.encoder_padding, mode=self.mode,
                    invariance_weight=self.invariance_weight, kl_weight=self.kl_weight,
                    unclamped_steps=self.unclamped_steps, mirror_factors=self.mirror_factor_list,
                    mirror_weight=self.mirror_weight, mirror_images=self.mirror_images, likelihood=self.likelihood,
                    pixel_sigma=self.pixel_sigma, seed=self.seed)

    def validate(self) -> None:
        positive = ["image_size", "group_size", "num_latents", "groups_per_batch", "steps", "log_every",
                    "image_every", "checkpoint_every", "eval_batches", "keep_checkpoints", "shuffle_buffer",
                    "dataset_groups_per_factor", "dataset_test_groups_per_factor", "dataset_num_shards"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
        if not 32 <= self.image_size <= 256:
            raise ConfigError(f"--image_size must be in 32..256, got {self.image_size}")
        if self.group_size < 2:
            raise ConfigError(f"--group_size must be at least 2 (a group needs variation), got {self.group_size}")
        for name in ("learning_rate", "epsilon"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("momentum_decay", "update_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"--{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 < self.dataset_group_spread <= 1:
            raise ConfigError(f"--dataset_group_spread must be in (0, 1], got {self.dataset_group_spread}")
        if min(self.invariance_weight, self.kl_weight, self.eval_every, self.unclamped_steps, self.mirror_weight,
               self.mirror_images, self.warmup_steps, self.pixel_sigma) < 0:
            raise ConfigError("--invariance_weight, --kl_weight, --eval_every, --unclamped_steps, --mirror_weight, "
                              "--mirror_images, --warmup_steps and --pixel_sigma must not be negative")
        if self.warmup_steps and self.learning_rate_schedule == "constant":
            raise ConfigError("--warmup_steps needs --learning_rate_schedule=cosine")
        self.encoder_widths, self.decoder_widths, self.factor_weight_map  # noqa: B018 - parse to validate
        try:
            layout = latents.LatentLayout.parse(self.latent_layout, self.num_latents)
        except latents.LayoutError as error:
            raise ConfigError(f"--latent_layout: {error}") from None
        unknown = [name for name in self.mirror_factor_list if name not in layout.factors]
        if unknown:
            raise ConfigError(f"--mirror_factors names {unknown}, which --latent_layout does not have "
                              f"(factors: {','.join(layout.factors)})")
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices and getattr(self, field.name) not in choices:
                raise ConfigError(f"--{field.name} must be one of {choices}, got {getattr(self, field.name)!r}")

    # flags.txt
    def to_flagfile(self) -> str:
        """`--name=value` lines, one per field; readable back by `from_flagfile` or absl's --flagfile."""
        lines = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            lines.append(f"--{field.name}={str(value).lower() if isinstance(value, bool) else value}")
        return "\n".join(lines) + "\n"

    def differences(self, other: "TrainConfig") -> list[str]:
        """The non-runtime fields on which two configs disagree, as 'name: other's value, not self's'."""
        return [f"{f.name}={getattr(other, f.name)}, not {getattr(self, f.name)}"
                for f in dataclasses.fields(self)
                if not f.metadata["runtime"] and getattr(self, f.name) != getattr(other, f.name)]


def from_flagfile(path: str) -> TrainConfig:
    """Reads a run's flags.txt (or any flagfile of `--name=value` lines) into a TrainConfig."""
    if not os.path.exists(path):
        raise ConfigError(f"{path} does not exist")
    values = {}
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = re.fullmatch(r"--(?:no)?([\w]+)(?:=(.*))?", line)
            if not match or match.group(1) not in types:
                raise ConfigError(f"{path}:{number}: unknown or malformed flag {line!r}")
            name, raw = match.groups()
            values[name] = _convert(raw if raw is not None else str(not line.startswith("--no")), types[name], name)
    return TrainConfig(**values)


def _convert(raw: str, type_name, name: str):
    type_name = getattr(type_name, "__name__", type_name)
    try:
        if type_name == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        return {"int": int, "float": float, "str": str}[type_name](raw)
    except ValueError:
        raise ConfigError(f"--{name}={raw!r} is not a valid {type_name}") from None


def _int_tuple(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--{name}={text!r} must be comma-separated integers, e.g. 96,48,24") from None
    if len(values) != 3 or min(values) < 1:
        raise ConfigError(f"--{name}={text!r} must be three positive widths, e.g. 96,48,24")
    return values
