"""Training: dense baseline -> confusion matrix -> super-classes -> Mobile V-MoE.

Kept short and direct. Runs single-process or under `torchrun` (DistributedDataParallel,
gloo on CPU, nccl on GPU). Each stage checkpoints every epoch into OUT/.state/ and a rerun
with the same arguments continues from there; per-epoch shuffles come from (seed, epoch),
so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .interrupt import check as check_interrupt
from .checkpoint import Checkpoint, CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint
from .data import Dataset, Split, augment, holdout_split, preprocess
from .card import model_card
from .errors import ConfigError
from .model import MobileVMoE, ModelConfig, active_params, count_params, dense_twin_mismatch, route, upcycle
from .stream import FileSplit, eval_batches as stream_eval_batches, train_batches as stream_train_batches
from .superclass import confusion_matrix, describe, superclasses_from_confusion


@dataclass(frozen=True)
class TrainConfig:
    dense_epochs: int = 15
    moe_epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    router_weight: float = 0.3  # lambda in L = L_cls + lambda * CE(router, super-class)
    holdout_fraction: float = 0.1  # of train, for the dense model's confusion matrix
    seed: int = 0
    augment: bool = True
    train_limit: int = 0  # use only the first N training images (0 = all): smoke tests
    # dense (default): sparse upcycling from the dense twin trained in stage (a); scratch: the MoE's own init.
    # Measured on fmnist-tiny, 3 seeds (benchmarks/results/accuracy_seeds.md): upcycling gains ~2.4 points over
    # scratch for the same epochs, at no extra cost since stage (a) runs either way.
    moe_init: str = "dense"
    # also train the dense twin for moe_epochs more (fresh schedule): the same total training as dense + MoE, so
    # an MoE gain is not mistaken for the gain of training longer
    equal_compute: bool = True
    dense_checkpoint: str = ""  # a trained dense twin (dense.pt) to start from instead of training stage (a)

    def __post_init__(self) -> None:
        if self.moe_init not in MOE_INIT:
            raise ValueError(f"unknown --moe-init '{self.moe_init}'; choose one of: {', '.join(MOE_INIT)}")


MOE_INIT = ("scratch", "dense")


class _Interrupt(Exception):
    """Raised by tests to simulate a kill right after a checkpoint."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def log(msg: str) -> None:
    if _rank() == 0:
        print(msg, flush=True)


def train_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> None:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(train_device())
        dist.init_process_group(backend=backend)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """nanoGPT's rule: decay matrices and conv kernels; never biases, norm gains or the position embedding
    (decaying those pulls them towards zero, which only hurts)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.endswith("pos_embed") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def loss_fn(logits, router_logits, labels, superclass_of: torch.Tensor | None, router_weight: float):
    """L = CE(classes) + router_weight * CE(router logits, super-class of the label)."""
    cls_loss = F.cross_entropy(logits, labels)
    if router_logits is None or superclass_of is None:
        return cls_loss, cls_loss.detach(), torch.zeros((), device=logits.device)
    router_loss = F.cross_entropy(router_logits, superclass_of[labels])
    return cls_loss + router_weight * router_loss, cls_loss.detach(), router_loss.detach()


def eval_batches(split: Split | FileSplit, batch_size: int):
    """uint8 image batches of a split in order: slices of an in-memory split, or streamed and centre-cropped."""
    if isinstance(split, FileSplit):
        for images, _, _ in stream_eval_batches(split, batch_size):
            yield images
        return
    for i in range(0, len(split), batch_size):
        yield split.images[i : i + batch_size]


@torch.no_grad()
def predict(model: MobileVMoE, split: Split | FileSplit, batch_size: int = 500, invert: bool = False) -> dict[str, torch.Tensor]:
    """Predicted class, and for an MoE the router logits and selected experts, for a split (inverted: 255 - pixel)."""
    model.eval()
    preds, router_logits, experts = [], [], []
    for images in eval_batches(split, batch_size):
        x = preprocess(255 - images if invert else images, model.cfg)
        logits, r = model(x)
        preds.append(logits.argmax(1))
        if r is not None:
            router_logits.append(r)
            experts.append(route(r, model.cfg.top_k)[1])
    out = {"pred": torch.cat(preds)}
    if router_logits:
        out["router_logits"] = torch.cat(router_logits)
        out["experts"] = torch.cat(experts)
    return out


def evaluate(model: MobileVMoE, split: Split, superclass_of: list[int] | None = None) -> dict:
    """Top-1 (and routing for an MoE) on the split, and top-1 on the split inverted: a phone photo of an object
    on a light ground is the inverse of light-on-dark training data, which the config's polarity rule handles."""
    out = predict(model, split)
    metrics = {"top1": float((out["pred"] == split.labels).float().mean()), "images": len(split)}
    inverted = predict(model, split, invert=True)["pred"]
    metrics["top1_inverted"] = float((inverted == split.labels).float().mean())
    if "experts" in out and superclass_of is not None:
        target = torch.tensor(superclass_of)[split.labels]
        metrics["router_top1_vs_superclass"] = float((out["router_logits"].argmax(1) == target).float().mean())
        usage = torch.bincount(out["experts"].flatten(), minlength=model.cfg.num_experts)
        metrics["expert_usage"] = [int(u) for u in usage]
    return metrics


