"""The optimiser and learning-rate schedule that teacher fine-tuning and student training share."""

from __future__ import annotations

import torch


def make_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights (the BERT recipe)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)



def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to the base learning rate, then linear decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scaled_backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    parameters, max_grad_norm: float) -> torch.Tensor:
    """The first half of a mixed-precision update, shared by teacher fine-tuning and the student
    trainer: fresh gradients of the (loss-scaled) ``loss``, unscaled and clipped to
    ``max_grad_norm``. Returns the norm before clipping (non-finite on an fp16 overflow).
    Finish with :func:`scaled_step`, or skip the update."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    return torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)


def scaled_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """The second half: the optimiser step (which the scaler skips after an overflow) and the
    loss-scale update."""
    scaler.step(optimizer)
    scaler.update()


def step_schedule(scheduler) -> None:
    """Advances the learning-rate schedule by one update, whether or not the optimiser stepped:
    kdenv's schedules count updates attempted, so a loss-scale overflow that skips an optimiser
    step does not shift the schedule. torch warns about exactly that order when the very first
    step was skipped; the warning is expected here and silenced for this call alone."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
        scheduler.step()
