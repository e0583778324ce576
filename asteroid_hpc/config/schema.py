"""Typed configuration: one dataclass per section, validated in ``__post_init__``.

Every size, path and switch of a run lives here; YAML files and ``section.key=value`` overrides
are turned into these objects by :mod:`asteroid_hpc.config.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import UserError


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)} (got {value!r})")


@dataclass
class DataConfig:
    """Trajectory preprocessing and the training windows."""

    dataset: str = ""  # preprocessed dataset directory (output of `preprocess`, input of train/evaluate)
    frames_per_shard: int = 4096
    frame_stride: int = 1  # keep every k-th input frame
    # [start, stop): read only these frames of every input (its own numbering, before the stride; stop null:
    # to the end); the rest of the file is never read, e.g. a chronological hold-out inside one file
    frames: Optional[list[Optional[int]]] = None
    stride_phases: int = 1  # read each input as this many subsamplings, offsets k·frame_stride/stride_phases
    # "all", "heavy", "indices:0,1,5-9", or the MDAnalysis selection language ("protein and not name H*")
    atom_selection: str = "all"
    center: bool = True  # subtract each frame's centroid when preprocessing
    # periodic inputs: make molecules whole and remove the jumps across the box (false: keep the file's
    # coordinates, e.g. an input already unwrapped); open inputs: no effect
    unwrap: bool = True
    split: str = "chronological"  # "chronological" (gap between splits), "random_start" (protocol A) or "by_file"
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    val_inputs: list[str] = field(default_factory=list)  # by_file: inputs (paths or globs) that are wholly val
    test_inputs: list[str] = field(default_factory=list)  # by_file: inputs that are wholly test; the rest train
    split_seed: int = 100
    random_start_counts: list[int] = field(default_factory=lambda: [500, 2000, 2000])  # train/val/test starts
    random_start_margin_frames: int = 10000  # protocol A draws starts from frames [margin : -margin]
    # "per_source": each source (phase) draws on its strided frames; "peers": one draw per input file on its
    # own frames, exactly the peers' starts, each window ending on one (needs stride_phases = frame_stride)
    random_start_draw: str = "per_source"
    compression: str = "none"  # "none" or "zlib" for shards (NETCDF4); measured in BENCHMARKS.md
    drop_nonfinite: bool = False
    timestep_fs: Optional[float] = None  # override when inputs carry no time variable
    chunk_frames: int = 1024  # frames read per streaming chunk
    stats_max_frames: int = 4096  # normalisation statistics from every q-th frame, q = ceil(frames / this); 0: all
    horizon_frames: int = 10  # H: frames forecast per training window
    window_stride: int = 1  # frames between consecutive window starts
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check(self.frames_per_shard >= 1, "data.frames_per_shard must be >= 1")
        _check(self.frame_stride >= 1, "data.frame_stride must be >= 1")
        _check(self.stride_phases >= 1 and self.frame_stride % self.stride_phases == 0,
               "data.stride_phases must be >= 1 and divide data.frame_stride")
        _check(self.frames is None or (len(self.frames) == 2 and self.frames[0] is not None and self.frames[0] >= 0
                                       and (self.frames[1] is None or self.frames[1] > self.frames[0])),
               f"data.frames must be [start, stop] with 0 <= start < stop (stop null: to the end), got {self.frames}")
        _check(self.chunk_frames >= 1, "data.chunk_frames must be >= 1")
        _check(self.stats_max_frames >= 0, "data.stats_max_frames must be >= 0")
        _check(self.horizon_frames >= 1, "data.horizon_frames must be >= 1")
        _check(self.window_stride >= 1, "data.window_stride must be >= 1")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")
        _one_of("data.split", self.split, ("chronological", "random_start", "by_file"))
        _check(self.split != "by_file" or bool(self.val_inputs or self.test_inputs),
               "data.split=by_file needs data.val_inputs or data.test_inputs (the held-out input files)")
        _check(self.split == "by_file" or not (self.val_inputs or self.test_inputs),
               "data.val_inputs and data.test_inputs apply only to data.split=by_file")
        _one_of("data.compression", self.compression, ("none", "zlib"))
        _check(isinstance(self.unwrap, bool), f"data.unwrap must be true or false (got {self.unwrap!r})")
        sel = self.atom_selection
        _check(isinstance(sel, str) and bool(sel.strip()),
               f"data.atom_selection must be 'all', 'heavy', 'indices:...' or an MDAnalysis selection (got {sel!r})")
        _check(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions),
               "data.split_fractions must be three non-negative numbers (train, val, test)")
        _check(abs(sum(self.split_fractions) - 1.0) < 1e-6, "data.split_fractions must sum to 1")
        _check(self.timestep_fs is None or 0 < self.timestep_fs < float("inf"), "data.timestep_fs must be finite and > 0")
        _check(len(self.random_start_counts) == 3 and all(c >= 0 for c in self.random_start_counts),
               "data.random_start_counts must be three non-negative integers (train, val, test)")
        _check(self.random_start_margin_frames >= 0, "data.random_start_margin_frames must be >= 0")
        _one_of("data.random_start_draw", self.random_start_draw, ("per_source", "peers"))
        _check(self.random_start_draw == "per_source" or (self.split == "random_start" and self.frames is None
                                                          and self.stride_phases == self.frame_stride),
               "data.random_start_draw=peers needs data.split=random_start, whole inputs (no data.frames) and "
               f"data.stride_phases = data.frame_stride ({self.frame_stride}), so that a phase holds every start")


# A retired ModelConfig key: older weights files and checkpoints carry the reference structure under it
# (asteroid_hpc.model.weights moves it into the model's state).
LEGACY_REFERENCE_KEY = "reference_coordinates"


@dataclass
class ModelConfig:
    """ASTEROID sizes (see docs/method.md §2)."""

    history_frames: int = 10  # m: observed frames per window
    delay_length: int = 6  # L: length of each STI delay vector (forecasts L-1 frames per pass)
    hidden_size: int = 64
    num_heads: int = 4
    encoder_layers: int = 2  # each = one spatial + one temporal block
    decoder_layers: int = 2
    attention: str = "local_global"  # "local_global" or "full"
    cutoff_angstrom: float = 5.0
    max_neighbors: int = 48
    num_global_tokens: int = 4
    num_rbf: int = 16
    num_elements: int = 119  # atomic-number embedding size
    symmetry: str = "augment"  # "augment" (random rotations in training) or "equivariant" (by construction)
    dropout: float = 0.0
    # "training_mean": the training frames' mean structure, superposed onto each window's last frame, joins
    # the per-atom vectors (isolated molecules of a fixed atom order); "none": no reference. The structure
    # itself is derived data: train computes it, the model's state (weights, checkpoints) carries it.
    reference_structure: str = "none"
    rotation_basis: bool = False  # the window's rigid rotation per frame, continued, joins the per-atom vectors
    # a scale σ per atom and step beside the mean: free-running steps are sampled, x = μ + σ·ε (thermal motion);
    # trained by train.loss_weights.nll on the teacher-forced steps (docs/method.md, thermal forecasts)
    stochastic: bool = False
    # "sampled": free-running steps of a molecule draw its bonds, angles and stiff torsions from a model of their
    # motion fitted on the training frames and keep non-bonded atoms apart (model/local_geometry.py); train fits
    # it, the model's state carries it; forecasts of means (protocols A, B, C) are not touched. "free": none.
    local_geometry: str = "free"

    def __post_init__(self) -> None:
        _check(self.history_frames >= 2, "model.history_frames must be >= 2")
        _check(self.delay_length >= 2, "model.delay_length must be >= 2")
        _check(self.hidden_size >= 1 and self.num_heads >= 1, "model.hidden_size and num_heads must be >= 1")
        _check(self.hidden_size % self.num_heads == 0,
               f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})")
        _check(self.encoder_layers >= 1 and self.decoder_layers >= 1, "model.*_layers must be >= 1")
        _one_of("model.attention", self.attention, ("local_global", "full"))
        _one_of("model.symmetry", self.symmetry, ("augment", "equivariant"))
        _check(self.cutoff_angstrom > 0, "model.cutoff_angstrom must be > 0")
        _check(self.max_neighbors >= 1, "model.max_neighbors must be >= 1")
        _check(self.num_global_tokens >= 0, "model.num_global_tokens must be >= 0")
        _check(self.num_rbf >= 1, "model.num_rbf must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _one_of("model.reference_structure", self.reference_structure, ("none", "training_mean"))
        _one_of("model.local_geometry", self.local_geometry, ("free", "sampled"))


@dataclass
class LossWeights:
    """Weights of the STI loss terms (STICM uses 3 : 1 : 3), the supervised forecast loss and, for a
    ``model.stochastic`` model, the Gaussian negative log-likelihood of its teacher-forced steps."""

    primary: float = 3.0
    conjugate: float = 1.0
    consistency: float = 3.0
    forecast: float = 1.0
    nll: float = 1.0  # applies to stochastic models only (nats per coordinate)

    def __post_init__(self) -> None:
        for name in ("primary", "conjugate", "consistency", "forecast", "nll"):
            _check(getattr(self, name) >= 0, f"train.loss_weights.{name} must be >= 0")


STOCHASTIC_LOSSES = ("nll", "energy_score", "energy_score_frame", "energy_score_steps")


@dataclass
class TrainConfig:
    """DeepSpeed training."""

    run_dir: str = "runs/default"
    seed: int = 0
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    lr_decay_steps: int = 0  # cosine decay (to 10 % of lr) ends at this step; 0 = train.max_steps
    grad_clip: float = 1.0
    zero_stage: int = 0
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    backend: str = "auto"  # "auto" (nccl on GPU, gloo on CPU), "gloo", "nccl"
    checkpoint_every: int = 100
    keep_last: int = 2
    val_every: int = 100
    val_batches: int = 20
    early_stopping_patience: int = 0  # validations without improvement before stopping; 0 = off
    log_every: int = 10
    loss_weights: LossWeights = field(default_factory=LossWeights)
    teacher_forcing: bool = True  # forecast loss on teacher-forced passes; false: on the free-running rollout
    # Gaussian noise (Å, per coordinate) added to every history frame of a training window, the targets left true:
    # the model learns to steer a slightly wrong window back, as its own rollouts need (learned simulators' trick)
    input_noise_angstrom: float = 0.0
    # a model.stochastic model's forecast loss: "nll" (σ by the Gaussian NLL of teacher-forced steps, the mean by
    # the forecast MSE), "energy_score" (fair energy score of 2 sampled free-running rollouts per window, per atom
    # and lead frame, weighted by loss_weights.forecast; the NLL only with loss_weights.nll > 0), or
    # "energy_score_frame" (the same on each whole frame about its centroid), or "energy_score_steps" (per atom, of
    # the positions plus of the steps x_k − x_{k−1}); the energy scores need teacher_forcing=false
    stochastic_loss: str = "nll"
    deepspeed: dict[str, Any] = field(default_factory=dict)  # advanced keys passed to DeepSpeed as-is

    def __post_init__(self) -> None:
        _check(self.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1")
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.lr_decay_steps == 0 or self.lr_decay_steps > self.warmup_steps,
               "train.lr_decay_steps must be 0 (= max_steps) or > train.warmup_steps")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 = off)")
        _check(self.zero_stage in (0, 1, 2, 3), f"train.zero_stage must be 0, 1, 2 or 3 (got {self.zero_stage})")
        _one_of("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _one_of("train.backend", self.backend, ("auto", "gloo", "nccl"))
        _check(self.checkpoint_every >= 1, "train.checkpoint_every must be >= 1")
        _check(self.keep_last >= 2, "train.keep_last must be >= 2 (a newer checkpoint must be complete "
                                    "before an older one is deleted)")
        _check(self.val_every >= 1 and self.val_batches >= 1, "train.val_every and val_batches must be >= 1")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0")
        _check(self.log_every >= 1, "train.log_every must be >= 1")
        _check(self.input_noise_angstrom >= 0, "train.input_noise_angstrom must be >= 0")
        _one_of("train.stochastic_loss", self.stochastic_loss, STOCHASTIC_LOSSES)
        _check(self.stochastic_loss == "nll" or not self.teacher_forcing,
               f"train.stochastic_loss={self.stochastic_loss} scores free-running rollouts: "
               "set train.teacher_forcing=false")


@dataclass
class EnsembleConfig:
    """Ensemble rollouts."""

    members: int = 8
    horizon_frames: int = 100
    perturbation: str = "gaussian"  # "gaussian" coordinate noise or "frames" (windows from other frames)
    noise_angstrom: float = 0.01
    frame_spacing: int = 10  # with "frames": member k starts this many frames earlier than member k-1
    start_frame: int = -1  # last frame of the starting window in the initial trajectory; -1 = last
    seed: int = 0
    domains: int = 1  # ranks that share one member by spatial domain decomposition
    chunk_frames: int = 50  # frames flushed to disk at a time
    keep_freed_memory: bool = True  # glibc: reuse freed activations (faster at >= 1e5 atoms, peak RSS +25-50 %)
    # watch on every member (bonds detected on the initial window's last frame, covalent radii): a member blows
    # up when a bond is this far from its length in the initial window, or an atom moves this far in one frame
    blowup_bond_angstrom: float = 0.5
    blowup_displacement_angstrom: float = 2.0
    clash_angstrom: float = 0.8  # non-bonded pairs closer than this count as clashes (summary only)
    stop_on_blowup: bool = False  # finish a blown-up member's file early, marked as stopped
    # members a rank forecasts together through one forward; 0 = from the system size (ensemble/sizing.py)
    batch_members: int = 0
    batch_memory_mb: int = 2048  # activation budget of one batch: a batch estimated larger is split (logged)
    # Verlet skin of the neighbour lists: rebuilt only when an atom moved more than half of it since the last
    # build (results equal within float tolerance); 0 = rebuild every pass. One rank per member only.
    neighbor_skin_angstrom: float = 0.0
    device: str = "auto"  # "auto" (a GPU when one is visible, else the CPU), "cpu" or "cuda"
    precision: str = "auto"  # inference autocast on CUDA: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"
    # torch.compile the model's attention blocks (asteroid_hpc.model.compiled): ~15 % less CPU per pass for a batch
    # of small molecules after ~1 min of compiling in the first pass (BENCHMARKS.md): for long rollouts only
    compile: bool = False
    # a model of a selection of the atoms (data.atom_selection) given the whole system: member files hold every
    # atom, the unselected ones held at their positions in the member's last starting frame (summary: selected)
    write_full_system: bool = False
    # periodic systems: member files' coordinates "molecules" (each molecule whole, its centre in the box, as MD
    # engines write; molecules from --topology's bonds, else each atom) or "none" (unwrapped: continuous, for MSD)
    output_wrap: str = "molecules"
    # "auto": the --topology's bonds and 1–3 distances that the unperturbed starting window holds fixed (rigid
    # water, constrained X–H) are held at their lengths after every forecast step (asteroid_hpc.model.constraints;
    # spatial domains complete the constrained molecules in their halos); "none": never
    constraints: str = "auto"

    def __post_init__(self) -> None:
        _check(self.members >= 1, "ensemble.members must be >= 1")
        _one_of("ensemble.constraints", self.constraints, ("auto", "none"))
        _check(self.horizon_frames >= 1, "ensemble.horizon_frames must be >= 1")
        _one_of("ensemble.perturbation", self.perturbation, ("gaussian", "frames"))
        _check(self.noise_angstrom >= 0, "ensemble.noise_angstrom must be >= 0")
        _check(self.frame_spacing >= 1, "ensemble.frame_spacing must be >= 1")
        _check(self.domains >= 1, "ensemble.domains must be >= 1")
        _check(self.chunk_frames >= 1, "ensemble.chunk_frames must be >= 1")
        _check(self.blowup_bond_angstrom > 0 and self.blowup_displacement_angstrom > 0,
               "ensemble.blowup_bond_angstrom and blowup_displacement_angstrom must be > 0")
        _check(self.clash_angstrom > 0, "ensemble.clash_angstrom must be > 0")
        _check(self.batch_members >= 0, "ensemble.batch_members must be >= 0 (0: from the system size)")
        _check(self.batch_memory_mb >= 1, "ensemble.batch_memory_mb must be >= 1")
        _check(self.neighbor_skin_angstrom >= 0, "ensemble.neighbor_skin_angstrom must be >= 0")
        _one_of("ensemble.device", self.device, ("auto", "cpu", "cuda"))
        _one_of("ensemble.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _one_of("ensemble.output_wrap", self.output_wrap, ("molecules", "none"))


@dataclass
class EvaluateConfig:
    """`asteroid-hpc evaluate` (docs/method.md §3). The model's history frames come from the model itself."""

    protocols: list[str] = field(default_factory=list)  # "A", "B", "C", "L", "window"; empty: A, B, C for
    # trajectory files, window for a preprocessed dataset directory
    split: str = "test"
    max_samples: Optional[int] = None  # score a seeded random subset of at most this many samples; null: all
    seed: int = 0  # seed of the max_samples subset, of protocol L's samples and of the members' noise
    # a stochastic model on A, B, C, window: 0 scores its path of means; K >= 2 scores the mean of K sampled
    # rollouts per sample, the path of means beside it, and the members' CRPS and spread (deterministic: no members)
    members: int = 0
    a_history_stride_frames: int = 375  # protocol A: MD17 frames between history (and forecast) frames; divides 375
    a_input: str = "heavy"  # protocol A: atoms the model sees, "heavy" or "all" (heavy atoms are scored either way)
    # protocols A and B: keep only the starts whose whole window (history and targets) lies in input frames
    # [start, stop) of each trajectory, e.g. [36000, 60000] (the draw is the whole file's); null: all starts
    a_frames: Optional[list[int]] = None
    horizon_frames: int = 10  # protocol window: frames forecast per window
    timestep_fs: Optional[float] = None  # frame spacing of trajectories without a time axis; null: MD17's 0.5 fs
    batch_size: int = 64  # samples forecast at a time
    baseline_history_frames: int = 10  # MODEL none only: history frames given to the baselines
    # protocol L: free-running rollouts from long_rollout_starts windows, long_rollout_stride_fs between frames
    long_rollout_ps: float = 10.0
    long_rollout_starts: int = 8
    long_rollout_stride_fs: float = 5.0  # the model's frame spacing (protocol C's: 10 MD17 frames)
    clash_angstrom: float = 0.8  # protocol L: non-bonded pairs closer than this are clashes
    bond_tolerance_angstrom: float = 0.45  # protocol L: bonded when closer than r_i + r_j + this (covalent radii)
    energy_samples: int = 16  # protocol L: log-spaced frames per rollout given a GFN2-xTB energy (known molecules)
    # periodic protocol L: "auto" holds the bonds and 1–3 distances the history holds fixed (rigid water, X–H
    # constraints) at their lengths after every forecast step (asteroid_hpc.model.constraints); "none": never
    constraints: str = "auto"

    def __post_init__(self) -> None:
        for protocol in self.protocols:
            _one_of("evaluate.protocols", protocol, ("A", "B", "C", "L", "window"))
        _one_of("evaluate.split", self.split, ("train", "val", "test"))
        _check(self.max_samples is None or self.max_samples >= 1, "evaluate.max_samples must be >= 1 (or null: all)")
        _check(self.members == 0 or self.members >= 2, "evaluate.members must be 0 (the path of means) or >= 2")
        _check(self.a_history_stride_frames >= 1, "evaluate.a_history_stride_frames must be >= 1")
        _one_of("evaluate.a_input", self.a_input, ("heavy", "all"))
        _check(self.a_frames is None or (len(self.a_frames) == 2 and all(isinstance(f, int) for f in self.a_frames)
                                         and 0 <= self.a_frames[0] < self.a_frames[1]),
               "evaluate.a_frames must be [start, stop) input frames, 0 <= start < stop (or null: all starts)")
        _check(self.horizon_frames >= 1, "evaluate.horizon_frames must be >= 1")
        _check(self.timestep_fs is None or self.timestep_fs > 0, "evaluate.timestep_fs must be > 0")
        _check(self.batch_size >= 1, "evaluate.batch_size must be >= 1")
        _check(self.baseline_history_frames >= 2, "evaluate.baseline_history_frames must be >= 2")
        _check(self.long_rollout_ps > 0 and self.long_rollout_stride_fs > 0,
               "evaluate.long_rollout_ps and long_rollout_stride_fs must be > 0")
        _check(self.long_rollout_starts >= 1, "evaluate.long_rollout_starts must be >= 1")
        _one_of("evaluate.constraints", self.constraints, ("auto", "none"))
        _check(self.clash_angstrom > 0 and self.bond_tolerance_angstrom >= 0,
               "evaluate.clash_angstrom must be > 0 and evaluate.bond_tolerance_angstrom >= 0")
        _check(self.energy_samples >= 0, "evaluate.energy_samples must be >= 0")


@dataclass
class AsteroidConfig:
    """The whole configuration of a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        _check(self.train.stochastic_loss == "nll" or self.model.stochastic,
               f"train.stochastic_loss={self.train.stochastic_loss} applies to model.stochastic=true models only")
        _check(self.train.warmup_steps < self.train.max_steps,
               f"train.warmup_steps ({self.train.warmup_steps}) must be < train.max_steps ({self.train.max_steps})")
