"""The training configuration: every option of ``python -m model.train``, and the methods."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CORR_MIN", "DIRECT_INITS", "KD_LAYERS", "METHODS", "REFIT_TARGETS", "STAGE2_LOSSES",
           "SWITCH_REFITS", "BaseConfig", "TrainConfig"]


REFIT_GAINS = ("floor", "spread", "auto")  # TrainConfig.refit_gain
SWITCH_REFITS = ("none", "teacher")  # TrainConfig.switch_refit
DIRECT_INITS = ("plain", "spread")  # TrainConfig.direct_init
STAGE2_LOSSES = ("kd", "logits")  # TrainConfig.stage2_loss
REFIT_TARGETS = ("teacher", "self")  # TrainConfig.refit_target
KD_LAYERS = ("post", "pre", "partial")  # TrainConfig.kd_layers
CORR_MIN = 2.0**-10  # smallest corr_x the refit chooses


METHODS = (
    "classical",
    "direct",
    "layerwise",
    "layerwise_freeze",
    "kd",
    "lwkd",
    "two_stage",
    "finetune",
)


@dataclass
class BaseConfig:
    """The options every training run shares, LeNet (:class:`TrainConfig`) and ResNet-22
    (:class:`model.train_cifar.CifarConfig`): the neuron and its max approximation, the teacher,
    the batch, the KD weight and the machine."""

    form: str = "bm15"
    op: str = "max"
    alpha: float = 1.0
    alpha_end: float | None = None  # anneal alpha to this over each training phase
    teacher: str | None = None  # model.pt of a classical run (all methods but classical/direct)
    first_method: str = "lwkd"  # two_stage: the LSE stage
    # two_stage, at the switch of the trained LSE network to the hard max: "none" keeps the
    # weights (the paper's section 4.4), "teacher" refits every layer to the teacher's
    # pre-activations first (the earlier cells; it undoes stage 1's training, issue 23)
    switch_refit: str = "none"
    batch_size: int = 128
    beta: float = 1.0  # weight of the MSE terms
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # torch device of the whole run ("cuda" on a GPU machine)
    data_dir: str | None = None
    progress: bool = True
    budget_s: float = 0  # wall-clock limit of the run (0: none); model.train_cifar --budget-s

    def check_choices(self, **choices: tuple) -> None:
        """``ValueError`` unless each named field holds one of its choices."""
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")

    def check_switch_refit(self) -> None:
        self.check_choices(switch_refit=SWITCH_REFITS)


@dataclass
class TrainConfig(BaseConfig):
    method: str = "classical"
    out: str = "runs/lenet_classical"
    net: str = "lenet"
    learn_alpha: bool = False
    alpha_epochs: int = 0  # epochs with learnable alpha before freezing (0: whole run)
    dx: float = 0.0
    learn_corr: bool = False
    snap_corr: bool = True  # round corr_x to a power of two (before training when refitting)
    refit: bool = True  # least-squares refit of per-channel gain/bias and corr_x on conversion
    refit_images: int = 2000
    # a channel whose least-squares gain is <= 0: "floor" (1e-3, the layer nearly constant)
    # or "spread" (the gain that matches the target's spread, the layer kept alive); "auto":
    # spread in a layer where most channels have no positive fit (floor would flatten it),
    # else floor
    refit_gain: str = "floor"
    # layerwise, layerwise_freeze: what a converted layer is refitted to, the teacher's layer on
    # the teacher's path ("teacher"), or the layer it replaces, on the same inputs ("self": the
    # network as the earlier steps fine-tuned it; Algorithm 1 has no teacher). Refitted to the
    # teacher, S-morph's conv5 explained 12 % of its target and every ReLU after it died
    refit_target: str = "teacher"
    init: str | None = None  # finetune: the model to start from (model.pt or after_layerK.pt)
    # direct: the converted random init as it is ("plain"), or each 4-BM layer's gain set so its
    # output has the classical init's spread on the network's own inputs ("spread"). S-morph and
    # L-morph average their products where a convolution sums them, so each plain layer passes
    # ~1/n of the gradient back: the first layers' gradients sit below Adam's epsilon and a
    # plain S-morph network does not leave chance (issue 23)
    direct_init: str = "plain"
    keep: tuple[int, ...] = ()  # layers left classical (e.g. 5: the classifier)
    train_layers: tuple[int, ...] = ()  # finetune: only these layers train (empty: all)
    # the neuron of the classifier (finetune) or of the last converted layer (lwkd); default --form
    last_form: str | None = None
    head_init: str = "convert"  # finetune: classifier init, "convert" or "channel" (see below)
    epochs: int = 5  # classical, direct, kd; per conversion step for layerwise methods
    layer_epochs: tuple[int, ...] = (2,)  # lwkd: per layer (last value repeats)
    stage_joint: int = 0  # lwkd: every stage also trains this many student layers before its own
    final_epochs: int = 0  # lwkd / two_stage: joint KD fine-tune of the whole student at the end
    # lwkd, the stage of the last converted layer (the classifier, or conv5 with --keep 5):
    last_joint: int = 0  # also train this many student layers before it (0: stage_joint)
    last_op: str | None = None  # its op ("lse": from alpha 1 (exact, no refit), annealed, max)
    last_alpha_end: float = 64.0
    last_max_epochs: int = 2  # lwkd with last_op="lse": final epochs with the hard max
    # two_stage, the hard-max stage (--epochs at --final-lr): section 4.1's KD with every layer's
    # MSE ("kd"), or the labels' and the teacher's logits only ("logits": lwkd's --final-epochs
    # loss, so that LSE-MAX / layer-wise KD ends as MAX / layer-wise KD does)
    stage2_loss: str = "kd"
    lr: float = 1e-3
    tail_lr: float = 3e-4
    final_lr: float = 2e-4
    ce_weight: float = 1.0  # weight of the CE terms
    last_beta: float = 0.0  # lwkd: weight of the logit MSE in the classifier stage
    train_limit: int = 0  # 0: whole training set
    test_limit: int = 0  # 0: whole test set
    cache_limit_gb: float = 3.0
    augment: bool = False  # random shifts (up to shift_px) and rotations (up to rot_deg)
    shift_px: float = 2.0
    rot_deg: float = 10.0
    label_smoothing: float = 0.0  # of the cross-entropy against the labels
    kd_temp: float = 0.0  # layerwise: > 0 adds logit KD at this temperature; kd: the soft term's
    kd_weight: float = 1.0  # weight of the logit KD term (times kd_temp**2)
    grad_alpha: float = 0.0  # > 0: hard-max layers train with the LSE's backward at this alpha
    corr_channels: bool = False  # bm15: one power-of-two correction per output channel
    kd_norm: bool = False  # kd, lwkd: each layer's MSE divided by the teacher layer's variance
    # section 4.1's layer terms (kd, and the kd stages of two_stage): each layer's output after
    # its ReLU ("post") or before it ("pre", as the authors' KD_train.py compares them;
    # "partial": before it, skipping where student and teacher are both at or below zero)
    kd_layers: str = "post"
    ema: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.check_choices(method=METHODS)
        self.layer_epochs = tuple(int(e) for e in self.layer_epochs)
        for name in ("last_joint", "stage_joint"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        self.check_switch_refit()
        self.check_choices(refit_gain=REFIT_GAINS, refit_target=REFIT_TARGETS,
                           stage2_loss=STAGE2_LOSSES, direct_init=DIRECT_INITS,
                           kd_layers=KD_LAYERS)
        if self.direct_init != "plain" and self.form != "bm4":
            raise ValueError(f"direct_init {self.direct_init!r} is for --form bm4 (a 1.5-BM layer "
                             "is not homogeneous in its weights)")
        self.keep = tuple(int(i) for i in self.keep)
        self.train_layers = tuple(int(i) for i in self.train_layers)
