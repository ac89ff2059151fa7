"""The job's configuration, typed: `ModelConfig` (the network and its objective, what `DCIGN` is built
from) and `TrainConfig` (a training run; the source of every `dcign_tf.train` flag).

Values are typed (widths and factor names are tuples); flag text such as "96,48,24" is converted once,
at the boundary, by `parse_value`, and written back by `format_value`. A run's resolved configuration is
written to `{workdir}/flags.txt` as `--name=value` lines, so it can be read back here (by evaluation,
rendering, resuming) or passed as a `--flagfile`.

Pure Python: importing this module does not import TensorFlow, so command lines are checked quickly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from dcign_tf import latents

# The image sides the whole system supports: the network, the dataset builders and the training job.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256
MODES = ("dcign", "baseline")
LIKELIHOODS = ("bernoulli", "gaussian")
ENCODER_PADDINGS = ("auto", "valid", "same")
DECODER_IMPLEMENTATIONS = ("subpixel", "naive")
ENCODER_KERNEL = 5
ENCODER_STAGES = 3  # (5x5 conv, 2x2 pool) stages


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


def encoder_output_size(image_size: int, padding: str) -> int:
    """Side of the encoder's last feature map, in pixels: three (5x5 conv, 2x2 pool) stages."""
    size = image_size
    for _ in range(ENCODER_STAGES):
        if padding == "valid":
            size -= ENCODER_KERNEL - 1
        size //= 2
    return size


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network and its training objective: all that `dcign_tf.model.DCIGN` is built from, besides
    the data's factor names. The defaults are the paper's 150x150 network and objective.

    Fields (besides the architecture's sizes):
      latent_layout: a `LatentLayout` spec string, e.g. "azimuth=0,elevation=1,light=2,identity=rest".
      mode: "dcign" (clamped, the paper's method) or "baseline" (plain SGVB, §4.1.1's comparison).
      invariance_weight: scale of the pull of clamped latents toward their group mean (paper: 1/100).
      kl_weight: weight of the KL term in the training loss (1 is the true lower bound).
      likelihood, pixel_sigma: the decoder's pixel distribution (see `model.sgvb_terms`); "bernoulli" is
        the paper's.
      unclamped_steps: in mode "dcign", train this many steps with plain SGVB before clamping: the
        paper's pretrain-then-clamp schedule (§4, "pretraining without clamping worked better")
        inside one run.
      mirror_factors: factors whose value changes sign when an image is mirrored left-right
        (faces: azimuth and light). Their latents' posterior means get a penalty
        mirror_weight * (mu(x) + mu(mirror(x)))^2 per image, which asks the code to be odd under
        the mirror. It rules out the symmetric "switch node" code the paper saw for azimuth
        (Fig. 6a), in which a left and a right profile share one value. Not in the paper; off by
        default. It applies in both modes (baseline + mirror is the control that tells the clamp's
        effect from the penalty's) and at every step, the unclamped ones included: the fold forms
        early and does not unfold, and the unclamped phase of a mirrored run is then exactly the
        baseline + mirror objective. Its gradient reaches only the encoder.
      mirror_weight: scale of that penalty.
      mirror_images: images of each group that get the penalty (their first `mirror_images`; a
        group's images are in random order), 0 for all. It costs one extra encoder pass over them.
      seed: seed of the reparameterisation noise.

    Sequences given as lists are stored as tuples. Raises ConfigError (a ValueError) naming the field.
    """

    image_size: int = 150
    num_latents: int = 200
    encoder_filters: tuple[int, ...] = (96, 48, 24)
    decoder_filters: tuple[int, ...] = (48, 96, 96)
    # "valid" as in the paper; "same" keeps small images (32x32) from shrinking to nothing;
    # "auto" picks "valid" when it leaves at least a 2x2 map.
    encoder_padding: str = "auto"
    # How the decoder's upsample-then-convolve blocks are computed; both are the same function.
    decoder_implementation: str = "subpixel"
    latent_layout: str = latents.FACES_LAYOUT
    mode: str = "dcign"
    invariance_weight: float = 0.01
    kl_weight: float = 1.0
    likelihood: str = "bernoulli"
    pixel_sigma: float = 0.0
    unclamped_steps: int = 0
    mirror_factors: tuple[str, ...] = ()
    mirror_weight: float = 1.0
    mirror_images: int = 0
    seed: int = 0

    def __post_init__(self):
        for name in ("encoder_filters", "decoder_filters", "mirror_factors"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"--{name} takes a tuple, not the string {value!r} (parse_value converts flag text)")
            object.__setattr__(self, name, tuple(value))
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"--image_size must be in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.num_latents < 1:
            raise ConfigError(f"--num_latents must be positive, got {self.num_latents}")
        for name in ("encoder_filters", "decoder_filters"):
            widths = getattr(self, name)
            if len(widths) != 3 or min(widths) < 1:
                raise ConfigError(f"--{name}={format_value(widths)} must be three positive widths, e.g. 96,48,24")
        for name, choices in (("encoder_padding", ENCODER_PADDINGS), ("decoder_implementation", DECODER_IMPLEMENTATIONS),
                              ("mode", MODES), ("likelihood", LIKELIHOODS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if self.resolved_encoder_padding == "valid" and encoder_output_size(self.image_size, "valid") < 1:
            raise ConfigError(f"--image_size={self.image_size} is too small for valid 5x5 convolutions; use "
                              "--encoder_padding=same")
        if min(self.invariance_weight, self.kl_weight, self.unclamped_steps, self.mirror_weight, self.mirror_images,
               self.pixel_sigma) < 0:
            raise ConfigError("--invariance_weight, --kl_weight, --unclamped_steps, --mirror_weight, --mirror_images "
                              "and --pixel_sigma must not be negative")
        layout = self.layout
        unknown = [name for name in self.mirror_factors if name not in layout.factors]
        if unknown:
            raise ConfigError(f"--mirror_factors names {unknown}, which --latent_layout does not have "
                              f"(factors: {','.join(layout.factors)})")

    @property
    def layout(self) -> latents.LatentLayout:
        try:
            return latents.LatentLayout.parse(self.latent_layout, self.num_latents)
        except latents.LayoutError as error:
            raise ConfigError(f"--latent_layout: {error}") from None

    @property
    def resolved_encoder_padding(self) -> str:
        if self.encoder_padding != "auto":
            return self.encoder_padding
        return "valid" if encoder_output_size(self.image_size, "valid") >= 2 else "same"


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
    num_latents: int = option(ModelConfig.num_latents, "Size of the graphics code z (paper: 200).")
    encoder_filters: tuple[int, ...] = option(ModelConfig.encoder_filters, "Widths of the three 5x5 encoder convolutions (paper: 96,48,24).")
    decoder_filters: tuple[int, ...] = option(ModelConfig.decoder_filters, "Widths of the first three 7x7 decoder convolutions (paper: 48,96,96).")
    encoder_padding: str = option(ModelConfig.encoder_padding, "valid (paper), same, or auto (valid unless the "
                                  "image is too small).", choices=ENCODER_PADDINGS)
    latent_layout: str = option(ModelConfig.latent_layout, "Factor -> latents, e.g. azimuth=0,elevation=1,light=2,"
                                "identity=rest. Must name exactly the dataset's factors.")
    # Training.
    mode: str = option(ModelConfig.mode, "dcign: clamp inactive latents (the paper); baseline: plain SGVB, no "
                       "clamping.", choices=MODES)
    invariance_weight: float = option(ModelConfig.invariance_weight, "Scale of the pull of clamped latents toward their group mean (paper: 1/100).")
    kl_weight: float = option(ModelConfig.kl_weight, "Weight of the KL term (1 = the variational lower bound).")
    likelihood: str = option(ModelConfig.likelihood, "The decoder's pixel distribution: bernoulli (the paper) or gaussian "
                             "(N(x; mean, --pixel_sigma^2): every grey level's error weighs the same).",
                             choices=LIKELIHOODS)
    pixel_sigma: float = option(ModelConfig.pixel_sigma, "The gaussian likelihood's standard deviation on [0, 1]; 0 calibrates it to "
                                "each batch's mean squared error (sigma-VAE).")
    unclamped_steps: int = option(ModelConfig.unclamped_steps, "In dcign mode, first train this many steps without clamping, then clamp: "
                                  "the paper's pretrain-then-clamp schedule within one run.")
    mirror_factors: tuple[str, ...] = option(ModelConfig.mirror_factors, "Factors that change sign when an image is mirrored left-right (faces: "
                                 "azimuth,light). Their latents (by --latent_layout) are asked to be odd under the "
                                 "mirror, which rules out the paper's azimuth 'switch node'. Not in the paper. "
                                 "Works in both modes (baseline + mirror is the control) and at every step, the "
                                 "--unclamped_steps included: the fold forms early and does not unfold.")
    mirror_weight: float = option(ModelConfig.mirror_weight, "Scale of the --mirror_factors penalty (mu(x) + mu(mirror(x)))^2.")
    mirror_images: int = option(ModelConfig.mirror_images, "Images of each group given the --mirror_factors penalty (0: all); each costs "
                                "one extra encoder pass.")
    groups_per_batch: int = option(1, "Groups per batch; each group has its own active factor (paper: 1).")
    factor_weights: tuple[tuple[str, float], ...] = option((), "Factor sampling weights, e.g. identity=2 (the released code's shape bias); "
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
    seed: int = option(ModelConfig.seed, "Seed of initialisation, data order and reparameterisation noise. The same seed draws "
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
        for name in ("encoder_filters", "decoder_filters", "mirror_factors", "factor_weights"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"--{name} takes a tuple, not the string {value!r} (parse_value converts flag text)")
            setattr(self, name, tuple(tuple(item) if name == "factor_weights" else item for item in value))
        self.validate()

    def model_config(self) -> ModelConfig:
        """The network and objective this run trains (`dcign_tf.model.DCIGN(factor_names, config.model_config())`)."""
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

    def validate(self) -> None:
        positive = ["group_size", "groups_per_batch", "steps", "log_every", "image_every", "checkpoint_every",
                    "eval_batches", "keep_checkpoints", "shuffle_buffer", "dataset_groups_per_factor",
                    "dataset_test_groups_per_factor", "dataset_num_shards"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
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
        if min(self.eval_every, self.warmup_steps) < 0:
            raise ConfigError("--eval_every and --warmup_steps must not be negative")
        if self.warmup_steps and self.learning_rate_schedule == "constant":
            raise ConfigError("--warmup_steps needs --learning_rate_schedule=cosine")
        if any(weight < 0 or not math.isfinite(weight) for _, weight in self.factor_weights):
            raise ConfigError("--factor_weights must be finite and non-negative")
        self.model_config()  # the network's and the objective's own checks
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices and getattr(self, field.name) not in choices:
                raise ConfigError(f"--{field.name} must be one of {list(choices)}, got {getattr(self, field.name)!r}")

    # flags.txt
    def to_flagfile(self) -> str:
        """`--name=value` lines, one per field; readable back by `from_flagfile` or absl's --flagfile."""
        return "".join(f"--{field.name}={format_value(getattr(self, field.name))}\n"
                       for field in dataclasses.fields(self))

    def differences(self, other: "TrainConfig") -> list[str]:
        """The non-runtime fields on which two configs disagree, as 'name: other's value, not self's'."""
        return [f"{f.name}={format_value(getattr(other, f.name))}, not {format_value(getattr(self, f.name))}"
                for f in dataclasses.fields(self)
                if not f.metadata["runtime"] and getattr(self, f.name) != getattr(other, f.name)]


# The TrainConfig fields that make its ModelConfig.
MODEL_FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig)
                     if field.name in {f.name for f in dataclasses.fields(TrainConfig)})


def from_flagfile(path: str) -> TrainConfig:
    """Reads a run's flags.txt (or any flagfile of `--name=value` lines) into a TrainConfig."""
    if not os.path.exists(path):
        raise ConfigError(f"{path} does not exist")
    values = {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = re.fullmatch(r"--(?:no)?([\w]+)(?:=(.*))?", line)
            if not match or match.group(1) not in names:
                raise ConfigError(f"{path}:{number}: unknown or malformed flag {line!r}")
            name, raw = match.groups()
            values[name] = parse_value(name, raw if raw is not None else str(not line.startswith("--no")))
    return TrainConfig(**values)


def parse_value(name: str, raw: str):
    """The value of TrainConfig field `name` from its flag text (as on a command line or in flags.txt):
    "96,48,24" -> (96, 48, 24), "azimuth,light" -> ("azimuth", "light"), "identity=2" -> (("identity", 2.0),).
    Raises ConfigError naming the flag."""
    type_name = FIELD_TYPES[name]
    try:
        if type_name == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if type_name == "tuple[int, ...]":
            return tuple(int(part) for part in raw.split(",")) if raw.strip() else ()
        if type_name == "tuple[str, ...]":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if type_name == "tuple[tuple[str, float], ...]":
            return tuple(_factor_weight(entry, name) for entry in filter(None, (e.strip() for e in raw.split(","))))
        return {"int": int, "float": float, "str": str}[type_name](raw)
    except ConfigError:
        raise
    except ValueError:
        example = {"tuple[int, ...]": ": comma-separated integers, e.g. 96,48,24"}.get(type_name, "")
        raise ConfigError(f"--{name}={raw!r} is not a valid {type_name}{example}") from None


def format_value(value) -> str:
    """The flag text of a config value; `parse_value` reads it back to the same value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(f"{item[0]}={_weight_text(item[1])}" if isinstance(item, tuple) else str(item)
                        for item in value)
    return str(value)


def _weight_text(weight: float) -> str:
    """2.0 -> "2" (as a user writes a factor weight), 0.5 -> "0.5"; exact either way."""
    return str(int(weight)) if float(weight).is_integer() and abs(weight) < 1e15 else repr(float(weight))


def _factor_weight(entry: str, name: str) -> tuple[str, float]:
    match = re.fullmatch(r"([\w-]+)=([0-9.eE+-]+)", entry)
    if not match:
        raise ConfigError(f"--{name} entry {entry!r} is not FACTOR=WEIGHT (e.g. identity=2)")
    return match.group(1), float(match.group(2))


FIELD_TYPES = {field.name: field.type for field in dataclasses.fields(TrainConfig)}
# The fields whose flag text `parse_value` converts into a tuple.
TUPLE_FIELDS = frozenset(name for name, type_name in FIELD_TYPES.items() if type_name.startswith("tuple["))
