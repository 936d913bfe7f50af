"""All that simclr-cli knows about ``torch.distributed``: ranks, gather, global BN, launch.

This package is the only place that imports :mod:`torch.distributed`; this file is its
interface, which the rest of simclr-cli uses as ``distributed.rank()`` and so on. The rest of
the code asks :func:`rank`, :func:`world_size` and :func:`is_main`, which also work when no
process group exists (then they describe a single process), and calls :func:`gather_with_grad`,
:func:`convert_sync_batchnorm` and :func:`wrap_ddp`, which are identities in a single process.

One file per job:

* :mod:`.ranks`: rank helpers, reductions, this process's device, the DDP wrapper.
* :mod:`.gather`: the all-gather with exact gradients.
* :mod:`.batchnorm`: global batch norm (torch's SyncBatchNorm on CUDA, our own on CPU).
* :mod:`.planning`: how an invocation becomes processes (torchrun, SLURM, ``--gpus``, ...).
* :mod:`.launching`: starting the processes, supervising them, reporting one failure.

How a pretraining run uses it (the training module's side)::

    def pretrain(cfg):                      # module-level, runs in every process
        device = inference.process_device(cfg.resolved_device)
        model = build_simclr(...).to(device)
        if cfg.resolved_sync_bn:
            model = convert_sync_batchnorm(model, device)   # before DDP
        model = wrap_ddp(model, device)
        ...
        if is_main():
            save_checkpoint({"state_dict": net.state_dict(), ...}, path)   # the bare module

    def run_pretrain(cfg):
        return launch(pretrain, cfg)         # rank 0's return value

World size, one source per moment: before any group exists, ``PretrainConfig.world_size``,
resolved once at validation (:func:`launcher_world_size` under torchrun or SLURM, else
``--gpus``/``--processes`` x ``--nodes``); a spawn plan copies it, a launcher's plan reads the
same :func:`launcher_world_size`; inside a running process, :func:`world_size` asks the group.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020, Sec. 2.2 (large-batch training, global BN).
"""

from simclr_cli import lazy_exports

# The interface, imported lazily: the config reads the launcher's world size from .planning
# without loading torch.distributed (or torch) for ``simclr --help``.
_PUBLIC = {
    "DEFAULT_TIMEOUT": "launching",
    "GlobalBatchNorm": "batchnorm",
    "LaunchPlan": "planning",
    "all_reduce_mean": "ranks",
    "all_reduce_sum": "ranks",
    "available_backends": "ranks",
    "barrier": "ranks",
    "broadcast_object": "ranks",
    "convert_sync_batchnorm": "batchnorm",
    "detect_launcher": "planning",
    "find_free_port": "planning",
    "first_slurm_host": "planning",
    "gather_with_grad": "gather",
    "is_initialized": "ranks",
    "is_main": "ranks",
    "launch": "launching",
    "launcher_world_size": "planning",
    "plan_launch": "planning",
    "rank": "ranks",
    "starts_rank_zero": "planning",
    "to_global_batchnorm": "batchnorm",
    "world_size": "ranks",
    "wrap_ddp": "ranks",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_exports(__name__, {name: f".{module}" for name, module in _PUBLIC.items()})
