"""Run the ``mmreason`` command and SIGKILL it at a chosen moment, for the fault suite.

``KILL_AT`` picks the moment: ``step:N`` (as training step N starts),
``ckpt:N`` (half-way through writing the checkpoint of step N),
``export:NAME`` (half-way through writing the weights of export folder NAME).
"""

import os
import signal
import sys

import torch


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _half_written(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data[: len(data) // 2])
        stream.flush()
        os.fsync(stream.fileno())
    _die()


def _install(where: str, n: str) -> None:
    if where == "step":
        from mmreason.training.sft import SFTModule

        original_step = SFTModule.training_step

        def training_step(self, batch, batch_idx):
            if self.global_step == int(n):
                _die()
            return original_step(self, batch, batch_idx)

        SFTModule.training_step = training_step
    elif where == "ckpt":
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        original_save = TorchCheckpointIO.save_checkpoint

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if checkpoint.get("global_step") == int(n):
                import io

                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                _half_written(str(path), buffer.getvalue())
            return original_save(self, checkpoint, path, storage_options)

        TorchCheckpointIO.save_checkpoint = save_checkpoint
    elif where == "export":
        import mmreason.export as export

        original_save_model = export.save_model

        def save_model(model, filename, *args, **kwargs):
            original_save_model(model, filename, *args, **kwargs)
            if os.path.basename(os.path.dirname(filename)) == f"{n}.tmp":
                with open(filename, "rb") as stream:
                    _half_written(filename, stream.read())

        export.save_model = save_model
    else:
        raise ValueError(f"KILL_AT must be step:N, ckpt:N or export:NAME, got {where!r}")


if __name__ == "__main__":
    where, _, which = os.environ["KILL_AT"].partition(":")
    _install(where, which)
    from mmreason.cli import main

    main(sys.argv[1:])
