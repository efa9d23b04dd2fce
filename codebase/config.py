"""The one configuration object. Its defaults are the graded setting."""
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MODELS = ("gmvae", "vae")
GRID_ROWS, GRID_COLS = 10, 20  # the sample grids: 200 draws from p(x), as Problem 3.3 asks
# The files of logs/<run>/ that more than one module names:
SAMPLES = {"binary": "samples_binary.png", "means": "samples_means.png"}
TRAINING_CURVE = "training_curve.png"  # NELBO, KL and Rec against the iteration
STOPPED = "stopped.json"  # why the run's last attempt stopped before its end, for check --results


@dataclass(frozen=True)
class Config:
    model: str = "gmvae"  # "gmvae" or "vae"
    z: int = 10  # latent dimension
    k: int = 500  # mixture components of the GMVAE prior
    iter_max: int = 20000  # training steps
    iter_save: int = 10000  # checkpoint every this many steps (and at the end)
    run: int = 0  # run number, part of the run's name
    train: bool = True  # False: load the checkpoint at iter_max and evaluate it
    check: bool = True  # run the self-check's checks of the model's functions before training
    seed: int = 0  # training seed: initial weights, shuffling, binarisation, z ~ q(z|x)
    iwae: bool = False  # also evaluate the IWAE-1, -10, -100 and -1000 bounds
    device: str = "auto"  # auto, cpu, cuda or mps
    threads: int = 0  # CPU threads for torch; 0: $OMP_NUM_THREADS, else the CPUs this process may use
    cuda_graph: bool = False  # on CUDA, replay the training step as one CUDA graph
    compile: str = "auto"  # torch.compile the training step: auto (long runs, where it works), on or off
    data_dir: str = "data"
    resume: bool = False  # continue the run from its newest checkpoint
    overwrite: bool = False  # start the run afresh, deleting its checkpoints
    lr: float = 1e-3
    batch: int = 100
    log_every: int = 50  # a metrics.csv row (the mean of this many steps) and a NaN check
    checkpoint_root: str = "checkpoints"
    log_root: str = "logs"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {self.model!r}")

    @property
    def run_name(self):
        """The course's name for a run, e.g. model=gmvae_z=10_k=500_run=0000 (z=02, k=005 when small)."""
        k = f"_k={self.k:03d}" if self.model == "gmvae" else ""
        return f"model={self.model}_z={self.z:02d}{k}_run={self.run:04d}"

    @property
    def checkpoint_dir(self):
        return Path(self.checkpoint_root) / self.run_name

    @property
    def log_dir(self):
        return Path(self.log_root) / self.run_name

    @property
    def architecture(self):
        """What a checkpoint must agree with to be loaded into this run's model."""
        arch = {"model": self.model, "z": self.z}
        return {**arch, "k": self.k} if self.model == "gmvae" else arch

    def as_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, saved):
        """The Config of saved settings (results.json, stopped.json), keys it does not know left out."""
        return cls(**{key: value for key, value in saved.items() if key in {f.name for f in fields(cls)}})

    def command(self, *extra):
        """The run script's command line with this config's flags that are not the defaults, then `extra`:
        advice repeats the student's own flags (--run, --data-dir, ...)."""
        given = []
        for name in ("z", "k", "iter_max", "run", "seed", "iwae", "check", "device", "threads", "cuda_graph",
                     "compile", "data_dir"):  # --resume, --overwrite and --train are the advice's own
            value = getattr(self, name)
            if value == getattr(Config, name) or (name == "k" and self.model != "gmvae"):
                continue
            flag = "--" + (name.replace("_", "-") if name in ("data_dir", "cuda_graph") else name)
            if name == "check":
                flag = "--no-check"
            given.append(flag if isinstance(value, bool) else f"{flag} {shlex.quote(str(value))}")
        return " ".join(["python", f"run_{self.model}.py", *given, *extra])