def epoch_batches(data: Split | FileSplit, cfg: TrainConfig, epoch: int, per_rank: int, world: int, rank: int,
                  steps: int):
    """This rank's (uint8 images, labels, read flags) batches for one epoch. Shuffles and augmentation are
    drawn from (seed, epoch), so an epoch is reproducible and a resumed run matches an uninterrupted one."""
    if isinstance(data, FileSplit):
        yield from stream_train_batches(data, per_rank, cfg.seed, epoch, world, rank, augment=cfg.augment)
        return
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.randperm(len(data), generator=g)[: steps * per_rank * world]
    shard = perm.view(steps, world, per_rank)[:, rank]
    aug_g = torch.Generator().manual_seed(cfg.seed * 7_919 + epoch * 31 + rank)
    for i in range(steps):
        idx = shard[i]
        images = data.images[idx]
        if cfg.augment:
            images = augment(images, aug_g)
        yield images, data.labels[idx], torch.ones(len(idx), dtype=torch.int64)


def _train_stage(
    stage: str, model: MobileVMoE, data: Split | FileSplit, class_names: list[str], epochs: int, cfg: TrainConfig, state_path: Path,
    superclass_of: list[int] | None = None, stop_after_epoch: int | None = None,
) -> MobileVMoE:
    """Train one model for `epochs`, checkpointing to state_path each epoch and resuming from it."""
    # Place the model first: optimizer.load_state_dict moves its state to the parameters' device.
    device = train_device()
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    start_epoch = 0
    if state_path.exists():
        ckpt = load_checkpoint(state_path, expect_config=model.cfg)
        saved = ckpt.train_state or {}
        if saved.get("train_config") != asdict(cfg):
            raise CheckpointError(
                f"{state_path} was written with different training options; rerun with the same options "
                "or use a fresh --out directory"
            )
        model.load_state_dict(ckpt.state_dict)
        opt.load_state_dict(saved["optimizer"])
        start_epoch = int(saved["epoch"])
        log(f"[{stage}] resuming from {state_path} after epoch {start_epoch}/{epochs}")
    sc = torch.tensor(superclass_of, device=device) if superclass_of is not None else None
    net = model
    if dist.is_initialized():
        # Per-image routing leaves experts without images on some ranks in some steps.
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=model.cfg.is_moe)
    world, rank = _world(), _rank()
    per_rank = max(1, cfg.batch_size // world)
    # = DistributedSampler's per-rank share (len // world) in whole batches, the streamed path's count
    steps_per_epoch = len(data) // (per_rank * world)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} training images are fewer than one batch of {cfg.batch_size}")
    total = steps_per_epoch * epochs
    # bf16 autocast on CUDA only: CPU autocast is slower than fp32 for these small matmuls
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for epoch in range(start_epoch, epochs):
        net.train()
        # loss, cls loss, router loss, correct, images read as themselves: summed on the device, read once an epoch
        sums = torch.zeros(5, device=device)
        t0 = time.time()
        batches = epoch_batches(data, cfg, epoch, per_rank, world, rank, steps_per_epoch)
        bar = tqdm(zip(range(steps_per_epoch), batches), total=steps_per_epoch, desc=f"{stage} epoch {epoch + 1}/{epochs}",
                   disable=rank != 0 or None, leave=False, file=sys.stderr)
        for i, (images, labels, read) in bar:
            check_interrupt()
            x = preprocess(images.to(device, non_blocking=True), model.cfg)  # uint8 over the bus, 4x fewer bytes
            y = labels.to(device, non_blocking=True)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i, total, cfg)
            with autocast:
                logits, router_logits = net(x)
                loss, cls_loss, r_loss = loss_fn(logits.float(), None if router_logits is None else router_logits.float(),
                                                 y, sc, cfg.router_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sums += torch.stack([loss.detach(), cls_loss, r_loss, (logits.argmax(1) == y).float().mean(),
                                 read.to(device).float().sum()])
        sums = sums.cpu()
        sums[:4] /= steps_per_epoch
        unread = steps_per_epoch * per_rank - int(sums[4])
        note = f"; {unread} unreadable image(s) replaced by the next readable one" if unread else ""
        log(f"[{stage}] epoch {epoch + 1}/{epochs}: loss {sums[0]:.4f} (cls {sums[1]:.4f}, router {sums[2]:.4f}) "
            f"train acc {sums[3]:.4f} [{time.time() - t0:.0f}s]{note}")
        if rank == 0:
            save_checkpoint(
                Checkpoint(model.cfg, model.state_dict(), class_names, superclass_of,
                           train_state={"optimizer": opt.state_dict(), "epoch": epoch + 1, "train_config": asdict(cfg)}),
                state_path,
            )
        if dist.is_initialized():
            dist.barrier()
        if stop_after_epoch is not None and epoch + 1 == stop_after_epoch:
            raise _Interrupt(stage)
    return model.cpu().eval()


def run_training(
    model_cfg: ModelConfig, dataset: Dataset, cfg: TrainConfig, out_dir: Path, command: str = "",
    stop_after: tuple[str, int] | None = None,
) -> dict:
    """The whole pipeline; returns the metrics written to OUT/metrics.json."""
    out_dir = Path(out_dir)
    state = out_dir / ".state"
    if not model_cfg.is_moe:
        raise ValueError(f"config '{model_cfg.name}' has moe_layers=0; vmoe-train needs an MoE config (it trains the dense twin itself)")
    if model_cfg.num_experts > len(dataset.class_names):
        raise ValueError(
            f"num_experts {model_cfg.num_experts} exceeds the {len(dataset.class_names)} classes of {dataset.name}: "
            "super-classes group classes, so use a config with fewer experts"
        )
    if len(dataset.class_names) != model_cfg.num_classes:
        raise ValueError(f"config '{model_cfg.name}' has {model_cfg.num_classes} classes, dataset {dataset.name} has {len(dataset.class_names)}")
    names = list(dataset.class_names)
    if cfg.dense_checkpoint:  # checked before anything is written
        dense, dense_epochs = load_dense_twin(Path(cfg.dense_checkpoint), model_cfg, names)
    if _rank() == 0:
        state.mkdir(parents=True, exist_ok=True)
    if dist.is_initialized():
        dist.barrier()
    log(f"training {model_cfg.name} on {dataset.name}: world size {_world()}, device {train_device()}, "
        f"{torch.get_num_threads()} threads per rank")
    train = dataset.train.subset(slice(0, cfg.train_limit)) if cfg.train_limit else dataset.train
    fit, holdout = holdout_split(train, cfg.holdout_fraction, cfg.seed)
    stop = dict([stop_after]) if stop_after else {}

    # (a) dense baseline with the same active FLOPs
    if cfg.dense_checkpoint:
        log(f"dense twin loaded from {cfg.dense_checkpoint} (stage a skipped)")
    else:
        torch.manual_seed(cfg.seed)
        dense_epochs = cfg.dense_epochs
        dense = _train_stage("dense", MobileVMoE(model_cfg.dense_twin()), fit, names, cfg.dense_epochs, cfg,
                             state / "dense.pt", stop_after_epoch=stop.get("dense"))
    # (b) + (c) confusion graph on held-out data, clustered into E super-classes
    conf = confusion_matrix(predict(dense, holdout)["pred"], holdout.labels, model_cfg.num_classes)
    superclass_of = superclasses_from_confusion(conf, model_cfg.num_experts, seed=cfg.seed)
    log("super-classes: " + " | ".join(", ".join(g) for g in describe(superclass_of, dataset.class_names)))
    # (d) the MoE with router supervision, from its own init or upcycled from the dense twin (a resumed run
    # then loads its saved weights over either)
    torch.manual_seed(cfg.seed)
    moe = MobileVMoE(model_cfg)
    if cfg.moe_init == "dense":
        upcycle(moe, dense)
    moe = _train_stage("moe", moe, fit, names, cfg.moe_epochs, cfg, state / "moe.pt",
                       superclass_of=superclass_of, stop_after_epoch=stop.get("moe"))
    # (e) the equal-compute control: the dense twin trained on for the MoE's epochs, same shuffles, fresh
    # schedule: exactly the upcycled run minus the MoE
    longer = None
    if cfg.equal_compute:
        longer = _train_stage("dense+", copy.deepcopy(dense), fit, names, cfg.moe_epochs, cfg,
                              state / "dense+.pt", stop_after_epoch=stop.get("dense+"))

    metrics = {
        "dataset": dataset.name,
        "dense": {**evaluate(dense, dataset.test), "params": count_params(dense), "epochs": dense_epochs},
        "moe": {**evaluate(moe, dataset.test, superclass_of), "params": count_params(moe), "active_params": active_params(moe)},
        "moe_init": cfg.moe_init,
        "dense_source": cfg.dense_checkpoint or "trained in this run",
        "superclasses": describe(superclass_of, dataset.class_names),
        "holdout_confusion": conf.tolist(),
        "train_config": asdict(cfg),
        "command": command,
    }
    metrics["moe_minus_dense_top1"] = metrics["moe"]["top1"] - metrics["dense"]["top1"]
    if longer is not None:
        total = dense_epochs + cfg.moe_epochs if dense_epochs else None
        metrics["dense_equal_compute"] = {**evaluate(longer, dataset.test), "epochs": total,
                                          "schedule": f"dense twin + {cfg.moe_epochs} more epochs (fresh warm-up and cosine)"}
        metrics["moe_minus_dense_equal_compute_top1"] = metrics["moe"]["top1"] - metrics["dense_equal_compute"]["top1"]
    if _rank() == 0:
        save_checkpoint(Checkpoint(model_cfg, moe.state_dict(), names, superclass_of, metrics=metrics), out_dir / "model.pt")
        save_checkpoint(Checkpoint(dense.cfg, dense.state_dict(), names, None, metrics=metrics["dense"]), out_dir / "dense.pt")
        _write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        _write_text(out_dir / "card.md", model_card(model_cfg, metrics))
        shutil.rmtree(state, ignore_errors=True)
    log(f"dense top-1 {metrics['dense']['top1']:.4f} | MoE top-1 {metrics['moe']['top1']:.4f} "
        f"({100 * metrics['moe_minus_dense_top1']:+.2f} pts) | router acc vs super-classes "
        f"{metrics['moe']['router_top1_vs_superclass']:.4f} | expert usage {metrics['moe']['expert_usage']}")
    if longer is not None:
        log(f"dense twin at equal total training ({metrics['dense_equal_compute']['epochs'] or '?'} epochs) top-1 "
            f"{metrics['dense_equal_compute']['top1']:.4f} | MoE minus it "
            f"{100 * metrics['moe_minus_dense_equal_compute_top1']:+.2f} pts")
    return metrics


def load_dense_twin(path: Path, model_cfg: ModelConfig, class_names: list[str]) -> tuple[MobileVMoE, int | None]:
    """A dense checkpoint given with --dense-checkpoint, checked to be the dense twin of model_cfg on these classes,
    and its training epochs when its metrics record them."""
    ckpt = load_checkpoint(path)
    if ckpt.config.is_moe:
        raise ConfigError(f"--dense-checkpoint {path} is an MoE checkpoint; pass the dense.pt that vmoe-train "
                          "writes beside model.pt")
    differ = dense_twin_mismatch(model_cfg, ckpt.config)
    if differ:
        raise ConfigError(f"--dense-checkpoint {path} is not the dense twin of '{model_cfg.name}' ({'; '.join(differ)}); "
                          f"pass a dense.pt trained for this config, or drop --dense-checkpoint to train one")
    if ckpt.class_names != class_names:
        raise ConfigError(f"--dense-checkpoint {path} was trained on other classes ({', '.join(ckpt.class_names[:4])}, ...) "
                          "than this data set; pass one trained on the same data")
    return ckpt.build_model(), ckpt.metrics.get("epochs")


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
